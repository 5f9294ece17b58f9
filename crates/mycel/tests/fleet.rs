//! End-to-end tests of the fleet: a real control plane, real agents and real Python
//! workers on 127.0.0.1. Needs `uv` on PATH (or MYCEL_UV) and the package registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{
    alive, all_ready, cmdline, eventually, replicas, repo_root, status, write_tree, TestAgent,
    TestServer, READY_PATIENCE,
};

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

#[test]
fn up_runs_everything_and_ctrl_c_leaves_no_process_behind() {
    let data = tempfile::tempdir().unwrap();
    let up = TestServer::up(data.path(), "new-york,tokyo");
    let echo = repo_root().join("examples/echo");
    up.cli_json(&["push", echo.to_str().unwrap()]);
    let out = up.cli(&[
        "deploy",
        "echo",
        "--copies",
        "new-york=2",
        "--copies",
        "tokyo=1",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ready = eventually("3 echo replicas ready", READY_PATIENCE, || {
        let s = status(&up);
        all_ready(&s, "echo", 3).then_some(s)
    });
    let pids: Vec<u64> = replicas(&ready, "echo")
        .into_iter()
        .map(|r| r.3.expect("ready replicas report a pid"))
        .collect();
    assert!(pids.iter().all(|&pid| alive(pid)));

    // The embedded gateway serves the deployment.
    let answer = eventually(
        "a prediction through the gateway",
        Duration::from_secs(20),
        || {
            let out = up.cli(&["predict", "echo", "--input", "x=[1, 2, 3]"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert!(answer.contains("x INT64 [3]: [1, 2, 3]"), "{answer}");

    up.signal("INT");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived mycel up");
    }
}

#[test]
fn mobilenet_v2_from_torchvision_source_serves_through_the_gateway() {
    let data = tempfile::tempdir().unwrap();
    let up = TestServer::up(data.path(), "tokyo");
    let model = repo_root().join("examples/mobilenet-v2");
    up.cli_json(&["push", model.to_str().unwrap()]);
    // The first environment with torch in it takes a while to build.
    let out = up.cli(&["deploy", "mobilenet-v2", "--copies", "tokyo=1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = repo_root().join("examples/images/gradient.png");
    let answer = eventually("a MobileNetV2 prediction", Duration::from_secs(20), || {
        let input = format!("image={}", image.display());
        let out = up.cli(&["predict", "mobilenet-v2", "--input", &input]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(
        answer.contains("probabilities FP32 [1, 1000]: top"),
        "{answer}"
    );
    assert!(answer.contains("class INT64 [1]: ["), "{answer}");
    // The class by name, and what the answer is worth.
    assert!(answer.contains("label BYTES [1]: [\""), "{answer}");
    assert!(
        answer.contains(
            "weights BYTES [1]: [\"random (seed 0): untrained, its answers mean nothing\"]"
        ),
        "{answer}"
    );
    up.signal("INT");
}

#[test]
fn a_model_stuck_in_a_call_does_not_hold_up_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let up = TestServer::up(data.path(), "here");
    let component = data.path().join("stuck");
    // The model says it is inside predict by connecting here: its sandbox lets it
    // reach the network (the manifest asks), not the test's files.
    let marker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let model = format!(
        "import socket, time\n\nclass Stuck:\n    def __init__(self, ctx):\n        pass\n\n    def predict(self, inputs):\n        socket.create_connection(('127.0.0.1', {})).close()\n        time.sleep(600)\n        return inputs\n",
        marker.local_addr().unwrap().port()
    );
    write_tree(
        &component,
        &[
            (
                "mycel.toml",
                b"[component]\nname = \"stuck\"\nentrypoint = \"model:Stuck\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[sandbox]\nnetwork = true\n",
            ),
            ("model.py", model.as_bytes()),
        ],
    );
    up.cli_json(&["push", component.to_str().unwrap()]);
    let out = up.cli(&["deploy", "stuck", "--copies", "here=1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = replicas(&status(&up), "stuck")[0].3.unwrap();

    let data_dir = data.path().to_owned();
    std::thread::spawn(move || {
        let _ = Command::new(support::mycel_bin())
            .args(["predict", "stuck", "--input", "x=[1]"])
            .env("MYCEL_DATA", data_dir)
            .output();
    });
    marker.set_nonblocking(true).unwrap();
    eventually(
        "the model to be inside predict",
        Duration::from_secs(20),
        || marker.accept().ok().map(|_| ()),
    );
    let stopping = std::thread::spawn(move || up.signal("INT"));
    eventually("mycel up to exit", Duration::from_secs(20), || {
        stopping.is_finished().then_some(())
    });
    stopping.join().unwrap();
    assert!(!alive(pid), "the stuck worker {pid} survived");
}

#[test]
fn a_worker_that_stops_answering_fails_its_health_check_and_is_replaced() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _agent = TestAgent::start(&server, nodes.path(), "n1", "here");
    let dir = nodes.path().join("frozen");
    // The whole process freezes a second after it loaded: alive, but deaf.
    let model = "import os, signal, threading\n\nclass Model:\n    def __init__(self, ctx):\n        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGSTOP)).start()\n\n    def predict(self, inputs):\n        return dict(inputs)\n";
    write_tree(
        &dir,
        &[
            (
                "mycel.toml",
                b"[component]\nname = \"frozen\"\nentrypoint = \"model:Model\"\n\n[python]\nrequirements = [\"numpy\"]\n",
            ),
            ("model.py", model.as_bytes()),
        ],
    );
    let out = server.cli(&["push", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = server.cli(&["deploy", "frozen", "--copies", "here=1", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let first = replicas(&status(&server), "frozen")[0].3.unwrap();
    eventually(
        "the frozen worker to be killed and replaced",
        Duration::from_secs(60),
        || {
            let r = replicas(&status(&server), "frozen").pop()?;
            (r.4 >= 1 && r.3.is_some_and(|p| p != first)).then_some(())
        },
    );
    assert!(!alive(first), "the frozen worker {first} was left behind");
    let out = server.cli(&["logs", "frozen"]);
    assert!(out.status.success());
}
