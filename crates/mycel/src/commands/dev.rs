//! `mycel dev DIR`: the inner loop. Watches a component directory, pushes on every
//! save, rolls the new version out to a deployment, and streams its replicas' logs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mycel_core::api::DeployRequest;
use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode, DebounceEventResult};

use crate::cli::DevArgs;
use crate::commands::{logs, push, rollout};
use crate::connect::client;

/// Saves closer together than this are one change (editors write several files).
const DEBOUNCE: Duration = Duration::from_millis(300);

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("{}", args.dir.display()))?;

    // Watch first: a save during the first push and rollout is not lost.
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut debouncer = new_debouncer(DEBOUNCE, move |events: DebounceEventResult| {
        let _ = tx.send(events);
    })
    .context("starting the file watcher")?;
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let first = push::push(&client, &dir, None, true).await?;
    push::print_report(&first);
    let name = args
        .deployment
        .clone()
        .unwrap_or_else(|| first.component.clone());
    let exists = client.deployments().await?.iter().any(|d| d.name == name);
    if exists {
        push::roll_out(&client, &name, &first.component, first.seq).await?;
    } else {
        if args.copies.is_empty() {
            bail!(
                "no deployment {name:?} yet; give --copies LOCATION=N to create it, e.g. --copies local=1"
            );
        }
        let request = DeployRequest {
            component: Some(first.component.clone()),
            version: first.seq.to_string(),
            copies: args.copies.iter().cloned().collect(),
            max_batch_size: None,
            batch_wait_ms: None,
            timeout_ms: None,
            surge: None,
            max_unavailable: None,
            deadline_s: None,
            require_signed: None,
        };
        client.deploy(&name, &request).await?;
    }
    report_rollout(&client, &name, Instant::now()).await;

    // Logs of every replica of the deployment, new ones as rollouts start them.
    let log_client = client.clone();
    let log_name = name.clone();
    let logs = tokio::spawn(async move {
        if let Err(e) = logs::print(&log_client, &log_name, None, true, true).await {
            eprintln!("logs stopped: {e:#}");
        }
    });

    eprintln!(
        "watching {} for changes; each save rolls out to {name} (Ctrl-C stops)",
        dir.display()
    );

    // Ctrl-C ends the loop wherever it is, a push or a rollout included.
    let watch = async {
        while let Some(events) = changes.recv().await {
            on_change(&client, &dir, &name, events).await;
        }
    };
    tokio::select! {
        _ = crate::commands::shutdown_signal() => {}
        _ = watch => {}
    }
    logs.abort();
    Ok(())
}

/// One batch of file events: push, and roll out if the push made a new version.
async fn on_change(
    client: &mycel_client::Client,
    dir: &Path,
    name: &str,
    events: DebounceEventResult,
) {
    match events {
        Ok(events) if events.iter().all(|e| ignored(dir, &e.path)) => return,
        Ok(_) => {}
        Err(e) => {
            eprintln!("file watcher: {e}");
            return;
        }
    }
    let started = Instant::now();
    // A save may leave the component broken for a moment (a bad manifest): say so and
    // wait for the next save.
    let report = match push::push(client, dir, None, false).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("push failed: {e:#}");
            return;
        }
    };
    if !report.created {
        return;
    }
    push::print_report(&report);
    if let Err(e) = push::roll_out(client, name, &report.component, report.seq).await {
        eprintln!("{e:#}");
        return;
    }
    report_rollout(client, name, started).await;
}

/// Follows the rollout and says how it ended; a failed rollout is news, not an exit.
async fn report_rollout(client: &mycel_client::Client, name: &str, started: Instant) {
    match rollout::wait(client, &[name.to_owned()], Duration::from_secs(600), false).await {
        Ok(()) => eprintln!(
            "{name} is live with the new code ({:.1}s after the save)",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("{e:#}"),
    }
}

/// Changes that cannot change what a push sends: bytecode caches and version control.
fn ignored(root: &Path, path: &Path) -> bool {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative.components().any(|c| {
        matches!(
            c.as_os_str().to_str(),
            Some("__pycache__" | ".git" | ".mypy_cache" | ".pytest_cache")
        )
    })
}
