//! Getting a version onto this node: fetch the blobs the local cache lacks, then lay
//! the version out as a read-only directory tree the worker runs from.
//!
//! The cache (`DATA/blobs/ab/abcdef…`) has the server's layout and the server's rule: a
//! blob is streamed to a temporary file while it is hashed, fsynced, and renamed into
//! place only if its BLAKE3 hash is its name. So a cache file is always whole and
//! right, and [`BlobCache::has`] needs only to look for the name.
//!
//! A materialized version (`VERSIONS/<id>/`) is built in a temporary directory and
//! renamed into place at the end, so a version directory that exists is complete.
//! Regular files are hard links to the cache (no copy, no extra disk); everything is
//! read-only, so user code cannot change the source another replica runs.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use mycel_client::{Client, ClientError};
use mycel_core::{BlobHash, FileMode, Version, VersionId};
use tokio::io::AsyncWriteExt;

/// How many blobs one sync downloads at once.
const CONCURRENT_FETCHES: usize = 4;

/// Cache temp files untouched this long belong to a crashed download and are removed
/// when the cache opens. A live download touches its file with every chunk.
const STALE_TMP_AFTER: Duration = Duration::from_secs(3600);

/// Mode of files in the cache and of regular files in a version.
const READ_ONLY: u32 = 0o444;
/// Mode of executable files and of directories in a version.
const READ_EXECUTE: u32 = 0o555;

/// Why a sync or a materialization failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The server could not be asked for a blob, or the download broke off.
    #[error("fetching blob {hash} failed: {source}")]
    Fetch {
        /// The blob.
        hash: BlobHash,
        /// What the client said.
        source: ClientError,
    },
    /// The bytes received hash to something other than the blob's name.
    #[error("blob {expected} does not match its content: the bytes received hash to {actual}; nothing was kept")]
    HashMismatch {
        /// The blob asked for.
        expected: BlobHash,
        /// What the bytes received hash to.
        actual: BlobHash,
    },
    /// The server sent more bytes than the version lists for the blob.
    #[error("blob {hash} is longer than the {expected} bytes the version lists; nothing was kept")]
    TooLong {
        /// The blob.
        hash: BlobHash,
        /// The size the version lists.
        expected: u64,
    },
    /// A version's id is not the hash of its file list.
    #[error("version {claimed} does not match its file list, which hashes to {actual}")]
    IdMismatch {
        /// The id the version came with.
        claimed: VersionId,
        /// The id of its file list.
        actual: VersionId,
    },
    /// Materializing needs a blob the cache does not hold.
    #[error("blob {hash} for {path:?} is not in the local cache; sync the version first")]
    NotCached {
        /// The blob.
        hash: BlobHash,
        /// The file of the version that needs it.
        path: String,
    },
    /// The local disk failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Attaches a path to an I/O error.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Blobs downloaded.
    pub blobs_fetched: usize,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
    /// Blobs the cache already held.
    pub blobs_cached: usize,
}

/// The node's local blob cache: files named by the BLAKE3 hash of their bytes.
#[derive(Clone, Debug)]
pub struct BlobCache {
    root: PathBuf,
}

impl BlobCache {
    /// Opens (creating if needed) the cache at `root`, removing temp files that a
    /// crashed download left behind.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&tmp)?.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > STALE_TMP_AFTER);
            if stale {
                // Best effort: a leftover only costs disk space.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { root })
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob lives: `ROOT/ab/abcdef…`, fanned out so no directory grows huge.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Whether the cache holds the blob. Only verified blobs are ever renamed into
    /// place, so presence is enough.
    pub async fn has(&self, hash: &BlobHash) -> Result<bool, SyncError> {
        let path = self.path(hash);
        tokio::fs::try_exists(&path).await.map_err(io_at(&path))
    }

    /// Streams `body` into the cache as blob `expected`, hashing as it goes, and
    /// returns the number of bytes received. More than `max_len` bytes, a hash
    /// mismatch or a broken stream is an error, and then nothing is kept.
    pub async fn write<S>(
        &self,
        expected: BlobHash,
        max_len: u64,
        body: S,
    ) -> Result<u64, SyncError>
    where
        S: Stream<Item = Result<Bytes, ClientError>>,
    {
        let tmp = TempFile(self.root.join("tmp").join(format!(
            "{}.{}",
            expected.to_hex(),
            random_suffix()
        )));
        let len = write_verified(&tmp.0, expected, max_len, body).await?;
        let dest = self.path(&expected);
        if tokio::fs::try_exists(&dest).await.map_err(io_at(&dest))? {
            // A concurrent sync got there first; its copy is just as good.
            return Ok(len);
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(io_at(&dir))?;
        tokio::fs::rename(&tmp.0, &dest)
            .await
            .map_err(io_at(&dest))?;
        tmp.disarm();
        sync_dir(dir).await?;
        Ok(len)
    }
}

/// Writes `body` to `path` and checks it, leaving a fsynced, read-only file.
async fn write_verified<S>(
    path: &Path,
    expected: BlobHash,
    max_len: u64,
    body: S,
) -> Result<u64, SyncError>
where
    S: Stream<Item = Result<Bytes, ClientError>>,
{
    let file = tokio::fs::File::create(path).await.map_err(io_at(path))?;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| SyncError::Fetch {
            hash: expected,
            source,
        })?;
        len += chunk.len() as u64;
        // Stop a server that sends forever before it fills the disk.
        if len > max_len {
            return Err(SyncError::TooLong {
                hash: expected,
                expected: max_len,
            });
        }
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(io_at(path))?;
    }
    let actual = BlobHash::from(hasher.finalize());
    if actual != expected {
        return Err(SyncError::HashMismatch { expected, actual });
    }
    writer.flush().await.map_err(io_at(path))?;
    let file = writer.into_inner();
    // Read-only before it gets its real name: nothing may ever change a cached blob,
    // and version files hard-linked to it share its mode.
    file.set_permissions(std::fs::Permissions::from_mode(READ_ONLY))
        .await
        .map_err(io_at(path))?;
    file.sync_all().await.map_err(io_at(path))?;
    Ok(len)
}

/// A temp file removed when dropped unless disarmed, so that an error or a cancelled
/// download (a sibling failing in [`sync_version`]) leaves nothing behind.
struct TempFile(PathBuf);

impl TempFile {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Downloads every blob of `version` that `cache` lacks, a few at a time, verifying
/// each against its hash before it enters the cache.
pub async fn sync_version(
    client: &Client,
    cache: &BlobCache,
    version: &Version,
    fetched: &Fetched,
) -> Result<SyncReport, SyncError> {
    // One blob may back many files; fetch it once.
    let blobs: BTreeMap<BlobHash, u64> = version
        .files
        .iter()
        .map(|file| (file.hash, file.size))
        .collect();
    let mut report = SyncReport::default();
    let mut missing = Vec::new();
    for (hash, size) in blobs {
        if cache.has(&hash).await? {
            report.blobs_cached += 1;
        } else {
            missing.push((hash, size));
        }
    }
    let total = missing.iter().map(|(_, size)| size).sum();
    fetched.total.store(total, Ordering::Relaxed);
    let fetched: Vec<u64> = futures::stream::iter(missing)
        .map(|(hash, size)| async move {
            let body = client
                .blob_stream(hash)
                .await
                .map_err(|source| SyncError::Fetch { hash, source })?
                .inspect_ok(|chunk| {
                    fetched
                        .done
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                });
            cache.write(hash, size, body).await
        })
        .buffer_unordered(CONCURRENT_FETCHES)
        .try_collect()
        .await?;
    report.blobs_fetched = fetched.len();
    report.bytes_fetched = fetched.iter().sum();
    tracing::debug!(
        version = %version.label(),
        fetched = report.blobs_fetched,
        bytes = report.bytes_fetched,
        cached = report.blobs_cached,
        "synced version"
    );
    Ok(report)
}

/// A sync's bytes so far, for progress: how many it has to fetch, and how many came.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Bytes of the blobs the node lacked.
    pub total: AtomicU64,
    /// Bytes received so far.
    pub done: AtomicU64,
}

impl Fetched {
    /// `12.5 of 97.6 MiB fetched`.
    pub fn describe(&self) -> String {
        let mib = |n: u64| n as f64 / f64::from(1 << 20);
        format!(
            "{:.1} of {:.1} MiB fetched",
            mib(self.done.load(Ordering::Relaxed)),
            mib(self.total.load(Ordering::Relaxed))
        )
    }
}

/// Lays out `version` as `versions_root/<id>/` from blobs in `cache` and returns that
/// directory. A directory that already exists is complete and is returned as is.
///
/// Regular files are hard links to the cache (a copy where linking fails, e.g. across
/// filesystems), mode 0444; executables are copies, mode 0555, because a link would
/// share the cache file's 0444 mode. Directories are 0555 once filled.
pub async fn materialize(
    cache: &BlobCache,
    versions_root: &Path,
    version: &Version,
) -> Result<PathBuf, SyncError> {
    // The directory's name promises its content; check the promise before using it.
    let actual = version.content_id();
    if actual != version.id {
        return Err(SyncError::IdMismatch {
            claimed: version.id,
            actual,
        });
    }
    let cache = cache.clone();
    let versions_root = versions_root.to_path_buf();
    let version = version.clone();
    tokio::task::spawn_blocking(move || materialize_blocking(&cache, &versions_root, &version))
        .await
        .map_err(|e| SyncError::Io {
            path: PathBuf::from("materialize task"),
            source: io::Error::other(e),
        })?
}

fn materialize_blocking(
    cache: &BlobCache,
    versions_root: &Path,
    version: &Version,
) -> Result<PathBuf, SyncError> {
    let id = version.id.to_string();
    let dest = versions_root.join(&id);
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(versions_root).map_err(io_at(versions_root))?;
    let tmp = versions_root.join(format!(".tmp-{id}-{}", random_suffix()));
    std::fs::create_dir(&tmp).map_err(io_at(&tmp))?;
    let built = fill(cache, &tmp, version).and_then(|()| {
        std::fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
        sync_dir_blocking(versions_root)
    });
    match built {
        Ok(()) => Ok(dest),
        Err(err) => {
            let _ = remove_tree_blocking(&tmp);
            // Another materialize of the same version won the rename: its tree is as
            // good as ours.
            if dest.is_dir() {
                Ok(dest)
            } else {
                Err(err)
            }
        }
    }
}

/// Puts every file of `version` under `dir`, then makes the directories read-only.
fn fill(cache: &BlobCache, dir: &Path, version: &Version) -> Result<(), SyncError> {
    let mut dirs = vec![dir.to_path_buf()];
    for file in &version.files {
        // ComponentPath guarantees no part is "..", "." or empty and none is absolute,
        // so joining part by part stays under `dir`.
        let mut dest = dir.to_path_buf();
        let mut parts = file.path.parts().peekable();
        while let Some(part) = parts.next() {
            dest.push(part);
            if parts.peek().is_some() && !dest.is_dir() {
                std::fs::create_dir(&dest).map_err(io_at(&dest))?;
                dirs.push(dest.clone());
            }
        }
        let source = cache.path(&file.hash);
        if !source.is_file() {
            return Err(SyncError::NotCached {
                hash: file.hash,
                path: file.path.to_string(),
            });
        }
        let mode = match file.mode {
            FileMode::Regular => READ_ONLY,
            FileMode::Executable => READ_EXECUTE,
        };
        let linked = file.mode == FileMode::Regular && std::fs::hard_link(&source, &dest).is_ok();
        if !linked {
            // EXDEV (another filesystem), a filesystem without links, or an
            // executable: copy, and make the copy durable before the rename publishes it.
            std::fs::copy(&source, &dest).map_err(io_at(&dest))?;
            std::fs::File::open(&dest)
                .and_then(|f| f.sync_all())
                .map_err(io_at(&dest))?;
        }
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&dest))?;
    }
    // Deepest first is not needed for chmod, but fsync each directory so the entries
    // are on disk before the tree gets its final name.
    for d in dirs.iter().rev() {
        sync_dir_blocking(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(READ_EXECUTE))
            .map_err(io_at(d))?;
    }
    Ok(())
}

/// Removes a materialized version (or any tree this module made read-only): the
/// directories are made writable again first, which `remove_dir_all` needs.
pub async fn remove_tree(path: &Path) -> Result<(), SyncError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || remove_tree_blocking(&path))
        .await
        .map_err(|e| SyncError::Io {
            path: PathBuf::from("remove task"),
            source: io::Error::other(e),
        })?
}

fn remove_tree_blocking(path: &Path) -> Result<(), SyncError> {
    fn make_writable(dir: &Path) -> io::Result<()> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                make_writable(&entry.path())?;
            }
        }
        Ok(())
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(path)(e)),
        Ok(_) => {}
    }
    make_writable(path).map_err(io_at(path))?;
    std::fs::remove_dir_all(path).map_err(io_at(path))
}

/// Makes renames and new entries in `dir` durable.
async fn sync_dir(dir: PathBuf) -> Result<(), SyncError> {
    tokio::task::spawn_blocking(move || sync_dir_blocking(&dir))
        .await
        .map_err(|e| SyncError::Io {
            path: PathBuf::from("fsync task"),
            source: io::Error::other(e),
        })?
}

fn sync_dir_blocking(dir: &Path) -> Result<(), SyncError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_at(dir))
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // Uniqueness only matters against concurrent writers; the time is a fine fallback.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use mycel_core::{ComponentPath, FileEntry};

    use super::*;

    fn entry(path: &str, content: &[u8], mode: FileMode) -> FileEntry {
        FileEntry {
            path: ComponentPath::new(path).unwrap(),
            hash: BlobHash::of(content),
            size: content.len() as u64,
            mode,
        }
    }

    fn version(files: Vec<FileEntry>) -> Version {
        let files = mycel_core::version::normalize_file_list(files).unwrap();
        Version {
            id: VersionId::of(&files),
            component: "x".into(),
            seq: 1,
            total_bytes: files.iter().map(|f| f.size).sum(),
            files,
            created_at_ms: 0,
            pushed_by: "test".into(),
            description: String::new(),
            dependencies: Vec::new(),
        }
    }

    fn body(bytes: &[u8]) -> impl Stream<Item = Result<Bytes, ClientError>> {
        futures::stream::iter(
            bytes
                .chunks(4)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    async fn put(cache: &BlobCache, bytes: &[u8]) {
        cache
            .write(BlobHash::of(bytes), bytes.len() as u64, body(bytes))
            .await
            .unwrap();
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn tmp_count(cache: &BlobCache) -> usize {
        std::fs::read_dir(cache.root().join("tmp")).unwrap().count()
    }

    /// Root ignores permission bits, so write-denial checks only mean something as
    /// another user.
    fn is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn cache_keeps_only_verified_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().join("blobs")).unwrap();
        let good = BlobHash::of(b"hello world");
        assert!(!cache.has(&good).await.unwrap());
        put(&cache, b"hello world").await;
        assert!(cache.has(&good).await.unwrap());
        assert_eq!(mode(&cache.path(&good)), 0o444);
        assert_eq!(std::fs::read(cache.path(&good)).unwrap(), b"hello world");

        let claimed = BlobHash::of(b"other");
        let err = cache.write(claimed, 100, body(b"evil")).await.unwrap_err();
        assert!(matches!(err, SyncError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&claimed.to_string()), "{err}");
        let err = cache
            .write(claimed, 3, body(b"longer than three"))
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::TooLong { .. }), "{err}");
        assert!(!cache.has(&claimed).await.unwrap());
        assert_eq!(tmp_count(&cache), 0);
    }

    #[tokio::test]
    async fn materialize_links_and_locks_down() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().join("blobs")).unwrap();
        for bytes in [
            &b"[component]\nname = \"x\"\nentrypoint = \"model:M\"\n"[..],
            b"class M: pass\n",
            b"def helper(): pass\n",
            b"#!/bin/sh\necho hi\n",
        ] {
            put(&cache, bytes).await;
        }
        let v = version(vec![
            entry(
                "mycel.toml",
                b"[component]\nname = \"x\"\nentrypoint = \"model:M\"\n",
                FileMode::Regular,
            ),
            entry("model.py", b"class M: pass\n", FileMode::Regular),
            entry(
                "pkg/sub/helper.py",
                b"def helper(): pass\n",
                FileMode::Regular,
            ),
            // The same blob twice, at two paths.
            entry("pkg/copy.py", b"class M: pass\n", FileMode::Regular),
            entry("bin/run.sh", b"#!/bin/sh\necho hi\n", FileMode::Executable),
        ]);
        let versions = dir.path().join("versions");
        let root = materialize(&cache, &versions, &v).await.unwrap();
        assert_eq!(root, versions.join(v.id.to_string()));

        assert_eq!(
            std::fs::read(root.join("pkg/sub/helper.py")).unwrap(),
            b"def helper(): pass\n"
        );
        assert_eq!(
            std::fs::read(root.join("pkg/copy.py")).unwrap(),
            b"class M: pass\n"
        );
        assert_eq!(mode(&root.join("model.py")), 0o444);
        assert_eq!(mode(&root.join("bin/run.sh")), 0o555);
        for d in ["", "pkg", "pkg/sub", "bin"] {
            assert_eq!(mode(&root.join(d)), 0o555, "{d:?}");
        }
        if !is_root() {
            assert!(std::fs::write(root.join("pkg/new.py"), b"x").is_err());
        }

        // Regular files share the cache's inode; the executable is a copy.
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let model_blob = cache.path(&BlobHash::of(b"class M: pass\n"));
        assert_eq!(ino(&root.join("model.py")), ino(&model_blob));
        assert_eq!(ino(&root.join("pkg/copy.py")), ino(&model_blob));
        assert_ne!(
            ino(&root.join("bin/run.sh")),
            ino(&cache.path(&BlobHash::of(b"#!/bin/sh\necho hi\n")))
        );
        assert_eq!(mode(&model_blob), 0o444);

        // Idempotent, and nothing temporary is left.
        assert_eq!(materialize(&cache, &versions, &v).await.unwrap(), root);
        let names: Vec<_> = std::fs::read_dir(&versions)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(v.id.to_string())]);

        remove_tree(&root).await.unwrap();
        assert!(!root.exists());
    }

    #[tokio::test]
    async fn materialize_refuses_missing_blobs_and_forged_ids() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path().join("blobs")).unwrap();
        let versions = dir.path().join("versions");
        let v = version(vec![entry("model.py", b"absent", FileMode::Regular)]);
        let err = materialize(&cache, &versions, &v).await.unwrap_err();
        assert!(matches!(err, SyncError::NotCached { .. }), "{err}");
        assert!(err.to_string().contains("model.py"), "{err}");
        assert_eq!(std::fs::read_dir(&versions).unwrap().count(), 0);

        let mut forged = v.clone();
        forged.files[0].hash = BlobHash::of(b"something else");
        let err = materialize(&cache, &versions, &forged).await.unwrap_err();
        assert!(matches!(err, SyncError::IdMismatch { .. }), "{err}");

        // The id covers the dependencies too: another one under the same id is refused.
        put(&cache, b"absent").await;
        let mut with_dependency = v.clone();
        with_dependency.dependencies = vec![mycel_core::ResolvedDependency {
            component: "helper".into(),
            seq: 1,
            id: VersionId(BlobHash::of(b"helper")),
        }];
        with_dependency.id = with_dependency.content_id();
        materialize(&cache, &versions, &with_dependency)
            .await
            .unwrap();
        with_dependency.dependencies[0].seq = 2;
        let err = materialize(&cache, &versions, &with_dependency)
            .await
            .unwrap_err();
        assert!(matches!(err, SyncError::IdMismatch { .. }), "{err}");
    }

    /// Starts a real control plane on 127.0.0.1:0 and returns an admin client.
    async fn control_plane(
        data_dir: &Path,
    ) -> (
        Client,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = mycel_control::Config {
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            max_blob_bytes: 1 << 20,
            lost_after: mycel_control::DEFAULT_LOST_AFTER,
            tls: false,
            tls_names: Vec::new(),
            clock: mycel_control::Clock::system(),
            require_signed: false,
        };
        let server = tokio::spawn(async move {
            mycel_control::run(config, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
        let url_file = data_dir.join(mycel_control::URL_FILE);
        let mut url = None;
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&url_file) {
                if text.ends_with('\n') {
                    url = Some(text.trim().to_owned());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let url = url.expect("control plane did not write server.url within 5 s");
        let token =
            std::fs::read_to_string(data_dir.join(mycel_control::auth::ADMIN_TOKEN_FILE)).unwrap();
        let client = Client::new(&url, Some(token.trim().to_owned())).unwrap();
        (client, stop_tx, server)
    }

    async fn push(client: &Client, files: &[(&str, &[u8])]) -> Version {
        let mut entries = Vec::new();
        for (path, bytes) in files {
            client
                .put_blob(BlobHash::of(bytes), Bytes::copy_from_slice(bytes))
                .await
                .unwrap();
            entries.push(entry(path, bytes, FileMode::Regular));
        }
        client.create_version("x", entries).await.unwrap().version
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sync_fetches_only_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (client, stop_tx, server) = control_plane(&dir.path().join("server")).await;
        let manifest = b"[component]\nname = \"x\"\nentrypoint = \"model:M\"\n";
        let weights = vec![7u8; 300_000];
        let v1 = push(
            &client,
            &[
                ("mycel.toml", manifest),
                ("model.py", b"class M: pass\n"),
                ("weights.bin", &weights),
                // A duplicate blob: fetched once.
                ("same.bin", &weights),
            ],
        )
        .await;

        let cache = BlobCache::open(dir.path().join("agent/blobs")).unwrap();
        let fetched = Fetched::default();
        let report = sync_version(&client, &cache, &v1, &fetched).await.unwrap();
        assert_eq!(
            report,
            SyncReport {
                blobs_fetched: 3,
                bytes_fetched: (manifest.len() + 14 + weights.len()) as u64,
                blobs_cached: 0,
            }
        );
        // Progress counted every byte it fetched, of what it had to.
        assert_eq!(fetched.done.load(Ordering::Relaxed), report.bytes_fetched);
        assert_eq!(fetched.total.load(Ordering::Relaxed), report.bytes_fetched);
        assert_eq!(fetched.describe(), "0.3 of 0.3 MiB fetched");
        for file in &v1.files {
            assert!(cache.has(&file.hash).await.unwrap(), "{}", file.path);
        }

        let again = sync_version(&client, &cache, &v1, &Fetched::default())
            .await
            .unwrap();
        assert_eq!(
            again,
            SyncReport {
                blobs_fetched: 0,
                bytes_fetched: 0,
                blobs_cached: 3,
            }
        );

        let new_model = b"class M:\n    changed = True\n";
        let v2 = push(
            &client,
            &[
                ("mycel.toml", manifest),
                ("model.py", new_model),
                ("weights.bin", &weights),
                ("same.bin", &weights),
            ],
        )
        .await;
        let report = sync_version(&client, &cache, &v2, &Fetched::default())
            .await
            .unwrap();
        assert_eq!(
            report,
            SyncReport {
                blobs_fetched: 1,
                bytes_fetched: new_model.len() as u64,
                blobs_cached: 2,
            }
        );
        let root = materialize(&cache, &dir.path().join("agent/versions"), &v2)
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join("model.py")).unwrap(), new_model);
        assert_eq!(tmp_count(&cache), 0);

        // A blob the server does not have: the error names it and nothing is kept.
        let absent = version(vec![entry("model.py", b"never pushed", FileMode::Regular)]);
        let err = sync_version(&client, &cache, &absent, &Fetched::default())
            .await
            .unwrap_err();
        let hash = BlobHash::of(b"never pushed");
        assert!(matches!(err, SyncError::Fetch { .. }), "{err}");
        assert!(err.to_string().contains(&hash.to_string()), "{err}");
        assert!(!cache.has(&hash).await.unwrap());

        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
