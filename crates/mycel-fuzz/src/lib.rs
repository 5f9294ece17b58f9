//! What each fuzz target does with one input: feed arbitrary bytes to a parser that
//! meets untrusted input, and panic only where mycel would be wrong (a crash, a hang,
//! or a property broken on what the parser accepted).
//!
//! `fuzz/` runs these under libFuzzer (`bench/fuzz/run.sh`); `tests/regressions.rs`
//! replays every input kept in `fuzz/regressions/<target>/`, so a crash once found stays
//! fixed without a fuzzer in CI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use mycel_core::dependency::{self, VersionLookup};
use mycel_core::manifest::DependencyRef;
use mycel_core::{frame, oip, BlobHash, ComponentPath, FileEntry, FileMode, Manifest};
use mycel_core::{ResolvedDependency, Version, VersionId};
use mycel_federate::{Aggregator, AggregatorConfig, FederateError, GlobalModel, Strategy};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory its corpus and regressions live in) and body.
pub const TARGETS: &[(&str, Target)] = &[
    ("oip_request", oip_request),
    ("frame", frame),
    ("manifest", manifest),
    ("safetensors_update", safetensors_update),
    ("dependencies", dependencies),
];

/// An Open Inference Protocol request body, JSON or with the binary extension: the
/// first two bytes are `Inference-Header-Content-Length` (`0xffff`: absent). What is
/// accepted holds tensors that match their shapes, and answers can be encoded from it.
pub fn oip_request(data: &[u8]) {
    let Some((length, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let length = u16::from_le_bytes(*length);
    let json_len = (length != u16::MAX).then_some(usize::from(length));
    let Ok(request) = oip::parse_request(Bytes::copy_from_slice(body), json_len) else {
        return;
    };
    for tensor in &request.inputs {
        if let Err(e) = tensor.check() {
            panic!("accepted a tensor that does not match its shape: {e}");
        }
    }
    // The inputs echoed back as outputs, as a model that returns them would.
    let _ = oip::encode_response("m", "1", request.id.as_deref(), &request.inputs, &request);
}

/// A worker-protocol frame, as an agent's data plane reads one from the network. What
/// is accepted encodes to a frame that decodes to the same thing.
pub fn frame(data: &[u8]) {
    let Ok(decoded) = frame::decode_from(Bytes::copy_from_slice(data)) else {
        return;
    };
    let encoded = match frame::encode_to_vec(&decoded) {
        Ok(encoded) => encoded,
        Err(e) => panic!("a decoded frame does not encode: {e}"),
    };
    match frame::decode_from(Bytes::from(encoded)) {
        Ok(again) => assert!(again == decoded, "a frame changed on its way round"),
        Err(e) => panic!("an encoded frame does not decode: {e}"),
    }
}

/// A `mycel.toml`.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse(text);
    }
}

/// A node's federated update, a safetensors file, offered to an aggregation of a small
/// global model. A bad update is rejected and leaves the round usable: it must never
/// poison the aggregator, which would fail every other node's round.
pub fn safetensors_update(data: &[u8]) {
    let scratch = scratch();
    let update = scratch.join(format!("update-{}", std::process::id()));
    if std::fs::write(&update, data).is_err() {
        return;
    }
    // The same bytes as a global model: its header is read the same way.
    let _ = GlobalModel::open(&update);
    let global = match GlobalModel::open(&global_model()) {
        Ok(global) => global,
        Err(e) => panic!("the fixed global model does not open: {e}"),
    };
    let mut aggregator = match Aggregator::new(global, AggregatorConfig::new(Strategy::FedAvg)) {
        Ok(aggregator) => aggregator,
        Err(e) => panic!("cannot aggregate the fixed global model: {e}"),
    };
    match aggregator.add_update("node", &update, 1) {
        Ok(()) => {
            let out = scratch.join(format!("aggregate-{}", std::process::id()));
            if let Err(e) = aggregator.finish(&out) {
                panic!("an accepted update failed its round: {e}");
            }
        }
        Err(FederateError::Rejected { .. }) => {}
        Err(e) => panic!("a node's update poisoned the round: {e}"),
    }
}

/// Pushes of versions with `[dependencies]`, read from the bytes five at a time: the
/// component pushed, then what it asks of each of four components (nothing, latest, a
/// number, or another version's id). A set top bit records the dependencies without
/// checking them, as a registry written by an older or broken control plane might.
/// Whatever resolves forms a tree with one version of each component and not the
/// component itself.
pub fn dependencies(data: &[u8]) {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    let mut registry = Registry::default();
    for push in data.chunks(5) {
        let Some((&head, asks)) = push.split_first() else {
            continue;
        };
        let component = NAMES[usize::from(head % 4)];
        let mut wanted = BTreeMap::new();
        for (name, &ask) in NAMES.iter().zip(asks) {
            let reference = match ask % 4 {
                0 => continue,
                1 => DependencyRef::Latest,
                2 => DependencyRef::Seq(u64::from(ask / 4)),
                _ => match registry.nth(usize::from(ask / 4)) {
                    Some(version) => DependencyRef::Id(version.id),
                    None => continue,
                },
            };
            wanted.insert((*name).to_owned(), reference);
        }
        let recorded = if head & 0x80 != 0 {
            registry.unchecked(&wanted)
        } else {
            let Ok(direct) = dependency::resolve(component, &wanted, &registry.versions[..]) else {
                continue;
            };
            check_tree(component, &direct, &registry);
            direct
        };
        registry.push(component, recorded);
    }
}

/// What a resolution that succeeded must hold.
fn check_tree(component: &str, direct: &[ResolvedDependency], registry: &Registry) {
    let tree = match dependency::tree(component, direct, &registry.versions[..]) {
        Ok(tree) => tree,
        Err(e) => panic!("resolved dependencies do not form a tree: {e}"),
    };
    let mut names: Vec<&str> = tree.iter().map(|d| d.component.as_str()).collect();
    assert!(!names.contains(&component), "{component} depends on itself");
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert!(
        names.len() == count,
        "two versions of a component in a tree"
    );
}

/// An in-memory registry, versions in the order they were pushed.
#[derive(Default)]
struct Registry {
    versions: Vec<Version>,
}

impl Registry {
    fn nth(&self, n: usize) -> Option<&Version> {
        self.versions.get(n % self.versions.len().max(1))
    }

    /// `wanted`, each mapped to a version if one matches, without any check.
    fn unchecked(&self, wanted: &BTreeMap<String, DependencyRef>) -> Vec<ResolvedDependency> {
        wanted
            .iter()
            .filter_map(|(name, reference)| {
                let versions = &self.versions[..];
                let found = match reference {
                    DependencyRef::Latest => versions.newest(name),
                    DependencyRef::Seq(seq) => versions.by_seq(name, *seq),
                    DependencyRef::Id(id) => versions.by_id(id),
                };
                found.ok().flatten().map(|v| ResolvedDependency::on(&v))
            })
            .collect()
    }

    fn push(&mut self, component: &str, dependencies: Vec<ResolvedDependency>) {
        let seq = self
            .versions
            .iter()
            .filter(|v| v.component == component)
            .count() as u64
            + 1;
        let Ok(path) = ComponentPath::new("model.py") else {
            return;
        };
        let files = vec![FileEntry {
            path,
            hash: BlobHash::of(format!("{component}@{seq}").as_bytes()),
            size: 1,
            mode: FileMode::Regular,
        }];
        self.versions.push(Version {
            id: VersionId::with_dependencies(&files, &dependencies),
            component: component.to_owned(),
            seq,
            files,
            total_bytes: 1,
            created_at_ms: 0,
            pushed_by: "fuzz".to_owned(),
            description: String::new(),
            dependencies,
        });
    }
}

/// A directory for this process's files, kept for its life.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("no temporary directory: {e}"),
    })
    .path()
}

/// A global model of two F32 weights and an I64 step counter (carried, not averaged).
fn global_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"step":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&1.5f32.to_le_bytes());
        file.extend_from_slice(&(-2.0f32).to_le_bytes());
        file.extend_from_slice(&7i64.to_le_bytes());
        let path = scratch().join("global.safetensors");
        if let Err(e) = std::fs::write(&path, file) {
            panic!("cannot write the global model: {e}");
        }
        path
    })
    .clone()
}
