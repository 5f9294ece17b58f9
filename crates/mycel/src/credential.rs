//! A joined node's own credential, kept in its data directory, and the join that makes
//! it. The node makes its secret itself and writes it down before it joins, sending the
//! server only its hash: an answer lost on the way changes nothing, since the node
//! already holds the credential and can ask what it was granted.

use std::path::Path;

use anyhow::Context;
use mycel_core::api::NodeGrant;
use mycel_core::ErrorCode;

/// Where a joined node keeps its credential, in its data directory.
const CREDENTIAL_FILE: &str = "node.credential";

/// A node's credential and, once the join went through, what it was granted.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeCredential {
    node: String,
    /// `None` while the join has not been confirmed.
    #[serde(default)]
    grant: Option<NodeGrant>,
    credential: String,
}

/// Who an agent is to the control plane.
pub struct Identity {
    /// The bearer token it presents.
    pub token: Option<String>,
    /// Its location.
    pub location: String,
    /// Its labels, granted ones last.
    pub labels: Vec<(String, String)>,
}

/// Where the agent stands with the control plane, from its flags and data directory.
pub struct JoinArgs<'a> {
    pub server: &'a str,
    /// The fleet's CA certificate, for an https control plane.
    pub ca: Option<&'a str>,
    pub name: &'a str,
    pub data: &'a Path,
    pub join: Option<&'a str>,
    pub location: Option<&'a str>,
    pub token: Option<&'a str>,
    pub labels: &'a [(String, String)],
}

/// A node that joined uses its own credential from DATA; with --join and none yet, it
/// joins first. A node that did not join presents the operator's token it was given.
pub async fn identity(args: &JoinArgs<'_>) -> anyhow::Result<Identity> {
    let path = args.data.join(CREDENTIAL_FILE);
    let mut saved = match read(&path)? {
        Some(saved) => saved,
        None => {
            if args.join.is_none() {
                let location = args.location.map(str::to_owned).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--location is needed for a node that does not join with --join TOKEN"
                    )
                })?;
                return Ok(Identity {
                    token: args.token.map(str::to_owned),
                    location,
                    labels: args.labels.to_vec(),
                });
            }
            let saved = NodeCredential {
                node: args.name.to_owned(),
                grant: None,
                credential: mycel_control::auth::new_secret("mycel_node_")?,
            };
            write(&path, &saved)?;
            saved
        }
    };
    if saved.node != args.name {
        anyhow::bail!(
            "{} holds node {:?}'s credential, not {:?}'s; start it with --name {} or give another --data",
            path.display(),
            saved.node,
            args.name,
            saved.node
        );
    }
    let grant = match saved.grant.clone() {
        Some(grant) => grant,
        None => {
            let grant = complete_join(args, &saved.credential, &path).await?;
            saved.grant = Some(grant.clone());
            write(&path, &saved)?;
            eprintln!(
                "joined as node {} in {}; its credential is in {}",
                saved.node,
                grant.location,
                path.display()
            );
            grant
        }
    };
    if let Some(location) = args.location.filter(|l| *l != grant.location) {
        anyhow::bail!(
            "node {} joined location {:?}; --location {location} cannot change that (revoke it and join again)",
            saved.node,
            grant.location
        );
    }
    let mut labels = args.labels.to_vec();
    labels.extend(grant.labels);
    Ok(Identity {
        token: Some(saved.credential),
        location: grant.location,
        labels,
    })
}

/// Joins with the node's own credential, or finds that an earlier try went through.
async fn complete_join(
    args: &JoinArgs<'_>,
    credential: &str,
    path: &Path,
) -> anyhow::Result<NodeGrant> {
    if let Some(token) = args.join {
        let hash = blake3::hash(credential.as_bytes()).to_hex().to_string();
        let joined = mycel_client::Client::with_ca(args.server, None, args.ca)?
            .join(args.name, token, Some(hash))
            .await;
        match joined {
            Ok(joined) => return Ok(joined.grant),
            // Used up or unknown: perhaps by this node, before an answer was lost.
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {}
            Err(e) => return Err(e).context("joining the fleet with --join"),
        }
    }
    let asked = mycel_client::Client::with_ca(args.server, Some(credential.to_owned()), args.ca)?
        .node_grant(args.name)
        .await;
    match asked {
        Ok(grant) => Ok(grant),
        Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
            // Nobody knows this credential: start over with a fresh token.
            let _ = std::fs::remove_file(path);
            anyhow::bail!(
                "the join token is used up, expired or unknown, and this node never joined with it; make a new one with `mycel node token create`"
            )
        }
        Err(e) => Err(e).context("asking whether an earlier join went through"),
    }
}

fn read(path: &Path) -> anyhow::Result<Option<NodeCredential>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{}: not a node credential", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the credential file, readable by its owner only, replacing the last one whole.
fn write(path: &Path, credential: &NodeCredential) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(mycel_agent::state::write_json(path, credential)?)
}

/// The fleet's CA certificate for an https control plane: `--ca FILE`, else the one
/// kept in DATA/tls since this node joined, else the one the server offers, taken only
/// if its SHA-256 is the one the join token carries (after the dot).
pub async fn fleet_ca(
    server: &str,
    data: &Path,
    flag: Option<&Path>,
    join: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(pem) = crate::connect::ca_pem(flag, data)? {
        return Ok(pem);
    }
    let Some((_, expected)) = join.and_then(|token| token.trim().split_once('.')) else {
        anyhow::bail!(
            "the control plane speaks TLS and this node does not know its CA: give it with --ca FILE (DATA/tls/ca.pem on the control plane's machine), or join with a token from `mycel node token create`, which carries the CA's fingerprint"
        );
    };
    // Unverified on purpose: what comes back is trusted only if it is the CA the join
    // token names.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .connect_timeout(std::time::Duration::from_secs(4))
        .build()?;
    let mut last_error = None;
    for url in server.split(',').map(|u| u.trim().trim_end_matches('/')) {
        let fetched = async {
            http.get(format!("{url}/v1/tls/ca"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
        .await;
        let pem = match fetched {
            Ok(pem) => pem,
            Err(e) => {
                last_error =
                    Some(anyhow::Error::from(e).context(format!("fetching the CA from {url}")));
                continue;
            }
        };
        let found = mycel_tls::fingerprint(&pem)?;
        if !found.eq_ignore_ascii_case(expected) {
            anyhow::bail!(
                "the CA certificate {url} offers (SHA-256 {found}) is not the one the join token names ({expected}): this is not the fleet's control plane, or something between is not what it claims"
            );
        }
        let kept = data.join(mycel_control::TLS_DIR).join(mycel_tls::CA_FILE);
        mycel_tls::write_private(&kept, &pem)?;
        return Ok(pem);
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("--server names no URL")))
}
