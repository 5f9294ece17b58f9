//! The registry: turns uploaded blobs and a file list into an immutable version.
//!
//! Everything a client sends is checked again here: names, paths, that each blob is
//! stored with the size claimed, and that the manifest parses and matches the files.

use std::collections::BTreeSet;
use std::sync::Arc;

use mycel_core::manifest::{validate_name, ManifestError, MANIFEST_FILE};
use mycel_core::version::{normalize_file_list, FileListError};
use mycel_core::{BlobHash, ErrorCode, FileEntry, Manifest, Version, VersionId};

use crate::blobs::BlobStore;
use crate::store::{Store, StoreError};

/// Why a version was not created or found.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The component name in the URL is not a valid name.
    #[error("component {0}")]
    InvalidName(String),
    /// The file list cannot form a directory.
    #[error(transparent)]
    FileList(#[from] FileListError),
    /// The file list names blobs the server lacks.
    #[error("{} blob(s) are not on the server, upload them first: {}", .0.len(), list(.0))]
    MissingBlobs(Vec<BlobHash>),
    /// A file's claimed size differs from its stored blob.
    #[error("file {path:?} claims {claimed} bytes but blob {hash} has {actual}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Its blob.
        hash: BlobHash,
        /// The size in the request.
        claimed: u64,
        /// The size stored.
        actual: u64,
    },
    /// No `mycel.toml` at the root.
    #[error("the file list has no {MANIFEST_FILE}; expected one at the component root")]
    NoManifest,
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest names another component than the URL.
    #[error("{MANIFEST_FILE}: [component].name is {in_manifest:?} but the version was pushed to {in_url:?}")]
    NameMismatch {
        /// From the manifest.
        in_manifest: String,
        /// From the URL.
        in_url: String,
    },
    /// No such component or version.
    #[error("{0} not found")]
    NotFound(String),
    /// A version reference that is neither a number, `latest` nor an id.
    #[error("version {0:?} is not a version; expected a number, \"latest\" or a 64-hex-digit id")]
    BadRef(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob store failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

fn list(hashes: &[BlobHash]) -> String {
    let shown: Vec<String> = hashes.iter().take(5).map(|h| h.short()).collect();
    let more = hashes.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl RegistryError {
    /// The API error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::InvalidName(_)
            | RegistryError::FileList(_)
            | RegistryError::BadRef(_) => ErrorCode::InvalidRequest,
            RegistryError::SizeMismatch { .. } => ErrorCode::InvalidRequest,
            RegistryError::MissingBlobs(_) => ErrorCode::MissingBlobs,
            RegistryError::NoManifest
            | RegistryError::Manifest(_)
            | RegistryError::NameMismatch { .. } => ErrorCode::InvalidManifest,
            RegistryError::NotFound(_) => ErrorCode::NotFound,
            RegistryError::Store(_) | RegistryError::Io(_) => ErrorCode::Internal,
        }
    }
}

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError::Corrupt(format!("store task failed: {e}")))?
}

/// Creates `name`'s version from `files`, or returns the identical one pushed before.
pub async fn create_version(
    store: &Arc<dyn Store>,
    blobs: &BlobStore,
    name: &str,
    files: Vec<FileEntry>,
    pushed_by: &str,
    now_ms: u64,
) -> Result<(Version, bool), RegistryError> {
    validate_name(name).map_err(RegistryError::InvalidName)?;
    let files = normalize_file_list(files)?;

    let mut missing = Vec::new();
    for file in &files {
        match blobs.size(&file.hash).await? {
            None => missing.push(file.hash),
            Some(actual) if actual != file.size => {
                return Err(RegistryError::SizeMismatch {
                    path: file.path.to_string(),
                    hash: file.hash,
                    claimed: file.size,
                    actual,
                })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        missing.dedup();
        return Err(RegistryError::MissingBlobs(missing));
    }

    let manifest_entry = files
        .iter()
        .find(|f| f.path.as_str() == MANIFEST_FILE)
        .ok_or(RegistryError::NoManifest)?;
    let text = blobs
        .read(&manifest_entry.hash)
        .await?
        .ok_or_else(|| RegistryError::MissingBlobs(vec![manifest_entry.hash]))?;
    let text = String::from_utf8(text).map_err(|_| ManifestError {
        file: MANIFEST_FILE.into(),
        key: None,
        message: "is not UTF-8 text".into(),
    })?;
    let manifest = Manifest::parse(&text)?;
    if manifest.component.name != name {
        return Err(RegistryError::NameMismatch {
            in_manifest: manifest.component.name,
            in_url: name.to_owned(),
        });
    }
    let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    manifest.check_files(|p| paths.contains(p))?;

    let version = Version {
        id: VersionId::of(&files),
        component: name.to_owned(),
        seq: 0,
        total_bytes: files.iter().map(|f| f.size).sum(),
        files,
        created_at_ms: now_ms,
        pushed_by: pushed_by.to_owned(),
        description: manifest.component.description,
    };
    Ok(blocking(store, move |s| s.insert_version(version)).await?)
}

/// Finds `name`'s version by sequence number, `latest` or id.
pub async fn find_version(
    store: &Arc<dyn Store>,
    name: &str,
    reference: &str,
) -> Result<Version, RegistryError> {
    let not_found = || RegistryError::NotFound(format!("version {name}@{reference}"));
    let owned = name.to_owned();
    let version = if reference == "latest" {
        blocking(store, move |s| s.versions(&owned)).await?.pop()
    } else if let Ok(seq) = reference.parse::<u64>() {
        blocking(store, move |s| match s.version_id(&owned, seq)? {
            Some(id) => s.version(&id),
            None => Ok(None),
        })
        .await?
    } else {
        let id: BlobHash = reference
            .parse()
            .map_err(|_| RegistryError::BadRef(reference.to_owned()))?;
        blocking(store, move |s| s.version(&VersionId(id)))
            .await?
            .filter(|v| v.component == name)
    };
    version.ok_or_else(not_found)
}

/// The parsed manifest of a stored version.
pub async fn manifest_of(blobs: &BlobStore, version: &Version) -> Result<Manifest, RegistryError> {
    let entry = version
        .files
        .iter()
        .find(|f| f.path.as_str() == MANIFEST_FILE)
        .ok_or(RegistryError::NoManifest)?;
    let bytes = blobs
        .read(&entry.hash)
        .await?
        .ok_or_else(|| RegistryError::MissingBlobs(vec![entry.hash]))?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError {
        file: MANIFEST_FILE.into(),
        key: None,
        message: "is not UTF-8 text".into(),
    })?;
    Ok(Manifest::parse(&text)?)
}
