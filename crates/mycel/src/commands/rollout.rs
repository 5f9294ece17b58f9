//! `mycel rollout status`, `mycel rollback`, `mycel history`, and the wait behind
//! `deploy --wait`: following a deployment's rollouts.

use std::time::{Duration, Instant};

use anyhow::bail;
use mycel_core::api::RolloutStatus;
use mycel_core::fleet::{Deployment, InPlace, ReplicaState, Rollout, RolloutOutcome};
use mycel_core::reconcile::rolled_out;

use crate::cli::{HistoryArgs, RollbackArgs, RolloutStatusArgs};
use crate::connect::client;
use crate::output;

/// How long `wait` lets nodes join before reporting copies that cannot be placed.
const PLACEMENT_GRACE: Duration = Duration::from_secs(5);
/// How long one long-poll for rollout progress is held by the server.
const POLL: Duration = Duration::from_millis(500);
/// How long `--wait` may stay silent while a rollout moves slowly: past it, a line says
/// what the slowest replica is doing (polls come every [`POLL`], so the screen is never
/// still for 2 s).
const QUIET_AT_MOST: Duration = Duration::from_millis(1500);

/// Follows the rollouts of `names` until each is complete with every copy ready.
/// Fails when one is rolled back or fails, when copies cannot be placed, or after
/// `timeout`, saying why. Progress goes to stderr unless `quiet`.
pub async fn wait(
    client: &mycel_client::Client,
    names: &[String],
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<()> {
    // The version each deployment is rolling out now: an automatic rollback that
    // follows is that rollout's failure, not a success.
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        let status = client.rollout_status(name, 0, Duration::ZERO).await?;
        targets.push(status.deployment.seq);
    }
    let started = Instant::now();
    let mut last_line = String::new();
    let mut last_said = Instant::now();
    let mut told_in_place = std::collections::HashSet::new();
    let mut generation = 0;
    loop {
        let mut statuses = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            // Only the first call waits for a change; the others read at once.
            let wait = if i == 0 && generation > 0 {
                POLL
            } else {
                Duration::ZERO
            };
            statuses.push(client.rollout_status(name, generation, wait).await?);
        }
        generation = statuses.iter().map(|s| s.generation).max().unwrap_or(0);

        for (status, &target) in statuses.iter().zip(&targets) {
            let mut latest = status.rollout.clone();
            if latest.as_ref().is_some_and(|r| r.to.seq != target) {
                let history = client.history(&status.deployment.name).await?;
                latest = history.into_iter().rev().find(|r| r.to.seq == target);
            }
            if let Some(rollout) = latest.as_ref().filter(|_| !quiet) {
                for note in &rollout.in_place {
                    if told_in_place.insert((note.deployment.clone(), note.location.clone())) {
                        eprintln!("{}", in_place_text(note, &status.deployment));
                    }
                }
            }
            if let Some(rollout) = &latest {
                match &rollout.outcome {
                    RolloutOutcome::RolledBack { reason } => bail!(
                        "{}: rollout of version {} rolled back to the version before: {reason}",
                        rollout.deployment,
                        rollout.to.seq
                    ),
                    RolloutOutcome::Failed { reason } => bail!(
                        "{}: rollout of version {} failed: {reason}",
                        rollout.deployment,
                        rollout.to.seq
                    ),
                    RolloutOutcome::Superseded => bail!(
                        "{}: the rollout of version {} was superseded by another",
                        rollout.deployment,
                        rollout.to.seq
                    ),
                    _ => {}
                }
            }
            let unplaced = status.unplaced.first();
            // Nodes may still be joining (right after `mycel up`, say): give them a
            // moment before calling copies unplaceable.
            if let Some(u) = unplaced.filter(|_| started.elapsed() > PLACEMENT_GRACE) {
                bail!(
                    "{}: {} copies in {} cannot be placed: {}",
                    u.deployment,
                    u.count,
                    u.location,
                    u.reason
                );
            }
        }
        let line = summary(&statuses);
        let slowest = slowest(&statuses);
        // A new line when something changed, and at least every QUIET_AT_MOST.
        let news = format!("{line}{}", slowest.as_ref().map_or("", |s| &s.0));
        if !quiet && (news != last_line || last_said.elapsed() >= QUIET_AT_MOST) {
            let detail = slowest.map_or(String::new(), |s| format!("; {}", s.1));
            eprintln!("{line} ({:.1}s){detail}", started.elapsed().as_secs_f64());
            last_line = news;
            last_said = Instant::now();
        }
        let done = statuses.iter().zip(&targets).all(|(s, &target)| {
            s.deployment.seq == target
                && rolled_out(&s.locations)
                && s.rollout
                    .as_ref()
                    .is_none_or(|r| r.outcome == RolloutOutcome::Complete)
        });
        if done {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("not rolled out after {}s ({line})", timeout.as_secs());
        }
        if generation == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What replacing in place means for a location, for people: whether it keeps serving
/// and where its requests go meanwhile.
fn in_place_text(note: &InPlace, deployment: &Deployment) -> String {
    let head = format!(
        "{}: no room for a new replica beside the old ones in {} ({})",
        note.deployment,
        note.location,
        note.reason
            .trim_start_matches("not enough capacity in location ")
    );
    if !note.empties_location() {
        let at_once = match note.max_unavailable {
            1 => "one at a time".to_owned(),
            n => format!("{n} at a time"),
        };
        return format!(
            "{head}; replacing them in place, {at_once}, while the others serve (--max-unavailable {})",
            deployment.max_unavailable
        );
    }
    let elsewhere = deployment
        .copies
        .iter()
        .any(|(location, &copies)| location != &note.location && copies > 0);
    let meanwhile = if elsewhere {
        "its requests go to the other locations meanwhile".to_owned()
    } else {
        format!("requests for {} fail until then", note.deployment)
    };
    format!(
        "{head}; replacing in place: {} has no replica until the new one is ready, {meanwhile}",
        note.location
    )
}

/// `12/12 replicas ready, 3 old draining`.
fn summary(statuses: &[RolloutStatus]) -> String {
    let all = statuses.iter().flat_map(|s| &s.locations);
    let (desired, ready, outdated) = all.fold((0, 0, 0), |(d, r, o), l| {
        (d + l.desired, r + l.ready, o + l.outdated)
    });
    let mut line = format!("{ready}/{desired} replicas ready");
    if outdated > 0 {
        line.push_str(&format!(", {outdated} of the version before still serving"));
    }
    line
}

/// The new replica that has been longest in its state short of ready, in words: what
/// it is doing (without times, to tell whether that changed) and the whole of it, e.g.
/// `slowest: resnet50-tokyo-0 on tokyo-1, building its environment for 12.3s (uv:
/// Downloading torch (700.1MiB))`.
fn slowest(statuses: &[RolloutStatus]) -> Option<(String, String)> {
    let waiting = statuses.iter().flat_map(|s| &s.waiting);
    let replica = waiting.max_by_key(|r| r.status.as_ref().map_or(0, |s| s.for_ms))?;
    let who = format!(
        "{} on {}",
        replica.assignment.replica, replica.assignment.node
    );
    let Some(status) = &replica.status else {
        let what = format!("slowest: {who}, waiting for its node to start it");
        return Some((what.clone(), what));
    };
    let doing = match &status.state {
        ReplicaState::Pending => "waiting for its node to start it".to_owned(),
        ReplicaState::Syncing => "fetching its version".to_owned(),
        ReplicaState::BuildingEnv => "building its environment".to_owned(),
        ReplicaState::Starting => "loading the model (import and __init__)".to_owned(),
        ReplicaState::Failed { reason } => format!("failed: {}", first_line(reason)),
        other => other.to_string(),
    };
    let progress = status
        .progress
        .as_ref()
        .map_or(String::new(), |p| format!(" ({p})"));
    let what = format!("slowest: {who}, {doing}{progress}");
    let took = format!(
        "slowest: {who}, {doing} for {:.1}s{progress}",
        status.for_ms as f64 / 1000.0
    );
    Some((what, took))
}

/// One line about a rollout: `#3 deploy echo@1 → @2 by admin: complete in 1.2s`.
fn describe(rollout: &Rollout) -> String {
    let from = rollout
        .from_seq
        .map_or(String::new(), |seq| format!("@{seq} → "));
    let took = rollout.ended_ms.map_or(String::new(), |end| {
        format!(
            " in {:.1}s",
            end.saturating_sub(rollout.started_ms) as f64 / 1000.0
        )
    });
    let why = match &rollout.outcome {
        RolloutOutcome::RolledBack { reason } | RolloutOutcome::Failed { reason } => {
            format!(": {}", first_line(reason))
        }
        _ => String::new(),
    };
    format!(
        "#{} {} {from}@{} by {}: {}{took}{why}",
        rollout.number, rollout.kind, rollout.to.seq, rollout.by, rollout.outcome
    )
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

pub async fn status(args: RolloutStatusArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    if args.watch {
        return wait(
            &client,
            std::slice::from_ref(&args.name),
            args.timeout,
            false,
        )
        .await;
    }
    let status = client.rollout_status(&args.name, 0, Duration::ZERO).await?;
    if args.json {
        return output::json(&status);
    }
    let d = &status.deployment;
    println!(
        "deployment {} serves {}@{} ({})",
        d.name,
        d.component,
        d.seq,
        d.version.short()
    );
    match &status.rollout {
        Some(rollout) => {
            println!("rollout {}", describe(rollout));
            for note in &rollout.in_place {
                println!("{}", in_place_text(note, d));
            }
        }
        None => println!("no rollout recorded"),
    }
    let mut rows = vec![vec![
        "LOCATION".into(),
        "DESIRED".into(),
        "UPDATED".into(),
        "READY".into(),
        "OLD".into(),
    ]];
    for l in &status.locations {
        rows.push(vec![
            l.location.clone(),
            l.desired.to_string(),
            l.updated.to_string(),
            l.ready.to_string(),
            l.outdated.to_string(),
        ]);
    }
    output::table(&rows);
    for u in &status.unplaced {
        println!(
            "{} copies in {} cannot be placed: {}",
            u.count, u.location, u.reason
        );
    }
    Ok(())
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    let deployment = client.rollback(&args.name, args.to).await?;
    if !args.json {
        println!(
            "rolling {} back to {}@{} ({})",
            deployment.name,
            deployment.component,
            deployment.seq,
            deployment.version.short()
        );
    }
    if args.wait {
        wait(
            &client,
            std::slice::from_ref(&args.name),
            args.timeout,
            args.json,
        )
        .await?;
    }
    if args.json {
        output::json(&deployment)?;
    }
    Ok(())
}

pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let history = client(&args.connect)?.history(&args.name).await?;
    if args.json {
        return output::json(&history);
    }
    let mut rows = vec![vec![
        "#".into(),
        "STARTED".into(),
        "KIND".into(),
        "VERSION".into(),
        "BY".into(),
        "OUTCOME".into(),
    ]];
    for r in &history {
        let version = match r.from_seq {
            Some(from) => format!("{from} → {}", r.to.seq),
            None => r.to.seq.to_string(),
        };
        let mut outcome = r.outcome.to_string();
        if let Some(end) = r.ended_ms {
            outcome.push_str(&format!(
                " in {:.1}s",
                end.saturating_sub(r.started_ms) as f64 / 1000.0
            ));
        }
        if let RolloutOutcome::RolledBack { reason } | RolloutOutcome::Failed { reason } =
            &r.outcome
        {
            outcome.push_str(&format!(": {}", first_line(reason)));
        }
        if !r.in_place.is_empty() {
            let locations: Vec<&str> = r.in_place.iter().map(|n| n.location.as_str()).collect();
            outcome.push_str(&format!(" (in place in {})", locations.join(", ")));
        }
        rows.push(vec![
            r.number.to_string(),
            output::time(r.started_ms),
            r.kind.to_string(),
            version,
            r.by.clone(),
            outcome,
        ]);
    }
    output::table(&rows);
    Ok(())
}
