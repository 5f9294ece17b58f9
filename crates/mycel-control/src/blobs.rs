//! The blob store: files named by the BLAKE3 hash of their bytes.
//!
//! A blob is written to a temporary file while its bytes are hashed, fsynced, and
//! renamed into place only if the hash matches the name it was sent under. A reader
//! therefore never sees a partial or wrong blob, and a failed upload leaves nothing.
//! Bytes stream through in chunks: a multi-GB weights file never sits in memory.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use mycel_core::BlobHash;
use tokio::io::AsyncWriteExt;

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes hash to something other than the name they came under.
    #[error("blob {expected} does not match its content: the bytes sent hash to {actual}")]
    HashMismatch {
        /// The name it was sent under.
        expected: BlobHash,
        /// What its bytes hash to.
        actual: BlobHash,
    },
    /// More bytes than the limit.
    #[error("blob {hash} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The blob.
        hash: BlobHash,
        /// The limit.
        limit: u64,
    },
    /// The body stream broke off.
    #[error("upload of blob {hash} broke off: {message}")]
    Body {
        /// The blob.
        hash: BlobHash,
        /// What the transport said.
        message: String,
    },
    /// The client sent nothing for too long mid-upload.
    #[error("upload of blob {hash} stalled: no bytes for {}s; nothing was kept, send it again", idle.as_secs())]
    Stalled {
        /// The blob.
        hash: BlobHash,
        /// How long it was silent.
        idle: std::time::Duration,
    },
    /// The disk failed.
    #[error("blob store: {0}")]
    Io(#[from] io::Error),
}

/// How long an upload may send nothing before it is given up: a client that stalls
/// must not hold a connection and a temp file forever.
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Blobs on the local filesystem under one directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    idle: std::time::Duration,
}

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `root`. Temp files a crashed
    /// process left behind (an upload or an aggregate cut short) are removed: nothing
    /// else writes there while no store is open.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover temp file");
            }
        }
        Ok(Self {
            root,
            idle: UPLOAD_IDLE,
        })
    }

    /// The same store, giving up on an upload silent for `idle`.
    pub fn with_upload_idle(self, idle: std::time::Duration) -> Self {
        Self { idle, ..self }
    }

    /// Where the blob lives: `ROOT/ab/abcdef…`, fanned out so no directory grows huge.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// The blob's size, or `None` if it is not stored.
    pub async fn size(&self, hash: &BlobHash) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(hash)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The size of each of `hashes` (`None`: not stored), in one blocking task: a push
    /// asks about every file of a component at once, and a task per file costs more
    /// than the check.
    pub async fn sizes(&self, hashes: Vec<BlobHash>) -> io::Result<Vec<Option<u64>>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            hashes
                .iter()
                .map(|hash| match std::fs::metadata(store.path(hash)) {
                    Ok(meta) => Ok(Some(meta.len())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Which of `hashes` are not stored, each once, in the order first asked.
    pub async fn missing(&self, mut hashes: Vec<BlobHash>) -> io::Result<Vec<BlobHash>> {
        let mut asked = std::collections::HashSet::with_capacity(hashes.len());
        hashes.retain(|hash| asked.insert(*hash));
        let sizes = self.sizes(hashes.clone()).await?;
        Ok(hashes
            .into_iter()
            .zip(sizes)
            .filter_map(|(hash, size)| size.is_none().then_some(hash))
            .collect())
    }

    /// Opens a stored blob for reading.
    pub async fn open_blob(&self, hash: &BlobHash) -> io::Result<Option<tokio::fs::File>> {
        match tokio::fs::File::open(self.path(hash)).await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole blob; for small ones such as manifests.
    pub async fn read(&self, hash: &BlobHash) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(hash)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A fresh path in the store's temp directory, for a file that [`BlobStore::adopt`]
    /// will take in.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}.{}", random_suffix()))
    }

    /// Takes in a finished file from [`BlobStore::temp_path`] under the hash of its
    /// bytes; returns the hash and size. The file is moved, not copied.
    pub async fn adopt(&self, tmp: &Path) -> io::Result<(BlobHash, u64)> {
        let path = tmp.to_owned();
        let (hash, size) = tokio::task::spawn_blocking(move || {
            let mut hasher = blake3::Hasher::new();
            hasher.update_mmap_rayon(&path)?;
            Ok::<_, io::Error>((
                BlobHash::from(hasher.finalize()),
                std::fs::metadata(&path)?.len(),
            ))
        })
        .await
        .map_err(io::Error::other)??;
        let dest = self.path(&hash);
        if tokio::fs::try_exists(&dest).await? {
            tokio::fs::remove_file(tmp).await?;
            return Ok((hash, size));
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(tmp, &dest).await?;
        sync_dir(dir).await?;
        Ok((hash, size))
    }

    /// Streams `body` into the store under `expected`, hashing as it goes.
    ///
    /// Returns the size and whether the blob is new. On any error, nothing is kept.
    pub async fn write<S, E>(
        &self,
        expected: BlobHash,
        body: S,
        limit: u64,
    ) -> Result<(u64, bool), BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}", expected.to_hex(), random_suffix()));
        let result = self.write_tmp(&tmp, expected, body, limit).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        let size = result?;
        let dest = self.path(&expected);
        if tokio::fs::try_exists(&dest).await? {
            tokio::fs::remove_file(&tmp).await?;
            return Ok((size, false));
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(&tmp, &dest).await?;
        sync_dir(dir).await?;
        Ok((size, true))
    }

    async fn write_tmp<S, E>(
        &self,
        tmp: &Path,
        expected: BlobHash,
        body: S,
        limit: u64,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(tmp).await?);
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        loop {
            let next = tokio::time::timeout(self.idle, body.next()).await;
            let Some(chunk) = next.map_err(|_| BlobError::Stalled {
                hash: expected,
                idle: self.idle,
            })?
            else {
                break;
            };
            let chunk = chunk.map_err(|e| BlobError::Body {
                hash: expected,
                message: e.to_string(),
            })?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(BlobError::TooLarge {
                    hash: expected,
                    limit,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        let actual = BlobHash::from(hasher.finalize());
        if actual != expected {
            return Err(BlobError::HashMismatch { expected, actual });
        }
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        Ok(size)
    }
}

/// Makes a rename durable: the directory entry must reach the disk too.
async fn sync_dir(dir: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // A clash only costs a retry by the client; fall back to the time if the OS RNG fails.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Stream<Item = Result<Bytes, String>> {
        let parts: Vec<Result<Bytes, String>> = data
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts)
    }

    fn leftovers(store: &BlobStore) -> usize {
        std::fs::read_dir(store.root.join("tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn stores_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf()).unwrap();
        let hash = BlobHash::of(b"hello world");
        assert_eq!(
            store
                .write(hash, chunks(b"hello world"), 100)
                .await
                .unwrap(),
            (11, true)
        );
        assert_eq!(
            store
                .write(hash, chunks(b"hello world"), 100)
                .await
                .unwrap(),
            (11, false)
        );
        assert_eq!(store.size(&hash).await.unwrap(), Some(11));
        assert_eq!(store.read(&hash).await.unwrap().unwrap(), b"hello world");
        assert_eq!(leftovers(&store), 0);
    }

    #[tokio::test]
    async fn missing_names_each_absent_blob_once_in_the_order_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf()).unwrap();
        let stored = BlobHash::of(b"hello");
        store.write(stored, chunks(b"hello"), 100).await.unwrap();
        let (a, b) = (BlobHash::of(b"a"), BlobHash::of(b"b"));
        let missing = store.missing(vec![b, stored, a, b, a]).await.unwrap();
        assert_eq!(missing, vec![b, a]);
        let sizes = store.sizes(vec![a, stored]).await.unwrap();
        assert_eq!(sizes, vec![None, Some(5)]);
    }

    #[tokio::test]
    async fn wrong_hash_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf()).unwrap();
        let claimed = BlobHash::of(b"something else");
        let err = store
            .write(claimed, chunks(b"hello"), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
        assert_eq!(store.size(&claimed).await.unwrap(), None);
        assert_eq!(leftovers(&store), 0);
    }

    #[tokio::test]
    async fn too_large_and_broken_bodies_keep_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf()).unwrap();
        let hash = BlobHash::of(b"0123456789");
        let err = store
            .write(hash, chunks(b"0123456789"), 5)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 5, .. }), "{err}");

        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"01")),
            Err("reset".to_string()),
        ]);
        let err = store.write(hash, broken, 100).await.unwrap_err();
        assert!(err.to_string().contains("reset"), "{err}");
        assert_eq!(store.size(&hash).await.unwrap(), None);
        assert_eq!(leftovers(&store), 0);
    }

    #[tokio::test]
    async fn a_stalled_upload_is_given_up_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf())
            .unwrap()
            .with_upload_idle(std::time::Duration::from_millis(100));
        let hash = BlobHash::of(b"0123456789");
        let stalled = futures::stream::iter(vec![Ok::<_, String>(Bytes::from_static(b"01"))])
            .chain(futures::stream::pending());
        let err = store.write(hash, stalled, 100).await.unwrap_err();
        assert!(matches!(err, BlobError::Stalled { .. }), "{err}");
        assert!(err.to_string().contains("stalled"), "{err}");
        assert_eq!(leftovers(&store), 0);
    }

    #[test]
    fn temp_files_a_crash_left_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_path_buf()).unwrap();
        std::fs::write(store.root.join("tmp").join("abc.123"), b"half a blob").unwrap();
        let store = BlobStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(leftovers(&store), 0);
    }
}
