//! Finding the server and token: flags, then environment, then the local data directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mycel_client::Client;
use mycel_control::auth::ADMIN_TOKEN_FILE;
use mycel_control::URL_FILE;

use crate::cli::{ConnectArgs, DataArgs};

/// The data directory: `--data`, `MYCEL_DATA`, `$XDG_DATA_HOME/mycel`, `~/.local/share/mycel`.
pub fn data_dir(args: &DataArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.data {
        return Ok(dir.clone());
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("mycel"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/mycel")),
        None => bail!("no data directory: pass --data DIR or set MYCEL_DATA"),
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A client for the server named by flags, environment or the data directory.
pub fn client(args: &ConnectArgs) -> anyhow::Result<Client> {
    let (server, token) = server_and_token(args)?;
    let ca = ca_pem(args.ca.as_deref(), &data_dir(&args.data)?)?;
    Ok(Client::with_ca(&server, token, ca.as_deref())?)
}

/// The fleet's CA certificate: `--ca FILE`, or the one in `data`'s TLS directory when
/// there is one (on the control plane's machine, or a node that joined).
pub fn ca_pem(flag: Option<&Path>, data: &Path) -> anyhow::Result<Option<String>> {
    if let Some(path) = flag {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading --ca {}", path.display()))?;
        return Ok(Some(pem));
    }
    let kept = data.join(mycel_control::TLS_DIR).join(mycel_tls::CA_FILE);
    match std::fs::read_to_string(&kept) {
        Ok(pem) => Ok(Some(pem)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", kept.display())),
    }
}

/// The gateway named by `flag` (`--gateway`, `MYCEL_GATEWAY`), else the one whose URL
/// `mycel up` or `mycel gateway` left in the data directory.
pub fn gateway_url(flag: Option<&str>, data: &Path) -> anyhow::Result<String> {
    if let Some(url) = flag.filter(|url| !url.trim().is_empty()) {
        return Ok(url.trim().trim_end_matches('/').to_owned());
    }
    let file = data.join(mycel_gateway::URL_FILE);
    match read_trimmed(&file) {
        Some(url) => Ok(url.trim_end_matches('/').to_owned()),
        None => bail!(
            "no gateway to talk to: pass --gateway URL, set MYCEL_GATEWAY, or start one (`mycel up`); {} is missing",
            file.display()
        ),
    }
}

/// An HTTP client that trusts the fleet's CA (`--ca`, or the data directory's) besides
/// the system's roots, for https gateways.
pub fn http_client(ca: Option<&Path>, data: &Path) -> anyhow::Result<reqwest::Client> {
    let mut http = reqwest::Client::builder();
    if let Some(pem) = ca_pem(ca, data)? {
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            http = http.add_root_certificate(cert);
        }
    }
    Ok(http.build()?)
}

/// The server URL and token named by flags, environment or the data directory.
pub fn server_and_token(args: &ConnectArgs) -> anyhow::Result<(String, Option<String>)> {
    let data = data_dir(&args.data)?;
    // `MYCEL_SERVER=` (set but empty) means no server given, as if unset.
    let server = match args.server.as_ref().filter(|url| !url.trim().is_empty()) {
        Some(url) => url.clone(),
        None => read_trimmed(&data.join(URL_FILE)).with_context(|| {
            format!(
                "no server to talk to ({} is missing): `mycel up` runs one on this machine; for a server elsewhere pass --server URL or set MYCEL_SERVER",
                data.join(URL_FILE).display()
            )
        })?,
    };
    let token = args
        .token
        .clone()
        .or_else(|| read_trimmed(&data.join(ADMIN_TOKEN_FILE)));
    Ok((server, token))
}
