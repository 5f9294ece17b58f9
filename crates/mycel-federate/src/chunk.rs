//! Cutting the model into chunks, and the buffers a pass over them uses.
//!
//! Every pass walks the aggregated tensors chunk by chunk (in parallel, one chunk per
//! task) and reads each update's slice of the chunk with `pread` into a buffer from a
//! [`Meter`]. All transient memory of a pass comes from the meter, which records the
//! most it ever held at once: the memory bound of each strategy is checked by tests
//! against that number, not just promised.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::layout::ModelLayout;

/// A run of consecutive values within one aggregated tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Index of the tensor in the layout.
    pub tensor: usize,
    /// First value, counted within the tensor.
    pub start: usize,
    /// Number of values.
    pub len: usize,
    /// First value, counted among all aggregated values (the accumulator index).
    pub flat: usize,
}

/// The aggregated tensors cut into chunks of at most `chunk_len` values, in file order.
/// A chunk never spans two tensors: each tensor's bytes may lie at another offset, and
/// in another order, in each update file.
pub(crate) fn chunks(layout: &ModelLayout, chunk_len: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (tensor, spec) in layout.tensors().iter().enumerate() {
        if spec.float().is_none() {
            continue;
        }
        let mut start = 0;
        while start < spec.elements {
            let len = chunk_len.min(spec.elements - start);
            out.push(Chunk {
                tensor,
                start,
                len,
                flat: spec.flat_offset + start,
            });
            start += len;
        }
    }
    out
}

/// Counts what passes read and the buffers they hold.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    held: AtomicUsize,
    peak: AtomicUsize,
    update_bytes_read: AtomicU64,
}

impl Meter {
    /// A zeroed buffer of `len` values, counted until dropped.
    pub fn buffer<T: Copy + Default>(&self, len: usize) -> Tracked<'_, T> {
        let bytes = len * size_of::<T>();
        let now = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Tracked {
            values: vec![T::default(); len],
            bytes,
            meter: self,
        }
    }

    /// Counts `bytes` read from update files.
    pub fn read(&self, bytes: usize) {
        self.update_bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The most bytes of buffers held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bytes read from update files so far.
    pub fn update_bytes_read(&self) -> u64 {
        self.update_bytes_read.load(Ordering::Relaxed)
    }
}

/// A buffer whose size counts in its [`Meter`] while it lives.
pub(crate) struct Tracked<'m, T> {
    values: Vec<T>,
    bytes: usize,
    meter: &'m Meter,
}

impl<T> Deref for Tracked<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.values
    }
}

impl<T> DerefMut for Tracked<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.values
    }
}

impl<T> Drop for Tracked<'_, T> {
    fn drop(&mut self) {
        self.meter.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
