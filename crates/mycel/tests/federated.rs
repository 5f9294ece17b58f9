//! End-to-end tests of federated learning: a real control plane and one agent per
//! edge node on 127.0.0.1, each with its own dataset directory; Python workers train
//! on it and send back weights; the control plane aggregates, evaluates, publishes a
//! new version and rolls it out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{eventually, repo_root, write_tree, TestAgent, TestServer, READY_PATIENCE};

/// A model with one weight vector `w` of 8 floats. Each node's dataset directory holds
/// its `role` and a `target`; an honest client moves `w` halfway to its target, the
/// others misbehave as their role says. `train` also reports whether it could open a
/// connection to the control plane (`network`: 1 yes, 0 no).
const PROBE_MODEL: &str = r#"
import os
import socket
import time

import numpy as np
from safetensors.numpy import load_file


class Probe:
    def __init__(self, ctx):
        self.w = load_file(ctx.weights["model"])["w"]
        self.role, self.target = "serve", 0.0
        if ctx.data_dir is not None:
            with open(os.path.join(ctx.data_dir, "role")) as f:
                self.role = f.read().strip()
            with open(os.path.join(ctx.data_dir, "target")) as f:
                self.target = float(f.read())

    def predict(self, inputs):
        rows = inputs["x"].shape[0]
        return {"w": np.tile(self.w, (rows, 1))}

    def train(self, weights, config):
        w = weights["w"]
        if self.role == "crash":
            os._exit(3)
        if self.role == "sleepy" and config.get("sleepy") and config["round"] == 1:
            time.sleep(float(config["sleep_s"]))
        new = w + 0.5 * (self.target - w)
        if self.role == "attacker":
            new = w - 1000.0 * (self.target - w) - 1000.0
        if self.role == "nan":
            new = new.copy()
            new[3] = np.nan
        out = {"w": new.astype(np.float32)}
        if self.role == "shape":
            out = {"w": np.zeros(9, dtype=np.float32)}
        return out, 10, {"network": self.network(config)}

    def evaluate(self, weights, config):
        w = weights["w"]
        loss = float(np.mean((w - self.target) ** 2))
        return loss, 10, {"distance": float(np.max(np.abs(w - self.target)))}

    def network(self, config):
        if "probe_port" not in config:
            return -1
        try:
            socket.create_connection(("127.0.0.1", int(config["probe_port"])), timeout=2).close()
            return 1
        except OSError:
            return 0
"#;

const PROBE_MANIFEST: &str = r#"
[component]
name = "probe"
entrypoint = "model:Probe"

[python]
requirements = ["numpy", "safetensors"]

[weights]
files = ["weights/model.safetensors"]

[resources]
cpus = 0.1
memory = "64MiB"
"#;

/// A safetensors file holding one F32 tensor `w`.
fn safetensors_f32(values: &[f32]) -> Vec<u8> {
    let header = format!(
        "{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[0,{}]}}}}",
        values.len(),
        values.len() * 4
    );
    let mut header = header.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    for v in values {
        out.extend(v.to_le_bytes());
    }
    out
}

/// The values of `w` in a safetensors file written by [`safetensors_f32`] or by the
/// aggregator.
fn read_w(bytes: &[u8]) -> Vec<f32> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header["w"]["data_offsets"];
    let start = 8 + header_len + offsets[0].as_u64().unwrap() as usize;
    let end = 8 + header_len + offsets[1].as_u64().unwrap() as usize;
    bytes[start..end]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Runs the CLI, asserting success; returns stdout and stderr.
fn ok(server: &TestServer, args: &[&str]) -> (String, String) {
    let out = server.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "mycel {args:?} failed:\n{stderr}\n{stdout}"
    );
    (stdout, stderr)
}

/// Runs the CLI, asserting failure; returns stderr.
fn fails(server: &TestServer, args: &[&str]) -> String {
    let out = server.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "mycel {args:?} succeeded");
    stderr
}

/// The weights `w` of `component@seq`, read through the API.
fn published_w(server: &TestServer, component: &str, seq: u64) -> Vec<f32> {
    read_w(&published_weights(server, component, seq))
}

/// The bytes of `weights/model.safetensors` in `component@seq`, read through the API.
fn published_weights(server: &TestServer, component: &str, seq: u64) -> bytes::Bytes {
    let version = server.cli_json(&["show", &format!("{component}@{seq}")]);
    let file = version["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "weights/model.safetensors")
        .unwrap()
        .clone();
    let hash: mycel_core::BlobHash = file["hash"].as_str().unwrap().parse().unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.client().get_blob(hash))
        .unwrap()
}

fn start_node(server: &TestServer, root: &Path, name: &str, role: &str, target: f32) -> TestAgent {
    let data = root.join("datasets").join(name);
    write_tree(
        &data,
        &[
            ("role", role.as_bytes()),
            ("target", target.to_string().as_bytes()),
        ],
    );
    let dataset = format!("probe={}", data.display());
    let pool = if matches!(role, "honest" | "attacker") {
        "pool=clean"
    } else {
        "pool=faulty"
    };
    let honest = format!("honest={}", role == "honest");
    TestAgent::start_with(
        server,
        root,
        name,
        "edge",
        &["--dataset", &dataset, "--label", pool, "--label", &honest],
    )
}

/// Runs `mycel federate probe ARGS` to the end and returns the federation's record.
fn federate(server: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["federate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dataset", "probe", "--json"]);
    let out = server.cli(&all);
    if !out.status.success() {
        let last = server.cli_json(&["federation", "list"]);
        let id = last.as_array().unwrap().last().unwrap()["id"].to_string();
        let rounds = server.cli(&["federation", "rounds", &id, "--clients"]);
        panic!(
            "mycel {all:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&rounds.stdout)
        );
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rounds(federation: &Value) -> &Vec<Value> {
    federation["rounds"].as_array().unwrap()
}

fn client<'a>(round: &'a Value, node: &str) -> &'a Value {
    round["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == node)
        .unwrap_or_else(|| panic!("no client {node} in {round}"))
}

fn assert_between(w: &[f32], low: f32, high: f32, what: &str) {
    assert!(
        w.iter().all(|v| (low..=high).contains(v)),
        "{what}: w = {w:?}, expected every value in [{low}, {high}]"
    );
}

#[test]
fn rounds_survive_dropouts_reject_bad_updates_and_resist_a_scaled_attacker() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(&root.path().join("server"));
    let component = root.path().join("probe");
    write_tree(
        &component,
        &[
            ("mycel.toml", PROBE_MANIFEST.as_bytes()),
            ("model.py", PROBE_MODEL.as_bytes()),
            ("weights/model.safetensors", &safetensors_f32(&[0.0; 8])),
        ],
    );
    ok(&server, &["push", component.to_str().unwrap()]);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let probe_port = format!("probe_port={port}");

    let mut agents = Vec::new();
    for (name, role, target) in [
        ("honest-1", "honest", 0.9),
        ("honest-2", "honest", 1.0),
        ("honest-3", "honest", 1.1),
        ("honest-4", "honest", 1.2),
        ("attacker", "attacker", 1.0),
        ("nan", "nan", 1.0),
        ("shape", "shape", 1.0),
        ("crash", "crash", 1.0),
        ("sleepy", "sleepy", 1.0),
    ] {
        agents.push(start_node(&server, root.path(), name, role, target));
    }
    let status = eventually("nine nodes with the dataset", READY_PATIENCE, || {
        let status = support::status(&server);
        (status["nodes"].as_array().unwrap().len() == 9).then_some(status)
    });
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(
            node["node"]["spec"]["datasets"],
            serde_json::json!(["probe"])
        );
    }
    let isolated = status["nodes"][0]["node"]["spec"]["isolation"] != "none";
    let (table, _) = ok(&server, &["status"]);
    assert!(
        table.contains("DATASETS") && table.contains("TRAINING NETWORK"),
        "{table}"
    );

    // Requests that cannot run are refused up front, naming what is wrong.
    for (extra, expected) in [
        (
            &["--dataset", "nope"][..],
            "0 live node(s) hold dataset \"nope\"",
        ),
        (&["--strategy", "krum:f=x"], "krum"),
        (&["--min-clients", "10"], "fewer than min-clients 10"),
        (&["--deploy", "nothing"], "deployment \"nothing\" not found"),
    ] {
        let mut args = vec!["federate", "probe", "--rounds", "1"];
        args.extend_from_slice(extra);
        if !extra.contains(&"--dataset") {
            args.extend_from_slice(&["--dataset", "probe"]);
        }
        let error = fails(&server, &args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }

    // Honest clients, FedAvg, rolled out: each round moves w halfway to the mean
    // target 1.05, so two rounds give 0.7875 exactly; training has no network where the
    // node says it is isolated.
    ok(
        &server,
        &["deploy", "probe@1", "--copies", "edge=1", "--wait"],
    );
    let honest = federate(
        &server,
        &[
            "probe",
            "--nodes",
            "honest=true",
            "--rounds",
            "2",
            "--config",
            &probe_port,
            "--deploy",
        ],
    );
    assert_eq!(honest["state"], "complete", "{honest}");
    assert_eq!(honest["published"]["seq"], 2, "{honest}");
    assert_eq!(honest["published"]["deployment"], "probe", "{honest}");
    let w = published_w(&server, "probe", 2);
    assert!(w.iter().all(|v| (v - 0.7875).abs() < 1e-5), "w = {w:?}");
    for round in rounds(&honest) {
        assert_eq!(round["phase"], "complete");
        assert_eq!(round["included"], 4);
        assert_eq!(round["evaluation"]["clients"], 4);
        for c in round["clients"].as_array().unwrap() {
            assert_eq!(c["status"], "included");
            let network = c["metrics"]["network"].as_f64().unwrap();
            assert_eq!(network, if isolated { 0.0 } else { 1.0 }, "{c}");
        }
    }
    let losses: Vec<f64> = rounds(&honest)
        .iter()
        .map(|r| r["evaluation"]["loss"].as_f64().unwrap())
        .collect();
    assert!(losses[1] < losses[0], "federated loss went {losses:?}");
    let deployment = support::status(&server)["deployments"][0].clone();
    assert_eq!(deployment["deployment"]["seq"], 2, "{deployment}");
    let (table, _) = ok(&server, &["federation", "rounds", "1"]);
    assert!(
        table.contains("DISTANCE") && table.lines().count() == 3,
        "{table}"
    );
    let (summary, _) = ok(&server, &["federation", "status", "1"]);
    assert!(summary.contains("published: probe@2"), "{summary}");

    // Every kind of trouble at once, with the median: NaN and wrong shapes are
    // rejected with the reason, a crash and a client slower than the round timeout are
    // dropped, and the scaled attacker does not move the result out of the honest range.
    let robust = federate(
        &server,
        &[
            "probe@1",
            "--rounds",
            "2",
            "--strategy",
            "fedmedian",
            "--min-clients",
            "4",
            "--round-timeout",
            "6s",
            "--config",
            "sleepy=true",
            "--config",
            "sleep_s=8",
        ],
    );
    assert_eq!(robust["state"], "complete", "{robust}");
    let first = &rounds(&robust)[0];
    assert_eq!(first["included"], 5, "{first}");
    let reason = |node: &str| {
        client(first, node)["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(client(first, "nan")["status"], "rejected");
    assert!(
        reason("nan").contains("NaN at index [3]"),
        "{}",
        reason("nan")
    );
    assert_eq!(client(first, "shape")["status"], "rejected");
    assert!(
        reason("shape").contains("is F32 [9], expected F32 [8]"),
        "{}",
        reason("shape")
    );
    assert_eq!(client(first, "crash")["status"], "dropped");
    assert!(
        reason("crash").contains("worker broke during train"),
        "{}",
        reason("crash")
    );
    assert_eq!(client(first, "sleepy")["status"], "dropped");
    assert!(
        reason("sleepy").contains("round timeout of 6s"),
        "{}",
        reason("sleepy")
    );
    // The slow client catches up: it trains again in round 2.
    assert_eq!(client(&rounds(&robust)[1], "sleepy")["status"], "included");
    let seq = robust["published"]["seq"].as_u64().unwrap();
    assert_between(&published_w(&server, "probe", seq), 0.6, 0.9, "fedmedian");
    let (log, _) = ok(
        &server,
        &["federation", "rounds", &robust["id"].to_string()],
    );
    assert!(
        log.contains("nan rejected: ") && log.contains("crash dropped: "),
        "{log}"
    );

    // Krum leaves the attacker out; FedAvg over the same clients is wrecked by it,
    // which is what the robust strategies are for.
    let krum = federate(
        &server,
        &[
            "probe@1",
            "--nodes",
            "pool=clean",
            "--rounds",
            "1",
            "--strategy",
            "krum:f=1",
        ],
    );
    let round = &rounds(&krum)[0];
    assert_eq!(client(round, "attacker")["status"], "rejected", "{round}");
    let seq = krum["published"]["seq"].as_u64().unwrap();
    assert_between(&published_w(&server, "probe", seq), 0.44, 0.61, "krum");
    let fedavg = federate(
        &server,
        &["probe@1", "--nodes", "pool=clean", "--rounds", "1"],
    );
    let seq = fedavg["published"]["seq"].as_u64().unwrap();
    let wrecked = published_w(&server, "probe", seq);
    assert!(
        wrecked.iter().all(|v| *v < -100.0),
        "fedavg: w = {wrecked:?}"
    );

    // Differential privacy's clip bounds what any client can do to the model: every
    // delta is cut to L2 norm 0.1, so the mean moves at most that far.
    let private = federate(
        &server,
        &[
            "probe@1",
            "--nodes",
            "pool=clean",
            "--rounds",
            "1",
            "--clip",
            "0.1",
        ],
    );
    let seq = private["published"]["seq"].as_u64().unwrap();
    let w = published_w(&server, "probe", seq);
    let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(norm > 0.0 && norm <= 0.1 + 1e-6, "norm {norm}, w = {w:?}");

    // A federation stuck on a slow client can be stopped; it publishes nothing.
    let (id, _) = ok(
        &server,
        &[
            "federate",
            "probe@1",
            "--dataset",
            "probe",
            "--nodes",
            "sleepy",
            "--rounds",
            "1",
            "--config",
            "sleepy=true",
            "--config",
            "sleep_s=60",
            "--detach",
        ],
    );
    let id = id.trim().to_owned();
    ok(&server, &["federation", "stop", &id]);
    let stopped = server.cli_json(&["federation", "status", &id]);
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    assert!(stopped["published"].is_null(), "{stopped}");
    let error = fails(&server, &["federation", "stop", &id]);
    assert!(error.contains("is not running (cancelled)"), "{error}");
    drop(agents);
}

/// The digits example trained over five nodes with non-IID data lands within two
/// points of the same model trained centrally, computed in the same run.
#[test]
fn digits_federated_training_matches_central_training() {
    let python = repo_root().join(".venv/bin/python");
    let example = repo_root().join("examples/digits-fl");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("digits");
    let split = Command::new(&python)
        .arg(example.join("split.py"))
        .arg("--out")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        split.status.success(),
        "{}",
        String::from_utf8_lossy(&split.stderr)
    );

    let server = TestServer::start(&root.path().join("server"));
    ok(&server, &["push", example.to_str().unwrap()]);
    let mut agents = Vec::new();
    for i in 0..5 {
        let dataset = format!("digits={}", data.join(format!("node-{i}")).display());
        agents.push(TestAgent::start_with(
            &server,
            root.path(),
            &format!("edge-{i}"),
            "edge",
            &["--dataset", &dataset],
        ));
    }
    eventually("five nodes", READY_PATIENCE, || {
        (support::status(&server)["nodes"].as_array().unwrap().len() == 5).then_some(())
    });
    ok(
        &server,
        &["deploy", "digits-fl", "--copies", "edge=1", "--wait"],
    );
    let federation = server.cli_json(&[
        "federate",
        "digits-fl",
        "--dataset",
        "digits",
        "--rounds",
        "10",
        "--strategy",
        "fedavg",
        "--local-epochs",
        "20",
        "--deploy",
    ]);
    assert_eq!(federation["state"], "complete", "{federation}");
    let last = rounds(&federation).last().unwrap().clone();
    assert_eq!(last["included"], 5, "{last}");
    let accuracy = last["evaluation"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.8, "federated evaluation accuracy {accuracy}");

    // The published weights on the held-out set, against central training.
    let seq = federation["published"]["seq"].as_u64().unwrap();
    let weights = root.path().join("federated.safetensors");
    std::fs::write(&weights, published_weights(&server, "digits-fl", seq)).unwrap();
    let holdout = |extra: &[&std::ffi::OsStr]| -> f64 {
        let out = Command::new(&python)
            .arg(example.join("central.py"))
            .arg("--data")
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        result["accuracy"].as_f64().unwrap()
    };
    // The result serves: the gateway answers from the published version.
    let answer = reqwest::blocking::Client::new()
        .post(format!("{}/v2/models/digits-fl/infer", server.gateway()))
        .json(&serde_json::json!({"inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": vec![0.0; 64]}
        ]}))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().unwrap();
    assert_eq!(answer["model_version"], seq.to_string(), "{answer}");

    let federated = holdout(&["--weights".as_ref(), weights.as_os_str()]);
    let central = holdout(&[]);
    eprintln!("held-out accuracy: federated {federated:.4}, central {central:.4}");
    assert!(
        federated >= central - 0.02,
        "federated {federated:.4} is more than 2 points below central {central:.4}"
    );
    drop(agents);
}
