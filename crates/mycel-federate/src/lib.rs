//! Federated learning's aggregation core: checks client updates against the global
//! model and combines them into the next global model, streaming from safetensors
//! files on disk. Pure computation over files it is handed: no network, no clock, no
//! knowledge of rounds, nodes or the store; it depends on no other mycel crate.
//!
//! ```no_run
//! use std::path::Path;
//! use mycel_federate::{Aggregator, AggregatorConfig, FederateError, GlobalModel};
//!
//! # fn main() -> Result<(), FederateError> {
//! let global = GlobalModel::open(Path::new("round-3/global.safetensors"))?;
//! let strategy = "trimmed-mean:beta=0.1".parse()?;
//! let mut aggregator = Aggregator::new(global, AggregatorConfig::new(strategy))?;
//! for (client, path, examples) in [("tokyo", "round-3/tokyo.safetensors", 1200)] {
//!     match aggregator.add_update(client, Path::new(path), examples) {
//!         Ok(()) => {}
//!         Err(FederateError::Rejected { client, reason }) => eprintln!("{client}: {reason}"),
//!         Err(e) => return Err(e),
//!     }
//! }
//! let aggregate = aggregator.finish(Path::new("round-4/global.safetensors"))?;
//! println!("{} updates in the aggregate", aggregate.included);
//! # Ok(())
//! # }
//! ```
//!
//! # Updates
//!
//! An update is a client's full weights after local training (not a delta), as a
//! safetensors file, with the number of examples it trained on. It is accepted only
//! if its tensor names equal the global model's (missing and unexpected names are
//! listed), every tensor has the global model's dtype and shape, every value is
//! finite (the first NaN or infinity is named by tensor and index), and its example
//! count is positive. A rejection ([`Rejection`]) is the client's problem and leaves
//! the round going; it never contributes to the aggregate.
//!
//! Float tensors (F16, BF16, F32, F64) are aggregated; integer and boolean tensors
//! (counters such as BatchNorm's `num_batches_tracked`) are carried over from the
//! global model unchanged. The aggregate has the global model's header: the same
//! names, dtypes, shapes, byte layout and `__metadata__`.
//!
//! # Strategies and their memory
//!
//! Every pass cuts the model into chunks of `chunk_len` values
//! ([`AggregatorConfig::chunk_len`], 32 Ki by default) and works on chunks in
//! parallel (rayon's global pool, or the pool the caller runs it in); each chunk of
//! each update is read with `pread` into a per-thread buffer and never more of a file
//! than that. With `T` threads, `n` accepted updates and `P` aggregated values:
//!
//! | strategy | result | memory beyond the chunk buffers | files open |
//! | --- | --- | --- | --- |
//! | `fedavg` | mean weighted by example counts | `8·P` bytes (f64 accumulator), once `fold_every` updates have arrived; none with fewer | ≤ `fold_every` |
//! | `fedprox:mu=M` | as fedavg; `mu` goes to the clients | as fedavg | ≤ `fold_every` |
//! | `fedmedian` | coordinate-wise median | none | `n` |
//! | `trimmed-mean:beta=B` | coordinate-wise mean without the `⌊B·n⌋` largest and smallest | none | `n` |
//! | `krum:f=F,m=M` | unweighted mean of the `M` updates with the lowest Krum scores | an `n × n` distance matrix per group of chunks (≤ 64 MiB in all) | `n` |
//!
//! Chunk buffers: for the mean strategies, per thread, one chunk of sums (f64) and
//! one read buffer, `16 · chunk_len` bytes (256 KiB by default) plus `8 · chunk_len`
//! for the global model's values with differential privacy: one update's slice of one
//! chunk at a time, never a whole tensor. The median, trimmed mean and Krum need
//! every update's value of a coordinate at once, so per thread they hold one chunk
//! of every update, sized to at most 8 MiB (`n · chunk · 8` bytes), plus a chunk of
//! results. [`Aggregate::peak_buffer_bytes`] reports what was held.
//!
//! FedAvg streams: an update is read when it is folded into the accumulator, which
//! adds the `fold_every` waiting updates chunk by chunk (each accumulator slice stays
//! in cache while the updates' slices stream past it) and closes their files; the
//! last batch goes straight from the files to the output. The robust strategies
//! only keep each update's open file until [`Aggregator::finish`], then read them all
//! chunk by chunk. They ignore example counts, which a byzantine client could
//! inflate. Krum needs `n ≥ 2f + 3` updates and `m ≤ n − f`.
//!
//! # Precision
//!
//! Values are widened to f64 and summed in f64; the aggregate is rounded once to
//! each tensor's dtype. A count times an f32 value is exact in f64, so each update
//! adds one rounding of about 1e-16 relative: even over thousands of updates the
//! error stays far below f32's resolution (6e-8), and the aggregate is the exact
//! weighted mean rounded once to f32 but for rare ties. An f32 accumulator would add
//! up to 6e-8 per update (Flower's numpy FedAvg sums in the input's float32; the
//! benchmark measures its distance from the exact mean). The f64 sums cost no speed
//! because a chunk's sums stay in cache; only the folded accumulator, needed past
//! `fold_every` updates, costs 8 bytes per value.
//!
//! # NaN and infinity
//!
//! With differential privacy every update is read once when added (the clip needs
//! its norm). Otherwise its values are first read by the pass that aggregates it,
//! which checks its sums: a sum of finite f32, f16 or bf16 values times counts cannot
//! overflow f64, so a non-finite sum means a non-finite input. The pass then stops,
//! the culprit is found, rejected with its first non-finite value named, and the
//! pass runs again without it. A pass into an accumulator that already holds earlier
//! updates cannot be run again, so the updates it adds are read and checked first.
//!
//! # Differential privacy
//!
//! See [`Privacy`]: DP-FedAvg's clipping of each delta to L2 norm `clip` and
//! Gaussian noise of std `noise_multiplier · clip / n` on the unweighted mean of the
//! clipped deltas, with fedavg and fedprox.
#![warn(missing_docs)]

mod aggregator;
mod chunk;
mod error;
mod kernel;
mod layout;
mod mean;
mod model;
mod output;
mod privacy;
mod robust;
mod strategy;

pub use aggregator::{
    Aggregate, Aggregator, AggregatorConfig, ClientOutcome, ClientStatus, DEFAULT_CHUNK_LEN,
    DEFAULT_FOLD_EVERY,
};
pub use error::{FederateError, NonFinite, Rejection, TensorMismatch};
pub use layout::{FloatType, ModelLayout, TensorRole, TensorSpec};
pub use model::GlobalModel;
pub use privacy::Privacy;
pub use strategy::Strategy;

#[cfg(test)]
mod tests;
