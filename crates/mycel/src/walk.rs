//! Reading a component directory: which files belong to it, and their hashes.
//!
//! Honours `.gitignore` and `.mycelignore` (in the component, even outside a git
//! repository), always skips `.git` and `__pycache__`, and refuses symlinks that lead
//! out of the component.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mycel_core::{BlobHash, ComponentPath, FileEntry, FileMode};

/// One file of a component on the local disk.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Its entry in the version.
    pub entry: FileEntry,
    /// Where it is on disk.
    pub source: PathBuf,
}

/// Directory names never pushed.
const ALWAYS_SKIPPED: [&str; 2] = [".git", "__pycache__"];

/// Files at or above this size are hashed with memory mapping across all cores.
const MMAP_THRESHOLD: u64 = 4 << 20;

/// Lists and hashes the files of the component rooted at `root`, sorted by path.
pub fn component_files(root: &Path) -> anyhow::Result<Vec<LocalFile>> {
    let root = root
        .canonicalize()
        .with_context(|| format!("component directory {}", root.display()))?;
    let walker = ignore::WalkBuilder::new(&root)
        .hidden(false)
        .parents(false)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .follow_links(true)
        .add_custom_ignore_filename(".mycelignore")
        .filter_entry(|e| !ALWAYS_SKIPPED.iter().any(|s| e.file_name() == *s))
        .build();

    let mut files = Vec::new();
    for entry in walker {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        let path = entry.path();
        if entry.path_is_symlink() {
            let target = path
                .canonicalize()
                .with_context(|| format!("symlink {} is broken", path.display()))?;
            if !target.starts_with(&root) {
                bail!(
                    "symlink {} points outside the component (to {}); expected every file to live inside {}",
                    path.display(),
                    target.display(),
                    root.display()
                );
            }
        }
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let relative = path
            .strip_prefix(&root)
            .with_context(|| format!("{} is outside the component", path.display()))?;
        let relative = relative.to_str().with_context(|| {
            format!(
                "{} is not a UTF-8 path; expected UTF-8 file names",
                relative.display()
            )
        })?;
        let component_path = ComponentPath::new(relative)?;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let (hash, size) = hash_file(path, meta.len())?;
        files.push(LocalFile {
            entry: FileEntry {
                path: component_path,
                hash,
                size,
                mode: FileMode::from_bits(meta.permissions().mode()),
            },
            source: path.to_path_buf(),
        });
    }
    files.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    Ok(files)
}

/// Hashes a file without reading it whole into memory; returns its hash and the number
/// of bytes hashed.
pub fn hash_file(path: &Path, len: u64) -> anyhow::Result<(BlobHash, u64)> {
    let mut hasher = blake3::Hasher::new();
    if len >= MMAP_THRESHOLD {
        hasher
            .update_mmap_rayon(path)
            .with_context(|| format!("hashing {}", path.display()))?;
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        hasher
            .update_reader(file)
            .with_context(|| format!("hashing {}", path.display()))?;
    }
    Ok((hasher.finalize().into(), hasher.count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> Vec<String> {
        component_files(root)
            .unwrap()
            .into_iter()
            .map(|f| f.entry.path.to_string())
            .collect()
    }

    #[test]
    fn honours_ignore_files_and_skips_caches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, content) in [
            ("mycel.toml", "x"),
            ("model.py", "x"),
            ("notes.log", "x"),
            ("secret/key", "x"),
            ("__pycache__/model.cpython-311.pyc", "x"),
            (".git/HEAD", "x"),
            ("sub/__pycache__/a.pyc", "x"),
            ("sub/b.py", "x"),
            (".gitignore", "*.log\n"),
            (".mycelignore", "secret/\n"),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        assert_eq!(
            paths(root),
            [
                ".gitignore",
                ".mycelignore",
                "model.py",
                "mycel.toml",
                "sub/b.py"
            ]
        );
    }

    #[test]
    fn symlinks_inside_are_followed_and_outside_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.py"), "print(1)").unwrap();
        std::os::unix::fs::symlink(root.join("a.py"), root.join("b.py")).unwrap();
        let files = component_files(root).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].entry.hash, files[1].entry.hash);

        std::os::unix::fs::symlink(outside.path().join("passwd"), root.join("leak")).unwrap();
        let err = component_files(root).unwrap_err().to_string();
        assert!(err.contains("points outside the component"), "{err}");
    }

    #[test]
    fn executable_bit_and_hash() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sh");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = component_files(dir.path()).unwrap();
        assert_eq!(files[0].entry.mode, FileMode::Executable);
        assert_eq!(files[0].entry.hash, BlobHash::of(b"#!/bin/sh\n"));
        assert_eq!(files[0].entry.size, 10);
    }
}
