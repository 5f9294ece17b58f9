//! The global model's layout (tensor names, dtypes, shapes) read from a safetensors
//! header, and positional reads of tensor data from a safetensors file.
//!
//! Only the header is parsed up front; tensor data is read later, chunk by chunk, with
//! `pread` into buffers the caller owns, so how much of an update is in memory is
//! decided here, not by the page cache. No file is memory-mapped: a map needs
//! `unsafe` (the workspace forbids it) and is undefined behaviour if the file is
//! truncated under it. Reading ten 100 MB updates chunk by chunk from a warm page
//! cache, a map was 10–25 % faster than `pread` on the benchmark machine (the copy
//! into the buffer is the difference); with `pread` FedAvg still runs at about 70 %
//! of memcpy bandwidth (bench/README.md).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use safetensors::tensor::Metadata;
use safetensors::Dtype;

/// Longest header accepted, as in the safetensors crate: a header is a JSON index of
/// tensor names, and a larger one is a broken or hostile file.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bytes of the little-endian header length that starts every safetensors file.
const LEN_PREFIX: u64 = 8;

/// The float formats that are aggregated. Every value is widened to f64 for
/// arithmetic and rounded once to the tensor's own format on output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl FloatType {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            FloatType::F16 | FloatType::BF16 => 2,
            FloatType::F32 => 4,
            FloatType::F64 => 8,
        }
    }
}

/// How aggregation treats a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// A float tensor: aggregated by the strategy.
    Aggregated(FloatType),
    /// An integer or boolean tensor (a counter such as BatchNorm's
    /// `num_batches_tracked`): not a trained parameter, so the aggregate carries the
    /// global model's value unchanged. Updates must still match its dtype and shape.
    Carried,
}

/// One tensor of the global model.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Number of values (the product of the shape).
    pub elements: usize,
    /// Aggregated or carried.
    pub role: TensorRole,
    /// Where the tensor's bytes start in the global file's data section.
    pub(crate) data_offset: u64,
    /// Where the tensor's values start among all aggregated values, in file order (the
    /// index into a model-wide accumulator); 0 for carried tensors.
    pub(crate) flat_offset: usize,
}

impl TensorSpec {
    /// Bytes of this tensor's data.
    pub fn byte_len(&self) -> u64 {
        (self.elements * self.dtype.bitsize() / 8) as u64
    }

    /// The aggregated float type, or `None` for a carried tensor.
    pub fn float(&self) -> Option<FloatType> {
        match self.role {
            TensorRole::Aggregated(ty) => Some(ty),
            TensorRole::Carried => None,
        }
    }
}

/// The tensors of a global model, in the order of their data in its file.
#[derive(Clone, Debug)]
pub struct ModelLayout {
    tensors: Vec<TensorSpec>,
    by_name: HashMap<String, usize>,
    /// The global file's `__metadata__`, copied into the aggregate (frameworks record
    /// their format there, e.g. `format = pt`).
    metadata: Option<HashMap<String, String>>,
    aggregated_values: usize,
}

impl ModelLayout {
    /// The layout of a parsed safetensors header. Fails on a dtype that is neither
    /// a float type aggregation reads nor an integer or boolean type it carries.
    pub(crate) fn from_metadata(metadata: &Metadata) -> Result<Self, String> {
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        let mut flat = 0;
        for name in metadata.offset_keys() {
            let Some(info) = metadata.info(&name) else {
                continue;
            };
            let role = match info.dtype {
                Dtype::F16 => TensorRole::Aggregated(FloatType::F16),
                Dtype::BF16 => TensorRole::Aggregated(FloatType::BF16),
                Dtype::F32 => TensorRole::Aggregated(FloatType::F32),
                Dtype::F64 => TensorRole::Aggregated(FloatType::F64),
                Dtype::BOOL
                | Dtype::U8
                | Dtype::I8
                | Dtype::I16
                | Dtype::U16
                | Dtype::I32
                | Dtype::U32
                | Dtype::I64
                | Dtype::U64 => TensorRole::Carried,
                other => {
                    return Err(format!(
                        "tensor '{name}' has dtype {other}, which aggregation does not handle; \
                         expected F16, BF16, F32 or F64 (aggregated) or an integer or BOOL \
                         dtype (carried over unchanged)"
                    ))
                }
            };
            let elements = info.shape.iter().product();
            let spec = TensorSpec {
                name: name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                elements,
                role,
                data_offset: info.data_offsets.0 as u64,
                flat_offset: if matches!(role, TensorRole::Aggregated(_)) {
                    flat
                } else {
                    0
                },
            };
            if let TensorRole::Aggregated(_) = role {
                flat += elements;
            }
            by_name.insert(name, tensors.len());
            tensors.push(spec);
        }
        Ok(ModelLayout {
            tensors,
            by_name,
            metadata: metadata.metadata().clone(),
            aggregated_values: flat,
        })
    }

    /// The tensors, in the order of their data in the global file.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// The index of the tensor called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// How many values are aggregated: the length of a model-wide accumulator.
    pub fn aggregated_values(&self) -> usize {
        self.aggregated_values
    }

    pub(crate) fn metadata(&self) -> &Option<HashMap<String, String>> {
        &self.metadata
    }
}

/// An open safetensors file whose header was read: where each tensor's data lies.
#[derive(Debug)]
pub(crate) struct TensorFile {
    pub file: File,
    /// File offset of the data section.
    pub data_start: u64,
    pub metadata: Metadata,
}

impl TensorFile {
    /// Reads and checks the header of `file`: its length prefix, its JSON, that the
    /// tensors' byte ranges tile the data section, and that the file is exactly as
    /// long as the header says. The message says what is wrong for a client to fix.
    pub fn open(file: File) -> Result<Self, String> {
        let len = file
            .metadata()
            .map_err(|e| format!("cannot stat the file: {e}"))?
            .len();
        if len < LEN_PREFIX {
            return Err(format!(
                "the file is {len} bytes; a safetensors file starts with an 8-byte header length"
            ));
        }
        let mut prefix = [0u8; LEN_PREFIX as usize];
        file.read_exact_at(&mut prefix, 0)
            .map_err(|e| format!("cannot read the header length: {e}"))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_LEN || header_len > len - LEN_PREFIX {
            return Err(format!(
                "the header length is {header_len} bytes, but the file is {len} bytes \
                 (and a header may be at most {MAX_HEADER_LEN})"
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, LEN_PREFIX)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        let header =
            std::str::from_utf8(&header).map_err(|e| format!("the header is not UTF-8: {e}"))?;
        let metadata: Metadata = serde_json::from_str(header)
            .map_err(|e| format!("the header is not a valid safetensors index: {e}"))?;
        let data_start = LEN_PREFIX + header_len;
        let expected = data_start + metadata.data_len() as u64;
        if expected != len {
            return Err(format!(
                "the header describes {expected} bytes, but the file is {len} bytes"
            ));
        }
        Ok(TensorFile {
            file,
            data_start,
            metadata,
        })
    }

    /// Reads `buf.len()` bytes at `offset` within the data section.
    pub fn read_data(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.data_start + offset)
    }
}

/// The index in `shape` of the `element`-th value in row-major order.
pub(crate) fn unravel(mut element: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = element % dim;
            element /= dim;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, &[2, 3]), vec![0, 0]);
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(4, &[2, 3]), vec![1, 1]);
        assert_eq!(unravel(7, &[8]), vec![7]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }
}
