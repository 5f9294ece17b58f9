//! The Python worker runtime (`python/`), carried inside the binary so that a node needs
//! only `mycel`, Python 3 and `uv`: unpacked once per content into the data directory.

use std::io;
use std::path::{Path, PathBuf};

/// The runtime package's files, by path inside the package.
const FILES: &[(&str, &[u8])] = &[
    (
        "pyproject.toml",
        include_bytes!("../../../python/pyproject.toml"),
    ),
    ("README.md", include_bytes!("../../../python/README.md")),
    (
        "src/mycel_worker/__init__.py",
        include_bytes!("../../../python/src/mycel_worker/__init__.py"),
    ),
    (
        "src/mycel_worker/__main__.py",
        include_bytes!("../../../python/src/mycel_worker/__main__.py"),
    ),
    (
        "src/mycel_worker/client.py",
        include_bytes!("../../../python/src/mycel_worker/client.py"),
    ),
    (
        "src/mycel_worker/context.py",
        include_bytes!("../../../python/src/mycel_worker/context.py"),
    ),
    (
        "src/mycel_worker/loader.py",
        include_bytes!("../../../python/src/mycel_worker/loader.py"),
    ),
    (
        "src/mycel_worker/protocol.py",
        include_bytes!("../../../python/src/mycel_worker/protocol.py"),
    ),
    (
        "src/mycel_worker/py.typed",
        include_bytes!("../../../python/src/mycel_worker/py.typed"),
    ),
    (
        "src/mycel_worker/template.py",
        include_bytes!("../../../python/src/mycel_worker/template.py"),
    ),
    (
        "src/mycel_worker/worker.py",
        include_bytes!("../../../python/src/mycel_worker/worker.py"),
    ),
];

/// The embedded runtime's directory under `data`, written if it is not there yet:
/// `DATA/runtime/<hash of the files>`. Written to a temporary directory first and
/// renamed, so a crash never leaves half a runtime under its final name.
pub fn unpack(data: &Path) -> io::Result<PathBuf> {
    let mut hasher = blake3::Hasher::new();
    for (path, bytes) in FILES {
        hasher.update(&(path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let hex = hasher.finalize().to_hex();
    let parent = data.join("runtime");
    let dir = parent.join(&hex[..16]);
    if dir.join("pyproject.toml").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent)?;
    let staging = tempfile::tempdir_in(&parent)?;
    for (path, bytes) in FILES {
        let target = staging.path().join(path);
        if let Some(folder) = target.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(&target, bytes)?;
        // On disk before the rename names the directory complete.
        std::fs::File::open(&target)?.sync_all()?;
    }
    match std::fs::rename(staging.path(), &dir) {
        Ok(()) => {
            // Renamed away: nothing left for the guard to remove.
            let _ = staging.keep();
            Ok(dir)
        }
        // Another agent on this data directory unpacked it first.
        Err(_) if dir.join("pyproject.toml").is_file() => Ok(dir),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every file of the package is embedded, so a new module cannot be forgotten.
    #[test]
    fn every_runtime_file_is_embedded() {
        let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/src/mycel_worker");
        let mut on_disk: Vec<String> = std::fs::read_dir(&package)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "__pycache__")
            .map(|name| format!("src/mycel_worker/{name}"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = FILES
            .iter()
            .map(|(path, _)| (*path).to_owned())
            .filter(|path| path.starts_with("src/"))
            .collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn unpacks_once_and_reuses_the_directory() {
        let data = tempfile::tempdir().unwrap();
        let first = unpack(data.path()).unwrap();
        let worker = std::fs::read(first.join("src/mycel_worker/worker.py")).unwrap();
        assert_eq!(
            worker,
            include_bytes!("../../../python/src/mycel_worker/worker.py")
        );
        assert_eq!(unpack(data.path()).unwrap(), first);
        let entries = std::fs::read_dir(data.path().join("runtime"))
            .unwrap()
            .count();
        assert_eq!(entries, 1, "no staging directory left behind");
    }
}
