//! Bearer tokens: the admin token written on first start, and checking a presented one.
//!
//! Only a token's BLAKE3 hash is stored, and lookups go by that hash, so the store never
//! holds a usable secret and a comparison leaks nothing about the stored value.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::store::{Store, StoreError};
use crate::Error;

/// File in the data directory holding the admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Name recorded as `pushed_by` for the admin token.
pub const ADMIN: &str = "admin";

/// Makes sure `DATA/admin.token` exists and is known to the store.
///
/// On first start a fresh random token is written; afterwards the file is kept as is,
/// so a restart never invalidates what clients hold.
pub fn ensure_admin_token(store: &dyn Store, data_dir: &Path) -> Result<(), Error> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let io_err = |source| Error::DataDir {
        path: path.clone(),
        source,
    };
    let token = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token().map_err(io_err)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err)?;
            writeln!(file, "{token}").map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            token
        }
        Err(e) => return Err(io_err(e)),
    };
    if token.is_empty() {
        return Err(io_err(std::io::Error::other(
            "the admin token file is empty",
        )));
    }
    store.put_token(blake3::hash(token.as_bytes()).as_bytes(), ADMIN)?;
    Ok(())
}

/// The name of the token presented, or `None` if it is unknown.
pub fn token_name(store: &dyn Store, token: &str) -> Result<Option<String>, StoreError> {
    store.token_name(blake3::hash(token.as_bytes()).as_bytes())
}

/// 32 random bytes as hex, prefixed so a leaked token is easy to recognize and scan for.
fn new_token() -> std::io::Result<String> {
    new_secret("mycel_")
}

/// 32 random bytes as hex after `prefix` (`mycel_join_`, `mycel_node_`: what a leaked
/// secret is says itself).
pub fn new_secret(prefix: &str) -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}
