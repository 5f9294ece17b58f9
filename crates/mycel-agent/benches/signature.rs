//! What an agent's signature check costs for a version with a large weights file,
//! against hashing that file as the agent does when it fetches it (BLAKE3, streamed).
//! `cargo bench -p mycel-agent --bench signature -- [MIB]` (default 500).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use mycel_core::signing::{self, FileDigest, PrivateKey, SIGNATURE_FILE};
use mycel_core::{BlobHash, ComponentPath, FileEntry, FileMode, Version, VersionId};

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path();
    let weights = root.join("weights.bin");
    write_random(&weights, mib << 20);
    std::fs::write(root.join("mycel.toml"), "[component]\nname = \"big\"\n").expect("manifest");

    let mut files = Vec::new();
    let mut digests = Vec::new();
    for name in ["mycel.toml", "weights.bin"] {
        let path = root.join(name);
        let bytes_hash = blake3_stream(&path);
        let size = std::fs::metadata(&path).expect("size").len();
        files.push(entry(name, bytes_hash, size));
        let sha256 =
            signing::sha256_reader(std::fs::File::open(&path).expect("open")).expect("sha256");
        digests.push(FileDigest {
            path: name.to_owned(),
            sha256,
        });
    }
    let key = PrivateKey::from_random(&[42; 32]).expect("a key");
    let bundle = signing::sign("big", &digests, &key);
    std::fs::write(root.join(SIGNATURE_FILE), &bundle).expect("model.sig");
    files.push(entry(
        SIGNATURE_FILE,
        BlobHash::of(&bundle),
        bundle.len() as u64,
    ));
    let version = Version {
        id: VersionId::of(&files),
        component: "big".into(),
        seq: 1,
        total_bytes: files.iter().map(|f| f.size).sum(),
        files,
        created_at_ms: 0,
        pushed_by: "bench".into(),
        description: String::new(),
        dependencies: Vec::new(),
    };
    let trusted = [key.public()];

    let check = best_of(3, || {
        mycel_agent::signature::check(&version, root, &trusted).expect("the signature holds");
    });
    let blake3 = best_of(3, || {
        blake3_stream(&weights);
    });
    let mb = mib as f64 * 1.048576;
    println!("version with a {mib} MiB weights file, best of 3, file in the page cache");
    println!(
        "signature check (SHA-256 of every file + ECDSA P-256): {:>7.3} s  {:>6.0} MB/s",
        check.as_secs_f64(),
        mb / check.as_secs_f64()
    );
    println!(
        "BLAKE3, streamed as the agent hashes a fetched blob:    {:>7.3} s  {:>6.0} MB/s",
        blake3.as_secs_f64(),
        mb / blake3.as_secs_f64()
    );
    println!(
        "check / hash: {:.2}",
        check.as_secs_f64() / blake3.as_secs_f64()
    );
}

fn entry(path: &str, hash: BlobHash, size: u64) -> FileEntry {
    FileEntry {
        path: ComponentPath::new(path).expect("a valid path"),
        hash,
        size,
        mode: FileMode::Regular,
    }
}

fn blake3_stream(path: &Path) -> BlobHash {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).expect("open"))
        .expect("read");
    hasher.finalize().into()
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Incompressible bytes, quickly (xorshift64).
fn write_random(path: &Path, len: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..len / chunk.len() {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).expect("write");
    }
    file.flush().expect("flush");
}
