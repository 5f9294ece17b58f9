//! The node's trust policy: with trusted keys, a version runs only if its `model.sig`
//! is signed by one of them and covers exactly the files laid out on this node.

use std::collections::BTreeMap;
use std::path::Path;

use mycel_core::signing::{
    self, HashAlgorithm, PublicKey, Signature, SignatureError, SIGNATURE_FILE,
};
use mycel_core::Version;

/// Why a version may not run here.
#[derive(Debug, thiserror::Error)]
pub enum RefusedError {
    /// The signature does not hold.
    #[error("signature check failed for {version}: {source}")]
    Signature {
        /// The version refused.
        version: String,
        /// Why.
        source: SignatureError,
    },
    /// A laid-out file could not be read.
    #[error("signature check for {version}: reading {path}: {source}")]
    Io {
        /// The version being checked.
        version: String,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Checks `version`, laid out in `dir`, against `trusted`; returns the signer's key
/// hint. Hashing reads every file, so this runs on a blocking thread.
pub fn check(version: &Version, dir: &Path, trusted: &[PublicKey]) -> Result<String, RefusedError> {
    let refused = |source| RefusedError::Signature {
        version: version.label(),
        source,
    };
    if !version
        .files
        .iter()
        .any(|f| f.path.as_str() == SIGNATURE_FILE)
    {
        return Err(refused(SignatureError::Unsigned));
    }
    let io = |path: &str| {
        let version = version.label();
        let path = path.to_owned();
        move |source| RefusedError::Io {
            version,
            path,
            source,
        }
    };
    let bytes = std::fs::read(dir.join(SIGNATURE_FILE)).map_err(io(SIGNATURE_FILE))?;
    let signature = Signature::parse(&bytes).map_err(refused)?;
    let signed = signature.verify(trusted).map_err(refused)?;
    let actual = match signed.algorithm {
        HashAlgorithm::Blake3 => signing::blake3_digests(&version.files),
        HashAlgorithm::Sha256 => {
            let mut digests = BTreeMap::new();
            for file in &version.files {
                let path = file.path.as_str();
                if signing::is_unsigned_path(path) {
                    continue;
                }
                let reader = std::fs::File::open(dir.join(path)).map_err(io(path))?;
                let digest = signing::sha256_reader(reader).map_err(io(path))?;
                digests.insert(path.to_owned(), signing::hex(&digest));
            }
            digests
        }
    };
    signed.check(&actual).map_err(refused)?;
    Ok(signature.hint().unwrap_or("a trusted key").to_owned())
}
