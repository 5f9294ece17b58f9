//! `mycel deploy` and `mycel undeploy`: desired state for the fleet.

use std::collections::BTreeMap;
use std::path::Path;

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
    /// Milliseconds.
    timeout_ms: Option<u32>,
    surge: Option<mycel_core::fleet::Surge>,
    max_unavailable: Option<mycel_core::fleet::MaxUnavailable>,
    /// Seconds.
    deadline_s: Option<u64>,
    /// Serve only signed versions.
    #[serde(default)]
    require_signed: bool,
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
                timeout_ms: d.timeout_ms,
                surge: d.surge,
                max_unavailable: d.max_unavailable,
                deadline_s: d.deadline_s,
                require_signed: d.require_signed.then_some(true),
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
                timeout_ms: args
                    .request_timeout
                    .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)),
                surge: args.surge,
                max_unavailable: args.max_unavailable,
                deadline_s: args.deadline.map(|d| d.as_secs().max(1)),
                require_signed: args.require_signed.then_some(true),
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
        crate::commands::rollout::wait(&client, &names, args.timeout, args.json).await?;
    }
    if args.json {
        output::json(&deployed)?;
    }
    Ok(())
}

pub async fn undeploy(args: UndeployArgs) -> anyhow::Result<()> {
    client(&args.connect)?.undeploy(&args.name).await?;
    println!("removed deployment {}", args.name);
    Ok(())
}
