//! The weighted mean (FedAvg, FedProx, DP-FedAvg, and Multi-Krum's last step) as two
//! passes over chunks:
//!
//! - [`fold`] adds a batch of updates into the model-wide f64 accumulator:
//!   `acc += Σ wᵢ·uᵢ`, chunk by chunk. Per chunk the accumulator's slice (a few
//!   hundred KiB) stays in the CPU cache while every update of the batch is read into
//!   one reused buffer and added to it, so the accumulator crosses memory once per
//!   batch, not once per update.
//! - [`finish`] does the same into a per-chunk buffer that starts from the
//!   accumulator's slice (or zero when nothing was folded), divides, and writes the
//!   chunk of the aggregate: the last batch never touches the accumulator.
//!
//! Both check the sums instead of every input value: an f32, f16 or bf16 value times
//! a count below 2^64 cannot overflow f64, so a sum is finite exactly when every
//! value added into it was. A non-finite sum stops the pass with the chunk's
//! position; the caller finds the culprit and runs the pass again without it.

use rayon::prelude::*;

use crate::chunk::{Chunk, Meter};
use crate::error::FederateError;
use crate::kernel;
use crate::layout::ModelLayout;
use crate::model::{GlobalModel, Update};
use crate::output::Output;
use crate::privacy::Noise;

/// Why a pass over chunks stopped.
#[derive(Debug)]
pub(crate) enum PassError {
    /// A sum or value in this chunk is not finite.
    NonFinite(Chunk),
    /// Reading or writing failed.
    Failed(FederateError),
}

impl From<FederateError> for PassError {
    fn from(e: FederateError) -> Self {
        PassError::Failed(e)
    }
}

/// What a pass reads: the layout, its chunks, and where its buffers come from.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub layout: &'a ModelLayout,
    pub chunks: &'a [Chunk],
    pub chunk_len: usize,
    pub meter: &'a Meter,
}

/// How the sums of a chunk become the aggregate's values.
pub(crate) enum Finalize<'a> {
    /// `Σ wᵢ·uᵢ / total_weight`.
    Mean { total_weight: f64 },
    /// DP-FedAvg: the sums are `Σ sᵢ·uᵢ` for clip scales `sᵢ`, so the mean clipped
    /// delta is `(Σ sᵢ·uᵢ − (Σ sᵢ)·g) / n`, and the aggregate is `g` plus that plus
    /// noise. Accumulating `sᵢ·uᵢ` instead of `sᵢ·(uᵢ − g)` keeps the global model out
    /// of every fold; in f64 the subtraction loses nothing an f32 result would show.
    Private {
        global: &'a GlobalModel,
        clients: usize,
        scale_sum: f64,
        noise: &'a Noise,
    },
}

/// `acc += Σ wᵢ·uᵢ` over `updates`; `fresh` says `acc` is all zeros, so it is only
/// written, never read (a fresh accumulator's pages are then touched once). On
/// [`PassError::NonFinite`] some chunks of the accumulator hold partial sums.
pub(crate) fn fold(
    pass: Pass<'_>,
    acc: &mut [f64],
    fresh: bool,
    updates: &[&Update],
) -> Result<(), PassError> {
    let mut slices = Vec::with_capacity(pass.chunks.len());
    let mut rest = acc;
    for chunk in pass.chunks {
        let (head, tail) = rest.split_at_mut(chunk.len);
        slices.push(head);
        rest = tail;
    }
    pass.chunks
        .par_iter()
        .zip(slices.into_par_iter())
        .try_for_each_init(
            || FoldBuffers {
                sums: pass.meter.buffer(pass.chunk_len),
                bytes: pass.meter.buffer(pass.chunk_len * 8),
            },
            |buffers, (chunk, acc)| {
                // The sums of a chunk live in a buffer that stays in cache while the
                // updates stream through; the accumulator is read and written once.
                let sums = &mut buffers.sums[..chunk.len];
                let from = if fresh { None } else { Some(&*acc) };
                sum_chunk(pass, chunk, from, updates, sums, &mut buffers.bytes)?;
                acc.copy_from_slice(sums);
                Ok(())
            },
        )
}

struct FoldBuffers<'m> {
    sums: crate::chunk::Tracked<'m, f64>,
    bytes: crate::chunk::Tracked<'m, u8>,
}

/// Writes the aggregate's values: for each chunk, the accumulator's slice (if any)
/// plus `Σ wᵢ·uᵢ` over `updates`, finalized. Leaves `acc` as it was, so the pass can
/// run again after a rejection.
pub(crate) fn finish(
    pass: Pass<'_>,
    acc: Option<&[f64]>,
    updates: &[&Update],
    finalize: &Finalize<'_>,
    output: &Output,
) -> Result<(), PassError> {
    let private = matches!(finalize, Finalize::Private { .. });
    pass.chunks.par_iter().enumerate().try_for_each_init(
        || FinishBuffers {
            sums: pass.meter.buffer(pass.chunk_len),
            bytes: pass.meter.buffer(pass.chunk_len * 8),
            global: pass.meter.buffer(if private { pass.chunk_len } else { 0 }),
        },
        |buffers, (index, chunk)| {
            let Some(ty) = pass.layout.tensors()[chunk.tensor].float() else {
                return Ok(());
            };
            let sums = &mut buffers.sums[..chunk.len];
            let from = acc.map(|acc| &acc[chunk.flat..chunk.flat + chunk.len]);
            sum_chunk(pass, chunk, from, updates, sums, &mut buffers.bytes)?;
            match finalize {
                Finalize::Mean { total_weight } => {
                    for s in sums.iter_mut() {
                        *s /= total_weight;
                    }
                }
                Finalize::Private {
                    global,
                    clients,
                    scale_sum,
                    noise,
                } => {
                    let global_bytes =
                        global.read_chunk(chunk, &mut buffers.bytes).map_err(|e| {
                            FederateError::Global {
                                path: global.path().to_path_buf(),
                                reason: format!("cannot read: {e}"),
                            }
                        })?;
                    let g = &mut buffers.global[..chunk.len];
                    kernel::decode(g, global_bytes, ty);
                    let n = *clients as f64;
                    for (s, g) in sums.iter_mut().zip(g.iter()) {
                        *s = g + (*s - scale_sum * g) / n;
                    }
                    noise.add(index, sums);
                }
            }
            let out = &mut buffers.bytes[..chunk.len * ty.size()];
            kernel::encode(sums, out, ty);
            output.write_chunk(pass.layout, chunk, out)?;
            Ok(())
        },
    )
}

struct FinishBuffers<'m> {
    sums: crate::chunk::Tracked<'m, f64>,
    bytes: crate::chunk::Tracked<'m, u8>,
    global: crate::chunk::Tracked<'m, f64>,
}

/// `sums = from (or 0) + Σ wᵢ·uᵢ` for one chunk. Reads the chunk of each update into
/// `bytes`, one update at a time, and adds it with the update's weight: only one
/// update's slice is ever held. Fails with [`PassError::NonFinite`] if a sum is not
/// finite.
fn sum_chunk(
    pass: Pass<'_>,
    chunk: &Chunk,
    from: Option<&[f64]>,
    updates: &[&Update],
    sums: &mut [f64],
    bytes: &mut [u8],
) -> Result<(), PassError> {
    match from {
        Some(from) => sums.copy_from_slice(from),
        None => sums.fill(0.0),
    }
    let Some(ty) = pass.layout.tensors()[chunk.tensor].float() else {
        return Ok(());
    };
    for update in updates {
        let data = update.read_chunk(pass.layout, chunk, bytes, pass.meter)?;
        kernel::add_weighted(sums, data, ty, update.weight);
    }
    if kernel::all_finite(sums) {
        Ok(())
    } else {
        Err(PassError::NonFinite(*chunk))
    }
}
