//! Node identity: nodes join with one-time tokens and get their own credentials, which
//! may do what a node does for itself and nothing else; a revoked node is cut off and
//! its replicas move.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{json, Value};
use support::{eventually, status, write_tree, TestAgent, TestServer, READY_PATIENCE};

fn component(name: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "mycel.toml",
            format!("[component]\nname = \"{name}\"\nentrypoint = \"model:Echo\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 0.5\n").into_bytes(),
        ),
        (
            "model.py",
            format!("# {name}\nclass Echo:\n    def __init__(self, ctx):\n        pass\n\n    def predict(self, inputs):\n        return inputs\n").into_bytes(),
        ),
    ]
}

fn join_token(server: &TestServer, extra: &[&str]) -> String {
    let mut args = vec!["node", "token", "create", "--location", "tokyo"];
    args.extend_from_slice(extra);
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn join(server: &TestServer, root: &std::path::Path, name: &str, token: &str) -> TestAgent {
    TestAgent::start_with_server(&server.url, "", root, name, "tokyo", &["--join", token])
}

/// The HTTP status of `method path` with `credential`, and the error message if any.
fn call(
    server: &TestServer,
    credential: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, String) {
    let http = Client::new();
    let url = format!("{}{path}", server.url);
    let request = match method {
        "GET" => http.get(url),
        "PUT" => http.put(url).json(&body),
        "POST" => http.post(url).json(&body),
        _ => http.delete(url),
    };
    let response = request.bearer_auth(credential).send().unwrap();
    let code = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (code, message)
}

fn push(server: &TestServer, root: &std::path::Path, name: &str) -> Value {
    let dir = root.join(name);
    let files = component(name);
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    write_tree(&dir, &files);
    server.cli_json(&["push", dir.to_str().unwrap()]);
    server.cli_json(&["show", &format!("{name}@1")])
}

#[test]
fn a_joined_node_may_act_only_for_itself_and_a_revoked_one_is_cut_off() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let gateway = server.gateway();

    let token = join_token(&server, &["--label", "tier=edge", "--expires", "10m"]);
    assert!(token.starts_with("mycel_join_"), "{token}");
    let _edge1 = join(&server, root.path(), "edge-1", &token);
    let node = eventually("edge-1 to register", Duration::from_secs(30), || {
        status(&server)["nodes"].as_array()?.first().cloned()
    });
    assert_eq!(node["node"]["spec"]["location"], "tokyo");
    assert_eq!(node["node"]["spec"]["labels"]["tier"], "edge");

    // Its credential, on disk for its owner only.
    let file = root.path().join("edge-1/node.credential");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let credential = saved["credential"].as_str().unwrap().to_owned();
    assert!(credential.starts_with("mycel_node_"));

    // A join token is good once.
    let (code, message) = call(
        &server,
        "",
        "POST",
        "/v1/nodes/edge-9/join",
        json!({"token": token}),
    );
    assert_eq!(code, 401, "{message}");
    assert!(message.contains("used already"), "{message}");

    // What is deployed to it, it fetches and serves with its own credential.
    let served = push(&server, root.path(), "served");
    let other = push(&server, root.path(), "other");
    let out = server.cli(&[
        "deploy",
        "served",
        "--copies",
        "tokyo=1",
        "--wait",
        "--timeout",
        "300s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = Client::new()
        .post(format!("{gateway}/v2/models/served/infer"))
        .json(&json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [4.0]}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["outputs"][0]["data"], json!([4.0]), "{answer}");

    // Everything a node does, for itself: allowed.
    let blob_of = |v: &Value| v["files"][0]["hash"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("GET", "/v1/nodes/edge-1/assignments?wait_ms=0".to_owned()),
        ("GET", "/v1/nodes/edge-1/tasks?wait_ms=0".to_owned()),
        ("GET", "/v1/components/served/versions/1".to_owned()),
        ("GET", format!("/v1/blobs/{}", blob_of(&served))),
    ] {
        let (code, message) = call(&server, &credential, method, &path, Value::Null);
        assert_eq!(code, 200, "{method} {path}: {message}");
    }
    // Anything else: 403, saying why.
    let spec = |name: &str, location: &str| json!({"name": name, "location": location, "cpus": 1.0, "memory_bytes": 1024, "agent_url": "http://127.0.0.1:1"});
    for (method, path, body) in [
        ("GET", "/v1/status".to_owned(), Value::Null),
        ("GET", "/v1/deployments".to_owned(), Value::Null),
        (
            "PUT",
            "/v1/deployments/x".to_owned(),
            json!({"copies": {"tokyo": 1}}),
        ),
        (
            "POST",
            "/v1/blobs/missing".to_owned(),
            json!({"hashes": []}),
        ),
        (
            "POST",
            "/v1/join-tokens".to_owned(),
            json!({"location": "tokyo"}),
        ),
        ("DELETE", "/v1/nodes/edge-2".to_owned(), Value::Null),
        (
            "GET",
            "/v1/nodes/edge-2/assignments?wait_ms=0".to_owned(),
            Value::Null,
        ),
        (
            "POST",
            "/v1/nodes/edge-2/heartbeat".to_owned(),
            json!({"replicas": []}),
        ),
        (
            "PUT",
            "/v1/nodes/edge-2".to_owned(),
            spec("edge-2", "tokyo"),
        ),
        (
            "PUT",
            "/v1/nodes/edge-1".to_owned(),
            spec("edge-1", "london"),
        ),
        (
            "GET",
            "/v1/components/other/versions/1".to_owned(),
            Value::Null,
        ),
        ("GET", format!("/v1/blobs/{}", blob_of(&other)), Value::Null),
        // Uploads are for a federation task's update; it has none.
        ("PUT", format!("/v1/blobs/{}", blob_of(&other)), Value::Null),
    ] {
        let (code, message) = call(&server, &credential, method, &path, body);
        assert_eq!(code, 403, "{method} {path}: {message}");
        assert!(!message.is_empty(), "{method} {path}");
    }
    // A forged credential is nobody.
    let (code, _) = call(
        &server,
        "mycel_node_0000",
        "GET",
        "/v1/nodes/edge-1/assignments?wait_ms=0",
        Value::Null,
    );
    assert_eq!(code, 401);

    // A name that is taken is refused (an expired token is, too: tests/cluster.rs moves
    // the clock past one).
    let fresh = join_token(&server, &[]);
    let (code, message) = call(
        &server,
        "",
        "POST",
        "/v1/nodes/edge-1/join",
        json!({"token": fresh}),
    );
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("is in the fleet already"), "{message}");
    // So is the name of a node that registered with an operator's token.
    let (code, message) = call(
        &server,
        &server.token(),
        "PUT",
        "/v1/nodes/ops-1",
        spec("ops-1", "osaka"),
    );
    assert_eq!(code, 200, "{message}");
    let (code, message) = call(
        &server,
        "",
        "POST",
        "/v1/nodes/ops-1/join",
        json!({"token": fresh}),
    );
    assert_eq!(code, 403, "{message}");
    let out = server.cli(&["node", "revoke", "ops-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A node speaks only for its own replicas: a heartbeat about another node's
    // replica changes nothing.
    let (code, message) = call(
        &server,
        &credential,
        "POST",
        "/v1/nodes/edge-1/heartbeat",
        json!({"replicas": [{"replica": "served-tokyo-9", "state": "ready"}]}),
    );
    assert_eq!(code, 200, "{message}");
    let reported = status(&server)["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["assignment"]["replica"] == "served-tokyo-9");
    assert!(!reported);

    // A second node joins; edge-1 is revoked: cut off, and its replica moves.
    let _edge2 = join(&server, root.path(), "edge-2", &fresh);
    let out = server.cli(&["node", "revoke", "edge-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _) = call(
        &server,
        &credential,
        "GET",
        "/v1/nodes/edge-1/assignments?wait_ms=0",
        Value::Null,
    );
    assert_eq!(code, 401);
    eventually("the replica to run on edge-2", READY_PATIENCE, || {
        let status = status(&server);
        let nodes: Vec<&str> = status["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["node"]["spec"]["name"].as_str())
            .collect();
        let replica = status["replicas"].as_array()?.first()?.clone();
        (nodes == ["edge-2"]
            && replica["assignment"]["node"] == "edge-2"
            && replica["status"]["state"] == "ready")
            .then_some(())
    });
    let out = server.cli(&["node", "revoke", "edge-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node named"));

    // A join whose answer was lost: the node made its credential and wrote it down
    // first, the server took the token, the answer never came. Started again with the
    // same, now used, token, the agent finds that it joined and carries on.
    let token = join_token(&server, &["--label", "tier=far"]);
    let secret = "mycel_node_made-by-the-node-itself";
    let pending = root.path().join("edge-5");
    std::fs::create_dir_all(&pending).unwrap();
    std::fs::write(
        pending.join("node.credential"),
        json!({"node": "edge-5", "credential": secret}).to_string(),
    )
    .unwrap();
    let hash = blake3::hash(secret.as_bytes()).to_hex().to_string();
    let (code, message) = call(
        &server,
        "",
        "POST",
        "/v1/nodes/edge-5/join",
        json!({"token": token, "credential_hash": hash}),
    );
    assert_eq!(code, 200, "{message}");
    let _edge5 = join(&server, root.path(), "edge-5", &token);
    let node = eventually("edge-5 to register", Duration::from_secs(30), || {
        status(&server)["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"]["spec"]["name"] == "edge-5")
            .cloned()
    });
    assert_eq!(node["node"]["spec"]["labels"]["tier"], "far");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(pending.join("node.credential")).unwrap()).unwrap();
    assert_eq!(saved["credential"], secret);
    assert_eq!(saved["grant"]["location"], "tokyo");
}
