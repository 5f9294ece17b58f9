//! `mycel agent`: one node's agent in the foreground.

use std::path::PathBuf;

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

/// The worker runtime package: the flag, or this repository's python/ directory.
pub fn runtime_dir(args: &RuntimeArgs) -> PathBuf {
    args.runtime
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../python")))
}

pub fn config(args: &AgentArgs) -> anyhow::Result<mycel_agent::Config> {
    mycel_core::manifest::validate_name(&args.name)
        .map_err(|m| anyhow::anyhow!("--name: node {m}"))?;
    mycel_core::manifest::validate_name(&args.location)
        .map_err(|m| anyhow::anyhow!("--location: {m}"))?;
    let mut datasets = std::collections::BTreeMap::new();
    for (name, path) in &args.datasets {
        if datasets.insert(name.clone(), path.clone()).is_some() {
            anyhow::bail!("--dataset {name} is given twice; expected one directory per dataset");
        }
    }
    Ok(mycel_agent::Config {
        server: args.server.clone(),
        token: args.token.clone(),
        name: args.name.clone(),
        location: args.location.clone(),
        labels: args.labels.iter().cloned().collect(),
        cpus: args.cpus.unwrap_or_else(machine_cpus),
        memory_bytes: args.memory.unwrap_or_else(machine_memory),
        data_dir: args.data.clone(),
        envs_dir: args.envs.clone().unwrap_or_else(|| args.data.join("envs")),
        listen: args.listen,
        uv: args.runtime.uv.clone(),
        runtime_dir: runtime_dir(&args.runtime),
        heartbeat: args.runtime.heartbeat,
        max_request_bytes: mycel_agent::DEFAULT_MAX_REQUEST_BYTES,
        datasets,
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    mycel_agent::run(config(&args)?, super::shutdown_signal()).await?;
    Ok(())
}
