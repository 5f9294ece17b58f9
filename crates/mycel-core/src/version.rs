//! Versions: immutable snapshots of a component, named by the hash of their file list.
//!
//! A version that imports other components (`[dependencies]` in its manifest) also
//! records the exact version of each that the control plane resolved when it was
//! pushed ([`ResolvedDependency`]), and then its id covers those too: the same files
//! resolved against another version of a dependency are another version, so pushing
//! unchanged source after a dependency changed picks the change up, and the id an agent
//! is assigned pins the whole tree it runs. A version without dependencies is named by
//! its file list alone, exactly as before dependencies existed.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::BlobHash;
use crate::path::ComponentPath;

/// A file's mode, reduced to what matters for running code (as git does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    /// `0644`.
    #[default]
    Regular,
    /// `0755`.
    Executable,
}

impl FileMode {
    /// The Unix permission bits a materialized file gets (before making it read-only).
    pub fn bits(self) -> u32 {
        match self {
            FileMode::Regular => 0o644,
            FileMode::Executable => 0o755,
        }
    }

    /// Regular unless any execute bit is set.
    pub fn from_bits(bits: u32) -> Self {
        if bits & 0o111 != 0 {
            FileMode::Executable
        } else {
            FileMode::Regular
        }
    }
}

/// One file of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where the file sits inside the component.
    pub path: ComponentPath,
    /// The blob holding its bytes.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size: u64,
    /// Regular or executable.
    #[serde(default)]
    pub mode: FileMode,
}

/// A version's id: the hash of its canonical file list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionId(pub BlobHash);

impl VersionId {
    /// Computes the id of a file list, whatever its order.
    ///
    /// The canonical form is a domain tag, then for each file sorted by path: the path's
    /// length (u64 LE) and bytes, the blob hash, and the mode bits (u32 LE). Sizes are
    /// left out because the hash already fixes them. The manifest is one of the files,
    /// so it is covered too.
    pub fn of(files: &[FileEntry]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"mycel-version-v1\0");
        hash_files(&mut hasher, files);
        VersionId(hasher.finalize().into())
    }

    /// Computes the id of a file list resolved against `dependencies`, whatever the
    /// order of either. Without dependencies this is [`VersionId::of`].
    ///
    /// With them, the canonical form has its own domain tag (so it can never equal a
    /// file-only id), then the number of files (u64 LE) and the files as in
    /// [`VersionId::of`], then for each dependency sorted by component: the name's
    /// length (u64 LE) and bytes, the sequence number (u64 LE) and the version id.
    pub fn with_dependencies(files: &[FileEntry], dependencies: &[ResolvedDependency]) -> Self {
        if dependencies.is_empty() {
            return Self::of(files);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"mycel-version-v2\0");
        hasher.update(&(files.len() as u64).to_le_bytes());
        hash_files(&mut hasher, files);
        let mut sorted: Vec<&ResolvedDependency> = dependencies.iter().collect();
        sorted.sort_by(|a, b| a.component.cmp(&b.component));
        for dependency in sorted {
            let name = dependency.component.as_bytes();
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name);
            hasher.update(&dependency.seq.to_le_bytes());
            hasher.update(dependency.id.0.as_bytes());
        }
        VersionId(hasher.finalize().into())
    }

    /// The first 12 hex digits.
    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({})", self.0.short())
    }
}

fn hash_files(hasher: &mut blake3::Hasher, files: &[FileEntry]) {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for file in sorted {
        let path = file.path.as_str().as_bytes();
        hasher.update(&(path.len() as u64).to_le_bytes());
        hasher.update(path);
        hasher.update(file.hash.as_bytes());
        hasher.update(&file.mode.bits().to_le_bytes());
    }
}

/// One dependency of a version, resolved to an exact version when it was pushed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResolvedDependency {
    /// The component depended on.
    pub component: String,
    /// Its version's sequence number.
    pub seq: u64,
    /// Its version's id.
    pub id: VersionId,
}

impl ResolvedDependency {
    /// The dependency on `version`.
    pub fn on(version: &Version) -> Self {
        Self {
            component: version.component.clone(),
            seq: version.seq,
            id: version.id,
        }
    }

    /// `name@seq`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.component, self.seq)
    }
}

/// A stored, immutable version of a component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Content id.
    pub id: VersionId,
    /// The component's name.
    pub component: String,
    /// Per-component sequence number, from 1: `echo@3`.
    pub seq: u64,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
    /// Sum of the file sizes.
    pub total_bytes: u64,
    /// When it was first pushed, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The name of the token that pushed it.
    pub pushed_by: String,
    /// The manifest's description, for listings.
    #[serde(default)]
    pub description: String,
    /// The manifest's `[dependencies]`, each resolved to an exact version at push time,
    /// sorted by component. Direct dependencies only: each of them records its own.
    #[serde(default)]
    pub dependencies: Vec<ResolvedDependency>,
}

impl Version {
    /// `name@seq`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.component, self.seq)
    }

    /// The id this version's content calls for: its files and resolved dependencies
    /// hashed. A version whose `id` differs from this was tampered with.
    pub fn content_id(&self) -> VersionId {
        VersionId::with_dependencies(&self.files, &self.dependencies)
    }
}

/// Why a file list cannot form a version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileListError {
    /// No files at all.
    #[error("the file list is empty; expected at least mycel.toml")]
    Empty,
    /// The same path twice.
    #[error("path {0:?} appears more than once in the file list")]
    Duplicate(String),
    /// A path that is both a file and a directory (`a` and `a/b`).
    #[error("path {0:?} is a file but other files are listed under it")]
    FileIsDirectory(String),
    /// Too many files.
    #[error("the file list has {0} files; at most {max} are accepted", max = MAX_FILES)]
    TooMany(usize),
}

/// The most files one version may hold.
pub const MAX_FILES: usize = 100_000;

/// Sorts a file list by path and checks it can be materialized as a directory tree.
pub fn normalize_file_list(mut files: Vec<FileEntry>) -> Result<Vec<FileEntry>, FileListError> {
    if files.is_empty() {
        return Err(FileListError::Empty);
    }
    if files.len() > MAX_FILES {
        return Err(FileListError::TooMany(files.len()));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut paths = BTreeSet::new();
    for file in &files {
        if !paths.insert(file.path.as_str()) {
            return Err(FileListError::Duplicate(file.path.to_string()));
        }
    }
    for file in &files {
        let mut prefix = file.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if paths.contains(parent) {
                return Err(FileListError::FileIsDirectory(parent.to_owned()));
            }
            prefix = parent;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, content: &[u8]) -> FileEntry {
        FileEntry {
            path: ComponentPath::new(path).unwrap(),
            hash: BlobHash::of(content),
            size: content.len() as u64,
            mode: FileMode::Regular,
        }
    }

    #[test]
    fn id_ignores_order_but_not_content_path_or_mode() {
        let a = entry("a.py", b"a");
        let b = entry("b.py", b"b");
        let base = VersionId::of(&[a.clone(), b.clone()]);
        assert_eq!(base, VersionId::of(&[b.clone(), a.clone()]));

        assert_ne!(base, VersionId::of(&[a.clone(), entry("b.py", b"c")]));
        assert_ne!(base, VersionId::of(&[a.clone(), entry("c.py", b"b")]));
        let mut exec = b.clone();
        exec.mode = FileMode::Executable;
        assert_ne!(base, VersionId::of(&[a.clone(), exec]));
        assert_ne!(base, VersionId::of(&[a]));
    }

    fn dependency(component: &str, seq: u64, content: &[u8]) -> ResolvedDependency {
        ResolvedDependency {
            component: component.into(),
            seq,
            id: VersionId::of(&[entry("mycel.toml", content)]),
        }
    }

    #[test]
    fn dependencies_change_the_id_only_when_there_are_some() {
        let files = [entry("model.py", b"m"), entry("mycel.toml", b"t")];
        let base = VersionId::of(&files);
        assert_eq!(VersionId::with_dependencies(&files, &[]), base);

        let a1 = dependency("a", 1, b"1");
        let b1 = dependency("b", 1, b"2");
        let with = VersionId::with_dependencies(&files, &[a1.clone(), b1.clone()]);
        assert_ne!(with, base);
        assert_eq!(
            with,
            VersionId::with_dependencies(&files, &[b1.clone(), a1.clone()])
        );
        // Another version of a dependency is another version of the dependent.
        let a2 = dependency("a", 2, b"3");
        assert_ne!(
            with,
            VersionId::with_dependencies(&files, &[a2, b1.clone()])
        );
        assert_ne!(with, VersionId::with_dependencies(&files, &[a1]));

        let version = Version {
            id: with,
            component: "m".into(),
            seq: 1,
            files: files.to_vec(),
            total_bytes: 2,
            created_at_ms: 0,
            pushed_by: "test".into(),
            description: String::new(),
            dependencies: vec![b1],
        };
        assert_ne!(version.content_id(), version.id);
    }

    #[test]
    fn versions_recorded_before_dependencies_still_load() {
        let json = r#"{"id":"0000000000000000000000000000000000000000000000000000000000000000","component":"a","seq":1,"files":[],"total_bytes":0,"created_at_ms":0,"pushed_by":"admin","description":""}"#;
        let version: Version = serde_json::from_str(json).unwrap();
        assert!(version.dependencies.is_empty());
    }

    #[test]
    fn id_is_unambiguous_across_path_boundaries() {
        // Length prefixes keep "ab" + "c" apart from "a" + "bc".
        let one = VersionId::of(&[entry("ab", b""), entry("c", b"")]);
        let two = VersionId::of(&[entry("a", b""), entry("bc", b"")]);
        assert_ne!(one, two);
    }

    #[test]
    fn normalize_sorts_and_rejects_conflicts() {
        let files = normalize_file_list(vec![entry("b", b""), entry("a", b"")]).unwrap();
        assert_eq!(files[0].path.as_str(), "a");
        assert_eq!(
            normalize_file_list(vec![entry("a", b"1"), entry("a", b"2")]),
            Err(FileListError::Duplicate("a".into()))
        );
        assert_eq!(
            normalize_file_list(vec![entry("a", b""), entry("a/b/c", b"")]),
            Err(FileListError::FileIsDirectory("a".into()))
        );
        assert_eq!(normalize_file_list(vec![]), Err(FileListError::Empty));
    }

    #[test]
    fn mode_bits() {
        assert_eq!(FileMode::from_bits(0o100755), FileMode::Executable);
        assert_eq!(FileMode::from_bits(0o100644), FileMode::Regular);
        assert_eq!(FileMode::from_bits(0o100744), FileMode::Executable);
    }
}
