//! `mycel agent`: one node's agent in the foreground.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{AgentArgs, RuntimeArgs};

/// The machine's cores, for a node that does not say how many it offers.
pub fn machine_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The machine's memory from /proc/meminfo, or 4 GiB where that cannot be read.
pub fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30)
}

/// The worker runtime package: the flag, or the one inside this binary, unpacked under
/// `data`.
pub fn runtime_dir(args: &RuntimeArgs, data: &Path) -> anyhow::Result<PathBuf> {
    match &args.runtime {
        Some(dir) => Ok(dir.clone()),
        None => crate::runtime::unpack(data).with_context(|| {
            format!(
                "unpacking the worker runtime into {}",
                data.join("runtime").display()
            )
        }),
    }
}

/// Where a joined node keeps its credential, in its data directory.
const CREDENTIAL_FILE: &str = "node.credential";

/// A node's own credential and what it was granted, as kept on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeCredential {
    node: String,
    grant: mycel_core::api::NodeGrant,
    credential: String,
}

/// Who this agent is to the control plane: the token it presents, its location and the
/// labels it was granted. A node that joined uses its own credential from DATA; with
/// --join and none yet, it trades the join token for one first.
async fn identity(
    args: &AgentArgs,
) -> anyhow::Result<(Option<String>, String, Vec<(String, String)>)> {
    let path = args.data.join(CREDENTIAL_FILE);
    let saved = match std::fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<NodeCredential>(&bytes)
                .with_context(|| format!("{}: not a node credential", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let saved = match saved {
        Some(saved) => saved,
        None => {
            let Some(join) = &args.join else {
                let location = args.location.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--location is needed for a node that does not join with --join TOKEN"
                    )
                })?;
                return Ok((args.token.clone(), location, args.labels.clone()));
            };
            let joined = mycel_client::Client::new(&args.server, None)?
                .join(&args.name, join)
                .await
                .context("joining the fleet with --join")?;
            let saved = NodeCredential {
                node: joined.node,
                grant: joined.grant,
                credential: joined.credential,
            };
            write_credential(&path, &saved)?;
            eprintln!(
                "joined as node {} in {}; its credential is in {}",
                saved.node,
                saved.grant.location,
                path.display()
            );
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
    if let Some(location) = args
        .location
        .as_ref()
        .filter(|l| **l != saved.grant.location)
    {
        anyhow::bail!(
            "node {} joined location {:?}; --location {location} cannot change that (revoke it and join again)",
            saved.node,
            saved.grant.location
        );
    }
    let mut labels = args.labels.clone();
    labels.extend(saved.grant.labels);
    Ok((Some(saved.credential), saved.grant.location, labels))
}

/// Writes a new credential file readable by its owner only.
fn write_credential(path: &Path, credential: &NodeCredential) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&serde_json::to_vec_pretty(credential)?)?;
    file.sync_all()?;
    Ok(())
}

pub async fn config(args: &AgentArgs) -> anyhow::Result<mycel_agent::Config> {
    super::plain_http("--listen", args.listen, args.insecure)?;
    mycel_core::manifest::validate_name(&args.name)
        .map_err(|m| anyhow::anyhow!("--name: node {m}"))?;
    if let Some(location) = &args.location {
        mycel_core::manifest::validate_name(location)
            .map_err(|m| anyhow::anyhow!("--location: {m}"))?;
    }
    let (token, location, labels) = identity(args).await?;
    let mut datasets = std::collections::BTreeMap::new();
    for (name, path) in &args.datasets {
        if datasets.insert(name.clone(), path.clone()).is_some() {
            anyhow::bail!("--dataset {name} is given twice; expected one directory per dataset");
        }
    }
    Ok(mycel_agent::Config {
        server: args.server.clone(),
        token,
        name: args.name.clone(),
        location,
        labels: labels.into_iter().collect(),
        cpus: args.cpus.unwrap_or_else(machine_cpus),
        memory_bytes: args.memory.unwrap_or_else(machine_memory),
        data_dir: args.data.clone(),
        envs_dir: args.envs.clone().unwrap_or_else(|| args.data.join("envs")),
        listen: args.listen,
        advertise: args.advertise.clone(),
        uv: args.runtime.uv.clone(),
        runtime_dir: runtime_dir(&args.runtime, &args.data)?,
        heartbeat: args.runtime.heartbeat,
        max_request_bytes: mycel_agent::DEFAULT_MAX_REQUEST_BYTES,
        datasets,
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    mycel_agent::run(config(&args).await?, super::shutdown_signal()).await?;
    Ok(())
}
