//! Warm starts: a node forks serving workers from one template per environment, which
//! imported what the component imports once; a killed worker and a code-only rollout
//! are forked from the same template; `--no-warm-start` starts workers cold; the
//! template leaves with the agent. All of it unsandboxed: sandboxed workers start cold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{
    alive, all_ready, cmdline, eventually, replicas, status, write_tree, TestAgent, TestServer,
    READY_PATIENCE,
};

const MANIFEST: &[u8] = b"[component]\nname = \"warm\"\nentrypoint = \"model:Model\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 0.25\nmemory = \"64MiB\"\n";

fn model(version: u32) -> String {
    format!(
        "import numpy as np\n\nclass Model:\n    def __init__(self, ctx):\n        pass\n\n    def predict(self, inputs):\n        return {{\"v\": np.array([{version}])}}\n"
    )
}

/// The parent of `pid`, from /proc.
fn parent(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Ready replicas' pids in `location`, once there are `count`.
fn pids(server: &TestServer, node: &str, count: usize) -> Vec<u64> {
    eventually(
        &format!("{count} ready replicas on {node}"),
        READY_PATIENCE,
        || {
            let s = status(server);
            let mine: Vec<u64> = replicas(&s, "warm")
                .into_iter()
                .filter(|r| r.1 == node && r.2 == "ready")
                .filter_map(|r| r.3)
                .collect();
            (mine.len() == count).then_some(mine)
        },
    )
}

#[test]
fn workers_fork_from_a_warm_template_and_start_cold_when_told() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    // Sandboxed workers always start cold (docs/sandbox.md): warm starts are for
    // agents that run workers unconfined.
    let mut warm =
        TestAgent::start_with(&server, nodes.path(), "n1", "here", &["--sandbox", "off"]);
    let cold = TestAgent::start_with(
        &server,
        nodes.path(),
        "n2",
        "there",
        &["--no-warm-start", "--sandbox", "off"],
    );
    let dir = nodes.path().join("warm-model");
    write_tree(
        &dir,
        &[("mycel.toml", MANIFEST), ("model.py", model(1).as_bytes())],
    );
    server.cli_json(&["push", dir.to_str().unwrap()]);
    let out = server.cli(&[
        "deploy", "warm", "--copies", "here=2", "--copies", "there=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("every replica ready", READY_PATIENCE, || {
        all_ready(&status(&server), "warm", 3).then_some(())
    });

    // Both workers on the warm node are forks of one template, which imported numpy.
    let forked = pids(&server, "n1", 2);
    let template = parent(forked[0]);
    assert_eq!(parent(forked[1]), template);
    assert!(
        cmdline(template).contains("mycel_worker.template"),
        "{}",
        cmdline(template)
    );
    let logs = nodes.path().join("n1/logs");
    let log = std::fs::read_dir(&logs)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("template-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap();
    assert!(log.contains("numpy imported"), "{log}");
    // The cold node's worker is its agent's own child.
    let started_cold = pids(&server, "n2", 1);
    assert_eq!(parent(started_cold[0]), u64::from(cold.pid().unwrap()));

    // A killed worker is replaced by another fork; its exit came back through the
    // template.
    std::process::Command::new("kill")
        .args(["-KILL", &forked[0].to_string()])
        .status()
        .unwrap();
    let again = eventually("the killed worker replaced", READY_PATIENCE, || {
        let now = pids(&server, "n1", 2);
        (!now.contains(&forked[0])).then_some(now)
    });
    assert!(again.iter().all(|&pid| parent(pid) == template));
    let restarts: u64 = replicas(&status(&server), "warm")
        .iter()
        .filter(|r| r.1 == "n1")
        .map(|r| r.4)
        .sum();
    assert_eq!(restarts, 1);

    // A code-only change rolls out on the same template.
    write_tree(&dir, &[("model.py", model(2).as_bytes())]);
    server.cli_json(&["push", dir.to_str().unwrap()]);
    let out = server.cli(&[
        "deploy", "warm", "--copies", "here=2", "--copies", "there=1", "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gateway = server.gateway();
    eventually("version 2 answering", Duration::from_secs(20), || {
        let r: serde_json::Value = reqwest::blocking::Client::new()
            .post(format!("{gateway}/v2/models/warm/infer"))
            .json(
                &json!({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [0]}]}),
            )
            .send()
            .ok()?
            .json()
            .ok()?;
        (r["model_version"] == "2").then_some(())
    });
    let rolled = pids(&server, "n1", 2);
    assert!(rolled.iter().all(|pid| !again.contains(pid)));
    assert!(rolled.iter().all(|&pid| parent(pid) == template));

    // The template leaves with its agent.
    warm.stop();
    eventually("the template gone", Duration::from_secs(20), || {
        (!alive(template)).then_some(())
    });
}
