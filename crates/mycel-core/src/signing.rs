//! Signed versions in the OpenSSF Model Signing format, so that the `model-signing`
//! tools verify what mycel signs and mycel verifies what they sign with a key.
//!
//! A signature is a file, `model.sig`, inside the version it signs: a sigstore bundle
//! whose DSSE envelope carries an in-toto statement listing every file's path and
//! digest, signed with ECDSA P-256. Signing and checking are pure: callers hash the
//! files and hand over the digests.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The signature's file name inside a version, as `model_signing` names it.
pub const SIGNATURE_FILE: &str = "model.sig";

/// Paths a signature never covers: the signature itself and git's files, as
/// `model_signing` leaves them out by default. Anything else in a version must be signed.
pub const UNSIGNED_PATHS: [&str; 5] = [
    SIGNATURE_FILE,
    ".git",
    ".gitattributes",
    ".github",
    ".gitignore",
];

const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// Whether a signature leaves `path` (a version's relative path) out.
pub fn is_unsigned_path(path: &str) -> bool {
    let first = path.split('/').next().unwrap_or(path);
    UNSIGNED_PATHS.contains(&first)
}

/// How a signature's files were hashed; the checker hashes the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256, what `model_signing` uses by default and mycel signs with.
    Sha256,
    /// BLAKE3, which the `model_signing` library can use; the same hash as a blob's name.
    Blake3,
}

impl HashAlgorithm {
    fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Blake3 => "blake3",
        }
    }

    fn parse(name: &str) -> Result<Self, SignatureError> {
        match name {
            "sha256" => Ok(HashAlgorithm::Sha256),
            "blake3" => Ok(HashAlgorithm::Blake3),
            other => Err(SignatureError::Unsupported(format!(
                "files hashed with {other:?}; expected sha256 or blake3"
            ))),
        }
    }
}

/// A key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM private key on P-256.
    #[error("not an EC P-256 private key in PEM (PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"): {0}")]
    Private(String),
    /// Not a PEM public key on P-256.
    #[error("not an EC P-256 public key in PEM (\"PUBLIC KEY\"): {0}")]
    Public(String),
}

/// Why a version's signature does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The version has no signature file.
    #[error("unsigned: the version has no {SIGNATURE_FILE}; sign it with `mycel push DIR --sign KEY` or `model_signing sign key`")]
    Unsigned,
    /// The signature file is not a model signature.
    #[error("{SIGNATURE_FILE} is not a model signature: {0}")]
    Malformed(String),
    /// A signature this verifier does not check.
    #[error("unsupported signature: {0}")]
    Unsupported(String),
    /// Signed with a key that is not trusted here.
    #[error("signed by an unknown key (hint {hint}); trusted here: {trusted}")]
    UnknownKey {
        /// The bundle's key hint, or `none`.
        hint: String,
        /// The trusted keys' hints.
        trusted: String,
    },
    /// The signature does not verify with the key it names.
    #[error("the signature does not verify with key {hint}: the signed statement was altered")]
    BadSignature {
        /// The key tried.
        hint: String,
    },
    /// The signed files and the version's files differ.
    #[error("files differ from the signed ones: {}", describe_mismatch(.changed, .missing, .extra))]
    Mismatch {
        /// Files whose content is not the signed content.
        changed: Vec<String>,
        /// Signed files the version lacks.
        missing: Vec<String>,
        /// Files of the version the signature does not cover.
        extra: Vec<String>,
    },
}

fn describe_mismatch(changed: &[String], missing: &[String], extra: &[String]) -> String {
    let mut parts = Vec::new();
    for (what, files) in [
        ("changed", changed),
        ("missing", missing),
        ("not signed", extra),
    ] {
        if !files.is_empty() {
            let mut listed = files.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if files.len() > 5 {
                listed.push_str(&format!(" and {} more", files.len() - 5));
            }
            parts.push(format!("{what}: {listed}"));
        }
    }
    parts.join("; ")
}

/// A private signing key (ECDSA P-256).
pub struct PrivateKey(p256::ecdsa::SigningKey);

impl PrivateKey {
    /// A key from 32 random bytes; `None` for the rare bytes that are no key (zero or
    /// past the curve's order): draw again.
    pub fn from_random(bytes: &[u8; 32]) -> Option<Self> {
        p256::ecdsa::SigningKey::from_slice(bytes).ok().map(Self)
    }

    /// Reads a PEM private key: PKCS#8 (`openssl genpkey`, `mycel key generate`) or
    /// SEC1 (`openssl ecparam -genkey`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(text) {
            return Ok(Self(key));
        }
        p256::SecretKey::from_sec1_pem(text)
            .map(|secret| Self(secret.into()))
            .map_err(|e| KeyError::Private(e.to_string()))
    }

    /// The key as PKCS#8 PEM, which `model_signing sign key --private_key` reads.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| KeyError::Private(e.to_string()))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.public().hint())
    }
}

/// A public key that checks signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(p256::ecdsa::VerifyingKey);

impl PublicKey {
    /// Reads a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        p256::ecdsa::VerifyingKey::from_public_key_pem(text)
            .map(Self)
            .map_err(|e| KeyError::Public(e.to_string()))
    }

    /// The key as PEM SubjectPublicKeyInfo, 64 columns, LF line ends.
    pub fn to_pem(&self) -> String {
        // Encoding a valid point into SPKI cannot fail; an empty string would only make
        // the hint unmatchable, never a wrong key match.
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// The hint a bundle names its key by: SHA-256 of the PEM text, in hex, as
    /// `model_signing` computes it.
    pub fn hint(&self) -> String {
        hex(&Sha256::digest(self.to_pem().as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.hint())
    }
}

/// One signed file: its relative path and SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Relative path with `/` separators.
    pub path: String,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// Signs `files` (every file of the model except [`UNSIGNED_PATHS`]) as the model
/// `model`; returns the bundle to store as [`SIGNATURE_FILE`]. ECDSA here is
/// deterministic (RFC 6979): the same files and key give the same bytes, so pushing the
/// same signed source twice is one version.
pub fn sign(model: &str, files: &[FileDigest], key: &PrivateKey) -> Vec<u8> {
    let mut files: Vec<&FileDigest> = files
        .iter()
        .filter(|f| !is_unsigned_path(&f.path))
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut root = Sha256::new();
    for f in &files {
        root.update(f.sha256);
    }
    let statement = Statement {
        kind: STATEMENT_TYPE.to_owned(),
        subject: vec![Subject {
            name: model.to_owned(),
            digest: SubjectDigest {
                sha256: hex(&root.finalize()),
            },
        }],
        predicate_type: PREDICATE_TYPE.to_owned(),
        predicate: Predicate {
            serialization: Serialization {
                method: "files".to_owned(),
                hash_type: HashAlgorithm::Sha256.name().to_owned(),
                allow_symlinks: false,
                ignore_paths: UNSIGNED_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            },
            resources: files
                .iter()
                .map(|f| Resource {
                    name: f.path.clone(),
                    algorithm: HashAlgorithm::Sha256.name().to_owned(),
                    digest: hex(&f.sha256),
                })
                .collect(),
        },
    };
    // Serializing these plain structs cannot fail.
    let payload = serde_json::to_vec(&statement).unwrap_or_default();
    let signature: p256::ecdsa::Signature = key.0.sign(&pae(PAYLOAD_TYPE, &payload));
    let bundle = Bundle {
        media_type: BUNDLE_MEDIA_TYPE.to_owned(),
        verification_material: VerificationMaterial {
            public_key: Some(KeyHint {
                hint: key.public().hint(),
            }),
            tlog_entries: Some(Vec::new()),
            other: BTreeMap::new(),
        },
        dsse_envelope: Envelope {
            payload: BASE64.encode(&payload),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![EnvelopeSignature {
                sig: BASE64.encode(signature.to_der().as_bytes()),
                keyid: String::new(),
            }],
        },
    };
    serde_json::to_vec(&bundle).unwrap_or_default()
}

/// A parsed signature file, not yet verified.
#[derive(Debug)]
pub struct Signature {
    hint: Option<String>,
    payload: Vec<u8>,
    signature: p256::ecdsa::Signature,
}

impl Signature {
    /// Parses a signature file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let bundle: Bundle = serde_json::from_slice(bytes)
            .map_err(|e| SignatureError::Malformed(format!("not a sigstore bundle: {e}")))?;
        if !bundle
            .media_type
            .starts_with("application/vnd.dev.sigstore.bundle")
        {
            return Err(SignatureError::Malformed(format!(
                "media type {:?}; expected {BUNDLE_MEDIA_TYPE}",
                bundle.media_type
            )));
        }
        let material = bundle.verification_material;
        if material.public_key.is_none()
            && ["certificate", "x509CertificateChain"]
                .iter()
                .any(|k| material.other.contains_key(*k))
        {
            return Err(SignatureError::Unsupported(
                "signed with a certificate; mycel trusts keys: sign with `model_signing sign key` or `mycel push --sign`".into(),
            ));
        }
        let envelope = bundle.dsse_envelope;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(SignatureError::Malformed(format!(
                "payload type {:?}; expected {PAYLOAD_TYPE}",
                envelope.payload_type
            )));
        }
        let [only] = envelope.signatures.as_slice() else {
            return Err(SignatureError::Malformed(format!(
                "{} signatures in the envelope; expected one",
                envelope.signatures.len()
            )));
        };
        let payload = BASE64
            .decode(&envelope.payload)
            .map_err(|e| SignatureError::Malformed(format!("payload is not base64: {e}")))?;
        let der = BASE64
            .decode(&only.sig)
            .map_err(|e| SignatureError::Malformed(format!("signature is not base64: {e}")))?;
        let signature = p256::ecdsa::Signature::from_der(&der).map_err(|_| {
            SignatureError::Unsupported(
                "the signature is not a DER ECDSA P-256 signature; mycel checks P-256 keys".into(),
            )
        })?;
        Ok(Self {
            hint: material.public_key.map(|k| k.hint),
            payload,
            signature,
        })
    }

    /// The signer's key hint, if the bundle names one.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// What the signature claims, without checking who signed it: for showing a
    /// version, and for the control plane's shape check.
    pub fn claims(&self) -> Result<SignedFiles, SignatureError> {
        SignedFiles::from_payload(&self.payload)
    }

    /// Checks the signature with whichever of `trusted` it names (or, without a hint,
    /// any that verifies) and returns the files it signs.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<SignedFiles, SignatureError> {
        let message = pae(PAYLOAD_TYPE, &self.payload);
        let named = self
            .hint
            .as_ref()
            .and_then(|hint| trusted.iter().find(|k| k.hint() == *hint));
        let verified = match (named, &self.hint) {
            (Some(key), _) => {
                key.0
                    .verify(&message, &self.signature)
                    .map_err(|_| SignatureError::BadSignature { hint: key.hint() })?;
                true
            }
            (None, Some(_)) => false,
            (None, None) => trusted
                .iter()
                .any(|k| k.0.verify(&message, &self.signature).is_ok()),
        };
        if !verified {
            return Err(SignatureError::UnknownKey {
                hint: self.hint.clone().unwrap_or_else(|| "none".into()),
                trusted: if trusted.is_empty() {
                    "no keys".into()
                } else {
                    trusted
                        .iter()
                        .map(|k| k.hint())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        self.claims()
    }
}

/// The files a signature covers, path to hex digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedFiles {
    /// The model name the statement is about.
    pub model: String,
    /// How the digests were made.
    pub algorithm: HashAlgorithm,
    /// Path to lowercase hex digest.
    pub files: BTreeMap<String, String>,
}

impl SignedFiles {
    fn from_payload(payload: &[u8]) -> Result<Self, SignatureError> {
        let statement: Statement = serde_json::from_slice(payload).map_err(|e| {
            SignatureError::Malformed(format!("the payload is not an in-toto statement: {e}"))
        })?;
        if statement.kind != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
            return Err(SignatureError::Unsupported(format!(
                "statement {:?} with predicate {:?}; expected {STATEMENT_TYPE} with {PREDICATE_TYPE}",
                statement.kind, statement.predicate_type
            )));
        }
        let serialization = &statement.predicate.serialization;
        if serialization.method != "files" {
            return Err(SignatureError::Unsupported(format!(
                "serialization {:?}; mycel checks signatures made file by file (\"files\")",
                serialization.method
            )));
        }
        let algorithm = HashAlgorithm::parse(&serialization.hash_type)?;
        let [subject] = statement.subject.as_slice() else {
            return Err(SignatureError::Malformed(format!(
                "{} subjects; expected one",
                statement.subject.len()
            )));
        };
        let mut root = Sha256::new();
        let mut files = BTreeMap::new();
        for resource in &statement.predicate.resources {
            if resource.algorithm != algorithm.name() {
                return Err(SignatureError::Malformed(format!(
                    "{} is hashed with {}, the statement with {}",
                    resource.name,
                    resource.algorithm,
                    algorithm.name()
                )));
            }
            let digest = unhex(&resource.digest).ok_or_else(|| {
                SignatureError::Malformed(format!("{}: digest is not hex", resource.name))
            })?;
            root.update(&digest);
            if files
                .insert(resource.name.clone(), resource.digest.to_ascii_lowercase())
                .is_some()
            {
                return Err(SignatureError::Malformed(format!(
                    "{} is listed twice",
                    resource.name
                )));
            }
        }
        if !subject
            .digest
            .sha256
            .eq_ignore_ascii_case(&hex(&root.finalize()))
        {
            return Err(SignatureError::Malformed(
                "the statement's subject digest does not cover its files".into(),
            ));
        }
        Ok(Self {
            model: subject.name.clone(),
            algorithm,
            files,
        })
    }

    /// Compares the signed files with `actual` (every file of the version, path to hex
    /// digest made with [`SignedFiles::algorithm`]); [`UNSIGNED_PATHS`] are left out.
    pub fn check(&self, actual: &BTreeMap<String, String>) -> Result<(), SignatureError> {
        let mut changed = Vec::new();
        let mut extra = Vec::new();
        for (path, digest) in actual {
            if is_unsigned_path(path) {
                continue;
            }
            match self.files.get(path) {
                Some(signed) if signed.eq_ignore_ascii_case(digest) => {}
                Some(_) => changed.push(path.clone()),
                None => extra.push(path.clone()),
            }
        }
        let missing: Vec<String> = self
            .files
            .keys()
            .filter(|p| !actual.contains_key(*p))
            .cloned()
            .collect();
        if changed.is_empty() && missing.is_empty() && extra.is_empty() {
            Ok(())
        } else {
            Err(SignatureError::Mismatch {
                changed,
                missing,
                extra,
            })
        }
    }
}

/// The digests a version's file list already holds, for signatures made with BLAKE3
/// (a blob's name is the BLAKE3 hash of its bytes).
pub fn blake3_digests(files: &[crate::FileEntry]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|f| (f.path.to_string(), f.hash.to_hex()))
        .collect()
}

/// SHA-256 of everything `reader` yields, streamed.
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// SHA-256 fed piece by piece, for bytes that arrive in chunks.
#[derive(Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// DSSE's pre-authentication encoding: what is actually signed.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: VerificationMaterial,
    dsse_envelope: Envelope,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<KeyHint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tlog_entries: Option<Vec<serde_json::Value>>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct KeyHint {
    #[serde(default)]
    hint: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeSignature {
    sig: String,
    #[serde(default)]
    keyid: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Serialize, Deserialize)]
struct Subject {
    name: String,
    digest: SubjectDigest,
}

#[derive(Serialize, Deserialize)]
struct SubjectDigest {
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<Resource>,
}

#[derive(Serialize, Deserialize)]
struct Serialization {
    method: String,
    hash_type: String,
    #[serde(default)]
    allow_symlinks: bool,
    #[serde(default)]
    ignore_paths: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Lcg;

    fn test_key(seed: u8) -> PrivateKey {
        PrivateKey::from_random(&[seed; 32]).unwrap()
    }

    fn digest(path: &str, content: &[u8]) -> FileDigest {
        FileDigest {
            path: path.to_owned(),
            sha256: Sha256::digest(content).into(),
        }
    }

    fn actual(files: &[FileDigest]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|f| (f.path.clone(), hex(&f.sha256)))
            .collect()
    }

    #[test]
    fn signs_and_verifies_deterministically() {
        let files = vec![
            digest("mycel.toml", b"[component]\nname = \"m\"\n"),
            digest("model.py", b"class Model: pass\n"),
            digest("weights/w.bin", &[0u8; 1000]),
        ];
        let key = test_key(7);
        let bundle = sign("m", &files, &key);
        assert_eq!(bundle, sign("m", &files, &key), "RFC 6979 signing");
        let signature = Signature::parse(&bundle).unwrap();
        assert_eq!(signature.hint(), Some(key.public().hint().as_str()));
        let signed = signature
            .verify(&[test_key(1).public(), key.public()])
            .unwrap();
        assert_eq!(signed.model, "m");
        assert_eq!(signed.algorithm, HashAlgorithm::Sha256);
        signed.check(&actual(&files)).unwrap();
    }

    #[test]
    fn unknown_key_and_forged_statement_are_refused() {
        let files = vec![digest("model.py", b"a")];
        let bundle = sign("m", &files, &test_key(7));
        let signature = Signature::parse(&bundle).unwrap();
        assert!(matches!(
            signature.verify(&[test_key(8).public()]),
            Err(SignatureError::UnknownKey { .. })
        ));
        // Swap in a statement for other content, keeping the signature.
        let mut value: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
        let other = sign("m", &[digest("model.py", b"evil")], &test_key(9));
        let other: serde_json::Value = serde_json::from_slice(&other).unwrap();
        value["dsseEnvelope"]["payload"] = other["dsseEnvelope"]["payload"].clone();
        let forged = Signature::parse(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert!(matches!(
            forged.verify(&[test_key(7).public()]),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let key = test_key(3);
        let pem = key.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(back.public(), key.public());
        let public = PublicKey::from_pem(&key.public().to_pem()).unwrap();
        assert_eq!(public, key.public());
        assert!(key
            .public()
            .to_pem()
            .ends_with("-----END PUBLIC KEY-----\n"));
        assert!(matches!(
            PublicKey::from_pem("nonsense"),
            Err(KeyError::Public(_))
        ));
        assert!(matches!(
            PrivateKey::from_pem(""),
            Err(KeyError::Private(_))
        ));
    }

    #[test]
    fn unsigned_paths_are_left_out() {
        assert!(is_unsigned_path("model.sig"));
        assert!(is_unsigned_path(".github/workflows/ci.yml"));
        assert!(!is_unsigned_path("sub/model.sig"));
        assert!(!is_unsigned_path("model.py"));
        let files = vec![digest("model.py", b"a"), digest(".gitignore", b"*.pyc")];
        let bundle = sign("m", &files, &test_key(1));
        let signed = Signature::parse(&bundle).unwrap().claims().unwrap();
        assert_eq!(signed.files.len(), 1);
        let mut with_sig = actual(&files);
        with_sig.insert("model.sig".into(), "00".into());
        signed.check(&with_sig).unwrap();
    }

    #[test]
    fn malformed_bundles_are_named() {
        for bad in [&b"not json"[..], b"{}", b"{\"mediaType\":\"x\"}"] {
            assert!(matches!(
                Signature::parse(bad),
                Err(SignatureError::Malformed(_))
            ));
        }
    }

    /// Any change to the files (content, a file dropped, a file added) is named, and
    /// nothing else is.
    #[test]
    fn every_difference_is_named() {
        let key = test_key(5);
        for seed in 0..200u64 {
            let mut rng = Lcg(seed);
            let count = 1 + rng.below(8) as usize;
            let files: Vec<FileDigest> = (0..count)
                .map(|i| {
                    let dir = if rng.chance(30) { "pkg/" } else { "" };
                    let content: Vec<u8> =
                        (0..rng.below(64)).map(|_| rng.below(256) as u8).collect();
                    digest(&format!("{dir}f{i}.py"), &content)
                })
                .collect();
            let signed = Signature::parse(&sign("m", &files, &key))
                .unwrap()
                .verify(&[key.public()])
                .unwrap();
            assert_eq!(signed.check(&actual(&files)), Ok(()), "seed {seed}");
            let mut now = actual(&files);
            let victim = files[rng.below(count as u64) as usize].path.clone();
            let expected = match rng.below(3) {
                0 => {
                    now.insert(victim.clone(), hex(&Sha256::digest(b"tampered")));
                    (vec![victim], vec![], vec![])
                }
                1 => {
                    now.remove(&victim);
                    (vec![], vec![victim], vec![])
                }
                _ => {
                    let added = format!("{victim}.extra");
                    now.insert(added.clone(), "00".into());
                    (vec![], vec![], vec![added])
                }
            };
            match signed.check(&now) {
                Err(SignatureError::Mismatch {
                    changed,
                    missing,
                    extra,
                }) => {
                    assert_eq!((changed, missing, extra), expected, "seed {seed}")
                }
                other => panic!("seed {seed}: expected a mismatch, got {other:?}"),
            }
        }
    }
}
