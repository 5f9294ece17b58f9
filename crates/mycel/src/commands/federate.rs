//! `mycel federate` and `mycel federation`: start a federation, follow its rounds, and
//! read what each round did.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::bail;
use mycel_core::federation::{
    ClientStatus, Federation, FederationRequest, FederationState, PrivacyParams, Round,
};

use crate::cli::{FederateArgs, FederationArgs, ListArgs};
use crate::connect::client;
use crate::output;

/// How long one long-poll for progress is held by the server.
const POLL: Duration = Duration::from_secs(30);

pub async fn run(args: FederateArgs) -> anyhow::Result<()> {
    let (component, version) = match args.target.split_once('@') {
        Some((name, reference)) => (name.to_owned(), reference.to_owned()),
        None => (args.target.clone(), "latest".to_owned()),
    };
    let config = args
        .config
        .iter()
        .map(|(key, value)| {
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
            (key.clone(), value)
        })
        .collect();
    let request = FederationRequest {
        deploy: args.deploy.as_ref().map(|name| {
            if name.is_empty() {
                component.clone()
            } else {
                name.clone()
            }
        }),
        component,
        version,
        dataset: args.dataset.clone(),
        nodes: args.nodes.clone(),
        rounds: args.rounds,
        strategy: args.strategy.clone(),
        min_clients: Some(args.min_clients),
        fraction: args.fraction,
        local_epochs: args.local_epochs,
        round_timeout_s: Some(args.round_timeout.as_secs().max(1)),
        weights: args.weights.clone(),
        config,
        privacy: args.clip.map(|clip| PrivacyParams {
            clip,
            noise_multiplier: args.noise_multiplier,
            seed: args.dp_seed,
        }),
    };
    let client = client(&args.connect)?;
    let federation = client.start_federation(&request).await?;
    if args.detach {
        if args.json {
            return output::json(&federation);
        }
        println!("{}", federation.id);
        return Ok(());
    }
    eprintln!(
        "federation {}: {}@{} on dataset {:?}, {} of {} ({})",
        federation.id,
        federation.request.component,
        federation.seq,
        federation.request.dataset,
        plural(federation.request.rounds, "round"),
        federation.request.strategy,
        federation.weights_path,
    );
    let federation = follow(&client, federation.id, !args.json).await?;
    if args.json {
        output::json(&federation)?;
    }
    finish(&client, &federation, args.json).await
}

/// Follows a federation until it ends, printing each round as it completes.
async fn follow(
    client: &mycel_client::Client,
    id: u64,
    progress: bool,
) -> anyhow::Result<Federation> {
    let mut generation = 0;
    let mut printed = 0;
    let mut started = 0;
    loop {
        let watch = client.watch_federation(id, generation, POLL).await?;
        generation = watch.generation;
        let federation = watch.federation;
        if progress {
            for round in federation
                .rounds
                .iter()
                .skip(printed)
                .filter(|r| r.ended_ms.is_some())
            {
                eprintln!("{}", round_line(round, federation.request.rounds));
                for line in client_problems(round) {
                    eprintln!("  {line}");
                }
                printed = round.number as usize;
            }
            if let Some(round) = federation.rounds.last().filter(|r| r.ended_ms.is_none()) {
                if round.number != started {
                    eprintln!(
                        "round {}: training on {}…",
                        round.number,
                        plural(round.clients.len() as u32, "client")
                    );
                    started = round.number;
                }
            }
        }
        if federation.state.is_done() {
            return Ok(federation);
        }
    }
}

/// The federation now, or once it ended with --watch (printing rounds if `progress`).
async fn fetch(
    client: &mycel_client::Client,
    args: &FederationArgs,
    progress: bool,
) -> anyhow::Result<Federation> {
    if args.watch {
        return follow(client, args.id, progress).await;
    }
    Ok(client
        .watch_federation(args.id, 0, Duration::ZERO)
        .await?
        .federation)
}

/// Reports how a federation ended; an error unless it completed.
async fn finish(
    client: &mycel_client::Client,
    federation: &Federation,
    quiet: bool,
) -> anyhow::Result<()> {
    match &federation.state {
        FederationState::Complete => {}
        FederationState::Failed { reason } => {
            bail!("federation {} failed: {reason}", federation.id)
        }
        FederationState::Cancelled => bail!("federation {} was stopped", federation.id),
        FederationState::Running => bail!("federation {} is still running", federation.id),
    }
    let Some(published) = &federation.published else {
        bail!("federation {} completed without publishing", federation.id)
    };
    if !quiet {
        eprintln!(
            "published {}@{} ({}) with the weights of round {}",
            federation.request.component,
            published.seq,
            published.version.short(),
            federation.rounds.len()
        );
    }
    if let Some(deployment) = &published.deployment {
        if !quiet {
            eprintln!("rolling out to {deployment}");
        }
        super::rollout::wait(
            client,
            std::slice::from_ref(deployment),
            Duration::from_secs(600),
            quiet,
        )
        .await?;
        if !quiet {
            eprintln!(
                "{deployment} serves {}@{}",
                federation.request.component, published.seq
            );
        }
    }
    Ok(())
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let federations = client(&args.connect)?.federations().await?;
    if args.json {
        return output::json(&federations);
    }
    let mut rows = vec![vec![
        "ID".into(),
        "COMPONENT".into(),
        "DATASET".into(),
        "STRATEGY".into(),
        "ROUNDS".into(),
        "STATE".into(),
        "RESULT".into(),
    ]];
    for f in &federations {
        rows.push(vec![
            f.id.to_string(),
            format!("{}@{}", f.request.component, f.seq),
            f.request.dataset.clone(),
            f.request.strategy.clone(),
            format!("{}/{}", completed(f), f.request.rounds),
            state_word(&f.state).into(),
            f.published.as_ref().map_or(String::new(), |p| {
                format!("{}@{}", f.request.component, p.seq)
            }),
        ]);
    }
    output::table(&rows);
    Ok(())
}

pub async fn status(args: FederationArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    let federation = fetch(&client, &args, !args.json).await?;
    if args.json {
        return output::json(&federation);
    }
    let f = &federation;
    println!(
        "federation {}: {}@{} on dataset {:?}{}, {} of {}, {} local epoch(s), min {} client(s)",
        f.id,
        f.request.component,
        f.seq,
        f.request.dataset,
        if f.request.nodes.is_empty() {
            String::new()
        } else {
            format!(" (nodes {})", f.request.nodes)
        },
        plural(f.request.rounds, "round"),
        f.request.strategy,
        f.request.local_epochs,
        f.min_clients,
    );
    if let Some(privacy) = &f.request.privacy {
        println!(
            "differential privacy: clip {}, noise multiplier {}",
            privacy.clip, privacy.noise_multiplier
        );
    }
    let took = f
        .ended_ms
        .map(|end| {
            format!(
                ", took {:.1}s",
                end.saturating_sub(f.started_ms) as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    println!(
        "state: {} (started {} by {}{took})",
        f.state,
        output::time(f.started_ms),
        f.by
    );
    println!("rounds: {}/{}", completed(f), f.request.rounds);
    if let Some(round) = f.rounds.last() {
        println!("last:   {}", round_line(round, f.request.rounds));
        for line in client_problems(round) {
            println!("  {line}");
        }
    }
    if let Some(published) = &f.published {
        let deployed = match (&published.deployment, published.rollout) {
            (Some(d), Some(n)) => format!(", rolled out to {d} (rollout #{n})"),
            (Some(d), None) => format!(", deployed to {d}"),
            _ => String::new(),
        };
        println!(
            "published: {}@{} ({}){deployed}",
            f.request.component,
            published.seq,
            published.version.short()
        );
    }
    if args.watch {
        return finish(&client, f, true).await;
    }
    Ok(())
}

pub async fn rounds(args: FederationArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    let federation = fetch(&client, &args, false).await?;
    if args.json {
        return output::json(&federation.rounds);
    }
    let metrics: BTreeSet<String> = federation
        .rounds
        .iter()
        .filter_map(|r| r.evaluation.as_ref())
        .flat_map(|e| e.metrics.keys().cloned())
        .collect();
    let mut header: Vec<String> = [
        "ROUND", "PHASE", "CLIENTS", "IN", "DROPPED", "REJECTED", "LOSS",
    ]
    .map(String::from)
    .into();
    header.extend(metrics.iter().map(|m| m.to_uppercase()));
    header.extend(["TRAIN".into(), "AGGREGATE".into(), "TIME".into()]);
    let mut rows = vec![header];
    for round in &federation.rounds {
        let count = |word: &str| {
            round
                .clients
                .iter()
                .filter(|c| c.status.word() == word)
                .count()
        };
        let mut row = vec![
            round.number.to_string(),
            phase_word(round).into(),
            round.clients.len().to_string(),
            round.included.to_string(),
            count("dropped").to_string(),
            count("rejected").to_string(),
            round
                .evaluation
                .as_ref()
                .map_or("-".into(), |e| format!("{:.4}", e.loss)),
        ];
        for metric in &metrics {
            row.push(
                round
                    .evaluation
                    .as_ref()
                    .and_then(|e| e.metrics.get(metric))
                    .map_or("-".into(), |v| format!("{v:.4}")),
            );
        }
        let slowest = round.clients.iter().filter_map(|c| c.train_ms).max();
        row.push(slowest.map_or("-".into(), seconds));
        row.push(seconds(round.aggregate_ms));
        row.push(round.ended_ms.map_or("-".into(), |end| {
            seconds(end.saturating_sub(round.started_ms))
        }));
        rows.push(row);
    }
    output::table(&rows);
    for round in &federation.rounds {
        let lines = if args.clients {
            round
                .clients
                .iter()
                .map(|c| {
                    let evaluation = match (&c.evaluation, &c.evaluation_error) {
                        (Some(e), _) => format!(", eval loss {:.4} on {}", e.loss, e.examples),
                        (None, Some(error)) => format!(", eval failed: {}", first_line(error)),
                        _ => String::new(),
                    };
                    let train = c
                        .train_ms
                        .map_or(String::new(), |ms| format!(" in {}", seconds(ms)));
                    format!(
                        "{}: {} ({} examples{train}){evaluation}{}",
                        c.node,
                        c.status.word(),
                        c.examples,
                        reason_of(&c.status)
                            .map_or(String::new(), |r| format!(": {}", first_line(r)))
                    )
                })
                .collect()
        } else {
            client_problems(round)
        };
        if !lines.is_empty() {
            println!("\nround {}:", round.number);
            for line in lines {
                println!("  {line}");
            }
        }
        if let mycel_core::federation::RoundPhase::Failed { reason } = &round.phase {
            println!("\nround {} failed: {reason}", round.number);
        }
    }
    Ok(())
}

pub async fn stop(args: FederationArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    client.stop_federation(args.id).await?;
    eprintln!("stopping federation {}", args.id);
    let federation = follow(&client, args.id, false).await?;
    eprintln!("federation {}: {}", federation.id, federation.state);
    Ok(())
}

/// `round 3/10: loss 0.3120 accuracy 0.9210, 5/5 clients in, 1.4s`.
fn round_line(round: &Round, rounds: u32) -> String {
    let evaluation = round.evaluation.as_ref().map_or(String::new(), |e| {
        let metrics: Vec<String> = e
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        format!("loss {:.4} {}, ", e.loss, metrics.join(" "))
    });
    let time = round.ended_ms.map_or(String::new(), |end| {
        format!(", {}", seconds(end.saturating_sub(round.started_ms)))
    });
    let ending = match &round.phase {
        mycel_core::federation::RoundPhase::Failed { reason } => format!(" — failed: {reason}"),
        _ => String::new(),
    };
    format!(
        "round {}/{rounds}: {evaluation}{}/{} clients in{time}{ending}",
        round.number,
        round.included,
        round.clients.len()
    )
}

/// One line per client that dropped or was rejected.
fn client_problems(round: &Round) -> Vec<String> {
    round
        .clients
        .iter()
        .filter_map(|c| {
            Some(format!(
                "{} {}: {}",
                c.node,
                c.status.word(),
                first_line(reason_of(&c.status)?)
            ))
        })
        .collect()
}

fn reason_of(status: &ClientStatus) -> Option<&str> {
    match status {
        ClientStatus::Rejected { reason } | ClientStatus::Dropped { reason } => Some(reason),
        _ => None,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn completed(f: &Federation) -> usize {
    f.rounds.iter().filter(|r| r.global.is_some()).count()
}

fn state_word(state: &FederationState) -> &'static str {
    match state {
        FederationState::Running => "running",
        FederationState::Complete => "complete",
        FederationState::Failed { .. } => "failed",
        FederationState::Cancelled => "cancelled",
    }
}

fn phase_word(round: &Round) -> &'static str {
    use mycel_core::federation::RoundPhase;
    match round.phase {
        RoundPhase::Training => "training",
        RoundPhase::Aggregating => "aggregating",
        RoundPhase::Evaluating => "evaluating",
        RoundPhase::Complete => "complete",
        RoundPhase::Failed { .. } => "failed",
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
