//! `mycel deploy` and `mycel undeploy`: desired state for the fleet.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mycel_core::api::DeployRequest;
use serde::Deserialize;

use crate::cli::{DeployArgs, UndeployArgs};
use crate::commands::list::parse_version_ref;
use crate::connect::client;
use crate::output;

/// A deployment file: `[[deployment]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentFile {
    deployment: Vec<FileDeployment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDeployment {
    /// Deployment name [default: the component's name].
    name: Option<String>,
    component: String,
    #[serde(default = "latest")]
    version: String,
    copies: BTreeMap<String, u32>,
    max_batch_size: Option<u32>,
    batch_wait_ms: Option<u32>,
}

fn latest() -> String {
    "latest".into()
}

/// Reads a deployment file into (name, request) pairs.
fn read_file(path: &Path) -> anyhow::Result<Vec<(String, DeployRequest)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: DeploymentFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    Ok(file
        .deployment
        .into_iter()
        .map(|d| {
            let name = d.name.unwrap_or_else(|| d.component.clone());
            let request = DeployRequest {
                component: Some(d.component),
                version: d.version,
                copies: d.copies,
                max_batch_size: d.max_batch_size,
                batch_wait_ms: d.batch_wait_ms,
            };
            (name, request)
        })
        .collect())
}

pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let requests = match (&args.file, &args.target) {
        (Some(file), _) => read_file(file)?,
        (None, Some(target)) => {
            let (component, version) = parse_version_ref(target)?;
            if args.copies.is_empty() {
                bail!("no copies given; expected --copies LOCATION=N, e.g. --copies new-york=5");
            }
            let name = args.name.clone().unwrap_or_else(|| component.clone());
            let request = DeployRequest {
                component: Some(component),
                version,
                copies: args.copies.iter().cloned().collect(),
                max_batch_size: args.max_batch_size,
                batch_wait_ms: args.batch_wait_ms,
            };
            vec![(name, request)]
        }
        (None, None) => bail!("nothing to deploy: give NAME[@N] with --copies, or --file"),
    };
    let client = client(&args.connect)?;
    let mut deployed = Vec::new();
    for (name, request) in requests {
        let deployment = client
            .deploy(&name, &request)
            .await
            .with_context(|| format!("deploying {name}"))?;
        if !args.json {
            let copies: Vec<String> = deployment
                .copies
                .iter()
                .map(|(l, n)| format!("{l}={n}"))
                .collect();
            println!(
                "deployed {} = {}@{} ({}) copies {}",
                deployment.name,
                deployment.component,
                deployment.seq,
                deployment.version.short(),
                copies.join(" ")
            );
        }
        deployed.push(deployment);
    }
    if args.wait {
        let names: Vec<String> = deployed.iter().map(|d| d.name.clone()).collect();
        wait_ready(&client, &names, args.timeout, args.json).await?;
    }
    if args.json {
        output::json(&deployed)?;
    }
    Ok(())
}

/// How long `--wait` lets nodes join before reporting copies that cannot be placed.
const PLACEMENT_GRACE: Duration = Duration::from_secs(5);

/// Polls status until every copy of `names` is ready; fails early when a replica
/// failed to build or copies cannot be placed, naming why.
pub async fn wait_ready(
    client: &mycel_client::Client,
    names: &[String],
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let status = client.status().await?;
        let mut desired = 0;
        let mut ready = 0;
        for view in status
            .deployments
            .iter()
            .filter(|v| names.contains(&v.deployment.name))
        {
            desired += view.locations.iter().map(|l| l.desired).sum::<u32>();
            ready += view.locations.iter().map(|l| l.ready).sum::<u32>();
        }
        // Nodes may still be joining (right after `mycel up`, say): give them a moment
        // before calling copies unplaceable.
        let unplaced = status
            .unplaced
            .iter()
            .find(|u| names.contains(&u.deployment));
        if let Some(unplaced) = unplaced.filter(|_| started.elapsed() > PLACEMENT_GRACE) {
            bail!(
                "{}: {} copies in {} cannot be placed: {}",
                unplaced.deployment,
                unplaced.count,
                unplaced.location,
                unplaced.reason
            );
        }
        let line = format!("{ready}/{desired} replicas ready");
        if !quiet && line != last_line {
            eprintln!("{line} ({:.0}s)", started.elapsed().as_secs_f64());
            last_line.clone_from(&line);
        }
        if desired > 0 && ready == desired {
            return Ok(());
        }
        if started.elapsed() > timeout {
            let failing: Vec<String> = status
                .replicas
                .iter()
                .filter(|r| names.contains(&r.assignment.deployment))
                .filter_map(|r| match r.status.as_ref().map(|s| &s.state) {
                    Some(mycel_core::fleet::ReplicaState::Failed { reason }) => {
                        Some(format!("{}: {reason}", r.assignment.replica))
                    }
                    _ => None,
                })
                .collect();
            bail!(
                "not ready after {}s ({line}){}",
                timeout.as_secs(),
                if failing.is_empty() {
                    String::new()
                } else {
                    format!("\n{}", failing.join("\n"))
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn undeploy(args: UndeployArgs) -> anyhow::Result<()> {
    client(&args.connect)?.undeploy(&args.name).await?;
    println!("removed deployment {}", args.name);
    Ok(())
}
