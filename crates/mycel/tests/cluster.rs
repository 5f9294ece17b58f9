//! A fleet in the test's own process (`support::cluster`) with a clock the test moves:
//! a node silent for longer than `--lost-after`, a join token past its expiry and a
//! rollout past its deadline, each without waiting for the time to pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use mycel_core::api::JoinTokenRequest;
use mycel_core::fleet::{NodeState, ReplicaState, RolloutOutcome};
use mycel_core::ErrorCode;
use support::cluster::Cluster;
use support::{write_tree, READY_PATIENCE};

const MANIFEST: &[u8] = b"[component]\nname = \"ver\"\nentrypoint = \"model:Model\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 1\n";

fn model(version: i64, init: &str) -> String {
    format!(
        "import numpy as np\n\nclass Model:\n    def __init__(self, ctx):\n        {init}\n\n    def predict(self, inputs):\n        rows = next(iter(inputs.values())).shape[0]\n        return {{\"version\": np.full(rows, {version}, dtype=np.int64)}}\n"
    )
}

/// `mycel ARGS` against the cluster; asserts success.
async fn mycel(cluster: &Cluster, args: &[&str]) -> String {
    let out = tokio::process::Command::new(support::mycel_bin())
        .args(args)
        .env("MYCEL_SERVER", &cluster.server)
        .env("MYCEL_TOKEN", &cluster.token)
        .env("MYCEL_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mycel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn push(cluster: &Cluster, version: i64, init: &str) {
    let dir = cluster.dir.path().join("ver");
    write_tree(
        &dir,
        &[
            ("mycel.toml", MANIFEST),
            ("model.py", model(version, init).as_bytes()),
        ],
    );
    mycel(cluster, &["push", dir.to_str().unwrap()]).await;
}

/// The version the gateway's answer came from.
async fn infer(cluster: &Cluster) -> Option<i64> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v2/models/ver/infer", cluster.gateway))
        .json(&serde_json::json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}
        ]}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer["outputs"][0]["data"][0].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_silent_past_lost_after_has_its_replica_started_elsewhere() {
    let mut cluster = Cluster::builder()
        .node("tokyo-1", "tokyo")
        .node("tokyo-2", "tokyo")
        .build()
        .await;
    push(&cluster, 1, "pass").await;
    mycel(
        &cluster,
        &["deploy", "ver", "--copies", "tokyo=1", "--wait"],
    )
    .await;
    let client = cluster.client();
    let status = client.status().await.unwrap();
    let first = status.replicas[0].assignment.node.clone();
    let other = if first == "tokyo-1" {
        "tokyo-2"
    } else {
        "tokyo-1"
    };
    assert_eq!(infer(&cluster).await, Some(1));

    cluster.stop_node(&first).await;
    // Two minutes of silence, at once.
    cluster.clock.advance(Duration::from_secs(121));
    let (client, first) = (&client, first.as_str());
    cluster
        .eventually(
            "the replica on the other node",
            READY_PATIENCE,
            move || async move {
                let status = client.status().await.ok()?;
                let lost = status
                    .nodes
                    .iter()
                    .any(|n| n.node.spec.name == first && n.node.state == NodeState::Lost);
                let moved = status.replicas.iter().any(|r| {
                    r.assignment.node == other
                        && r.status
                            .as_ref()
                            .is_some_and(|s| s.state == ReplicaState::Ready)
                });
                (lost && moved).then_some(())
            },
        )
        .await;
    cluster
        .eventually(
            "an answer from the other node",
            Duration::from_secs(10),
            || infer(&cluster),
        )
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_expires_by_the_control_planes_clock() {
    let cluster = Cluster::builder().build().await;
    let client = cluster.client();
    let token = client
        .create_join_token(&JoinTokenRequest {
            location: "tokyo".into(),
            labels: Default::default(),
            expires_s: Some(60),
        })
        .await
        .unwrap()
        .token;
    cluster.clock.advance(Duration::from_secs(61));
    let refused = client.join("edge-1", &token, None).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Unauthorized), "{refused}");
    assert!(refused.to_string().contains("expired"), "{refused}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_past_its_deadline_rolls_back_and_the_old_version_serves_on() {
    let cluster = Cluster::builder().nodes(["here"]).cpus(2.0).build().await;
    push(&cluster, 1, "pass").await;
    mycel(&cluster, &["deploy", "ver", "--copies", "here=1", "--wait"]).await;
    // v2 never finishes loading: the rollout waits, within its 10-minute deadline.
    push(&cluster, 2, "import time; time.sleep(3600)").await;
    mycel(&cluster, &["deploy", "ver@2", "--copies", "here=1"]).await;
    let client = cluster.client();
    let progressing = client.history("ver").await.unwrap();
    assert_eq!(
        progressing.last().unwrap().outcome,
        RolloutOutcome::Progressing
    );
    assert_eq!(infer(&cluster).await, Some(1));

    cluster.pass(Duration::from_secs(601)).await;
    let client = &client;
    let reason = cluster
        .eventually(
            "the rollout to be rolled back",
            Duration::from_secs(30),
            move || async move {
                let history = client.history("ver").await.ok()?;
                history.iter().find_map(|r| match &r.outcome {
                    RolloutOutcome::RolledBack { reason } => Some(reason.clone()),
                    _ => None,
                })
            },
        )
        .await;
    assert!(reason.contains("deadline of 600s"), "{reason}");
    assert_eq!(infer(&cluster).await, Some(1));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_being_lost_is_routed_to_again() {
    let cluster = Cluster::builder().nodes(["here"]).build().await;
    push(&cluster, 1, "pass").await;
    mycel(&cluster, &["deploy", "ver", "--copies", "here=1", "--wait"]).await;
    assert_eq!(infer(&cluster).await, Some(1));
    // Everything jumps past --lost-after at once: the node, alive all along, is lost
    // until its next heartbeat, and its replica must be routed to again after that.
    cluster.clock.advance(Duration::from_secs(121));
    let client = cluster.client();
    let client = &client;
    cluster
        .eventually(
            "the node lost",
            Duration::from_secs(10),
            move || async move {
                let status = client.status().await.ok()?;
                (status.nodes[0].node.state == NodeState::Lost).then_some(())
            },
        )
        .await;
    cluster
        .eventually("answers again", Duration::from_secs(10), || infer(&cluster))
        .await;
    cluster.shutdown().await;
}
