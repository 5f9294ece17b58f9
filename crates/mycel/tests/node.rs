//! A node set up as on another machine: the `mycel` binary alone (no checkout beside
//! it), an agent listening on every interface, registering an address others can dial,
//! with a list of server URLs of which the first is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, status, write_tree, TestAgent, TestServer, READY_PATIENCE};

const ECHO: &[(&str, &[u8])] = &[
    (
        "mycel.toml",
        b"[component]\nname = \"edge-echo\"\nentrypoint = \"model:Echo\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 0.5\n",
    ),
    (
        "model.py",
        b"class Echo:\n    def __init__(self, ctx):\n        pass\n\n    def predict(self, inputs):\n        return inputs\n",
    ),
];

#[test]
fn a_node_runs_from_the_binary_alone_and_advertises_a_dialable_address() {
    let data = tempfile::tempdir().unwrap();
    let machine = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let gateway = server.gateway();

    // The binary copied away from the build tree, run from an unrelated directory.
    let bin = machine.path().join("bin/mycel");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(support::mycel_bin(), &bin).unwrap();
    // The first server URL goes nowhere: the agent fails over to the second.
    let _agent = TestAgent::start_from(
        &bin,
        &format!("http://127.0.0.1:9,{}", server.url),
        &server.token(),
        machine.path(),
        "edge",
        "tokyo",
        &["--listen", "0.0.0.0:0", "--insecure"],
    );
    let url = eventually("the node to register", Duration::from_secs(30), || {
        let status = status(&server);
        let node = status["nodes"].as_array()?.first()?.clone();
        node["node"]["spec"]["agent_url"]
            .as_str()
            .map(str::to_owned)
    });
    // The server is on loopback, so the route to it leaves from 127.0.0.1.
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "{url}");

    let dir = machine.path().join("edge-echo");
    write_tree(&dir, ECHO);
    let out = server.cli(&["push", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&[
        "deploy",
        "edge-echo",
        "--copies",
        "tokyo=1",
        "--wait",
        "--timeout",
        &format!("{}s", READY_PATIENCE.as_secs()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{gateway}/v2/models/edge-echo/infer"))
        .json(&json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["outputs"][0]["data"], json!([1.5, 2.5]), "{answer}");

    // The CLI fails over the same way.
    let out = std::process::Command::new(support::mycel_bin())
        .args(["status", "--json", "--server"])
        .arg(format!("http://127.0.0.1:9, {}", server.url))
        .env("MYCEL_TOKEN", server.token())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The worker runtime came out of the binary, into the node's data directory.
    let unpacked: Vec<_> = std::fs::read_dir(machine.path().join("edge/runtime"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(unpacked[0].join("src/mycel_worker/worker.py").is_file());
}

#[test]
fn an_advertised_address_nobody_can_dial_is_refused() {
    for (url, expected) in [
        ("http://0.0.0.0:7801", "not an address others can dial"),
        ("http://[::]:7801", "not an address others can dial"),
        ("ftp://10.0.0.7:7801", "not an http or https URL"),
        (
            "10.0.0.7:7801",
            "expected the URL others reach this node at",
        ),
    ] {
        let out = std::process::Command::new(support::mycel_bin())
            .args([
                "agent",
                "--name",
                "n",
                "--location",
                "l",
                "--data",
                "/nonexistent",
            ])
            .args(["--server", "http://127.0.0.1:9", "--advertise", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }
}

#[test]
fn beyond_loopback_a_server_speaks_tls_unless_told_otherwise() {
    for (extra, scheme) in [
        (vec![], "https://"),
        (vec!["--insecure"], "http://"),
        (vec!["--tls"], "https://"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let server = support::TestServer::start_listening(data.path(), "0.0.0.0:0", &extra);
        assert!(server.url.starts_with(scheme), "{extra:?}: {}", server.url);
        assert!(server.gateway().starts_with(scheme), "{extra:?}");
        // The CLI finds the CA in the data directory, as it finds the token.
        let status = server.cli(&["status"]);
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
}

#[test]
fn plain_http_beyond_loopback_needs_insecure() {
    let data = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "gateway",
            "--server",
            "http://127.0.0.1:9",
            "--listen",
            "0.0.0.0:0",
        ],
        vec![
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--name",
            "n",
            "--location",
            "l",
            "--listen",
            "0.0.0.0:0",
        ],
    ] {
        let out = std::process::Command::new(support::mycel_bin())
            .args(&args)
            .arg("--data")
            .arg(data.path())
            .env_remove("MYCEL_INSECURE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("pass --insecure"), "{args:?}: {stderr}");
    }
}

/// The first line of `mycel ARGS`'s stderr that contains `wanted`, within 20 s; the
/// process is killed after.
fn stderr_line(args: &[&str], wanted: &str) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(support::mycel_bin())
        .args(args)
        .env("MYCEL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = wanted.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(&wanted) {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    line.expect("the line never came")
}

#[test]
fn a_gateway_says_where_its_clients_reach_it() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    let base = [
        "gateway",
        "--server",
        "http://127.0.0.1:9",
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--data",
        data,
    ];
    // Listening everywhere, it names its address on the route to the server, with the
    // port it got.
    let line = stderr_line(&base, "clients reach it at");
    let url = line.rsplit(' ').next().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(!url.ends_with(":0"), "{line}");
    let line = stderr_line(
        &[&base[..], &["--advertise", "http://gw.tokyo.example:7800"]].concat(),
        "clients reach it at",
    );
    assert!(
        line.ends_with("clients reach it at http://gw.tokyo.example:7800"),
        "{line}"
    );
}
