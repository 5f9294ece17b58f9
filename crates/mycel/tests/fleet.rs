//! End-to-end tests of the fleet: a real control plane, real agents and real Python
//! workers on 127.0.0.1. Needs `uv` on PATH (or MYCEL_UV) and the package registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{eventually, mycel_bin, write_tree, TestServer};

/// Environment builds download packages on a cold cache; allow for it.
const READY_PATIENCE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A `mycel agent` process, stopped on drop.
struct TestAgent {
    name: String,
    child: Option<Child>,
}

impl TestAgent {
    fn start(server: &TestServer, root: &Path, name: &str, location: &str) -> Self {
        let data = root.join(name);
        let child = Command::new(mycel_bin())
            .args([
                "agent",
                "--server",
                &server.url,
                "--name",
                name,
                "--location",
                location,
            ])
            .args([
                "--cpus",
                "4",
                "--memory",
                "8GiB",
                "--heartbeat",
                "200ms",
                "--data",
            ])
            .arg(&data)
            .arg("--envs")
            .arg(root.join("envs"))
            .env("MYCEL_TOKEN", server.token())
            .env("MYCEL_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            name: name.into(),
            child: Some(child),
        }
    }

    /// SIGTERM, as an operator stopping the agent; waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "agent {} exited with {status}", self.name);
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

fn status(server: &TestServer) -> Value {
    server.cli_json(&["status"])
}

/// Replicas of `deployment` as (replica, node, state, pid, restarts).
fn replicas(status: &Value, deployment: &str) -> Vec<(String, String, String, Option<u64>, u64)> {
    status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["assignment"]["deployment"] == deployment)
        .map(|r| {
            let s = &r["status"];
            (
                r["assignment"]["replica"].as_str().unwrap().to_owned(),
                r["assignment"]["node"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap_or("unreported").to_owned(),
                s["pid"].as_u64(),
                s["restarts"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn all_ready(status: &Value, deployment: &str, count: usize) -> bool {
    let replicas = replicas(status, deployment);
    replicas.len() == count && replicas.iter().all(|r| r.2 == "ready")
}

fn alive(pid: u64) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

fn cmdline(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn agents_run_replicas_restart_workers_and_move_lost_nodes() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(data.path(), &["--lost-after", "2s"]);
    let mut ny1 = TestAgent::start(&server, nodes.path(), "ny-1", "new-york");
    let _london = TestAgent::start(&server, nodes.path(), "ld-1", "london");

    let echo = repo_root().join("examples/echo");
    server.cli_json(&["push", echo.to_str().unwrap()]);
    let out = server.cli(&[
        "deploy",
        "echo",
        "--copies",
        "new-york=2",
        "--copies",
        "london=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ready = eventually("3 echo replicas ready", READY_PATIENCE, || {
        let s = status(&server);
        all_ready(&s, "echo", 3).then_some(s)
    });
    for (replica, node, _, pid, _) in replicas(&ready, "echo") {
        let pid = pid.expect("a ready replica reports its pid");
        assert!(alive(pid), "{replica}: worker {pid} is not running");
        let cmd = cmdline(pid);
        assert!(cmd.contains("mycel_worker"), "{replica}: {cmd}");
        // The worker runs from its own node's data directory.
        assert!(
            cmd.contains(nodes.path().join(&node).to_str().unwrap()),
            "{replica} on {node}: {cmd}"
        );
        let expected_location = if node == "ny-1" { "new-york" } else { "london" };
        assert!(replica.contains(expected_location), "{replica} on {node}");
    }
    let view = &ready["deployments"][0]["locations"];
    assert_eq!(view[0]["location"], "london");
    assert_eq!(
        (view[0]["ready"].as_u64(), view[1]["ready"].as_u64()),
        (Some(1), Some(2))
    );

    // A killed worker comes back, under the same replica, with a new pid.
    let (victim, _, _, pid, _) = replicas(&ready, "echo")
        .into_iter()
        .find(|r| r.1 == "ny-1")
        .unwrap();
    let pid = pid.unwrap();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    eventually(
        "the killed worker to be restarted",
        Duration::from_secs(60),
        || {
            replicas(&status(&server), "echo")
                .into_iter()
                .find(|r| r.0 == victim && r.2 == "ready" && r.3.is_some_and(|p| p != pid))
                .map(|r| assert!(r.4 >= 1, "restarts not counted: {r:?}"))
        },
    );
    let out = server.cli(&["logs", "echo", "--replica", &victim]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mycel worker ready"),
        "{out:?}"
    );

    // A lost node's replicas move to another node of the same location.
    let _ny2 = TestAgent::start(&server, nodes.path(), "ny-2", "new-york");
    let old_pids: Vec<u64> = replicas(&status(&server), "echo")
        .into_iter()
        .filter(|r| r.1 == "ny-1")
        .filter_map(|r| r.3)
        .collect();
    assert_eq!(old_pids.len(), 2);
    ny1.stop();
    for pid in &old_pids {
        assert!(!alive(*pid), "worker {pid} outlived its agent");
    }
    let moved = eventually("new-york replicas to move to ny-2", READY_PATIENCE, || {
        let s = status(&server);
        let reps = replicas(&s, "echo");
        let on_ny2 = reps
            .iter()
            .filter(|r| r.1 == "ny-2" && r.2 == "ready")
            .count();
        (on_ny2 == 2 && reps.len() == 3).then_some(s)
    });
    let lost = moved["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"]["spec"]["name"] == "ny-1")
        .unwrap();
    assert_eq!(lost["node"]["state"], "lost");
}

#[test]
fn impossible_requirement_fails_with_uvs_error_in_status() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _agent = TestAgent::start(&server, nodes.path(), "tk-1", "tokyo");

    let src = tempfile::tempdir().unwrap();
    write_tree(
        src.path(),
        &[
            (
                "mycel.toml",
                b"[component]\nname = \"broken\"\nentrypoint = \"model:M\"\n[python]\nrequirements = [\"mycel-no-such-package-xyz==99.0\"]\n",
            ),
            ("model.py", b"class M:\n    def __init__(self, ctx):\n        pass\n"),
        ],
    );
    server.cli_json(&["push", src.path().to_str().unwrap()]);
    let out = server.cli(&["deploy", "broken", "--copies", "tokyo=1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    eventually("the replica to fail", READY_PATIENCE, || {
        let s = status(&server);
        replicas(&s, "broken")
            .first()
            .filter(|r| r.2 == "failed")
            .cloned()
    });
    let out = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("broken-tokyo-") && text.contains("failed"),
        "{text}"
    );
    assert!(
        text.contains("mycel-no-such-package-xyz"),
        "uv's error is missing from status:\n{text}"
    );

    let out = server.cli(&[
        "deploy",
        "broken",
        "--copies",
        "tokyo=1",
        "--wait",
        "--timeout",
        "5s",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mycel-no-such-package-xyz"));
}

#[test]
fn unplaceable_copies_say_why() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _agent = TestAgent::start(&server, nodes.path(), "ld-1", "london");
    eventually("the agent to register", Duration::from_secs(30), || {
        (status(&server)["nodes"].as_array().unwrap().len() == 1).then_some(())
    });
    let echo = repo_root().join("examples/echo");
    server.cli_json(&["push", echo.to_str().unwrap()]);
    let out = server.cli(&[
        "deploy",
        "echo",
        "--copies",
        "tokyo=2",
        "--wait",
        "--timeout",
        "30s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tokyo") && stderr.contains("no ready node"),
        "{stderr}"
    );
    let text = String::from_utf8_lossy(&server.cli(&["status"]).stdout).to_string();
    assert!(text.contains("cannot be placed"), "{text}");
}
