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

pub async fn config(args: &AgentArgs) -> anyhow::Result<mycel_agent::Config> {
    let findings =
        super::doctor::node_checks(&args.runtime.uv, &args.data, &[("--listen", args.listen)])
            .await;
    super::doctor::refuse(&findings, "mycel agent")?;
    let urls: Vec<&str> = args.server.split(',').map(str::trim).collect();
    let https = urls.iter().filter(|u| u.starts_with("https://")).count();
    if https > 0 && https < urls.len() {
        anyhow::bail!(
            "--server {}: some URLs are https and some are not; expected one kind for one fleet",
            args.server
        );
    }
    let ca = match https > 0 {
        true => Some(
            crate::credential::fleet_ca(
                &args.server,
                &args.data,
                args.ca.as_deref(),
                args.join.as_deref(),
            )
            .await?,
        ),
        false => {
            super::plain_http("--listen", args.listen, args.insecure)?;
            None
        }
    };
    mycel_core::manifest::validate_name(&args.name)
        .map_err(|m| anyhow::anyhow!("--name: node {m}"))?;
    if let Some(location) = &args.location {
        mycel_core::manifest::validate_name(location)
            .map_err(|m| anyhow::anyhow!("--location: {m}"))?;
    }
    let identity = crate::credential::identity(&crate::credential::JoinArgs {
        server: &args.server,
        ca: ca.as_deref(),
        name: &args.name,
        data: &args.data,
        join: args.join.as_deref(),
        location: args.location.as_deref(),
        token: args.token.as_deref(),
        labels: &args.labels,
    })
    .await?;
    let (token, location, labels) = (identity.token, identity.location, identity.labels);
    let findings =
        super::doctor::node_checks(&args.runtime.uv, &args.data, &[("--listen", args.listen)])
            .await;
    super::doctor::refuse(&findings, "mycel agent")?;
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
        gpus: args.gpus.clone().map(|g| g.0),
        data_dir: args.data.clone(),
        envs_dir: args.envs.clone().unwrap_or_else(|| args.data.join("envs")),
        listen: args.listen,
        advertise: args.advertise.clone(),
        uv: args.runtime.uv.clone(),
        runtime_dir: runtime_dir(&args.runtime, &args.data)?,
        heartbeat: args.runtime.heartbeat,
        warm_start: !args.runtime.no_warm_start,
        max_request_bytes: mycel_agent::DEFAULT_MAX_REQUEST_BYTES,
        datasets,
        ca,
        trust_keys: super::sign::trust_keys(&args.trust_keys)?,
        sandbox: args.runtime.sandbox,
        hidden: Vec::new(),
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    mycel_agent::run(config(&args).await?, super::shutdown_signal()).await?;
    Ok(())
}
