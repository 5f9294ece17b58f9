//! `mycel key generate`, `mycel verify NAME@N`, and the signing half of
//! `mycel push --sign`: signatures in the OpenSSF Model Signing format
//! (`mycel_core::signing`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures::TryStreamExt as _;
use mycel_core::signing::{
    self, FileDigest, HashAlgorithm, PrivateKey, PublicKey, Signature, SIGNATURE_FILE,
};
use mycel_core::{BlobHash, Version};
use serde::Serialize;

use crate::cli::{KeyGenerateArgs, VerifyArgs};
use crate::commands::list::parse_version_ref;
use crate::connect::client;
use crate::output;
use crate::walk::LocalFile;

pub fn generate(args: KeyGenerateArgs) -> anyhow::Result<()> {
    let private_path = with_suffix(&args.out, "key");
    let public_path = with_suffix(&args.out, "pub");
    let key = loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        if let Some(key) = PrivateKey::from_random(&bytes) {
            break key;
        }
    };
    let pem = key.to_pem()?;
    write_new(&private_path, pem.as_bytes(), 0o600, args.force)?;
    write_new(
        &public_path,
        key.public().to_pem().as_bytes(),
        0o644,
        args.force,
    )?;
    println!(
        "private key {} (keep it secret; `mycel push DIR --sign {}`)",
        private_path.display(),
        private_path.display()
    );
    println!(
        "public key  {} (give it to agents: `mycel agent --trust-key {}`)",
        public_path.display(),
        public_path.display()
    );
    println!("key hint    {}", key.public().hint());
    Ok(())
}

/// `PREFIX.suffix`, keeping any dots PREFIX has.
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes a file that must not exist yet (unless `force`), with `mode` from the start:
/// a private key is never readable by others, not even for a moment.
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} exists; pass --force to replace it, or --out PREFIX to write elsewhere",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!("writing {}", path.display())),
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a private key for `--sign`.
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--sign {}: cannot read the key", path.display()))?;
    PrivateKey::from_pem(&text).with_context(|| format!("--sign {}", path.display()))
}

/// Reads the public keys given with `--trust-key` or `--key`.
pub fn trust_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the public key", path.display()))?;
            PublicKey::from_pem(&text).with_context(|| path.display().to_string())
        })
        .collect()
}

/// Signs `files` (a component's files, without any old signature) as `model`: returns
/// the bundle to push as `model.sig`. Reads every file once for its SHA-256.
pub async fn sign_files(
    model: &str,
    files: &[LocalFile],
    key: &PrivateKey,
) -> anyhow::Result<Vec<u8>> {
    let sources: Vec<(String, PathBuf)> = files
        .iter()
        .map(|f| (f.entry.path.to_string(), f.source.clone()))
        .collect();
    let digests = tokio::task::spawn_blocking(move || {
        sources
            .into_iter()
            .map(|(path, source)| {
                let file = std::fs::File::open(&source)
                    .with_context(|| format!("reading {}", source.display()))?;
                let sha256 = signing::sha256_reader(file)
                    .with_context(|| format!("hashing {}", source.display()))?;
                Ok(FileDigest { path, sha256 })
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    Ok(signing::sign(model, &digests, key))
}

/// What `mycel verify` found, for `--json`.
#[derive(Debug, Serialize)]
struct Verified {
    version: String,
    signer: String,
    algorithm: &'static str,
    files: usize,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let (name, reference) = parse_version_ref(&args.target)?;
    let trusted = trust_keys(&args.keys)?;
    let client = client(&args.connect)?;
    let version = client.version(&name, &reference).await?;
    let label = version.label();
    let Some(entry) = version
        .files
        .iter()
        .find(|f| f.path.as_str() == SIGNATURE_FILE)
    else {
        bail!("{label} is unsigned: it has no {SIGNATURE_FILE}; push it with `mycel push DIR --sign KEY`");
    };
    let bytes = client.get_blob(entry.hash).await?;
    if BlobHash::of(&bytes) != entry.hash {
        bail!("the server sent {SIGNATURE_FILE} of {label} with other bytes than its hash names");
    }
    let signature = Signature::parse(&bytes).with_context(|| label.clone())?;
    let signed = signature.verify(&trusted).with_context(|| label.clone())?;
    let actual = match signed.algorithm {
        HashAlgorithm::Blake3 => signing::blake3_digests(&version.files),
        HashAlgorithm::Sha256 => sha256_digests(&client, &version).await?,
    };
    signed.check(&actual).with_context(|| label.clone())?;
    let report = Verified {
        version: label,
        signer: signature.hint().unwrap_or("a trusted key").to_owned(),
        algorithm: match signed.algorithm {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Blake3 => "blake3",
        },
        files: signed.files.len(),
    };
    if args.json {
        return output::json(&report);
    }
    println!(
        "{}: signature verified, {} files ({}), signed by key {}",
        report.version, report.files, report.algorithm, report.signer
    );
    Ok(())
}

/// SHA-256 of every signed file of `version`, streamed from the server; each blob is
/// checked against its BLAKE3 name on the way, so the server cannot swap content.
async fn sha256_digests(
    client: &mycel_client::Client,
    version: &Version,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut digests = BTreeMap::new();
    for file in &version.files {
        let path = file.path.as_str();
        if signing::is_unsigned_path(path) {
            continue;
        }
        let mut sha256 = signing::Sha256Hasher::default();
        let mut blake3 = blake3::Hasher::new();
        let mut stream = std::pin::pin!(client.blob_stream(file.hash).await?);
        while let Some(chunk) = stream.try_next().await? {
            sha256.update(&chunk);
            blake3.update(&chunk);
        }
        if BlobHash::from(blake3.finalize()) != file.hash {
            bail!("the server sent {path} with other bytes than its hash names");
        }
        digests.insert(path.to_owned(), signing::hex(&sha256.finish()));
    }
    Ok(digests)
}

/// Who signed `version`, as `mycel show` prints it: the key hint, without checking.
pub async fn signer(client: &mycel_client::Client, version: &Version) -> String {
    let Some(entry) = version
        .files
        .iter()
        .find(|f| f.path.as_str() == SIGNATURE_FILE)
    else {
        return "unsigned".into();
    };
    match client.get_blob(entry.hash).await {
        Ok(bytes) => match Signature::parse(&bytes) {
            Ok(signature) => format!(
                "key {} (not checked here; `mycel verify {} --key FILE` checks it)",
                signature.hint().unwrap_or("without a hint"),
                version.label()
            ),
            Err(e) => format!("{SIGNATURE_FILE} is unreadable: {e}"),
        },
        Err(e) => format!("cannot fetch {SIGNATURE_FILE}: {e}"),
    }
}
