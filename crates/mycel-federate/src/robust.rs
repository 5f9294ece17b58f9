//! The byzantine-robust strategies: coordinate-wise median and trimmed mean, and
//! Krum's distances and selection.
//!
//! These need every update's value of a coordinate at once, so a pass reads one
//! chunk of *every* update (n × chunk values, held as f64) and computes that chunk
//! of the result before moving on; the chunk is sized so the n slices fit a fixed
//! budget. The per-coordinate rules and the selection are pure functions over
//! slices, tested on their own.

use rayon::prelude::*;

use crate::chunk::{Chunk, Meter, Tracked};
use crate::kernel;
use crate::mean::{Pass, PassError};
use crate::model::Update;
use crate::output::Output;

/// Bytes of update values one thread holds in a coordinate-wise or Krum pass.
pub(crate) const VALUES_PER_THREAD_BYTES: usize = 8 << 20;

/// Bytes of partial distance matrices a Krum pass keeps before adding them up.
const DISTANCE_MATRICES_BYTES: usize = 64 << 20;

/// The chunk length for a pass over `n` updates at once: as long as the
/// per-thread budget allows, at most `chunk_len`.
pub(crate) fn chunk_len_for(n: usize, chunk_len: usize) -> usize {
    (VALUES_PER_THREAD_BYTES / (8 * n.max(1))).clamp(1, chunk_len)
}

/// The per-coordinate rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Rule {
    Median,
    /// Drop `trim` values at each end.
    TrimmedMean {
        trim: usize,
    },
}

impl Rule {
    /// The rule applied to the values of one coordinate (reordered in place).
    pub fn apply(self, values: &mut [f64]) -> f64 {
        match self {
            Rule::Median => median(values),
            Rule::TrimmedMean { trim } => trimmed_mean(values, trim),
        }
    }
}

/// The median; for an even count, the mean of the two middle values.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    let mid = n / 2;
    let (lower, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let lower = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// The mean of the values left after dropping the `trim` smallest and `trim` largest.
pub(crate) fn trimmed_mean(values: &mut [f64], trim: usize) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let kept = &values[trim..values.len() - trim];
    kept.iter().sum::<f64>() / kept.len() as f64
}

/// Writes the coordinate-wise `rule` over `updates` to `output`.
pub(crate) fn coordinatewise(
    pass: Pass<'_>,
    updates: &[&Update],
    rule: Rule,
    output: &Output,
) -> Result<(), PassError> {
    let n = updates.len();
    pass.chunks.par_iter().try_for_each_init(
        || Buffers::new(pass.meter, n, pass.chunk_len),
        |buffers, chunk| {
            let Some(ty) = load(pass, chunk, updates, buffers)? else {
                return Ok(());
            };
            let len = chunk.len;
            for k in 0..len {
                for (j, slot) in buffers.column.iter_mut().enumerate() {
                    *slot = buffers.values[j * len + k];
                }
                buffers.result[k] = rule.apply(&mut buffers.column);
            }
            let out = &mut buffers.bytes[..len * ty.size()];
            kernel::encode(&buffers.result[..len], out, ty);
            output.write_chunk(pass.layout, chunk, out)?;
            Ok(())
        },
    )
}

/// The n × n matrix (row-major) of squared L2 distances between the updates.
///
/// Chunks are split into a fixed number of consecutive groups; each group's partial
/// matrix is summed in chunk order and the groups are added in order, so the result
/// does not depend on how threads share the work.
pub(crate) fn krum_distances(pass: Pass<'_>, updates: &[&Update]) -> Result<Vec<f64>, PassError> {
    let n = updates.len();
    let groups = (DISTANCE_MATRICES_BYTES / (8 * n * n).max(1))
        .clamp(1, 64)
        .min(pass.chunks.len().max(1));
    let group_len = pass.chunks.len().div_ceil(groups).max(1);
    let partials = pass
        .chunks
        .par_chunks(group_len)
        .map_init(
            || Buffers::new(pass.meter, n, pass.chunk_len),
            |buffers, group| {
                let mut matrix = vec![0.0; n * n];
                for chunk in group {
                    if load(pass, chunk, updates, buffers)?.is_none() {
                        continue;
                    }
                    let len = chunk.len;
                    for i in 0..n {
                        for j in i + 1..n {
                            let a = &buffers.values[i * len..(i + 1) * len];
                            let b = &buffers.values[j * len..(j + 1) * len];
                            matrix[i * n + j] += kernel::squared_distance(a, b);
                        }
                    }
                }
                Ok::<_, PassError>(matrix)
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let mut distances = vec![0.0; n * n];
    for partial in partials {
        for (d, p) in distances.iter_mut().zip(partial) {
            *d += p;
        }
    }
    for i in 0..n {
        for j in 0..i {
            distances[i * n + j] = distances[j * n + i];
        }
    }
    Ok(distances)
}

/// Krum's scores and choice.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KrumChoice {
    /// Each update's score: the sum of the squared distances to its
    /// `n − byzantine − 2` nearest other updates.
    pub scores: Vec<f64>,
    /// The `keep` updates with the lowest scores (ties to the earlier update), in
    /// update order.
    pub selected: Vec<usize>,
}

/// Krum's selection over a distance matrix of `n` updates, `n ≥ 2·byzantine + 3`.
pub(crate) fn krum_select(
    distances: &[f64],
    n: usize,
    byzantine: usize,
    keep: usize,
) -> KrumChoice {
    let neighbours = n.saturating_sub(byzantine + 2).max(1);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .map(|j| distances[i * n + j])
                .collect();
            row.sort_unstable_by(f64::total_cmp);
            row.iter().take(neighbours).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut selected: Vec<usize> = order.into_iter().take(keep).collect();
    selected.sort_unstable();
    KrumChoice { scores, selected }
}

struct Buffers<'m> {
    /// One chunk of every update, update after update.
    values: Tracked<'m, f64>,
    bytes: Tracked<'m, u8>,
    column: Tracked<'m, f64>,
    result: Tracked<'m, f64>,
}

impl<'m> Buffers<'m> {
    fn new(meter: &'m Meter, n: usize, chunk_len: usize) -> Self {
        Buffers {
            values: meter.buffer(n * chunk_len),
            bytes: meter.buffer(chunk_len * 8),
            column: meter.buffer(n),
            result: meter.buffer(chunk_len),
        }
    }
}

/// Reads `chunk` of every update into `buffers.values` as f64, checking each value.
/// `None` for a chunk of a carried tensor (there are none; chunks cover aggregated
/// tensors only, but the type says so).
fn load(
    pass: Pass<'_>,
    chunk: &Chunk,
    updates: &[&Update],
    buffers: &mut Buffers<'_>,
) -> Result<Option<crate::layout::FloatType>, PassError> {
    let Some(ty) = pass.layout.tensors()[chunk.tensor].float() else {
        return Ok(None);
    };
    let len = chunk.len;
    for (j, update) in updates.iter().enumerate() {
        let bytes = update.read_chunk(pass.layout, chunk, &mut buffers.bytes, pass.meter)?;
        let values = &mut buffers.values[j * len..(j + 1) * len];
        kernel::decode(values, bytes, ty);
        if !kernel::all_finite(values) {
            return Err(PassError::NonFinite(*chunk));
        }
    }
    Ok(Some(ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert_eq!(median(&mut [-1.0, 1000.0, 0.0, 1.0, -1000.0]), 0.0);
    }

    #[test]
    fn trimmed_mean_drops_both_ends() {
        // Sorted: -100, 1, 2, 3, 100; dropping one at each end leaves 1, 2, 3.
        assert_eq!(trimmed_mean(&mut [100.0, 2.0, -100.0, 3.0, 1.0], 1), 2.0);
        assert_eq!(trimmed_mean(&mut [1.0, 2.0, 6.0], 0), 3.0);
    }

    #[test]
    fn krum_picks_the_update_closest_to_its_neighbours() {
        // Points on a line: 0, 1, 2, 3 and an outlier at 100; f = 1 → 5 − 1 − 2 = 2
        // neighbours. Scores: 0: 1+4=5, 1: 1+1=2, 2: 1+1=2, 3: 1+4=5, 100: 97²+98².
        let points = [0.0f64, 1.0, 2.0, 3.0, 100.0];
        let n = points.len();
        let distances: Vec<f64> = (0..n * n)
            .map(|k| (points[k / n] - points[k % n]).powi(2))
            .collect();
        let choice = krum_select(&distances, n, 1, 1);
        assert_eq!(
            choice.scores,
            vec![5.0, 2.0, 2.0, 5.0, 97.0 * 97.0 + 98.0 * 98.0]
        );
        assert_eq!(choice.selected, vec![1]);
        let multi = krum_select(&distances, n, 1, 3);
        assert_eq!(multi.selected, vec![0, 1, 2]);
    }
}
