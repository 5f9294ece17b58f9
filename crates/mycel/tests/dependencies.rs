//! End-to-end tests of `[dependencies]`: a model component importing a helper
//! component, served by a real agent and Python worker through the gateway, and
//! `mycel push --cascade` carrying a change of the helper to the model's deployment.
//! Needs `uv` on PATH (or MYCEL_UV) and the package registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::{all_ready, eventually, status, write_tree, TestAgent, TestServer, READY_PATIENCE};

/// The helper: numpy only, a module `scale` with a function the model imports. It is a
/// component like any other, so it names an entrypoint of its own.
fn helper(dir: &Path, factor: u32) {
    let scale = format!(
        "import numpy as np\n\nFACTOR = {factor}\n\n\ndef scale(x):\n    return np.asarray(x) * FACTOR\n"
    );
    write_tree(
        dir,
        &[
            (
                "mycel.toml",
                b"[component]\nname = \"scaler\"\nentrypoint = \"scale_model:Scale\"\n\n[python]\nrequirements = [\"numpy\"]\n",
            ),
            ("scale.py", scale.as_bytes()),
            (
                "scale_model.py",
                b"from scale import scale\n\n\nclass Scale:\n    def __init__(self, ctx):\n        pass\n\n    def predict(self, inputs):\n        return {\"y\": scale(inputs[\"x\"])}\n",
            ),
        ],
    );
}

/// The model: no requirements of its own, its predict calls the helper's function.
const MODEL: &str = r#"
import numpy as np
from scale import scale


class Model:
    def __init__(self, ctx):
        self.helper = ctx.dependencies["scaler"]

    def predict(self, inputs):
        helper = np.array([str(self.helper).encode()], dtype=np.object_)
        return {"y": scale(inputs["x"]) + np.float32(1), "helper": helper}
"#;

fn model(dir: &Path, dependencies: &str) {
    let manifest = format!(
        "[component]\nname = \"scaled\"\nentrypoint = \"model:Model\"\n\n[dependencies]\n{dependencies}"
    );
    write_tree(
        dir,
        &[
            ("mycel.toml", manifest.as_bytes()),
            ("model.py", MODEL.as_bytes()),
        ],
    );
}

fn predict(http: &reqwest::blocking::Client, gateway: &str) -> Option<Vec<f64>> {
    let body =
        json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]});
    let response = http
        .post(format!("{gateway}/v2/models/scaled/infer"))
        .json(&body)
        .send()
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let answer: Value = response.json().ok()?;
    let outputs = answer["outputs"].as_array()?;
    let y = outputs.iter().find(|o| o["name"] == "y")?;
    y["data"]
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect::<Option<Vec<f64>>>()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_model_imports_its_dependency_and_push_cascade_rolls_a_change_out() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _agent = TestAgent::start(&server, nodes.path(), "n1", "here");
    let helper_dir = nodes.path().join("src/scaler");
    let model_dir = nodes.path().join("src/scaled");
    helper(&helper_dir, 2);
    model(&model_dir, "scaler = \"latest\"\n");

    let pushed = server.cli_json(&["push", helper_dir.to_str().unwrap()]);
    assert_eq!(pushed["seq"], 1);
    let pushed = server.cli_json(&["push", model_dir.to_str().unwrap()]);
    assert_eq!(pushed["seq"], 1);
    let shown = server.cli_json(&["show", "scaled@1"]);
    assert_eq!(shown["dependencies"][0]["component"], "scaler");
    assert_eq!(shown["dependencies"][0]["seq"], 1);

    let out = server.cli(&["deploy", "scaled", "--copies", "here=1", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("the scaled replica ready", READY_PATIENCE, || {
        all_ready(&status(&server), "scaled", 1).then_some(())
    });

    let gateway = server.gateway();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let first = eventually("an answer from scaled@1", Duration::from_secs(30), || {
        predict(&http, &gateway)
    });
    assert_eq!(first, [3.0, 5.0, 7.0]);
    // The worker gets the helper's own read-only directory on its node, apart from the
    // model's.
    let answer: Value = http
        .post(format!("{gateway}/v2/models/scaled/infer"))
        .json(&json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let helper_path = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "helper")
        .and_then(|o| o["data"][0].as_str())
        .unwrap()
        .to_owned();
    let versions = nodes.path().join("n1/versions");
    assert!(
        helper_path.starts_with(versions.to_str().unwrap()),
        "{helper_path}"
    );
    assert!(
        !Path::new(&helper_path).join("model.py").exists(),
        "{helper_path}"
    );
    assert!(
        Path::new(&helper_path).join("scale.py").is_file(),
        "{helper_path}"
    );

    // A new helper without --cascade: the deployment is named and keeps scaler@1.
    helper(&helper_dir, 10);
    let out = server.cli(&["push", helper_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("deployment scaled (scaled@1) imports scaler@1 and keeps it"),
        "{stdout}"
    );
    assert!(stdout.contains("--cascade"), "{stdout}");
    assert_eq!(predict(&http, &gateway).unwrap(), [3.0, 5.0, 7.0]);

    // With --cascade the model is rebuilt against scaler@2 and rolled out.
    let report = server.cli_json(&["push", helper_dir.to_str().unwrap(), "--cascade", "--wait"]);
    assert_eq!(report["created"], false, "{report}");
    assert_eq!(report["seq"], 2);
    let dependents = report["dependents"].as_array().unwrap();
    assert_eq!(dependents.len(), 1, "{report}");
    assert_eq!(dependents[0]["deployment"], "scaled");
    assert_eq!(dependents[0]["from_seq"], 1);
    assert_eq!(dependents[0]["uses_seq"], 1);
    assert_eq!(dependents[0]["to_seq"], 2);
    let rebuilt = server.cli_json(&["show", "scaled@2"]);
    assert_eq!(rebuilt["files"], shown["files"]);
    assert_eq!(rebuilt["dependencies"][0]["seq"], 2);
    let second = eventually(
        "answers computed with scaler@2",
        Duration::from_secs(60),
        || predict(&http, &gateway).filter(|y| y == &[11.0, 21.0, 31.0]),
    );
    assert_eq!(second, [11.0, 21.0, 31.0]);

    // Pushing the model's unchanged source now resolves to the rebuilt version.
    let again = server.cli_json(&["push", model_dir.to_str().unwrap()]);
    assert_eq!(
        (again["created"].clone(), again["seq"].clone()),
        (json!(false), json!(2))
    );

    // Up to date: nothing more to cascade.
    let report = server.cli_json(&["push", helper_dir.to_str().unwrap(), "--cascade"]);
    assert_eq!(report["dependents"], json!([]), "{report}");
}

#[test]
fn missing_dependencies_and_cycles_are_refused_at_push() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let helper_dir = src.path().join("scaler");
    let model_dir = src.path().join("scaled");
    helper(&helper_dir, 2);

    model(&model_dir, "scaler = \"latest\"\n");
    let out = server.cli(&["push", model_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("[dependencies].scaler: there is no component \"scaler\""),
        "{message}"
    );
    assert!(message.contains("push it first"), "{message}");

    server.cli_json(&["push", helper_dir.to_str().unwrap()]);
    model(&model_dir, "scaler = 7\n");
    let out = server.cli(&["push", model_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("scaler has no version 7"), "{message}");
    assert!(message.contains("from 1 to 1"), "{message}");

    model(&model_dir, "scaler = \"latest\"\n");
    server.cli_json(&["push", model_dir.to_str().unwrap()]);

    // scaler -> scaled@1 -> scaler@1: refused, and nothing is stored.
    let manifest = "[component]\nname = \"scaler\"\nentrypoint = \"scale_model:Scale\"\n\n[dependencies]\nscaled = \"latest\"\n";
    write_tree(&helper_dir, &[("mycel.toml", manifest.as_bytes())]);
    let out = server.cli(&["push", helper_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("scaler would depend on itself: scaler -> scaled@1 -> scaler@1"),
        "{message}"
    );
    assert_eq!(
        server
            .cli_json(&["versions", "scaler"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let manifest = "[component]\nname = \"scaler\"\nentrypoint = \"scale_model:Scale\"\n\n[dependencies]\nscaler = \"latest\"\n";
    write_tree(&helper_dir, &[("mycel.toml", manifest.as_bytes())]);
    let out = server.cli(&["push", helper_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot depend on itself"),
        "{}",
        stderr(&out)
    );

    // The dependents of a component that was never pushed: a 404, not an empty list.
    let response = reqwest::blocking::Client::new()
        .get(format!("{}/v1/components/nothing/dependents", server.url))
        .bearer_auth(server.token())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
}
