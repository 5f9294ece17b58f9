//! `mycel push DIR`: hash the component, upload the blobs the server lacks, create the
//! version; then, with `--cascade`, rebuild and roll out the deployments that import it.
//!
//! A deployment that imports a component keeps the version of it that was resolved
//! when its own version was pushed. After a push, the deployments importing an older
//! version of the pushed component are listed; `--cascade` asks the control plane to
//! rebuild each one's served version (same files, dependencies resolved anew) and
//! deploys the result with the deployment's copies and serve options.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use mycel_core::api::{DependentDeployment, DeployRequest};
use mycel_core::manifest::MANIFEST_FILE;
use mycel_core::signing::{PrivateKey, SIGNATURE_FILE};
use mycel_core::{BlobHash, ComponentPath, FileEntry, FileMode, Manifest, VersionId};
use serde::Serialize;

use crate::cli::PushArgs;
use crate::connect::client;
use crate::output;
use crate::walk::{component_files, LocalFile};

/// Blobs uploaded at once; small files are many, so a little concurrency pays.
const UPLOAD_CONCURRENCY: usize = 4;

/// What a push did, for people and for `--json`.
#[derive(Debug, Serialize)]
pub struct PushReport {
    pub component: String,
    pub seq: u64,
    id: VersionId,
    pub created: bool,
    files: usize,
    total_bytes: u64,
    blobs_sent: usize,
    bytes_sent: u64,
    blobs_reused: usize,
    bytes_reused: u64,
    elapsed_ms: u64,
    /// The signing key's hint, when pushed with `--sign`.
    signed_by: Option<String>,
    /// Deployments importing an older version of this component.
    pub dependents: Vec<DependentReport>,
}

/// A deployment that imports the pushed component, and what `--cascade` did with it.
#[derive(Debug, Serialize)]
pub struct DependentReport {
    deployment: String,
    component: String,
    /// The version it served.
    from_seq: u64,
    /// The version of the pushed component that one imports.
    uses_seq: u64,
    /// With `--cascade`, the version it serves now; `None` without, or when its
    /// dependencies are pinned and rebuilding changed nothing.
    to_seq: Option<u64>,
    /// Versions of other components created on the way, `name@seq`.
    rebuilt: Vec<String>,
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    let key = args
        .sign
        .as_deref()
        .map(crate::commands::sign::private_key)
        .transpose()?;
    let mut report = push(&client, &args.dir, key.as_ref(), !args.json).await?;
    // Progress lines go to stderr, so `--json` still prints one document.
    if !args.json {
        print_report(&report);
    }
    let mut rolling_out = Vec::new();
    if args.deploy {
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| report.component.clone());
        roll_out(&client, &name, &report.component, report.seq).await?;
        rolling_out.push(name);
    }
    report.dependents = if args.cascade {
        cascade(&client, &report, &mut rolling_out).await?
    } else {
        match stale_dependents(&client, &report).await {
            Ok(found) => found.iter().map(unchanged).collect(),
            // The version exists whatever happens here; a server from before
            // dependencies only costs the listing.
            Err(e) => {
                eprintln!(
                    "warning: cannot list the deployments that import {}: {e:#}",
                    report.component
                );
                Vec::new()
            }
        }
    };
    if !args.json {
        print_dependents(&report, args.cascade);
    }
    if args.wait && !rolling_out.is_empty() {
        crate::commands::rollout::wait(&client, &rolling_out, args.timeout, args.json).await?;
    }
    if args.json {
        output::json(&report)?;
    }
    Ok(())
}

/// The deployments that import a version of `report`'s component other than the one
/// just pushed.
async fn stale_dependents(
    client: &mycel_client::Client,
    report: &PushReport,
) -> anyhow::Result<Vec<DependentDeployment>> {
    let dependents = client.dependents(&report.component).await?;
    Ok(dependents
        .deployments
        .into_iter()
        .filter(|d| d.uses.id != report.id)
        .collect())
}

fn unchanged(dependent: &DependentDeployment) -> DependentReport {
    DependentReport {
        deployment: dependent.deployment.clone(),
        component: dependent.component.clone(),
        from_seq: dependent.seq,
        uses_seq: dependent.uses.seq,
        to_seq: None,
        rebuilt: Vec::new(),
    }
}

/// Rebuilds each stale dependent's served version against the newest dependencies and
/// rolls the result out to it; adds the deployments rolled out to `rolling_out`.
async fn cascade(
    client: &mycel_client::Client,
    report: &PushReport,
    rolling_out: &mut Vec<String>,
) -> anyhow::Result<Vec<DependentReport>> {
    let dependents = stale_dependents(client, report)
        .await
        .with_context(|| format!("listing the deployments that import {}", report.component))?;
    let mut out = Vec::with_capacity(dependents.len());
    for dependent in &dependents {
        let rebuilt = client
            .rebuild_version(&dependent.component, &dependent.seq.to_string())
            .await
            .with_context(|| {
                format!(
                    "rebuilding {}@{} (deployment {}) against {}@{}",
                    dependent.component,
                    dependent.seq,
                    dependent.deployment,
                    report.component,
                    report.seq
                )
            })?;
        let mut line = unchanged(dependent);
        line.rebuilt = rebuilt
            .dependencies_rebuilt
            .iter()
            .map(|d| d.label())
            .collect();
        // Pinned dependencies resolve as before: the same version, nothing to roll out.
        if rebuilt.version.id != dependent.version {
            roll_out(
                client,
                &dependent.deployment,
                &dependent.component,
                rebuilt.version.seq,
            )
            .await?;
            line.to_seq = Some(rebuilt.version.seq);
            rolling_out.push(dependent.deployment.clone());
        }
        out.push(line);
    }
    Ok(out)
}

fn print_dependents(report: &PushReport, cascaded: bool) {
    for d in &report.dependents {
        let imports = format!(
            "deployment {} ({}@{}) imports {}@{}",
            d.deployment, d.component, d.from_seq, report.component, d.uses_seq
        );
        match d.to_seq {
            Some(to) => {
                let via = if d.rebuilt.is_empty() {
                    String::new()
                } else {
                    format!(", rebuilding {}", d.rebuilt.join(", "))
                };
                println!(
                    "redeployed {}: {}@{} -> {}@{} (imports {}@{}{via})",
                    d.deployment,
                    d.component,
                    d.from_seq,
                    d.component,
                    to,
                    report.component,
                    report.seq
                );
            }
            None if cascaded => {
                println!("{imports} and keeps it: its dependencies are pinned");
            }
            None => {
                println!("{imports} and keeps it; `mycel push --cascade` rebuilds and rolls it out")
            }
        }
    }
}

/// Pushes the component in `dir`: hashes it, signs it with `key` if given, uploads the
/// blobs the server lacks (with a progress bar if `progress`), creates the version.
pub async fn push(
    client: &mycel_client::Client,
    dir: &Path,
    key: Option<&PrivateKey>,
    progress: bool,
) -> anyhow::Result<PushReport> {
    let started = Instant::now();
    let dir = dir.to_path_buf();
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "{} has no {MANIFEST_FILE}, so it is not a component; `mycel init NAME` creates a component directory to start from, or write {MANIFEST_FILE} by hand (README: \"The component manifest\")",
            dir.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "{}: cannot read the manifest; expected a component directory",
                    manifest_path.display()
                )
            })
        }
    };
    let manifest = Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let name = manifest.component.name.clone();

    let walk_dir = dir.clone();
    let mut files = tokio::task::spawn_blocking(move || component_files(&walk_dir)).await??;
    // A new signature replaces one the directory holds; it is pushed with the files.
    let signature = match key {
        Some(key) => {
            files.retain(|f| f.entry.path.as_str() != SIGNATURE_FILE);
            let bundle = crate::commands::sign::sign_files(&name, &files, key).await?;
            Some((bundle, key.public().hint()))
        }
        None => None,
    };
    let paths: HashSet<&str> = files.iter().map(|f| f.entry.path.as_str()).collect();
    manifest
        .check_files(|p| paths.contains(p))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;

    // One upload per distinct blob, however many paths share it.
    let mut by_hash: BTreeMap<BlobHash, &LocalFile> = BTreeMap::new();
    for file in &files {
        by_hash.entry(file.entry.hash).or_insert(file);
    }
    let missing = client
        .missing_blobs(by_hash.keys().copied().collect())
        .await?;
    let to_send: Vec<&LocalFile> = missing
        .iter()
        .filter_map(|h| by_hash.get(h).copied())
        .collect();
    let bytes_sent: u64 = to_send.iter().map(|f| f.entry.size).sum();
    let bytes_unique: u64 = by_hash.values().map(|f| f.entry.size).sum();

    let progress = if progress {
        ProgressBar::new(bytes_sent)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_message(format!("uploading {} blob(s)", to_send.len()));
    futures::stream::iter(to_send.iter().map(|file| {
        let client = client.clone();
        let bar = progress.clone();
        async move {
            client
                .put_blob_file(file.entry.hash, &file.source, move |n| bar.inc(n))
                .await
                .with_context(|| format!("uploading {}", file.entry.path))
        }
    }))
    .buffer_unordered(UPLOAD_CONCURRENCY)
    .try_collect::<Vec<_>>()
    .await?;
    progress.finish_and_clear();

    let mut entries: Vec<FileEntry> = files.iter().map(|f| f.entry.clone()).collect();
    if let Some((bundle, _)) = &signature {
        let hash = BlobHash::of(bundle);
        client
            .put_blob(hash, bytes::Bytes::from(bundle.clone()))
            .await
            .with_context(|| format!("uploading {SIGNATURE_FILE}"))?;
        entries.push(FileEntry {
            path: ComponentPath::new(SIGNATURE_FILE)?,
            hash,
            size: bundle.len() as u64,
            mode: FileMode::Regular,
        });
    }
    let response = client
        .create_version(&name, entries)
        .await
        .with_context(|| format!("creating a version of {name}"))?;
    let version = response.version;
    let report = PushReport {
        component: name,
        seq: version.seq,
        id: version.id,
        created: response.created,
        files: version.files.len(),
        total_bytes: version.total_bytes,
        blobs_sent: to_send.len(),
        bytes_sent,
        blobs_reused: by_hash.len() - to_send.len(),
        bytes_reused: bytes_unique - bytes_sent,
        elapsed_ms: started.elapsed().as_millis() as u64,
        signed_by: signature.map(|(_, hint)| hint),
        dependents: Vec::new(),
    };
    Ok(report)
}

/// Deploys `component@seq` to the existing deployment `name`, keeping its copies and
/// serve options: pushing code changes the code, not how it is served.
pub async fn roll_out(
    client: &mycel_client::Client,
    name: &str,
    component: &str,
    seq: u64,
) -> anyhow::Result<()> {
    let deployments = client.deployments().await?;
    let Some(existing) = deployments.into_iter().find(|d| d.name == name) else {
        anyhow::bail!(
            "no deployment {name:?} to roll the new version out to; deploy it first, e.g. `mycel deploy {component} --copies LOCATION=N`"
        );
    };
    let request = DeployRequest {
        component: Some(component.to_owned()),
        version: seq.to_string(),
        copies: existing.copies.clone(),
        max_batch_size: Some(existing.serve.max_batch_size),
        batch_wait_ms: Some(existing.serve.batch_wait_ms),
        timeout_ms: existing.serve.timeout_ms,
        surge: None,
        max_unavailable: None,
        deadline_s: None,
        require_signed: None,
    };
    let deployment = client
        .deploy(name, &request)
        .await
        .with_context(|| format!("deploying {component}@{seq} to {name}"))?;
    if deployment.generation != existing.generation {
        eprintln!(
            "rolling out {component}@{seq} to deployment {name} (was @{})",
            existing.seq
        );
    }
    Ok(())
}

pub fn print_report(report: &PushReport) {
    let what = if report.created {
        "pushed"
    } else {
        "unchanged:"
    };
    println!(
        "{what} {}@{} ({}) {} files, {}",
        report.component,
        report.seq,
        report.id.short(),
        report.files,
        output::bytes(report.total_bytes)
    );
    if let Some(hint) = &report.signed_by {
        println!("signed {SIGNATURE_FILE} with key {hint}");
    }
    println!(
        "sent {} in {} blob(s), reused {} in {} blob(s), {:.2}s",
        output::bytes(report.bytes_sent),
        report.blobs_sent,
        output::bytes(report.bytes_reused),
        report.blobs_reused,
        report.elapsed_ms as f64 / 1000.0
    );
}
