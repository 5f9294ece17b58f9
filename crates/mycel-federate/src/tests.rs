//! The aggregator end to end on safetensors files in a temporary directory: exact
//! results of every strategy on hand-computed cases, agreement with a naive weighted
//! mean on random data, every rejection's reason, robustness against scaled updates,
//! clipping, and the memory bound.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors, View};
use tempfile::TempDir;

use crate::*;

/// A tensor to write: name, dtype, shape, values (converted to the dtype).
#[derive(Clone, Debug)]
struct T {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn t(name: &str, shape: &[usize], values: &[f64]) -> T {
    typed(name, Dtype::F32, shape, values)
}

fn typed(name: &str, dtype: Dtype, shape: &[usize], values: &[f64]) -> T {
    assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
    T {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        values: values.to_vec(),
    }
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            Dtype::F32 => (v as f32).to_le_bytes().to_vec(),
            Dtype::F64 => v.to_le_bytes().to_vec(),
            Dtype::F16 => f16::from_f64(v).to_le_bytes().to_vec(),
            Dtype::BF16 => bf16::from_f64(v).to_le_bytes().to_vec(),
            Dtype::I64 => (v as i64).to_le_bytes().to_vec(),
            other => panic!("test helper does not write {other}"),
        })
        .collect()
}

fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f64())
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("test helper does not read {other}"),
    }
}

fn write(path: &Path, tensors: &[T]) -> PathBuf {
    let data: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                Bytes {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data: encode(t.dtype, &t.values),
                },
            )
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(data.iter().map(|(n, b)| (n, b)), Some(metadata), path).unwrap();
    path.to_path_buf()
}

/// Every tensor of a safetensors file: name → (dtype, shape, values).
fn read(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .iter()
        .map(|(name, view)| {
            (
                name.to_string(),
                (
                    view.dtype(),
                    view.shape().to_vec(),
                    decode(view.dtype(), view.data()),
                ),
            )
        })
        .collect()
}

fn values(path: &Path, name: &str) -> Vec<f64> {
    read(path).remove(name).unwrap().2
}

/// A round in a temporary directory.
struct Round {
    dir: TempDir,
    global: PathBuf,
    updates: usize,
}

impl Round {
    fn new(global: &[T]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let global = write(&dir.path().join("global.safetensors"), global);
        Round {
            dir,
            global,
            updates: 0,
        }
    }

    fn update(&mut self, tensors: &[T]) -> PathBuf {
        self.updates += 1;
        let path = self
            .dir
            .path()
            .join(format!("update-{}.safetensors", self.updates));
        write(&path, tensors)
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("aggregate.safetensors")
    }

    fn aggregator(&self, config: AggregatorConfig) -> Aggregator {
        Aggregator::new(GlobalModel::open(&self.global).unwrap(), config).unwrap()
    }

    /// Aggregates `updates` (tensors, examples) with `config`; every update must be
    /// accepted by `add_update`.
    fn run(&mut self, config: AggregatorConfig, updates: &[(Vec<T>, u64)]) -> Aggregate {
        let paths: Vec<PathBuf> = updates.iter().map(|(ts, _)| self.update(ts)).collect();
        let mut aggregator = self.aggregator(config);
        for (i, (path, (_, examples))) in paths.iter().zip(updates).enumerate() {
            aggregator
                .add_update(&format!("client-{i}"), path, *examples)
                .unwrap();
        }
        aggregator.finish(&self.out()).unwrap()
    }
}

fn config(strategy: &str) -> AggregatorConfig {
    AggregatorConfig::new(strategy.parse().unwrap())
}

fn single(values: &[f64]) -> Vec<T> {
    vec![t("w", &[values.len()], values)]
}

fn rejection(aggregate: &Aggregate, client: &str) -> Rejection {
    let outcome = aggregate
        .clients
        .iter()
        .find(|o| o.client == client)
        .unwrap();
    match &outcome.status {
        ClientStatus::Rejected(r) => r.clone(),
        other => panic!("{client} is {other:?}"),
    }
}

// ---------------------------------------------------------------- exact results

#[test]
fn fedavg_is_the_example_weighted_mean() {
    let global = [t("w", &[2, 2], &[0.0; 4]), t("b", &[2], &[0.0; 2])];
    let mut round = Round::new(&global);
    let a = vec![
        t("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0]),
        t("b", &[2], &[0.0, 0.0]),
    ];
    let b = vec![
        t("w", &[2, 2], &[5.0, 6.0, 7.0, 8.0]),
        t("b", &[2], &[4.0, -4.0]),
    ];
    // (1·a + 3·b) / 4
    let aggregate = round.run(config("fedavg"), &[(a, 1), (b, 3)]);
    assert_eq!(values(&round.out(), "w"), vec![4.0, 5.0, 6.0, 7.0]);
    assert_eq!(values(&round.out(), "b"), vec![3.0, -3.0]);
    assert_eq!(aggregate.included, 2);
    assert_eq!(aggregate.examples, 4);
    assert_eq!(
        aggregate.accumulator_bytes, 0,
        "two updates need no accumulator"
    );
}

#[test]
fn fedavg_folds_batches_into_the_accumulator_with_the_same_result() {
    let global = [t("w", &[5], &[0.0; 5])];
    let updates: Vec<(Vec<T>, u64)> = (1..=7)
        .map(|i| (single(&[f64::from(i); 5]), i as u64))
        .collect();
    // Σ i·i / Σ i for i = 1..7: 140 / 28 = 5.
    for fold_every in [1, 2, 3, 7, 100] {
        let mut round = Round::new(&global);
        let aggregate = round.run(
            AggregatorConfig {
                fold_every,
                chunk_len: 2,
                ..config("fedavg")
            },
            &updates,
        );
        assert_eq!(
            values(&round.out(), "w"),
            vec![5.0; 5],
            "fold_every {fold_every}"
        );
        let expected_acc = if fold_every <= 7 { 5 * 8 } else { 0 };
        assert_eq!(
            aggregate.accumulator_bytes, expected_acc,
            "fold_every {fold_every}"
        );
    }
}

#[test]
fn fedprox_aggregates_as_fedavg_and_carries_mu() {
    let strategy: Strategy = "fedprox:mu=0.1".parse().unwrap();
    assert_eq!(strategy.proximal_mu(), Some(0.1));
    let mut round = Round::new(&single(&[0.0, 0.0]));
    round.run(
        AggregatorConfig::new(strategy),
        &[(single(&[1.0, 2.0]), 1), (single(&[3.0, 6.0]), 1)],
    );
    assert_eq!(values(&round.out(), "w"), vec![2.0, 4.0]);
}

#[test]
fn fedmedian_is_the_coordinatewise_median() {
    let mut round = Round::new(&single(&[0.0; 3]));
    // Counts are ignored: the 100-example client does not pull the median.
    round.run(
        config("fedmedian"),
        &[
            (single(&[1.0, 10.0, -5.0]), 1),
            (single(&[2.0, 30.0, 5.0]), 100),
            (single(&[9.0, 20.0, 0.0]), 1),
        ],
    );
    assert_eq!(values(&round.out(), "w"), vec![2.0, 20.0, 0.0]);

    let mut round = Round::new(&single(&[0.0; 2]));
    round.run(
        config("fedmedian"),
        &[
            (single(&[1.0, 4.0]), 1),
            (single(&[2.0, 3.0]), 1),
            (single(&[3.0, 2.0]), 1),
            (single(&[10.0, 1.0]), 1),
        ],
    );
    assert_eq!(values(&round.out(), "w"), vec![2.5, 2.5]);
}

#[test]
fn trimmed_mean_drops_the_beta_fraction_at_each_end() {
    let mut round = Round::new(&single(&[0.0; 2]));
    // n = 5, beta = 0.2: one value dropped at each end per coordinate.
    round.run(
        config("trimmed-mean:beta=0.2"),
        &[
            (single(&[1.0, -100.0]), 1),
            (single(&[2.0, 1.0]), 1),
            (single(&[3.0, 2.0]), 1),
            (single(&[4.0, 3.0]), 1),
            (single(&[1000.0, 100.0]), 1),
        ],
    );
    assert_eq!(values(&round.out(), "w"), vec![3.0, 2.0]);
}

#[test]
fn krum_picks_the_most_central_update_and_multi_krum_averages_the_best() {
    // Updates on a line at 0, 1, 2, 3 and 100 (two coordinates, the same value).
    // f = 1: each update scores the sum of squared distances to its 5 − 1 − 2 = 2
    // nearest others: 0 → 1·2 + 4·2 = 10, 1 → 4, 2 → 4, 3 → 10, 100 → huge (per
    // coordinate squared distance, summed over the two coordinates).
    let points = [0.0, 1.0, 2.0, 3.0, 100.0];
    let updates: Vec<(Vec<T>, u64)> = points.iter().map(|&p| (single(&[p, p]), 1)).collect();

    let mut round = Round::new(&single(&[0.0; 2]));
    let aggregate = round.run(config("krum:f=1"), &updates);
    assert_eq!(
        values(&round.out(), "w"),
        vec![1.0, 1.0],
        "ties go to the first"
    );
    let scores: Vec<f64> = aggregate
        .clients
        .iter()
        .map(|c| c.krum_score.unwrap())
        .collect();
    assert_eq!(scores[..4], [10.0, 4.0, 4.0, 10.0]);
    let statuses: Vec<&ClientStatus> = aggregate.clients.iter().map(|c| &c.status).collect();
    assert_eq!(statuses[1], &ClientStatus::Included);
    assert_eq!(statuses[4], &ClientStatus::NotSelected);

    let mut round = Round::new(&single(&[0.0; 2]));
    let aggregate = round.run(config("krum:f=1,m=3"), &updates);
    // The three best are 1, 2 and 0 (10 ties with 3, the first wins): mean 1.
    assert_eq!(values(&round.out(), "w"), vec![1.0, 1.0]);
    assert_eq!(aggregate.included, 3);
}

#[test]
fn krum_needs_2f_plus_3_updates() {
    let mut round = Round::new(&single(&[0.0]));
    let path = round.update(&single(&[1.0]));
    let mut aggregator = round.aggregator(config("krum:f=1"));
    for i in 0..4 {
        aggregator.add_update(&format!("c{i}"), &path, 1).unwrap();
    }
    let err = aggregator.finish(&round.out()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "krum:f=1,m=1 needs at least 5 accepted updates, got 4"
    );
    assert!(!round.out().exists(), "no partial aggregate is left behind");
}

#[test]
fn no_updates_is_an_error() {
    let round = Round::new(&single(&[0.0]));
    let err = round
        .aggregator(config("fedavg"))
        .finish(&round.out())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "fedavg needs at least 1 accepted updates, got 0"
    );
}

// ---------------------------------------------------------------- formats

#[test]
fn weighted_mean_equals_the_naive_computation_on_random_data() {
    let shapes: [&[usize]; 4] = [&[37, 11], &[1000], &[3, 5, 7], &[1]];
    let mut rng = StdRng::seed_from_u64(42);
    let random = |rng: &mut StdRng, shape: &[usize]| -> Vec<f64> {
        (0..shape.iter().product())
            .map(|_| f64::from(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    let global: Vec<T> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| t(&format!("t{i}"), s, &random(&mut rng, s)))
        .collect();
    let updates: Vec<(Vec<T>, u64)> = (0..10)
        .map(|_| {
            let tensors = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| t(&format!("t{i}"), s, &random(&mut rng, s)))
                .collect();
            (tensors, rng.random_range(1..5000))
        })
        .collect();
    let total: f64 = updates.iter().map(|(_, n)| *n as f64).sum();

    for (fold_every, chunk_len) in [(16, DEFAULT_CHUNK_LEN), (3, 64), (1, 7)] {
        let mut round = Round::new(&global);
        round.run(
            AggregatorConfig {
                fold_every,
                chunk_len,
                ..config("fedavg")
            },
            &updates,
        );
        for (i, _) in shapes.iter().enumerate() {
            let name = format!("t{i}");
            let got = values(&round.out(), &name);
            // Naive: per value, in f64, the values as written (f32).
            let expected: Vec<f64> = (0..got.len())
                .map(|k| {
                    updates
                        .iter()
                        .map(|(ts, n)| f64::from(ts[i].values[k] as f32) * *n as f64)
                        .sum::<f64>()
                        / total
                })
                .collect();
            let error: f64 = got
                .iter()
                .zip(&expected)
                .map(|(g, e)| (g - e).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = expected.iter().map(|e| e * e).sum::<f64>().sqrt();
            assert!(
                error / norm <= 1e-6,
                "{name} (fold_every {fold_every}, chunk_len {chunk_len}): relative error {}",
                error / norm
            );
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(*g, f64::from(*e as f32), "rounded once to f32");
            }
        }
    }
}

#[test]
fn f16_bf16_and_f64_tensors_keep_their_dtype() {
    let tensors = |v: f64| {
        vec![
            typed("half", Dtype::F16, &[2], &[v, -v]),
            typed("brain", Dtype::BF16, &[2], &[v, 2.0 * v]),
            typed("double", Dtype::F64, &[1], &[v / 3.0]),
        ]
    };
    let mut round = Round::new(&tensors(0.0));
    round.run(config("fedavg"), &[(tensors(1.0), 1), (tensors(2.0), 1)]);
    let out = read(&round.out());
    assert_eq!(out["half"].0, Dtype::F16);
    assert_eq!(out["half"].2, vec![1.5, -1.5]);
    assert_eq!(out["brain"].0, Dtype::BF16);
    assert_eq!(out["brain"].2, vec![1.5, 3.0]);
    assert_eq!(out["double"].0, Dtype::F64);
    assert!((out["double"].2[0] - 0.5).abs() < 1e-15);
}

#[test]
fn integer_tensors_are_carried_from_the_global_model() {
    let global = [
        t("w", &[2], &[0.0, 0.0]),
        typed("bn.num_batches_tracked", Dtype::I64, &[], &[41.0]),
    ];
    let update = |v: f64, tracked: f64| {
        vec![
            t("w", &[2], &[v, v]),
            typed("bn.num_batches_tracked", Dtype::I64, &[], &[tracked]),
        ]
    };
    let mut round = Round::new(&global);
    round.run(
        config("fedmedian"),
        &[(update(1.0, 50.0), 1), (update(3.0, 60.0), 1)],
    );
    let out = read(&round.out());
    assert_eq!(
        out["bn.num_batches_tracked"],
        (Dtype::I64, vec![], vec![41.0])
    );
    assert_eq!(out["w"].2, vec![2.0, 2.0]);
}

#[test]
fn the_aggregate_has_the_global_models_header() {
    let global = [
        t("z.last", &[3], &[0.0; 3]),
        t("a.first", &[2, 1], &[0.0; 2]),
    ];
    let mut round = Round::new(&global);
    round.run(
        config("fedavg"),
        &[(
            vec![
                t("a.first", &[2, 1], &[1.0, 2.0]),
                t("z.last", &[3], &[3.0; 3]),
            ],
            1,
        )],
    );
    let header = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        let (n, _) = SafeTensors::read_metadata(&bytes).unwrap();
        bytes[..8 + n].to_vec()
    };
    let bytes = std::fs::read(round.out()).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        metadata.metadata().as_ref().unwrap()["format"],
        "pt",
        "__metadata__ is kept"
    );
    assert_eq!(
        String::from_utf8_lossy(&header(&round.out())),
        String::from_utf8_lossy(&header(&round.global)),
        "the same header, byte for byte"
    );
    let leftovers: Vec<_> = std::fs::read_dir(round.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".aggregate-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---------------------------------------------------------------- rejections

/// Adds `path` and returns the rejection `add_update` reports.
fn rejected_now(aggregator: &mut Aggregator, client: &str, path: &Path, n: u64) -> String {
    match aggregator.add_update(client, path, n) {
        Err(FederateError::Rejected { reason, .. }) => reason.to_string(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn header_problems_are_rejected_with_their_reason() {
    let global = [
        t("conv.weight", &[2, 2], &[0.0; 4]),
        t("fc.bias", &[3], &[0.0; 3]),
    ];
    let mut round = Round::new(&global);
    let good = round.update(&global);
    let renamed = round.update(&[
        t("conv.weight", &[2, 2], &[0.0; 4]),
        t("fc.b", &[3], &[0.0; 3]),
    ]);
    let reshaped = round.update(&[
        t("conv.weight", &[4], &[0.0; 4]),
        t("fc.bias", &[3], &[0.0; 3]),
    ]);
    let retyped = round.update(&[
        typed("conv.weight", Dtype::F16, &[2, 2], &[0.0; 4]),
        t("fc.bias", &[3], &[0.0; 3]),
    ]);
    let garbage = round.dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    let truncated = round.dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 4]).unwrap();

    let mut aggregator = round.aggregator(config("fedavg"));
    assert_eq!(
        rejected_now(&mut aggregator, "renamed", &renamed, 1),
        "tensor names differ from the global model's: missing fc.bias; unexpected fc.b"
    );
    assert_eq!(
        rejected_now(&mut aggregator, "reshaped", &reshaped, 1),
        "tensors differ from the global model's: 'conv.weight' is F32 [4], expected F32 [2, 2]"
    );
    assert_eq!(
        rejected_now(&mut aggregator, "retyped", &retyped, 1),
        "tensors differ from the global model's: 'conv.weight' is F16 [2, 2], expected F32 [2, 2]"
    );
    assert!(rejected_now(&mut aggregator, "garbage", &garbage, 1)
        .starts_with("not a readable safetensors file: the header length is"));
    assert!(
        rejected_now(&mut aggregator, "truncated", &truncated, 1).ends_with(&format!(
            "the header describes {} bytes, but the file is {} bytes",
            bytes.len(),
            bytes.len() - 4
        ))
    );
    assert!(rejected_now(
        &mut aggregator,
        "missing",
        &round.dir.path().join("nope"),
        1
    )
    .starts_with("not a readable safetensors file: cannot open"));
    assert_eq!(
        rejected_now(&mut aggregator, "idle", &good, 0),
        "the example count is 0; an update must come from at least one example"
    );
    aggregator.add_update("ok", &good, 1).unwrap();
    assert_eq!(
        rejected_now(&mut aggregator, "ok", &good, 1),
        "this client already sent an update in this round"
    );
    let aggregate = aggregator.finish(&round.out()).unwrap();
    assert_eq!(aggregate.included, 1);
    assert_eq!(aggregate.clients.len(), 9);
    assert_eq!(rejection(&aggregate, "idle"), Rejection::NoExamples);
}

fn with_value(n: usize, at: usize, value: f64) -> Vec<f64> {
    let mut v = vec![1.0; n];
    v[at] = value;
    v
}

#[test]
fn non_finite_values_are_rejected_naming_tensor_and_index() {
    // A 3 × 4 tensor "w" after a tensor "a" of 5 values; NaN at w[2, 1] (element 9).
    let global = [t("a", &[5], &[0.0; 5]), t("w", &[3, 4], &[0.0; 12])];
    let good = vec![t("a", &[5], &[2.0; 5]), t("w", &[3, 4], &[2.0; 12])];
    let nan = vec![
        t("a", &[5], &[2.0; 5]),
        t("w", &[3, 4], &with_value(12, 9, f64::NAN)),
    ];
    let inf = vec![
        t("a", &[5], &with_value(5, 4, f64::NEG_INFINITY)),
        t("w", &[3, 4], &[1.0; 12]),
    ];
    let expected_nan =
        "tensor 'w' holds NaN at index [2, 1] (element 9); every value must be finite";
    let expected_inf = "tensor 'a' holds -Inf at index [4] (element 4); every value must be finite";

    // Every strategy finds them, with and without folding, in small and large chunks;
    // the aggregate is the good updates' alone.
    let cases = [
        ("fedavg", 16, DEFAULT_CHUNK_LEN),
        ("fedavg", 1, 3),
        ("fedavg", 2, 3),
        ("fedavg", 4, 3),
        ("fedmedian", 16, 3),
        ("trimmed-mean:beta=0.1", 16, DEFAULT_CHUNK_LEN),
        ("krum:f=0", 16, 3),
    ];
    for (strategy, fold_every, chunk_len) in cases {
        let mut round = Round::new(&global);
        let paths = [
            round.update(&good),
            round.update(&nan),
            round.update(&good),
            round.update(&inf),
            round.update(&good),
        ];
        let mut aggregator = round.aggregator(AggregatorConfig {
            fold_every,
            chunk_len,
            ..config(strategy)
        });
        let case = format!("{strategy}, fold_every {fold_every}, chunk_len {chunk_len}");
        for (i, path) in paths.iter().enumerate() {
            // A fold triggered by this very update may already reject it.
            match aggregator.add_update(&format!("c{i}"), path, 1) {
                Ok(()) => {}
                Err(FederateError::Rejected { client, reason }) => {
                    assert!(
                        client == "c1" || client == "c3",
                        "{case}: {client}: {reason}"
                    );
                }
                Err(e) => panic!("{case}: {e}"),
            }
        }
        let aggregate = aggregator.finish(&round.out()).unwrap();
        assert_eq!(
            rejection(&aggregate, "c1").to_string(),
            expected_nan,
            "{case}"
        );
        assert_eq!(
            rejection(&aggregate, "c3").to_string(),
            expected_inf,
            "{case}"
        );
        let included = aggregate
            .clients
            .iter()
            .filter(|c| c.status == ClientStatus::Included);
        assert_eq!(
            included.count(),
            if strategy == "krum:f=0" { 1 } else { 3 },
            "{case}"
        );
        assert_eq!(values(&round.out(), "w"), vec![2.0; 12], "{case}");
        assert_eq!(values(&round.out(), "a"), vec![2.0; 5], "{case}");
    }
}

#[test]
fn with_privacy_non_finite_values_are_rejected_when_added() {
    let mut round = Round::new(&single(&[0.0; 3]));
    let path = round.update(&single(&with_value(3, 2, f64::INFINITY)));
    let mut aggregator = round.aggregator(AggregatorConfig {
        privacy: Some(Privacy {
            clip: 1.0,
            noise_multiplier: 0.0,
            seed: Some(1),
        }),
        ..config("fedavg")
    });
    assert_eq!(
        rejected_now(&mut aggregator, "c", &path, 1),
        "tensor 'w' holds +Inf at index [2] (element 2); every value must be finite"
    );
}

#[test]
fn bad_configurations_say_what_is_expected() {
    let round = Round::new(&single(&[0.0]));
    let new = |config: AggregatorConfig| {
        Aggregator::new(GlobalModel::open(&round.global).unwrap(), config)
            .unwrap_err()
            .to_string()
    };
    let privacy = Some(Privacy {
        clip: 1.0,
        noise_multiplier: 1.0,
        seed: None,
    });
    assert_eq!(
        new(AggregatorConfig {
            privacy,
            ..config("fedmedian")
        }),
        "differential privacy: fedmedian does not take differential privacy: the noise is \
         calibrated to the sensitivity of a mean; use fedavg or fedprox"
    );
    assert_eq!(
        new(AggregatorConfig {
            fold_every: 0,
            ..config("fedavg")
        }),
        "aggregator configuration: fold_every and chunk_len must be at least 1, got 0 and 32768"
    );
    assert!(
        new(AggregatorConfig::new(Strategy::TrimmedMean { beta: 0.7 }))
            .contains("beta must be in [0, 0.5)")
    );

    let dir = tempfile::tempdir().unwrap();
    let ints = write(
        &dir.path().join("ints.safetensors"),
        &[typed("n", Dtype::I64, &[1], &[1.0])],
    );
    let err = Aggregator::new(GlobalModel::open(&ints).unwrap(), config("fedavg")).unwrap_err();
    assert!(err
        .to_string()
        .ends_with("holds no F16, BF16, F32 or F64 values; there is nothing to aggregate"));
    let missing = GlobalModel::open(&dir.path().join("absent")).unwrap_err();
    assert!(missing.to_string().contains("cannot open"), "{missing}");
}

// ---------------------------------------------------------------- robustness

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn robust_strategies_resist_scaled_updates_and_fedavg_does_not() {
    const N: usize = 500;
    let mut rng = StdRng::seed_from_u64(7);
    let truth: Vec<f64> = (0..N).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut updates: Vec<(Vec<T>, u64)> = (0..10)
        .map(|_| {
            let honest: Vec<f64> = truth
                .iter()
                .map(|v| v + rng.random_range(-0.01..0.01))
                .collect();
            (single(&honest), 100)
        })
        .collect();
    for _ in 0..2 {
        let scaled: Vec<f64> = truth.iter().map(|v| v * 1000.0).collect();
        updates.push((single(&scaled), 100));
    }
    let norm = distance(&truth, &vec![0.0; N]);

    for strategy in [
        "fedmedian",
        "trimmed-mean:beta=0.2",
        "krum:f=2",
        "krum:f=2,m=4",
    ] {
        let mut round = Round::new(&single(&[0.0; N]));
        round.run(config(strategy), &updates);
        let error = distance(&values(&round.out(), "w"), &truth) / norm;
        assert!(error < 0.02, "{strategy}: relative error {error}");
    }
    let mut round = Round::new(&single(&[0.0; N]));
    round.run(config("fedavg"), &updates);
    let error = distance(&values(&round.out(), "w"), &truth) / norm;
    assert!(error > 100.0, "fedavg: relative error {error}");
}

// ---------------------------------------------------------------- privacy

#[test]
fn privacy_clips_each_delta_to_the_clip_norm() {
    let global = [t("a", &[2], &[1.0, 1.0]), t("b", &[2], &[0.0, 0.0])];
    let update = |a: [f64; 2], b: [f64; 2]| vec![t("a", &[2], &a), t("b", &[2], &b)];
    let privacy = |noise_multiplier| {
        Some(Privacy {
            clip: 1.0,
            noise_multiplier,
            seed: Some(3),
        })
    };
    // Deltas: (3, 0, 0, 4) has norm 5 → scaled by 1/5; (0, 0.5, 0, 0) has norm 0.5 →
    // kept. Mean delta (unweighted despite the counts): ((0.6, 0, 0, 0.8) + (0, 0.5,
    // 0, 0)) / 2 = (0.3, 0.25, 0, 0.4).
    let updates = [
        (update([4.0, 1.0], [0.0, 4.0]), 1),
        (update([1.0, 1.5], [0.0, 0.0]), 1000),
    ];
    let mut round = Round::new(&global);
    let aggregate = round.run(
        AggregatorConfig {
            privacy: privacy(0.0),
            ..config("fedavg")
        },
        &updates,
    );
    let a = values(&round.out(), "a");
    let b = values(&round.out(), "b");
    let expected = [1.3, 1.25, 0.0, 0.4];
    for (got, want) in a.iter().chain(&b).zip(expected) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    let norms: Vec<f64> = aggregate
        .clients
        .iter()
        .map(|c| c.delta_norm.unwrap())
        .collect();
    assert_eq!(norms, vec![5.0, 0.5]);
    let delta = [a[0] - 1.0, a[1] - 1.0, b[0], b[1]];
    assert!(
        distance(&delta, &[0.0; 4]) <= 1.0 + 1e-6,
        "the mean of clipped deltas"
    );

    // A single client far away moves the model by exactly the clip norm.
    let mut round = Round::new(&global);
    round.run(
        AggregatorConfig {
            privacy: privacy(0.0),
            ..config("fedavg")
        },
        &[(update([101.0, 1.0], [0.0, 0.0]), 1)],
    );
    assert_eq!(values(&round.out(), "a"), vec![2.0, 1.0]);

    // Noise: std noise_multiplier · clip / n, reproducible with a seed.
    let noisy = |seed| {
        let mut round = Round::new(&single(&[0.0; 20_000]));
        let aggregate = round.run(
            AggregatorConfig {
                privacy: Some(Privacy {
                    clip: 1.0,
                    noise_multiplier: 2.0,
                    seed: Some(seed),
                }),
                chunk_len: 1000,
                ..config("fedavg")
            },
            &[(single(&[0.0; 20_000]), 1), (single(&[0.0; 20_000]), 1)],
        );
        assert_eq!(aggregate.noise_std, Some(1.0));
        values(&round.out(), "w")
    };
    let first = noisy(9);
    assert_eq!(first, noisy(9));
    assert_ne!(first, noisy(10));
    let std = (first.iter().map(|v| v * v).sum::<f64>() / first.len() as f64).sqrt();
    assert!((std - 1.0).abs() < 0.03, "noise std {std}");
}

// ---------------------------------------------------------------- memory

#[test]
fn streaming_fedavg_holds_one_chunk_per_thread_beyond_the_accumulator() {
    const VALUES: usize = 200_000;
    const CHUNK: usize = 256;
    let global = [
        t("big", &[VALUES / 2], &[0.0; VALUES / 2]),
        t("other", &[VALUES / 2], &[0.0; VALUES / 2]),
    ];
    let update = |v: f64| {
        vec![
            t("big", &[VALUES / 2], &[v; VALUES / 2]),
            t("other", &[VALUES / 2], &[v; VALUES / 2]),
        ]
    };
    let updates: Vec<(Vec<T>, u64)> = (0..6).map(|i| (update(f64::from(i)), 1)).collect();
    let mut round = Round::new(&global);
    let aggregate = round.run(
        AggregatorConfig {
            fold_every: 2,
            chunk_len: CHUNK,
            ..config("fedavg")
        },
        &updates,
    );
    assert_eq!(values(&round.out(), "big"), vec![2.5; VALUES / 2]);
    assert_eq!(aggregate.accumulator_bytes, VALUES * 8);
    // Per thread: one chunk of f64 sums and one read buffer (sized for 8-byte values).
    let per_thread = CHUNK * 8 + CHUNK * 8;
    let bound = rayon::current_num_threads() * per_thread;
    assert!(
        aggregate.peak_buffer_bytes <= bound,
        "{} bytes held, bound {bound}",
        aggregate.peak_buffer_bytes
    );
    let one_tensor = VALUES / 2 * 4;
    assert!(bound < one_tensor, "the bound is below one client's tensor");
    // The first batch is read once (folded into a fresh accumulator, which can be
    // dropped if a culprit turns up); the two later batches are checked, then folded.
    assert_eq!(
        aggregate.update_bytes_read,
        (2 + 2 * 2 + 2 * 2) * VALUES as u64 * 4
    );
}

#[test]
fn robust_strategies_hold_a_bounded_slice_of_every_update() {
    const VALUES: usize = 50_000;
    let updates: Vec<(Vec<T>, u64)> = (0..5)
        .map(|i| (single(&[f64::from(i); VALUES]), 1))
        .collect();
    let mut round = Round::new(&single(&[0.0; VALUES]));
    let aggregate = round.run(
        AggregatorConfig {
            chunk_len: 512,
            ..config("fedmedian")
        },
        &updates,
    );
    assert_eq!(values(&round.out(), "w"), vec![2.0; VALUES]);
    // Per thread: 5 slices of 512 f64 values, a read buffer, a column, the results.
    let per_thread = 5 * 512 * 8 + 512 * 8 + 5 * 8 + 512 * 8;
    assert!(aggregate.peak_buffer_bytes <= rayon::current_num_threads() * per_thread);
    assert_eq!(aggregate.accumulator_bytes, 0);
}

#[test]
fn privacy_needs_a_finite_global_model() {
    let round = Round::new(&single(&[0.0, f64::NAN]));
    let err = Aggregator::new(
        GlobalModel::open(&round.global).unwrap(),
        AggregatorConfig {
            privacy: Some(Privacy {
                clip: 1.0,
                noise_multiplier: 1.0,
                seed: None,
            }),
            ..config("fedavg")
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().ends_with(
            "tensor 'w' holds NaN at index [1] (element 1); the global model must be finite"
        ),
        "{err}"
    );
}
