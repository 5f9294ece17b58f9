//! End-to-end tests of the gateway: a real control plane with its gateway, a real agent
//! and real Python workers on 127.0.0.1, spoken to in the Open Inference Protocol v2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    all_ready, eventually, replicas, status, write_tree, TestAgent, TestServer, READY_PATIENCE,
};

/// A numpy model that echoes its inputs, reports how many rows each call saw, fails on
/// request, and can be made slow (to be killed mid-call).
const PROBE: &str = r#"
import os, time
import numpy as np

class Probe:
    def __init__(self, ctx):
        pass

    def predict(self, inputs):
        if "fail" in inputs:
            raise ValueError("asked to fail")
        if "x" in inputs and (inputs["x"][:, 0] == -1).any():
            tag = int(inputs["x"][inputs["x"][:, 0] == -1][0, 1])
            print(f"dying for request {tag}", flush=True)
            os._exit(3)
        if "x" in inputs and (inputs["x"] == -2).any():
            raise ValueError("a bad row")
        if "sleep" in inputs:
            time.sleep(float(inputs["sleep"].reshape(-1)[0]))
            return {"slept": inputs["sleep"]}
        if "marker" in inputs:
            # Tell the test which process took the call, then take a while.
            path = inputs["marker"].reshape(-1)[0].decode()
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(3)
            return {"pid": np.full(inputs["marker"].shape[0], os.getpid(), dtype=np.int64)}
        outputs = dict(inputs)
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        if "x" in inputs and inputs["x"].ndim > 0:
            outputs["batch"] = np.full(rows, rows, dtype=np.int64)
        return outputs
"#;

const MANIFEST: &str = r#"
[component]
name = "probe"
entrypoint = "model:Probe"

[python]
requirements = ["numpy"]

[serve]
max_batch_size = 8
batch_wait_ms = 200

[[signature.inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 2]
"#;

struct Fleet {
    server: TestServer,
    _agent: TestAgent,
    gateway: String,
    http: reqwest::blocking::Client,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Server, gateway and one agent serving two replicas of the probe model.
fn fleet() -> Fleet {
    fleet_of(2)
}

/// Server, gateway and one agent serving `copies` replicas of the probe model.
fn fleet_of(copies: u32) -> Fleet {
    fleet_with(copies, "")
}

/// [`fleet_of`], with more `[serve]` settings in the probe's manifest.
fn fleet_with(copies: u32, serve: &str) -> Fleet {
    fleet_serving(copies, serve, &[])
}

/// [`fleet_with`], the server started with `server_args` too.
fn fleet_serving(copies: u32, serve: &str, server_args: &[&str]) -> Fleet {
    let manifest = MANIFEST.replace("[serve]\n", &format!("[serve]\n{serve}"));
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let mut args = vec!["--grpc", "127.0.0.1:0"];
    args.extend(server_args);
    let server = TestServer::start_with(data.path(), &args);
    // The probe tells the test what it does through files and its pid: unsandboxed
    // (tests/sandbox.rs checks what the sandbox changes).
    let agent = TestAgent::start_with(&server, nodes.path(), "n1", "here", &["--sandbox", "off"]);
    let component = nodes.path().join("probe");
    write_tree(
        &component,
        &[
            ("mycel.toml", manifest.as_bytes()),
            ("model.py", PROBE.as_bytes()),
        ],
    );
    server.cli_json(&["push", component.to_str().unwrap()]);
    let out = server.cli(&["deploy", "probe", "--copies", &format!("here={copies}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the probe replicas ready", READY_PATIENCE, || {
        all_ready(&status(&server), "probe", copies as usize).then_some(())
    });
    let gateway = server.gateway();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // The gateway learns of ready replicas by watching the control plane.
    eventually(
        "the gateway to route to probe",
        Duration::from_secs(20),
        || {
            let r = http
                .get(format!("{gateway}/v2/models/probe/ready"))
                .bearer_auth(server.token())
                .send()
                .ok()?;
            r.status().is_success().then_some(())
        },
    );
    Fleet {
        server,
        _agent: agent,
        gateway,
        http,
        _dirs: (data, nodes),
    }
}

impl Fleet {
    fn infer(&self, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v2/models/probe/infer", self.gateway))
            .json(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap())
    }
}

#[test]
fn oip_json_and_binary_round_trip_every_datatype_and_errors_are_clear() {
    let f = fleet();
    let get = |path: &str| {
        let r = f.http.get(format!("{}{path}", f.gateway)).send().unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    assert_eq!(get("/v2/health/live").0, 200);
    assert_eq!(get("/v2/health/ready").0, 200);
    assert_eq!(get("/v2").1["extensions"][0], "binary_tensor_data");
    let (code, meta) = get("/v2/models/probe");
    assert_eq!(code, 200);
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "x", "datatype": "FP32", "shape": [-1, 2]})
    );
    assert_eq!(get("/v2/models/probe/versions/1/ready").0, 200);
    let (code, body) = get("/v2/models/nope");
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("probe"), "{body}");
    assert_eq!(get("/v2/models/probe/versions/9").0, 404);

    // Every datatype through JSON, nested data included.
    let inputs = json!([
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [true, false]},
        {"name": "i8", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
        {"name": "i16", "datatype": "INT16", "shape": [1], "data": [-32768]},
        {"name": "i32", "datatype": "INT32", "shape": [1], "data": [2147483647]},
        {"name": "i64", "datatype": "INT64", "shape": [1], "data": [-9007199254740993i64]},
        {"name": "u8", "datatype": "UINT8", "shape": [2, 2], "data": [[0, 255], [1, 2]]},
        {"name": "u16", "datatype": "UINT16", "shape": [1], "data": [65535]},
        {"name": "u32", "datatype": "UINT32", "shape": [1], "data": [4294967295u64]},
        {"name": "u64", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615u64]},
        {"name": "f16", "datatype": "FP16", "shape": [2], "data": [1.5, -2.0]},
        {"name": "f32", "datatype": "FP32", "shape": [1], "data": [0.25]},
        {"name": "f64", "datatype": "FP64", "shape": [1], "data": [1e-300]},
        {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]},
    ]);
    let (code, answer) = f.infer(&json!({"id": "r1", "inputs": inputs}));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["id"], "r1");
    assert_eq!(answer["model_name"], "probe");
    for input in inputs.as_array().unwrap() {
        let output = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == input["name"])
            .unwrap_or_else(|| panic!("no output {}", input["name"]));
        assert_eq!(output["datatype"], input["datatype"]);
        assert_eq!(output["shape"], input["shape"]);
        let flat: Vec<Value> = match &input["data"] {
            Value::Array(items) => items
                .iter()
                .flat_map(|v| v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]))
                .collect(),
            other => vec![other.clone()],
        };
        assert_eq!(output["data"], Value::Array(flat), "{}", input["name"]);
    }

    // The binary-data extension both ways.
    let header = json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "x", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(1.5f32.to_le_bytes());
    body.extend((-3.0f32).to_le_bytes());
    let r = f
        .http
        .post(format!("{}/v2/models/probe/infer", f.gateway))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().unwrap();
    let answer: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(
        &bytes[json_len..],
        &[1.5f32.to_le_bytes(), (-3.0f32).to_le_bytes()].concat()[..]
    );

    // Bad input is refused before it reaches a worker, naming the field.
    let (code, body) = f.infer(
        &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]}),
    );
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("inputs[0]"),
        "{body}"
    );
    let (code, body) = f.infer(
        &json!({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}]}),
    );
    assert_eq!(code, 400, "{body}");
    let r = f
        .http
        .post(format!("{}/v2/models/probe/infer", f.gateway))
        .body("{\"inputs\": [")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A model error is a 500 with the worker's message; the replica keeps serving.
    let (code, body) = f.infer(
        &json!({"inputs": [{"name": "fail", "datatype": "INT8", "shape": [1], "data": [1]}]}),
    );
    assert_eq!(code, 500);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("ValueError: asked to fail"), "{body}");
    // The traceback, with the node's paths in it, is in the replica's log, not here.
    assert!(!error.contains("Traceback"), "{body}");
    let logs = f.server.cli(&["logs", "probe"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("[mycel] a request failed: ValueError: asked to fail")
            && logs.contains("Traceback"),
        "{logs}"
    );
    let (code, _) = f.infer(
        &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}),
    );
    assert_eq!(code, 200);

    // `mycel predict` goes through the same door.
    let out = f
        .server
        .cli(&["predict", "probe", "--input", "x=[[0.5, 1.5]]"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("x FP32 [1, 2]: [0.5, 1.5]"), "{stdout}");
}

#[test]
fn concurrent_requests_are_batched_and_a_request_whose_worker_is_killed_runs_again_there() {
    let f = fleet();
    // Eight concurrent one-row requests within the batch window: some share a call, and
    // each still gets exactly its own row back.
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let f = &f;
                s.spawn(move || {
                    let (code, answer) = f.infer(&json!({"inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [i, i + 1]}
                    ]}));
                    assert_eq!(code, 200, "{answer}");
                    (i, answer)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (i, answer) = h.join().unwrap();
                let x = answer["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["name"] == "x")
                    .unwrap();
                assert_eq!(x["data"], json!([i as f64, (i + 1) as f64]));
                answer
            })
            .collect()
    });
    let largest = answers
        .iter()
        .filter_map(|a| {
            a["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == "batch")?["data"][0]
                .as_u64()
        })
        .max()
        .unwrap();
    assert!(largest > 1, "no request shared a worker call: {answers:?}");

    // Both the gateway and the agent expose what happened as Prometheus metrics.
    let text = |url: String| f.http.get(url).send().unwrap().text().unwrap();
    let gateway = text(format!("{}/metrics", f.gateway));
    assert!(
        gateway.contains(r#"mycel_gateway_requests_total{model="probe",version="1",location="here",code="200"} 8"#),
        "{gateway}"
    );
    assert!(
        gateway.contains("mycel_gateway_request_duration_seconds_bucket"),
        "{gateway}"
    );
    let agent_url = status(&f.server)["nodes"][0]["node"]["spec"]["agent_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = text(format!("{agent_url}/metrics"));
    assert!(
        agent.contains(r#"mycel_agent_requests_total{model="probe""#),
        "{agent}"
    );
    assert!(agent.contains(r#"outcome="ok"} 8"#), "{agent}");
    assert!(agent.contains("mycel_agent_batch_size_bucket"), "{agent}");
    assert!(
        agent.contains(r#"mycel_agent_queue_depth{model="probe""#),
        "{agent}"
    );

    // Kill the worker that holds a request from outside (SIGKILL, as an operator or the
    // OOM killer would): the request is not sent to the other replica (had it killed
    // the worker itself, it would kill that one too) but run again by this replica's
    // restarted worker.
    let marker = f._dirs.1.path().join("marker");
    let request = json!({"inputs": [
        {"name": "marker", "datatype": "BYTES", "shape": [1], "data": [marker.to_str().unwrap()]}
    ]});
    let answer = std::thread::scope(|s| {
        let call = s.spawn(|| f.infer(&request));
        let victim: u64 = eventually(
            "a worker to take the slow call",
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&marker)
                    .ok()?
                    .lines()
                    .next()?
                    .parse()
                    .ok()
            },
        );
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap();
        call.join().unwrap()
    });
    assert_eq!(answer.0, 200, "{}", answer.1);
    let served_by = answer.1["outputs"][0]["data"][0].as_u64().unwrap();
    let marked: Vec<u64> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(marked.len(), 2, "{marked:?}");
    assert_eq!(marked[1], served_by);
    let restarted: Vec<_> = replicas(&status(&f.server), "probe")
        .into_iter()
        .filter(|r| r.4 >= 1)
        .collect();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0].3, Some(served_by), "another replica answered");
    // Both replicas are running again afterwards.
    eventually("the killed replica to be back", READY_PATIENCE, || {
        let s = status(&f.server);
        (replicas(&s, "probe").len() == 2 && all_ready(&s, "probe", 2)).then_some(())
    });
}

/// Runs a Python script with tritonclient (the repository's .venv, or
/// MYCEL_TEST_PYTHON); it must print `ok`.
fn run_python(script: &str, args: &[&str]) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let python = std::env::var("MYCEL_TEST_PYTHON").map_or(python, Into::into);
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (set MYCEL_TEST_PYTHON to a Python with tritonclient[http,grpc]): {e}",
                python.display()
            )
        });
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tritonclient_works_unchanged() {
    let f = fleet();
    let url = f.gateway.trim_start_matches("http://").to_owned();
    let script = r#"
import sys
import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient(url=sys.argv[1])
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("probe")
meta = client.get_model_metadata("probe")
assert meta["inputs"][0]["name"] == "x", meta
x = np.arange(6, dtype=np.float32).reshape(3, 2)
s = np.array([b"alpha", b"beta"], dtype=np.object_)
for binary in (False, True):
    a = httpclient.InferInput("x", list(x.shape), "FP32")
    a.set_data_from_numpy(x, binary_data=binary)
    b = httpclient.InferInput("s", list(s.shape), "BYTES")
    b.set_data_from_numpy(s, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("x", "s")]
    result = client.infer("probe", [a, b], outputs=outputs)
    assert np.array_equal(result.as_numpy("x"), x), result.as_numpy("x")
    # JSON answers carry BYTES as text, which tritonclient hands back as str.
    got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("s")]
    assert got == [b"alpha", b"beta"], result.as_numpy("s")

# The statistics extension: two requests of three rows, each timed in its replica.
assert "statistics" in client.get_server_metadata()["extensions"]
stats = client.get_inference_statistics("probe")["model_stats"]
assert [s["version"] for s in stats] == ["1"], stats
s = stats[0]["inference_stats"]
assert s["success"]["count"] == 2 and s["fail"]["count"] == 0, s
assert stats[0]["inference_count"] == 6, stats
assert s["queue"]["count"] == 2 and s["compute_infer"]["count"] == 2, s
assert s["compute_infer"]["ns"] > 0 and s["success"]["ns"] >= s["compute_infer"]["ns"] / 2, s
executions = stats[0]["execution_count"]
assert 1 <= executions <= 2, stats
assert sum(b["compute_infer"]["count"] for b in stats[0]["batch_stats"]) == executions, stats
assert [m["name"] for m in client.get_inference_statistics()["model_stats"]] == ["probe"]
print("tritonclient ok")
"#;
    run_python(script, &[&url]);
}

/// Triton's own gRPC client, unchanged, against the gateway's gRPC port: health,
/// metadata, raw tensors both ways, errors with the gRPC code a client checks, a
/// deadline the client asked for, and the standard health service.
#[test]
fn tritonclient_grpc_works_unchanged() {
    let f = fleet();
    let script = r#"
import sys
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(url=sys.argv[1])
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("probe")
assert not client.is_model_ready("nope")
server = client.get_server_metadata()
assert server.name == "mycel", server
meta = client.get_model_metadata("probe")
assert meta.inputs[0].name == "x" and list(meta.inputs[0].shape) == [-1, 2], meta

x = np.arange(6, dtype=np.float32).reshape(3, 2)
s = np.array([b"alpha", b"", b"gamma"], dtype=np.object_)
a = grpcclient.InferInput("x", list(x.shape), "FP32")
a.set_data_from_numpy(x)
b = grpcclient.InferInput("s", list(s.shape), "BYTES")
b.set_data_from_numpy(s)
wanted = [grpcclient.InferRequestedOutput(n) for n in ("s", "x")]
result = client.infer("probe", [a, b], outputs=wanted, request_id="r7")
assert np.array_equal(result.as_numpy("x"), x), result.as_numpy("x")
assert list(result.as_numpy("s")) == [b"alpha", b"", b"gamma"], result.as_numpy("s")
response = result.get_response()
assert response.id == "r7" and response.model_version == "1", response
assert [o.name for o in response.outputs] == ["s", "x"], response.outputs

# No outputs named: every output the model returned.
result = client.infer("probe", [a])
assert result.as_numpy("batch").shape == (3,), result.get_response()

assert "statistics" in server.extensions, server
stats = client.get_inference_statistics("probe").model_stats
assert len(stats) == 1 and stats[0].version == "1", stats
assert stats[0].inference_stats.success.count == 2 and stats[0].inference_count == 6, stats
assert stats[0].inference_stats.queue.count == 2 and stats[0].last_inference > 0, stats

def refused(code, words, *args, **kwargs):
    try:
        client.infer(*args, **kwargs)
    except InferenceServerException as e:
        assert e.status() == code and words in e.message(), (e.status(), e.message())
    else:
        raise AssertionError(f"expected {code}")

refused("StatusCode.NOT_FOUND", 'no model "nope" is deployed', "nope", [a])
refused("StatusCode.NOT_FOUND", 'has no version "9"', "probe", [a], model_version="9")
f = grpcclient.InferInput("fail", [1], "INT32")
f.set_data_from_numpy(np.array([1], dtype=np.int32))
refused("StatusCode.INTERNAL", "asked to fail", "probe", [f])
missing = [grpcclient.InferRequestedOutput("nothing")]
refused("StatusCode.INVALID_ARGUMENT", 'no output "nothing"', "probe", [a], outputs=missing)

# The standard health service says the inference service is serving.
channel = grpc.insecure_channel(sys.argv[1])
check = channel.unary_unary("/grpc.health.v1.Health/Check")
service = b"inference.GRPCInferenceService"
assert check(b"\n" + bytes([len(service)]) + service) == b"\x08\x01"

# A deadline the client asks for (Triton's timeout parameter, in microseconds) is kept:
# the answer names the model and the limit, at about the limit.
sleep = grpcclient.InferInput("sleep", [1], "FP32")
sleep.set_data_from_numpy(np.array([5.0], dtype=np.float32))
refused("StatusCode.DEADLINE_EXCEEDED", "no answer within 500 ms", "probe", [sleep], timeout=500_000)
print("tritonclient.grpc ok")
"#;
    run_python(script, &[&f.server.grpc()]);
}

#[test]
fn oversized_requests_are_refused_with_the_limit_named() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(data.path(), &["--max-request-size", "1KiB"]);
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v2/models/any/infer", server.gateway()))
        .body(vec![b' '; 2048])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit of 1024 bytes"),
        "{body}"
    );
}

/// Good requests from several clients, batched with bad ones: a request that makes the
/// model raise, or kills its worker, fails alone; nothing else fails, and the bad
/// request is not tried on the other replica.
#[test]
fn a_bad_request_fails_alone_and_a_killing_one_is_not_retried_elsewhere() {
    let f = fleet();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let good = |i: u64| {
        json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [i, i + 1]}
        ]})
    };
    // [-2, tag] makes the model raise; [-1, tag] kills its worker.
    let bad = |value: i64, tag: i64| {
        json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [value, tag]}
        ]})
    };
    let (answers, bad_answers) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..6u64)
            .map(|c| {
                let (f, stop) = (&f, &stop);
                s.spawn(move || {
                    let mut answers = Vec::new();
                    let mut i = c * 100_000;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (code, answer) = f.infer(&good(i));
                        answers.push((i, code, answer));
                        i += 1;
                    }
                    answers
                })
            })
            .collect();
        let mut bad_answers = Vec::new();
        for (value, tag) in [(-2, 1), (-1, 2), (-2, 3), (-1, 4)] {
            std::thread::sleep(Duration::from_millis(300));
            bad_answers.push((value, f.infer(&bad(value, tag))));
            // Both replicas back before the next one, so that one always serves.
            eventually("both replicas ready", READY_PATIENCE, || {
                all_ready(&status(&f.server), "probe", 2).then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers: Vec<_> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        (answers, bad_answers)
    });
    assert!(answers.len() > 50, "only {} good requests", answers.len());
    for (i, code, answer) in &answers {
        assert_eq!(*code, 200, "good request {i} failed: {answer}");
        let x = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "x")
            .unwrap();
        assert_eq!(x["data"], json!([*i as f64, (*i + 1) as f64]), "{answer}");
    }
    let shared = answers
        .iter()
        .filter_map(|(_, _, a)| {
            a["outputs"]
                .as_array()?
                .iter()
                .find(|o| o["name"] == "batch")?["data"][0]
                .as_u64()
        })
        .any(|rows| rows > 1);
    assert!(shared, "no request shared a worker call");
    for (value, (code, answer)) in &bad_answers {
        assert_eq!(*code, 500, "{answer}");
        let error = answer["error"].as_str().unwrap();
        let expected = if *value == -2 {
            "ValueError: a bad row"
        } else {
            "died while handling this request"
        };
        assert!(error.contains(expected), "{value}: {error}");
    }
    // A killing request took down workers of one replica only (twice where it came in
    // a batch: once with it, once alone): it was never tried on the other.
    let logs = f.server.cli(&["logs", "probe"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    for tag in [2, 4] {
        let killed: std::collections::BTreeSet<&str> = logs
            .lines()
            .filter(|l| l.ends_with(&format!("dying for request {tag}")))
            .filter_map(|l| l.split(']').next())
            .collect();
        assert_eq!(
            killed.len(),
            1,
            "request {tag} killed workers of {killed:?}:\n{logs}"
        );
    }
}

/// A request past its deadline gets 504 at once; one that waited past it for a busy
/// worker never runs; a worker stuck in a call long past its deadline is restarted.
#[test]
fn a_full_queue_is_refused_at_once_and_workers_are_first_for_the_oom_killer() {
    let f = fleet_with(1, "max_queue = 2\n");
    let marker = f._dirs.1.path().join("busy");
    let x = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]});
    std::thread::scope(|s| {
        // The only worker is busy for 3 s; two requests may wait for it, no more.
        let busy = s.spawn(|| {
            let answer = f.infer(&json!({"inputs": [{"name": "marker", "datatype": "BYTES", "shape": [1], "data": [marker.to_str().unwrap()]}]}));
            (answer, std::time::Instant::now())
        });
        eventually("the worker busy", Duration::from_secs(20), || {
            marker.exists().then_some(())
        });
        let waiting: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let r = f
                        .http
                        .post(format!("{}/v2/models/probe/infer", f.gateway))
                        .json(&x)
                        .send()
                        .unwrap();
                    let retry = r.headers().get("retry-after").cloned();
                    let done = std::time::Instant::now();
                    (r.status().as_u16(), retry, r.text().unwrap(), done)
                })
            })
            .collect();
        let answers: Vec<_> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
        let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
        let served = answers.iter().filter(|a| a.0 == 200).count();
        assert_eq!((refused.len(), served), (2, 2), "{answers:?}");
        let ((code, _), busy_done) = busy.join().unwrap();
        assert_eq!(code, 200);
        for (_, retry, body, done) in refused {
            assert_eq!(retry.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
            assert!(
                body.contains("overloaded") && body.contains("full queues"),
                "{body}"
            );
            // Refused at once, not after waiting for the busy worker.
            assert!(*done < busy_done, "refused only after the busy call ended");
        }
    });
    // A leaking model is what the OOM killer takes, not mycel: workers first, and
    // the agent last where this machine lets a process ask for that.
    let score = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        text.trim().parse::<i32>().unwrap()
    };
    let worker = replicas(&status(&f.server), "probe")[0].3.unwrap();
    assert_eq!(score(worker as u32), 1000);
    let agent = score(f._agent.pid().unwrap());
    let may_lower = Command::new("sh")
        .args(["-c", "echo -900 > /proc/self/oom_score_adj"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert_eq!(agent, if may_lower { -900 } else { 0 });
}

#[test]
fn deadlines_answer_504_skip_what_expired_and_restart_a_stuck_worker() {
    let f = fleet_of(1);
    let with_timeout =
        |inputs: Value, us: u64| json!({"inputs": inputs, "parameters": {"timeout": us}});

    // A model stuck for a minute, a client that gives it a second.
    let sent = std::time::Instant::now();
    let (code, answer) = f.infer(&with_timeout(
        json!([{"name": "sleep", "datatype": "FP32", "shape": [1], "data": [60.0]}]),
        1_000_000,
    ));
    assert_eq!(code, 504, "{answer}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("model \"probe\" gave no answer within 1000 ms"),
        "{error}"
    );
    // Its worker is restarted, and the replica serves again.
    eventually("the stuck worker restarted", READY_PATIENCE, || {
        let replicas = replicas(&status(&f.server), "probe");
        (replicas[0].2 == "ready" && replicas[0].4 >= 1).then_some(())
    });
    eventually("an answer again", Duration::from_secs(30), || {
        let (code, _) = f.infer(&json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
        ]}));
        (code == 200).then_some(())
    });

    // One request holds the only worker for 3 s; one behind it with half a second to
    // live gets 504 and never runs.
    let first = f._dirs.1.path().join("first");
    let second = f._dirs.1.path().join("second");
    let marker = |path: &std::path::Path| json!([{"name": "marker", "datatype": "BYTES", "shape": [1], "data": [path.to_str().unwrap()]}]);
    std::thread::scope(|s| {
        let busy = s.spawn(|| f.infer(&json!({"inputs": marker(&first)})));
        eventually("the first call running", Duration::from_secs(20), || {
            first.exists().then_some(())
        });
        let (code, answer) = f.infer(&with_timeout(marker(&second), 500_000));
        assert_eq!(code, 504, "{answer}");
        let (code, answer) = busy.join().unwrap();
        assert_eq!(code, 200, "{answer}");
    });
    // The worker is free and idle again: the expired call would have run by now.
    let (code, _) = f.infer(&json!({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
    ]}));
    assert_eq!(code, 200);
    assert!(!second.exists(), "the expired call ran");

    // A deployment's own limit applies without the client saying anything.
    let out = f.server.cli(&[
        "deploy",
        "probe",
        "--copies",
        "here=1",
        "--request-timeout",
        "1s",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the deployment's limit at the gateway",
        Duration::from_secs(60),
        || {
            let (code, answer) = f.infer(&json!({"inputs": [
                {"name": "sleep", "datatype": "FP32", "shape": [1], "data": [3.0]}
            ]}));
            (code == 504 && answer["error"].as_str()?.contains("within 1000 ms")).then_some(())
        },
    );

    // A timeout that is not a count of microseconds is refused.
    let (code, answer) = f.infer(&json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
        "parameters": {"timeout": "1s"}
    }));
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("microseconds"),
        "{answer}"
    );
}

#[test]
fn mycel_top_shows_each_models_rate_errors_latency_and_replicas() {
    let fleet = fleet();
    let ok =
        json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]});
    let fail = json!({"inputs": [{"name": "fail", "datatype": "FP32", "shape": [1], "data": [1]}]});
    let (fleet, ok, fail) = (&fleet, &ok, &fail);
    let out = std::thread::scope(|scope| {
        // One update over 4 s, in which the requests below are made.
        let top = scope.spawn(|| {
            fleet
                .server
                .cli(&["top", "--once", "--json", "--interval", "4s"])
        });
        std::thread::sleep(Duration::from_secs(1));
        // At once, so that the probe's batching wait does not add up.
        let calls: Vec<_> = (0..22)
            .map(|i| scope.spawn(move || fleet.infer(if i < 20 { ok } else { fail }).0))
            .collect();
        let codes: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        assert_eq!(codes.iter().filter(|&&c| c == 500).count(), 2, "{codes:?}");
        top.join().unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let update: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seconds = update["seconds"].as_f64().unwrap();
    let probe = update["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "probe")
        .unwrap_or_else(|| panic!("no probe in {update}"));
    let count = |field: &str| (probe[field].as_f64().unwrap() * seconds).round();
    assert_eq!(count("requests_per_s"), 22.0, "{update}");
    assert_eq!(count("errors_per_s"), 2.0, "{update}");
    assert_eq!((&probe["ready"], &probe["desired"]), (&json!(2), &json!(2)));
    let (p50, p99) = (
        probe["p50_ms"].as_f64().unwrap(),
        probe["p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{update}");

    // The table a person reads.
    let out = fleet.server.cli(&["top", "--once", "--interval", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("MODEL") && text.contains("P99 MS"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("probe") && l.contains("2/2")),
        "{text}"
    );
}

#[test]
fn a_gateway_that_requires_tokens_takes_only_tokens_scoped_to_the_model() {
    let fleet = fleet_serving(1, "", &["--require-token"]);
    let url = format!("{}/v2/models/probe/infer", fleet.gateway);
    let body =
        json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]});
    let call = |token: Option<&str>| {
        let mut request = fleet.http.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().unwrap())
    };
    let (status, answer) = call(None);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("takes requests with a token only"),
        "{answer}"
    );
    assert_eq!(call(Some("mycel_not-a-token")).0, 401);
    assert_eq!(call(Some(&fleet.server.token())).0, 200);

    let token = |args: &[&str]| {
        let mut all = vec!["token", "create", "--role", "viewer"];
        all.extend(args);
        fleet.server.cli_json(&all)["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Tokens reach the gateway with its next routing table.
    let elsewhere = token(&["--component", "other"]);
    let probe = token(&["--component", "probe", "--name", "probe-client"]);
    let (status, answer) = eventually(
        "the gateway to know the new tokens",
        Duration::from_secs(20),
        || {
            let answer = call(Some(&elsewhere));
            (answer.0 != 401).then_some(answer)
        },
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("may call only models of other"),
        "{answer}"
    );
    assert_eq!(call(Some(&probe)).0, 200);

    // Revoked: refused within a routing table's trip.
    let out = fleet.server.cli(&["token", "revoke", "probe-client"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the revocation to reach the gateway",
        Duration::from_secs(20),
        || (call(Some(&probe)).0 == 401).then_some(()),
    );

    // Health and server metadata stay open, for load balancers and probes.
    let ready = fleet
        .http
        .get(format!("{}/v2/health/ready", fleet.gateway))
        .send()
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // Over gRPC the token goes in the metadata, as tritonclient sends headers.
    let script = r#"
import sys
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(url=sys.argv[1])
x = grpcclient.InferInput("x", [1, 2], "FP32")
x.set_data_from_numpy(np.array([[1, 2]], dtype=np.float32))
def refused(code, words, headers):
    try:
        client.infer("probe", [x], headers=headers)
    except InferenceServerException as e:
        assert e.status() == code and words in e.message(), (e.status(), e.message())
    else:
        raise AssertionError(f"expected {code}")
refused("StatusCode.UNAUTHENTICATED", "with a token only", None)
refused("StatusCode.PERMISSION_DENIED", "may call only models of other", {"authorization": "Bearer " + sys.argv[3]})
result = client.infer("probe", [x], headers={"authorization": "Bearer " + sys.argv[2]})
assert result.as_numpy("x").tolist() == [[1.0, 2.0]], result.as_numpy("x")
# The standard health service stays open.
check = grpc.insecure_channel(sys.argv[1]).unary_unary("/grpc.health.v1.Health/Check")
service = b"inference.GRPCInferenceService"
assert check(b"\n" + bytes([len(service)]) + service) == b"\x08\x01"
print("tritonclient.grpc with tokens ok")
"#;
    run_python(
        script,
        &[&fleet.server.grpc(), &fleet.server.token(), &elsewhere],
    );
}
