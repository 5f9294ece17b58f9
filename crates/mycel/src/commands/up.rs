//! `mycel up`: the whole system on one machine — control plane and one agent per node,
//! in this process, with an embedded store in the data directory.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::commands::agent::{machine_cpus, machine_memory, runtime_dir};
use crate::connect::data_dir;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    for node in &args.nodes {
        mycel_core::manifest::validate_name(node)
            .map_err(|m| anyhow::anyhow!("--nodes: node {m}"))?;
    }
    let data = data_dir(&args.data)?;
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let url_file = data.join(mycel_control::URL_FILE);
    let _ = std::fs::remove_file(&url_file);

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let control = mycel_control::Config {
        data_dir: data.clone(),
        listen: args.listen,
        max_blob_bytes: mycel_control::DEFAULT_MAX_BLOB_BYTES,
        lost_after: mycel_control::DEFAULT_LOST_AFTER,
    };
    let stopped = stop.clone();
    tasks.spawn(async move {
        mycel_control::run(control, stopped.cancelled_owned())
            .await
            .map_err(anyhow::Error::from)
    });

    let server = wait_for_file(&url_file).await?;
    let token = std::fs::read_to_string(data.join(mycel_control::auth::ADMIN_TOKEN_FILE))
        .context("reading the admin token")?
        .trim()
        .to_owned();
    for node in &args.nodes {
        let config = mycel_agent::Config {
            server: server.clone(),
            token: Some(token.clone()),
            name: node.clone(),
            location: node.clone(),
            labels: Default::default(),
            cpus: args.node_cpus.unwrap_or_else(machine_cpus),
            memory_bytes: args.node_memory.unwrap_or_else(machine_memory),
            data_dir: data.join("nodes").join(node),
            envs_dir: data.join("envs"),
            listen: "127.0.0.1:0".parse()?,
            uv: args.runtime.uv.clone(),
            runtime_dir: runtime_dir(&args.runtime),
            heartbeat: args.runtime.heartbeat,
        };
        let stopped = stop.clone();
        tasks.spawn(async move {
            mycel_agent::run(config, stopped.cancelled_owned())
                .await
                .map_err(anyhow::Error::from)
        });
    }
    eprintln!(
        "mycel is up: control plane {server}, nodes {}, data {}\npush with `mycel push DIR`, deploy with `mycel deploy NAME --copies {}=1`; Ctrl-C stops everything",
        args.nodes.join(", "),
        data.display(),
        args.nodes[0]
    );

    let mut failure = None;
    tokio::select! {
        _ = super::shutdown_signal() => {}
        Some(result) = tasks.join_next() => {
            // A role stopped on its own: bring the rest down and report why.
            failure = Some(result.map_err(anyhow::Error::from).and_then(|r| r).err());
        }
    }
    stop.cancel();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.map_err(anyhow::Error::from).and_then(|r| r) {
            failure.get_or_insert(Some(e));
        }
    }
    match failure.flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn wait_for_file(path: &std::path::Path) -> anyhow::Result<String> {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the control plane did not start within 30s (no {})",
        path.display()
    )
}
