//! `mycel status`: nodes, deployments and replicas at a glance.

use mycel_core::federation::Isolation;
use mycel_core::fleet::{NodeState, ReplicaState};

use crate::cli::ListArgs;
use crate::connect::client;
use crate::output;

pub async fn run(args: ListArgs) -> anyhow::Result<()> {
    let status = client(&args.connect)?.status().await?;
    if args.json {
        return output::json(&status);
    }
    // GPUs get a column only in a fleet that has some.
    let any_gpus = status.nodes.iter().any(|v| v.node.spec.gpus > 0);
    let mut header: Vec<String> = ["NODE", "LOCATION", "STATE", "REPLICAS", "CPUS", "MEMORY"]
        .map(String::from)
        .to_vec();
    if any_gpus {
        header.push("GPUS".into());
    }
    header.extend([
        "SANDBOX".into(),
        "DATASETS".into(),
        "TRAINING NETWORK".into(),
    ]);
    let mut rows = vec![header];
    for view in &status.nodes {
        let spec = &view.node.spec;
        let state = match view.node.state {
            NodeState::Ready => "ready",
            NodeState::Lost => "lost",
        };
        let mut row = vec![
            spec.name.clone(),
            spec.location.clone(),
            state.into(),
            view.replicas.to_string(),
            format!(
                "{}/{}",
                output::cpus(view.cpus_used),
                output::cpus(spec.cpus)
            ),
            format!(
                "{}/{}",
                output::bytes(view.memory_used),
                output::bytes(spec.memory_bytes)
            ),
        ];
        if any_gpus {
            row.push(gpus(view));
        }
        row.extend([
            spec.sandbox.to_string(),
            if spec.datasets.is_empty() {
                "-".into()
            } else {
                spec.datasets.join(",")
            },
            match spec.isolation {
                Isolation::None => "open (no isolation)".into(),
                isolation => format!("cut off ({isolation})"),
            },
        ]);
        rows.push(row);
    }
    output::table(&rows);
    println!();

    let mut rows = vec![vec![
        "DEPLOYMENT".into(),
        "VERSION".into(),
        "READY/DESIRED".into(),
        "LAST ROLLOUT".into(),
    ]];
    for view in &status.deployments {
        let per_location: Vec<String> = view
            .locations
            .iter()
            .map(|l| format!("{} {}/{}", l.location, l.ready, l.desired))
            .collect();
        rows.push(vec![
            view.deployment.name.clone(),
            format!(
                "{}@{} ({})",
                view.deployment.component,
                view.deployment.seq,
                view.deployment.version.short()
            ),
            per_location.join("  "),
            view.rollout.as_ref().map_or(String::new(), |r| {
                let versions = match r.from_seq {
                    Some(from) => format!("{from} → {}", r.to.seq),
                    None => r.to.seq.to_string(),
                };
                format!("#{} {} {versions}: {}", r.number, r.kind, r.outcome)
            }),
        ]);
    }
    output::table(&rows);

    let troubled: Vec<_> = status
        .replicas
        .iter()
        .filter(|r| {
            !matches!(
                r.status.as_ref().map(|s| &s.state),
                Some(ReplicaState::Ready)
            )
        })
        .collect();
    if !troubled.is_empty() {
        println!();
        let mut rows = vec![vec![
            "REPLICA".into(),
            "NODE".into(),
            "STATE".into(),
            "RESTARTS".into(),
        ]];
        let mut reasons = Vec::new();
        let lost: Vec<&str> = status
            .nodes
            .iter()
            .filter(|n| n.node.state == NodeState::Lost)
            .map(|n| n.node.spec.name.as_str())
            .collect();
        for replica in &troubled {
            let (state, restarts) = match &replica.status {
                // Kept assigned until replaced; it may well still serve where it is.
                _ if lost.contains(&replica.assignment.node.as_str()) => {
                    ("unreachable (node lost)".into(), "-".into())
                }
                // A replica on its way says for how long, and how far it got.
                Some(s) if s.state != ReplicaState::Ready => {
                    let progress = s
                        .progress
                        .as_ref()
                        .map_or(String::new(), |p| format!(", {p}"));
                    let state = format!("{} {:.0}s{progress}", s.state, s.for_ms as f64 / 1000.0);
                    (state, s.restarts.to_string())
                }
                Some(s) => (s.state.to_string(), s.restarts.to_string()),
                None => ("pending".into(), "0".into()),
            };
            if let Some(ReplicaState::Failed { reason }) = replica.status.as_ref().map(|s| &s.state)
            {
                reasons.push((replica.assignment.replica.clone(), reason.clone()));
            }
            rows.push(vec![
                replica.assignment.replica.clone(),
                replica.assignment.node.clone(),
                state,
                restarts,
            ]);
        }
        output::table(&rows);
        for (replica, reason) in reasons {
            println!("\n{replica} failed:");
            for line in reason.lines() {
                println!("  {line}");
            }
        }
    }
    for unplaced in &status.unplaced {
        println!(
            "\n{}: {} copies in {} cannot be placed: {}",
            unplaced.deployment, unplaced.count, unplaced.location, unplaced.reason
        );
    }
    Ok(())
}

/// A node's GPUs: reserved of offered, and their memory in use where the node reports
/// it, e.g. `1/2 (3.1GiB of 280GiB)`.
fn gpus(view: &mycel_core::api::NodeView) -> String {
    let spec = &view.node.spec;
    let mut text = format!("{}/{}", view.gpus_used, spec.gpus);
    let total: u64 = spec.gpu_devices.iter().map(|g| g.memory_bytes).sum();
    if !view.gpu_use.is_empty() && total > 0 {
        let used: u64 = view.gpu_use.iter().map(|u| u.memory_used_bytes).sum();
        text.push_str(&format!(
            " ({} of {})",
            output::bytes(used),
            output::bytes(total)
        ));
    }
    text
}
