//! Streaming generation end to end: the charlm example through Triton's generate
//! extension (whole and as server-sent events), each step reaching the client while
//! the model is still generating, and a client that goes away stopping the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    all_ready, eventually, repo_root, status, write_tree, TestAgent, TestServer, READY_PATIENCE,
};

/// Yields `first`, then waits for the file the request names before yielding
/// `second`: a stream held back anywhere on the way never shows `first` in time. Then
/// it goes on yielding until stopped.
const GATED: &[u8] = br#"
import os, time
import numpy as np

class Gated:
    def __init__(self, ctx):
        pass

    def generate(self, inputs):
        gate = inputs["gate"][0].decode()
        yield {"text_output": np.array([b"first"], dtype=np.object_)}
        while not os.path.exists(gate):
            time.sleep(0.02)
        yield {"text_output": np.array([b"second"], dtype=np.object_)}
        if "forever" in inputs:
            while True:
                time.sleep(0.05)
                yield {"text_output": np.array([b"more"], dtype=np.object_)}
"#;

struct Fleet {
    server: TestServer,
    _agent: TestAgent,
    gateway: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn fleet() -> Fleet {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(data.path(), &["--grpc", "127.0.0.1:0"]);
    // The gated model waits on files the test writes: unsandboxed.
    let agent = TestAgent::start_with(&server, nodes.path(), "n1", "here", &["--sandbox", "off"]);
    let gated = nodes.path().join("gated");
    write_tree(
        &gated,
        &[
            ("mycel.toml", b"[component]\nname = \"gated\"\nentrypoint = \"model:Gated\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 0.25\nmemory = \"64MiB\"\n"),
            ("model.py", GATED),
        ],
    );
    let charlm = repo_root().join("examples/charlm");
    for dir in [charlm.as_path(), gated.as_path()] {
        server.cli_json(&["push", dir.to_str().unwrap()]);
    }
    for name in ["charlm", "gated"] {
        let out = server.cli(&["deploy", name, "--copies", "here=1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually("both models ready", READY_PATIENCE, || {
        let s = status(&server);
        (all_ready(&s, "charlm", 1) && all_ready(&s, "gated", 1)).then_some(())
    });
    let gateway = server.gateway();
    let http = reqwest::blocking::Client::new();
    eventually("the gateway to route", Duration::from_secs(20), || {
        ["charlm", "gated"]
            .iter()
            .all(|m| {
                http.get(format!("{gateway}/v2/models/{m}/ready"))
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            })
            .then_some(())
    });
    Fleet {
        server,
        _agent: agent,
        gateway,
        _dirs: (data, nodes),
    }
}

/// Reads server-sent events as they come: each `data:` line's JSON.
struct Events(BufReader<reqwest::blocking::Response>);

impl Iterator for Events {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(serde_json::from_str(data).unwrap());
            }
        }
    }
}

fn stream(gateway: &str, model: &str, body: &Value) -> Events {
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(format!("{gateway}/v2/models/{model}/generate_stream"))
        .json(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Events(BufReader::new(response))
}

#[test]
fn generations_stream_step_by_step_and_stop_when_the_client_leaves() {
    let f = fleet();
    let http = reqwest::blocking::Client::new();

    // Whole: the steps joined into one answer.
    let request = json!({"text_input": "The web ", "max_tokens": 40});
    let whole: Value = http
        .post(format!("{}/v2/models/charlm/generate", f.gateway))
        .json(&request)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(whole["model_name"], "charlm");
    assert_eq!(whole["model_version"], "1");
    let text = whole["text_output"].as_str().unwrap().to_owned();
    assert_eq!(text.chars().count(), 40, "{whole}");

    // Streamed: one event per character, the same text.
    let events: Vec<Value> = stream(&f.gateway, "charlm", &request).collect();
    assert_eq!(events.len(), 40);
    let streamed: String = events
        .iter()
        .map(|e| e["text_output"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);

    // Each step reaches the client while the model is still generating: the model
    // yields its second step only after the test has seen the first.
    let gate = f._dirs.1.path().join("gate-1");
    let mut events = stream(
        &f.gateway,
        "gated",
        &json!({"gate": gate.to_str().unwrap()}),
    );
    assert_eq!(events.next().unwrap()["text_output"], "first");
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(events.next().unwrap()["text_output"], "second");
    assert!(events.next().is_none());

    // A client that leaves mid-stream stops the model, which then serves the next.
    let gate = f._dirs.1.path().join("gate-2");
    std::fs::write(&gate, b"").unwrap();
    let mut events = stream(
        &f.gateway,
        "gated",
        &json!({"gate": gate.to_str().unwrap(), "forever": 1}),
    );
    for _ in 0..3 {
        events.next().unwrap();
    }
    drop(events);
    eventually(
        "the model to stop generating",
        Duration::from_secs(20),
        || {
            let logs = f.server.cli(&["logs", "gated"]);
            let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
            logs.contains("the client went away").then_some(())
        },
    );
    let gate = f._dirs.1.path().join("gate-3");
    std::fs::write(&gate, b"").unwrap();
    let after: Vec<Value> = stream(
        &f.gateway,
        "gated",
        &json!({"gate": gate.to_str().unwrap()}),
    )
    .collect();
    assert_eq!(after.len(), 2);

    // A bad request is refused before anything runs, naming what is wrong.
    let r = http
        .post(format!("{}/v2/models/charlm/generate_stream", f.gateway))
        .json(&json!({"max_tokens": "many"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("max_tokens")
            || body["error"].as_str().unwrap().contains("inputs[0]"),
        "{body}"
    );
}

/// Triton's gRPC client streams from the same model with `ModelStreamInfer`.
#[test]
fn tritonclient_grpc_streams_a_generation() {
    let f = fleet();
    let script = r#"
import queue, sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(url=sys.argv[1])
responses = queue.Queue()
client.start_stream(callback=lambda result, error: responses.put((result, error)))
text = grpcclient.InferInput("text_input", [1], "BYTES")
text.set_data_from_numpy(np.array([b"The web "], dtype=np.object_))
count = grpcclient.InferInput("max_tokens", [1], "INT64")
count.set_data_from_numpy(np.array([12], dtype=np.int64))
client.async_stream_infer("charlm", [text, count], enable_empty_final_response=True)
chars = []
while True:
    result, error = responses.get(timeout=30)
    assert error is None, error
    response = result.get_response()
    if response.parameters["triton_final_response"].bool_param:
        break
    chars.append(result.as_numpy("text_output")[0].decode())
client.async_stream_infer("nope", [text])
result, error = responses.get(timeout=30)
assert result is None and 'no model "nope"' in str(error), error
client.stop_stream()
print("".join(chars))
"#;
    let python = repo_root().join(".venv/bin/python");
    let python = std::env::var("MYCEL_TEST_PYTHON").map_or(python, Into::into);
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(f.server.grpc())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = reqwest::blocking::Client::new();
    let whole: Value = http
        .post(format!("{}/v2/models/charlm/generate", f.gateway))
        .json(&json!({"text_input": "The web ", "max_tokens": 12}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        stdout.trim_end_matches('\n'),
        whole["text_output"].as_str().unwrap()
    );
}
