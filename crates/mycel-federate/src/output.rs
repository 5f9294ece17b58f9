//! Writing the aggregate: a safetensors file with the global model's header (same
//! names, dtypes, shapes, byte offsets and `__metadata__`), its data written chunk by
//! chunk at fixed offsets, so no pass holds the whole aggregate in memory.
//!
//! The file is written under a temporary name in the target's directory and renamed
//! into place when complete: a reader never sees a partial aggregate. It is not
//! fsynced; whoever keeps it (the blob store) syncs what it stores.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, TensorInfo};
use tempfile::NamedTempFile;

use crate::chunk::Chunk;
use crate::error::FederateError;
use crate::layout::ModelLayout;
use crate::model::GlobalModel;

/// Bytes copied at a time for carried tensors.
const COPY_BUFFER: usize = 1 << 20;

pub(crate) struct Output {
    path: PathBuf,
    file: NamedTempFile,
    data_start: u64,
    offsets: Vec<u64>,
}

impl Output {
    /// Creates the temporary file and writes the header.
    pub fn create(path: &Path, layout: &ModelLayout) -> Result<Self, FederateError> {
        let write_error = |source: io::Error| FederateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let infos = layout
            .tensors()
            .iter()
            .map(|t| {
                let start = t.data_offset as usize;
                let info = TensorInfo {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data_offsets: (start, start + t.byte_len() as usize),
                };
                (t.name.clone(), info)
            })
            .collect();
        let metadata = Metadata::new(layout.metadata().clone(), infos)
            .map_err(|e| write_error(io::Error::other(e.to_string())))?;
        let mut header = serde_json::to_vec(&metadata).map_err(|e| write_error(e.into()))?;
        // The safetensors format pads the header with spaces to a multiple of 8, so
        // the data section is aligned for readers that map it.
        header.resize(header.len().next_multiple_of(8), b' ');
        let data_len = metadata.data_len() as u64;

        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut file = tempfile::Builder::new()
            .prefix(".aggregate-")
            .tempfile_in(dir)
            .map_err(write_error)?;
        let data_start = 8 + header.len() as u64;
        file.as_file()
            .set_len(data_start + data_len)
            .map_err(write_error)?;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(write_error)?;
        file.write_all(&header).map_err(write_error)?;
        Ok(Output {
            path: path.to_path_buf(),
            offsets: layout.tensors().iter().map(|t| t.data_offset).collect(),
            file,
            data_start,
        })
    }

    /// Writes `bytes`, the encoded values of `chunk`.
    pub fn write_chunk(
        &self,
        layout: &ModelLayout,
        chunk: &Chunk,
        bytes: &[u8],
    ) -> Result<(), FederateError> {
        let size = (layout.tensors()[chunk.tensor].dtype.bitsize() / 8) as u64;
        let at = self.data_start + self.offsets[chunk.tensor] + chunk.start as u64 * size;
        self.file
            .as_file()
            .write_all_at(bytes, at)
            .map_err(|source| self.write_error(source))
    }

    /// Copies the tensors that are not aggregated from the global model.
    pub fn copy_carried(&self, global: &GlobalModel) -> Result<(), FederateError> {
        let mut buf = vec![0u8; COPY_BUFFER];
        for (index, spec) in global.layout().tensors().iter().enumerate() {
            if spec.float().is_some() {
                continue;
            }
            let mut done = 0;
            while done < spec.byte_len() {
                let n = (spec.byte_len() - done).min(COPY_BUFFER as u64) as usize;
                global
                    .read_tensor_bytes(index, done, &mut buf[..n])
                    .map_err(|e| FederateError::Global {
                        path: global.path().to_path_buf(),
                        reason: format!("cannot read tensor '{}': {e}", spec.name),
                    })?;
                let at = self.data_start + self.offsets[index] + done;
                self.file
                    .as_file()
                    .write_all_at(&buf[..n], at)
                    .map_err(|source| self.write_error(source))?;
                done += n as u64;
            }
        }
        Ok(())
    }

    /// Renames the complete file to its final path.
    pub fn persist(self) -> Result<(), FederateError> {
        let path = self.path;
        self.file
            .persist(&path)
            .map(|_| ())
            .map_err(|e| FederateError::Write {
                path,
                source: e.error,
            })
    }

    fn write_error(&self, source: io::Error) -> FederateError {
        FederateError::Write {
            path: self.path.clone(),
            source,
        }
    }
}
