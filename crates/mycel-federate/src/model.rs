//! The global model and client updates as files: opening them, checking an update's
//! header against the global model, reading one chunk of a tensor, and scanning a
//! whole update for non-finite values and its distance from the global model.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::chunk::{Chunk, Meter};
use crate::error::{FederateError, NonFinite, Rejection, TensorMismatch};
use crate::kernel;
use crate::layout::{unravel, ModelLayout, TensorFile};

/// The model a round starts from: its layout, and its file, which the aggregate reads
/// for the tensors it carries over and, with differential privacy, for the deltas.
#[derive(Debug)]
pub struct GlobalModel {
    path: PathBuf,
    file: TensorFile,
    layout: ModelLayout,
    offsets: Vec<u64>,
}

impl GlobalModel {
    /// Opens the global model's safetensors file and reads its header.
    pub fn open(path: &Path) -> Result<Self, FederateError> {
        let global_error = |reason: String| FederateError::Global {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| global_error(format!("cannot open: {e}")))?;
        let file = TensorFile::open(file).map_err(global_error)?;
        let layout = ModelLayout::from_metadata(&file.metadata).map_err(global_error)?;
        let offsets = layout.tensors().iter().map(|t| t.data_offset).collect();
        Ok(GlobalModel {
            path: path.to_path_buf(),
            file,
            layout,
            offsets,
        })
    }

    /// The tensors: names, dtypes, shapes, and whether each is aggregated.
    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the bytes of `chunk` into the front of `buf`.
    pub(crate) fn read_chunk<'b>(&self, chunk: &Chunk, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        read_chunk(&self.file, &self.offsets, &self.layout, chunk, buf)
    }

    /// Fails naming the first NaN or infinity in the aggregated tensors. Needed only
    /// where the global model's values enter the aggregate (differential privacy:
    /// the aggregate is the global model plus the mean clipped delta), where a
    /// non-finite value would pass into the result unnoticed.
    pub(crate) fn check_finite(
        &self,
        chunks: &[Chunk],
        chunk_len: usize,
    ) -> Result<(), FederateError> {
        let mut buf = vec![0u8; chunk_len * 8];
        for chunk in chunks {
            let Some(ty) = self.layout.tensors()[chunk.tensor].float() else {
                continue;
            };
            let bytes = self
                .read_chunk(chunk, &mut buf)
                .map_err(|e| FederateError::Global {
                    path: self.path.clone(),
                    reason: format!("cannot read: {e}"),
                })?;
            if let Some((offset, value)) = kernel::first_non_finite(bytes, ty) {
                let spec = &self.layout.tensors()[chunk.tensor];
                let element = chunk.start + offset;
                return Err(FederateError::Global {
                    path: self.path.clone(),
                    reason: format!(
                        "tensor '{}' holds {value} at index {:?} (element {element}); the \
                         global model must be finite",
                        spec.name,
                        unravel(element, &spec.shape)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Reads `len` bytes of tensor `tensor`'s data from byte `from` into `buf`.
    pub(crate) fn read_tensor_bytes(
        &self,
        tensor: usize,
        from: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        self.file.read_data(self.offsets[tensor] + from, buf)
    }
}

/// One client's update, accepted on its header and waiting to be read.
#[derive(Debug)]
pub(crate) struct Update {
    /// Index of its entry in the aggregator's outcomes.
    pub slot: usize,
    pub client: String,
    pub path: PathBuf,
    file: TensorFile,
    /// Where each of the layout's tensors starts in this file's data section: another
    /// writer may order tensors differently from the global model's file.
    offsets: Vec<u64>,
    /// The factor the update is multiplied by in the sum: its example count for
    /// FedAvg, its clip scale with differential privacy, 1 for the robust strategies.
    pub weight: f64,
    /// Whether every value was already checked to be finite.
    pub checked: bool,
}

impl Update {
    /// Opens an update and checks its header against the global model's layout.
    pub fn open(
        layout: &ModelLayout,
        slot: usize,
        client: &str,
        path: &Path,
        examples: u64,
    ) -> Result<Self, Rejection> {
        let file = File::open(path)
            .map_err(|e| Rejection::Unreadable(format!("cannot open {}: {e}", path.display())))?;
        let file = TensorFile::open(file).map_err(Rejection::Unreadable)?;
        let offsets = check_header(layout, &file)?;
        if examples == 0 {
            return Err(Rejection::NoExamples);
        }
        Ok(Update {
            slot,
            client: client.to_string(),
            path: path.to_path_buf(),
            file,
            offsets,
            weight: examples as f64,
            checked: false,
        })
    }

    /// Reads the bytes of `chunk` into the front of `buf`.
    pub fn read_chunk<'b>(
        &self,
        layout: &ModelLayout,
        chunk: &Chunk,
        buf: &'b mut [u8],
        meter: &Meter,
    ) -> Result<&'b [u8], FederateError> {
        let bytes = read_chunk(&self.file, &self.offsets, layout, chunk, buf)
            .map_err(|source| self.read_error(source))?;
        meter.read(bytes.len());
        Ok(bytes)
    }

    pub fn read_error(&self, source: io::Error) -> FederateError {
        FederateError::ReadUpdate {
            client: self.client.clone(),
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the whole update once, in parallel over `chunks`: the first non-finite
    /// value in file order, as a [`Rejection`], and, given the global model, the L2
    /// norm of the update minus the global model.
    pub fn scan(
        &self,
        layout: &ModelLayout,
        chunks: &[Chunk],
        chunk_len: usize,
        global: Option<&GlobalModel>,
        meter: &Meter,
    ) -> Result<Scan, FederateError> {
        let per_chunk = chunks
            .par_iter()
            .map_init(
                || ScanBuffers::new(meter, chunk_len, global.is_some()),
                |buffers, chunk| self.scan_chunk(layout, chunk, global, buffers, meter),
            )
            .collect::<Result<Vec<_>, _>>()?;
        let mut scan = Scan {
            rejection: None,
            delta_norm: None,
        };
        for ((bad, _), chunk) in per_chunk.iter().zip(chunks) {
            if let Some((offset, value)) = *bad {
                let spec = &layout.tensors()[chunk.tensor];
                let element = chunk.start + offset;
                scan.rejection = Some(Rejection::NonFinite {
                    tensor: spec.name.clone(),
                    index: unravel(element, &spec.shape),
                    element,
                    value,
                });
                return Ok(scan);
            }
        }
        if global.is_some() {
            // Summed in chunk order, so the norm does not depend on threads.
            scan.delta_norm = Some(per_chunk.iter().map(|(_, sq)| sq).sum::<f64>().sqrt());
        }
        Ok(scan)
    }

    fn scan_chunk(
        &self,
        layout: &ModelLayout,
        chunk: &Chunk,
        global: Option<&GlobalModel>,
        buffers: &mut ScanBuffers<'_>,
        meter: &Meter,
    ) -> Result<(Option<(usize, NonFinite)>, f64), FederateError> {
        let Some(ty) = layout.tensors()[chunk.tensor].float() else {
            return Ok((None, 0.0));
        };
        let bytes = self.read_chunk(layout, chunk, &mut buffers.bytes, meter)?;
        if !kernel::all_finite_bytes(bytes, ty) {
            return Ok((kernel::first_non_finite(bytes, ty), 0.0));
        }
        let Some(global) = global else {
            return Ok((None, 0.0));
        };
        let values = &mut buffers.values[..chunk.len];
        kernel::decode(values, bytes, ty);
        let global_bytes =
            global
                .read_chunk(chunk, &mut buffers.bytes)
                .map_err(|e| FederateError::Global {
                    path: global.path.clone(),
                    reason: format!("cannot read: {e}"),
                })?;
        let global_values = &mut buffers.global[..chunk.len];
        kernel::decode(global_values, global_bytes, ty);
        Ok((None, kernel::squared_distance(values, global_values)))
    }
}

/// What [`Update::scan`] found.
pub(crate) struct Scan {
    pub rejection: Option<Rejection>,
    pub delta_norm: Option<f64>,
}

struct ScanBuffers<'m> {
    bytes: crate::chunk::Tracked<'m, u8>,
    values: crate::chunk::Tracked<'m, f64>,
    global: crate::chunk::Tracked<'m, f64>,
}

impl<'m> ScanBuffers<'m> {
    fn new(meter: &'m Meter, chunk_len: usize, with_global: bool) -> Self {
        let values = if with_global { chunk_len } else { 0 };
        ScanBuffers {
            bytes: meter.buffer(chunk_len * 8),
            values: meter.buffer(values),
            global: meter.buffer(values),
        }
    }
}

fn read_chunk<'b>(
    file: &TensorFile,
    offsets: &[u64],
    layout: &ModelLayout,
    chunk: &Chunk,
    buf: &'b mut [u8],
) -> io::Result<&'b [u8]> {
    let spec = &layout.tensors()[chunk.tensor];
    let size = (spec.dtype.bitsize() / 8) as u64;
    let bytes = &mut buf[..chunk.len * size as usize];
    file.read_data(offsets[chunk.tensor] + chunk.start as u64 * size, bytes)?;
    Ok(bytes)
}

/// The update's data offset for each tensor of `layout`, or why its header does not
/// describe the same model: names first (missing and unexpected, all listed), then
/// every tensor whose dtype or shape differs.
fn check_header(layout: &ModelLayout, file: &TensorFile) -> Result<Vec<u64>, Rejection> {
    let theirs = file.metadata.tensors();
    let ours: BTreeSet<&str> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
    let their_names: BTreeSet<&str> = theirs.keys().map(String::as_str).collect();
    let missing: Vec<String> = ours
        .difference(&their_names)
        .map(|s| s.to_string())
        .collect();
    let unexpected: Vec<String> = their_names
        .difference(&ours)
        .map(|s| s.to_string())
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Rejection::Names {
            missing,
            unexpected,
        });
    }
    let mut offsets = Vec::with_capacity(layout.tensors().len());
    let mut mismatches = Vec::new();
    for spec in layout.tensors() {
        let info = theirs[spec.name.as_str()];
        if info.dtype != spec.dtype || info.shape != spec.shape {
            mismatches.push(TensorMismatch {
                tensor: spec.name.clone(),
                expected_dtype: spec.dtype.to_string(),
                expected_shape: spec.shape.clone(),
                dtype: info.dtype.to_string(),
                shape: info.shape.clone(),
            });
        }
        offsets.push(info.data_offsets.0 as u64);
    }
    if !mismatches.is_empty() {
        return Err(Rejection::Tensors(mismatches));
    }
    Ok(offsets)
}
