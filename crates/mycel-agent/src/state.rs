//! What a node keeps on disk so that it serves without the control plane (static
//! stability): its last assignments, and the file list of every version it laid out.
//! After a restart with the control plane away, the agent starts its replicas from
//! these and the version trees beside them, asking no one.
//!
//! Every file is written under a temporary name, synced and renamed, so a crash leaves
//! the old content or the new, never half of one. A version's file list is trusted only
//! if it still hashes to the id it is filed under.

use std::io::Write;
use std::path::{Path, PathBuf};

use mycel_core::fleet::Assignment;
use mycel_core::version::{Version, VersionId};

/// Why node state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The disk.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that does not hold what this module writes.
    #[error("{path}: not node state ({source}); remove it and the agent starts empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// A node's state directory, `DATA/state`.
#[derive(Clone, Debug)]
pub struct NodeState {
    dir: PathBuf,
}

const ASSIGNMENTS: &str = "assignments.json";
const VERSIONS: &str = "versions";

impl NodeState {
    /// Opens (creating) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        let versions = dir.join(VERSIONS);
        std::fs::create_dir_all(&versions).map_err(|source| StateError::Io {
            path: versions,
            source,
        })?;
        Ok(Self { dir })
    }

    /// The assignments last saved; `None` if there are none yet.
    pub fn assignments(&self) -> Result<Option<Vec<Assignment>>, StateError> {
        read_json(&self.dir.join(ASSIGNMENTS))
    }

    /// Saves the node's assignments, replacing the last ones.
    pub fn save_assignments(&self, assignments: &[Assignment]) -> Result<(), StateError> {
        write_json(&self.dir.join(ASSIGNMENTS), &assignments)
    }

    /// The saved file list of version `id`, if there is one that hashes to `id`.
    pub fn version(&self, id: VersionId) -> Option<Version> {
        let path = self.version_path(id);
        match read_json::<Version>(&path) {
            Ok(Some(version)) if version.id == id && version.content_id() == id => Some(version),
            Ok(Some(_)) => {
                tracing::warn!(path = %path.display(), "saved version does not hash to its id; ignored");
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "saved version unreadable; ignored");
                None
            }
        }
    }

    /// Saves a version's file list, which must hash to its id.
    pub fn save_version(&self, version: &Version) -> Result<(), StateError> {
        write_json(&self.version_path(version.id), version)
    }

    /// Runs `write` on a blocking thread (it syncs to disk). A failure is logged, not
    /// returned: the node serves on either way, it only could not restart offline.
    pub async fn save(
        &self,
        what: &'static str,
        write: impl FnOnce(&NodeState) -> Result<(), StateError> + Send + 'static,
    ) {
        let state = self.clone();
        let outcome = tokio::task::spawn_blocking(move || write(&state)).await;
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(%error, "cannot save {what} for restarts without the control plane");
    }

    fn version_path(&self, id: VersionId) -> PathBuf {
        self.dir.join(VERSIONS).join(format!("{id}.json"))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Writes `value` as JSON to `path` through a synced temporary file (mode 0600) and a
/// rename, so `path` holds the old content or the new, whole.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mycel_core::hash::BlobHash;
    use mycel_core::version::{FileEntry, FileMode};

    fn version(bytes: &[u8]) -> Version {
        let files = vec![FileEntry {
            path: mycel_core::path::ComponentPath::new("model.py").unwrap(),
            hash: BlobHash::of(bytes),
            size: bytes.len() as u64,
            mode: FileMode::Regular,
        }];
        let id = VersionId::of(&files);
        Version {
            id,
            component: "echo".into(),
            seq: 1,
            files,
            total_bytes: bytes.len() as u64,
            created_at_ms: 0,
            pushed_by: "admin".into(),
            description: String::new(),
            dependencies: Vec::new(),
        }
    }

    #[test]
    fn assignments_round_trip_and_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::open(dir.path()).unwrap();
        assert!(state.assignments().unwrap().is_none());
        state.save_assignments(&[]).unwrap();
        assert_eq!(state.assignments().unwrap(), Some(Vec::new()));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            leftovers, 2,
            "assignments.json and versions/, no temporary file"
        );
    }

    #[test]
    fn a_version_is_trusted_only_while_it_hashes_to_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::open(dir.path()).unwrap();
        let v = version(b"print(1)\n");
        assert!(state.version(v.id).is_none());
        state.save_version(&v).unwrap();
        assert_eq!(state.version(v.id), Some(v.clone()));

        // A file list edited on disk no longer matches its name: ignored.
        let mut edited = v.clone();
        edited.files[0].hash = BlobHash::of(b"import os\n");
        std::fs::write(
            state.version_path(v.id),
            serde_json::to_vec(&edited).unwrap(),
        )
        .unwrap();
        assert!(state.version(v.id).is_none());
    }

    #[test]
    fn a_corrupt_assignments_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(ASSIGNMENTS), b"{half").unwrap();
        let error = state.assignments().unwrap_err().to_string();
        assert!(
            error.contains("assignments.json") && error.contains("remove it"),
            "{error}"
        );
    }
}
