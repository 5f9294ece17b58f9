//! End-to-end tests of rolling updates: a real control plane, gateway, two agents and
//! Python workers on 127.0.0.1, with clients sending requests without pause while
//! versions roll out, fail and roll back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    assert_no_failures, eventually, status, write_tree, Load, TestAgent, TestServer, READY_PATIENCE,
};

const MANIFEST: &str = r#"
[component]
name = "ver"
entrypoint = "model:Model"

[python]
requirements = ["numpy"]

[weights]
files = ["weights.bin"]

[resources]
cpus = 0.5
memory = "128MiB"
"#;

/// A model that answers with its version number; `init` is the body of `__init__`.
fn model(version: u32, init: &str) -> String {
    format!(
        "import numpy as np\n\nVERSION = {version}\n\nclass Model:\n    def __init__(self, ctx):\n        {init}\n\n    def predict(self, inputs):\n        rows = next(iter(inputs.values())).shape[0]\n        return {{\"version\": np.full(rows, VERSION, dtype=np.int64)}}\n"
    )
}

/// `mycel_agent_fetched_bytes_total` by kind, from each node's agent.
fn fetched_bytes(server: &TestServer) -> HashMap<String, (u64, u64)> {
    let status = status(server);
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let name = n["node"]["spec"]["name"].as_str().unwrap().to_owned();
            let url = n["node"]["spec"]["agent_url"].as_str().unwrap();
            let text = reqwest::blocking::get(format!("{url}/metrics"))
                .unwrap()
                .text()
                .unwrap();
            let read = |kind: &str| {
                let prefix = format!("mycel_agent_fetched_bytes_total{{kind=\"{kind}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map_or(0, |v| v.trim().parse().unwrap())
            };
            (name, (read("blob"), read("version")))
        })
        .collect()
}

/// Nodes running a replica of version `seq` of `ver`.
fn nodes_running(server: &TestServer, seq: u64) -> Vec<String> {
    let versions = server.cli_json(&["versions", "ver"]);
    let id = versions
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["seq"] == seq)
        .unwrap()["id"]
        .clone();
    let mut nodes: Vec<String> = status(server)["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["assignment"]["version"] == id)
        .map(|r| r["assignment"]["node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn history(server: &TestServer) -> Vec<Value> {
    server
        .cli_json(&["history", "ver"])
        .as_array()
        .unwrap()
        .clone()
}

fn push(server: &TestServer, dir: &Path) -> u64 {
    server.cli_json(&["push", dir.to_str().unwrap()])["seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn rollouts_under_load_drop_nothing_and_a_broken_version_rolls_back() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _a = TestAgent::start(&server, nodes.path(), "a", "here");
    let _b = TestAgent::start(&server, nodes.path(), "b", "here");
    let gateway = server.gateway();
    let dir = nodes.path().join("ver");
    write_tree(
        &dir,
        &[
            ("mycel.toml", MANIFEST.as_bytes()),
            ("model.py", model(1, "pass").as_bytes()),
            ("weights.bin", &[3u8; 64 << 10]),
        ],
    );
    assert_eq!(push(&server, &dir), 1);
    let out = server.cli(&[
        "deploy",
        "ver",
        "--copies",
        "here=4",
        "--wait",
        "--timeout",
        "300s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let load = Load::start(&gateway, "ver", 4);
    eventually("answers from version 1", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });

    // v2: one file changes. Only it, and the version's file list, travel to the agents.
    let before = fetched_bytes(&server);
    let v2_model = model(2, "pass");
    write_tree(&dir, &[("model.py", v2_model.as_bytes())]);
    let start = load.count();
    let out = server.cli(&["push", dir.to_str().unwrap(), "--deploy", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.wait_for_more(20);
    let answers = load.since(start);
    assert_no_failures(&answers, "the rollout from v1 to v2");
    let versions: Vec<i64> = answers.iter().map(|a| a.1).collect();
    assert!(versions.contains(&1), "no v1 answer during the rollout");
    let tail = &versions[versions.len().saturating_sub(20)..];
    assert!(
        tail.iter().all(|&v| v == 2),
        "answers after the rollout: {tail:?}"
    );

    let after = fetched_bytes(&server);
    let list_size = reqwest::blocking::Client::new()
        .get(format!("{}/v1/components/ver/versions/2", server.url))
        .bearer_auth(server.token())
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .len() as u64;
    let running_v2 = nodes_running(&server, 2);
    assert!(!running_v2.is_empty());
    for (node, (blob, list)) in &after {
        let (blob_before, list_before) = before[node];
        let expected = if running_v2.contains(node) {
            (v2_model.len() as u64, list_size)
        } else {
            (0, 0)
        };
        assert_eq!(
            (blob - blob_before, list - list_before),
            expected,
            "bytes node {node} fetched for v2 (blobs, file list)"
        );
    }
    let status_v2 = server.cli_json(&["rollout", "status", "ver"]);
    assert_eq!(status_v2["rollout"]["outcome"], "complete");
    assert_eq!(status_v2["locations"][0]["ready"], 4);
    assert_eq!(status_v2["locations"][0]["outdated"], 0);

    // v3 raises while loading: it rolls back on its own, and v2 keeps answering.
    write_tree(
        &dir,
        &[(
            "model.py",
            model(3, "raise RuntimeError('broken on purpose')").as_bytes(),
        )],
    );
    let start = load.count();
    assert_eq!(push(&server, &dir), 3);
    let out = server.cli(&["deploy", "ver@3", "--copies", "here=4", "--wait"]);
    assert!(!out.status.success(), "a broken version reported success");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rolled back") && stderr.contains("broken on purpose"),
        "{stderr}"
    );
    let rolled_back = eventually("the automatic rollback to finish", READY_PATIENCE, || {
        let h = history(&server);
        (h.len() == 4 && h[3]["outcome"] == "complete").then_some(h)
    });
    assert_eq!(rolled_back[2]["kind"], "deploy");
    assert_eq!(rolled_back[2]["outcome"], "rolled-back");
    assert!(rolled_back[2]["reason"]
        .as_str()
        .unwrap()
        .contains("broken on purpose"));
    assert_eq!(rolled_back[3]["kind"], "auto-rollback");
    assert_eq!(rolled_back[3]["to"]["seq"], 2);
    assert_eq!(rolled_back[3]["by"], "mycel");
    load.wait_for_more(20);
    let answers = load.since(start);
    assert_no_failures(&answers, "the failed rollout of v3 and its rollback");
    assert!(
        answers.iter().all(|a| a.1 == 2),
        "something other than v2 answered while v3 failed"
    );

    // A manual rollback goes to the version before the one served: v1.
    let start = load.count();
    let out = server.cli(&["rollback", "ver", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.wait_for_more(20);
    let answers = load.since(start);
    assert_no_failures(&answers, "the rollback to v1");
    assert_eq!(answers.last().unwrap().1, 1);
    let h = history(&server);
    assert_eq!(h.len(), 5);
    assert_eq!(h[4]["kind"], "rollback");
    assert_eq!(h[4]["to"]["seq"], 1);
    assert_eq!(h[4]["outcome"], "complete");

    // Or to a version named: what it last ran with.
    let start = load.count();
    let out = server.cli(&["rollback", "ver", "--to", "2", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.wait_for_more(20);
    let answers = load.since(start);
    assert_no_failures(&answers, "the rollback to v2");
    assert_eq!(answers.last().unwrap().1, 2);
    load.stop();

    // The table people read names each rollout and how it ended.
    let out = server.cli(&["history", "ver"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("automatic rollback"), "{text}");
    assert!(text.contains("rolled back"), "{text}");
}

#[test]
fn rollback_with_nothing_to_go_back_to_says_so() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let dir = nodes.path().join("ver");
    write_tree(
        &dir,
        &[
            ("mycel.toml", MANIFEST.as_bytes()),
            ("model.py", model(1, "pass").as_bytes()),
            ("weights.bin", b"w"),
        ],
    );
    push(&server, &dir);
    let out = server.cli(&["deploy", "ver", "--copies", "here=1", "--surge", "50%"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["rollback", "ver"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to roll back to"), "{stderr}");
    let out = server.cli(&["rollback", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = server.cli(&["deploy", "ver", "--copies", "here=1", "--surge", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a count of replicas"));
    let deployments = server.cli_json(&["deploy", "ver", "--copies", "here=2"]);
    // Surge set before is kept; a change of copies alone starts no rollout.
    assert_eq!(deployments[0]["surge"], "50%");
    assert_eq!(history(&server).len(), 1);
}

#[test]
fn dev_pushes_each_save_rolls_it_out_and_streams_the_logs() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _agent = TestAgent::start(&server, nodes.path(), "a", "here");
    let gateway = server.gateway();
    let dir = nodes.path().join("ver");
    let loud = |v: u32| model(v, &format!("print('loading version {v}', flush=True)"));
    write_tree(
        &dir,
        &[
            ("mycel.toml", MANIFEST.as_bytes()),
            ("model.py", loud(1).as_bytes()),
            ("weights.bin", b"w"),
        ],
    );
    let output = nodes.path().join("dev.out");
    let mut dev = std::process::Command::new(support::mycel_bin())
        .args(["dev", dir.to_str().unwrap(), "--copies", "here=1"])
        .env("MYCEL_DATA", &server.data)
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::blocking::Client::new();
    let answer = || -> Option<i64> {
        let body =
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}]});
        let response = http
            .post(format!("{gateway}/v2/models/ver/infer"))
            .json(&body)
            .send()
            .ok()?;
        response.json::<Value>().ok()?["outputs"][0]["data"][0].as_i64()
    };
    eventually("version 1 to answer", READY_PATIENCE, || {
        (answer() == Some(1)).then_some(())
    });

    write_tree(&dir, &[("model.py", loud(2).as_bytes())]);
    eventually(
        "the saved version 2 to answer",
        Duration::from_secs(60),
        || (answer() == Some(2)).then_some(()),
    );
    eventually(
        "the new replica's output in dev's log stream",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&output).unwrap();
            (text.contains("loading version 1") && text.contains("loading version 2")).then_some(())
        },
    );
    assert_eq!(history(&server).len(), 2);

    std::process::Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    assert!(dev.wait().unwrap().success());
}

/// This machine's cores, as `mycel up` gives each node by default.
fn machine_cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// A component like `ver` whose replicas need `cpus` each.
fn write_component(dir: &Path, name: &str, cpus: f64, version: u32) {
    let manifest = MANIFEST
        .replace("name = \"ver\"", &format!("name = \"{name}\""))
        .replace("cpus = 0.5", &format!("cpus = {cpus:?}"));
    write_tree(
        dir,
        &[
            ("mycel.toml", manifest.as_bytes()),
            ("model.py", model(version, "pass").as_bytes()),
            ("weights.bin", &[3u8; 1024]),
        ],
    );
}

#[test]
fn a_rollout_on_nodes_without_spare_capacity_replaces_in_place_and_drops_nothing() {
    // `mycel up` with its defaults: each node offers all of this machine's cores, and
    // two replicas of `ver` fill one, so no surge replica fits anywhere.
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::up_with_defaults(data.path(), "new-york,london,tokyo");
    let gateway = server.gateway();
    let cores = machine_cores();
    eventually("three nodes", READY_PATIENCE, || {
        (status(&server)["nodes"].as_array().unwrap().len() == 3).then_some(())
    });
    let out = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(" 0/{cores} ")) && !text.contains("-0"),
        "{text}"
    );

    let ver = work.path().join("ver");
    write_component(&ver, "ver", cores / 2.0, 1);
    let solo = work.path().join("solo");
    write_component(&solo, "solo", cores, 1);
    push(&server, &ver);
    push(&server, &solo);
    let deploy = |args: &[&str]| {
        let out = server.cli(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    deploy(&[
        "deploy",
        "ver",
        "--copies",
        "new-york=2",
        "--copies",
        "london=2",
        "--wait",
    ]);
    deploy(&["deploy", "solo", "--copies", "tokyo=1", "--wait"]);

    let load = Load::start(&gateway, "ver", 4);
    eventually("answers from version 1", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });

    // One line changes; the push rolls out and completes although no node has room.
    write_tree(&ver, &[("model.py", model(2, "pass").as_bytes())]);
    let start = load.count();
    let stderr = deploy(&["push", ver.to_str().unwrap(), "--deploy", "--wait"]);
    assert!(
        stderr.contains("no room for a new replica beside the old ones in new-york")
            && stderr.contains("replacing them in place, one at a time, while the others serve"),
        "{stderr}"
    );
    load.wait_for_more(20);
    let answers = load.since(start);
    load.stop();
    assert_no_failures(&answers, "an in-place rollout on full nodes");
    let versions: Vec<i64> = answers.iter().map(|a| a.1).collect();
    assert!(
        versions.contains(&1) && versions.last() == Some(&2),
        "{versions:?}"
    );
    let rollout = server.cli_json(&["rollout", "status", "ver"]);
    assert_eq!(rollout["rollout"]["outcome"], "complete");
    let noted: Vec<&str> = rollout["rollout"]["in_place"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["location"].as_str().unwrap())
        .collect();
    assert_eq!(noted, ["london", "new-york"]);
    for location in rollout["locations"].as_array().unwrap() {
        assert_eq!(
            (location["ready"].clone(), location["outdated"].clone()),
            (json!(2), json!(0))
        );
    }

    // A single copy on a full node: it goes through, and says the location empties.
    write_tree(&solo, &[("model.py", model(2, "pass").as_bytes())]);
    let stderr = deploy(&["push", solo.to_str().unwrap(), "--deploy", "--wait"]);
    assert!(
        stderr.contains(
            "tokyo has no replica until the new one is ready, requests for solo fail until then"
        ),
        "{stderr}"
    );
    let history = server.cli(&["history", "solo"]);
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("complete")
            && String::from_utf8_lossy(&history.stdout).contains("(in place in tokyo)"),
        "{}",
        String::from_utf8_lossy(&history.stdout)
    );
}
