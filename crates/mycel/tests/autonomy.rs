//! Static stability: with the control plane gone, nodes keep serving, restart crashed
//! workers, come back from their own restart from what they keep on disk, and a
//! gateway restarted meanwhile serves from its kept routes. When the control plane
//! returns, nothing whose assignment did not change restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    assert_no_failures, eventually, free_port, status, write_tree, Load, TestAgent, TestGateway,
    TestServer, READY_PATIENCE,
};

const MANIFEST: &[u8] = b"[component]\nname = \"steady\"\nentrypoint = \"model:Model\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 0.5\nmemory = \"128MiB\"\n";
const MODEL: &[u8] = b"import numpy as np\n\nclass Model:\n    def __init__(self, ctx):\n        pass\n\n    def predict(self, inputs):\n        rows = next(iter(inputs.values())).shape[0]\n        return {\"version\": np.full(rows, 1, dtype=np.int64)}\n";

/// How long the control plane stays away.
const OUTAGE: Duration = Duration::from_secs(60);

/// The replicas an agent reports on its own data plane: (id, pid, restarts, state).
fn local_replicas(agent_url: &str) -> Option<Vec<(String, u64, u64, String)>> {
    let list: Value = reqwest::blocking::get(format!("{agent_url}/v1/replicas"))
        .ok()?
        .json()
        .ok()?;
    Some(
        list.as_array()?
            .iter()
            .map(|r| {
                (
                    r["replica"].as_str().unwrap_or_default().to_owned(),
                    r["pid"].as_u64().unwrap_or(0),
                    r["restarts"].as_u64().unwrap_or(0),
                    r["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    )
}

/// The one ready replica on an agent: (id, pid, restarts).
fn ready_replica(agent_url: &str) -> Option<(String, u64, u64)> {
    let list = local_replicas(agent_url)?;
    match list.as_slice() {
        [(id, pid, restarts, state)] if state == "ready" && *pid > 0 => {
            Some((id.clone(), *pid, *restarts))
        }
        _ => None,
    }
}

fn start_agent(server: &str, token: &str, root: &Path, name: &str, port: u16) -> TestAgent {
    TestAgent::start_with_server(
        server,
        token,
        root,
        name,
        "here",
        &["--listen", &format!("127.0.0.1:{port}")],
    )
}

#[test]
fn nodes_and_a_local_gateway_serve_through_a_control_plane_outage() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server_port = free_port();
    let server = TestServer::start_at(data.path(), server_port);
    let (url, token) = (server.url.clone(), server.token());
    let (port_a, port_b) = (free_port(), free_port());
    let _a = start_agent(&url, &token, nodes.path(), "a", port_a);
    let mut b = start_agent(&url, &token, nodes.path(), "b", port_b);
    let (agent_a, agent_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    // Both registered before the deploy, so that it puts one replica on each.
    eventually("both nodes to register", Duration::from_secs(30), || {
        (status(&server)["nodes"].as_array()?.len() == 2).then_some(())
    });
    let gateway_port = free_port();
    let gateway_data = nodes.path().join("gateway");
    let gateway = TestGateway::start(&url, &token, gateway_port, "here", &gateway_data);

    let dir = nodes.path().join("steady");
    write_tree(&dir, &[("mycel.toml", MANIFEST), ("model.py", MODEL)]);
    let out = server.cli(&["push", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["deploy", "steady", "--copies", "here=2", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One replica on each node, both ready and routed by the local gateway.
    let (replica_a, _, _) =
        eventually("a replica on a", READY_PATIENCE, || ready_replica(&agent_a));
    eventually("a replica on b", READY_PATIENCE, || ready_replica(&agent_b));
    let mut load = Load::start(&gateway.url, "steady", 4);
    eventually(
        "answers through the gateway",
        Duration::from_secs(20),
        || (load.count() > 20).then_some(()),
    );

    // The control plane dies.
    let outage = Instant::now();
    drop(server);
    let start = load.count();

    // A worker killed meanwhile is restarted by its agent.
    let (_, pid, restarts) = ready_replica(&agent_a).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let (id, _, new_restarts) = eventually(
        "the killed worker to restart",
        Duration::from_secs(60),
        || ready_replica(&agent_a).filter(|r| r.1 != pid),
    );
    assert_eq!(id, replica_a);
    assert!(new_restarts > restarts);

    // An agent restarted meanwhile brings its replica back from disk, asking no one.
    b.stop();
    let mut b = start_agent(&url, &token, nodes.path(), "b", port_b);
    eventually(
        "b's replica back without the control plane",
        READY_PATIENCE,
        || ready_replica(&agent_b),
    );
    // The gateway held the line (a's replica answered); its requests all went through.
    let answers = load.since(start);
    assert_no_failures(&answers, "the outage, a worker kill and an agent restart");
    assert!(answers.len() > 20, "only {} answers", answers.len());
    load.stop();

    // A gateway restarted meanwhile serves from the routes it kept.
    drop(gateway);
    let gateway = TestGateway::start(&url, &token, gateway_port, "here", &gateway_data);
    load = Load::start(&gateway.url, "steady", 4);
    let until = OUTAGE.saturating_sub(outage.elapsed());
    std::thread::sleep(until);
    let answers = load.since(0);
    assert_no_failures(&answers, "the outage, after the gateway restarted");
    assert!(answers.len() > 20, "only {} answers", answers.len());

    // The control plane returns; nothing that kept its assignment restarts.
    let before = [
        ready_replica(&agent_a).unwrap(),
        ready_replica(&agent_b).unwrap(),
    ];
    let start = load.count();
    let server = TestServer::start_at(data.path(), server_port);
    eventually("both nodes to report in", Duration::from_secs(30), || {
        let status = status(&server);
        let ready = status["replicas"]
            .as_array()?
            .iter()
            .filter(|r| r["status"]["state"] == "ready")
            .count();
        (ready == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let after = [
        ready_replica(&agent_a).unwrap(),
        ready_replica(&agent_b).unwrap(),
    ];
    assert_eq!(
        before, after,
        "a replica restarted when the control plane came back"
    );
    let answers = load.since(start);
    load.stop();
    assert_no_failures(&answers, "the control plane's return");
    b.stop();
}
