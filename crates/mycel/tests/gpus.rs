//! GPUs without a GPU: an agent told which GPUs it offers (`--gpus`, as an operator
//! would narrow what the driver reports) hands each `gpus = 1` replica one of its own
//! through `CUDA_VISIBLE_DEVICES`, hides them from replicas that asked for none, and
//! copies that find no free GPU are refused with the reason. Real workers, real
//! gateway; the placement itself is property-tested in mycel-core's reconcile tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::{all_ready, eventually, status, write_tree, TestAgent, TestServer, READY_PATIENCE};

/// Answers with the GPUs its worker was given.
const MODEL: &[u8] = br#"
import os
import numpy as np

class Model:
    def __init__(self, ctx):
        pass

    def predict(self, inputs):
        seen = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        order = os.environ.get("CUDA_DEVICE_ORDER", "unset")
        return {"visible": np.array([seen.encode()], dtype=np.object_),
                "order": np.array([order.encode()], dtype=np.object_)}
"#;

fn component(root: &std::path::Path, name: &str, gpus: u32) -> std::path::PathBuf {
    let dir = root.join(name);
    let manifest = format!(
        "[component]\nname = \"{name}\"\nentrypoint = \"model:Model\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[resources]\ncpus = 0.25\nmemory = \"64MiB\"\ngpus = {gpus}\n"
    );
    write_tree(
        &dir,
        &[("mycel.toml", manifest.as_bytes()), ("model.py", MODEL)],
    );
    dir
}

/// What the model's replicas saw, (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER), over
/// enough requests to reach every replica.
fn seen(gateway: &str, model: &str, expected: usize) -> BTreeSet<(String, String)> {
    let http = reqwest::blocking::Client::new();
    let mut seen = BTreeSet::new();
    eventually(
        &format!("answers from {expected} replicas of {model}"),
        Duration::from_secs(30),
        || {
            let answer: Value = http
                .post(format!("{gateway}/v2/models/{model}/infer"))
                .json(&json!({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]}))
                .send()
                .ok()?
                .json()
                .ok()?;
            let output = |name: &str| -> Option<String> {
                let tensor = answer["outputs"]
                    .as_array()?
                    .iter()
                    .find(|o| o["name"] == name)?;
                Some(tensor["data"][0].as_str()?.to_owned())
            };
            seen.insert((output("visible")?, output("order")?));
            (seen.len() >= expected).then_some(())
        },
    );
    seen
}

fn pair(visible: &str, order: &str) -> (String, String) {
    (visible.to_owned(), order.to_owned())
}

#[test]
fn each_gpu_replica_gets_its_own_gpu_and_copies_without_one_are_refused_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let nodes = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let _gpu_node = TestAgent::start_with(&server, nodes.path(), "g1", "here", &["--gpus", "1,0"]);
    let _cpu_node =
        TestAgent::start_with(&server, nodes.path(), "c1", "there", &["--gpus", "none"]);
    let gpu = component(nodes.path(), "gpu", 1);
    let plain = component(nodes.path(), "plain", 0);
    for dir in [&gpu, &plain] {
        server.cli_json(&["push", dir.to_str().unwrap()]);
    }
    let deploy = |args: &[&str]| {
        let out = server.cli(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    deploy(&["deploy", "gpu", "--copies", "here=2"]);
    deploy(&[
        "deploy", "plain", "--copies", "here=1", "--copies", "there=1",
    ]);
    eventually("every replica ready", READY_PATIENCE, || {
        let s = status(&server);
        (all_ready(&s, "gpu", 2) && all_ready(&s, "plain", 2)).then_some(())
    });
    let gateway = server.gateway();

    // One GPU each, numbered as the driver numbers them.
    assert_eq!(
        seen(&gateway, "gpu", 2),
        BTreeSet::from([pair("0", "PCI_BUS_ID"), pair("1", "PCI_BUS_ID")])
    );
    // A replica that asked for none sees none on a GPU node, and the environment as it
    // was on a node without GPUs.
    assert_eq!(
        seen(&gateway, "plain", 2),
        BTreeSet::from([pair("", "PCI_BUS_ID"), pair("unset", "unset")])
    );

    // Both GPUs are taken: a third copy, and one where there are none, are refused.
    deploy(&["deploy", "gpu", "--copies", "here=3", "--copies", "there=1"]);
    let unplaced = eventually(
        "the copies without a GPU refused",
        Duration::from_secs(20),
        || {
            let s = status(&server);
            let unplaced: Vec<Value> = s["unplaced"]
                .as_array()?
                .iter()
                .filter(|u| u["deployment"] == "gpu")
                .cloned()
                .collect();
            (unplaced.len() == 2).then_some(unplaced)
        },
    );
    for u in &unplaced {
        let reason = u["reason"].as_str().unwrap();
        assert_eq!(u["count"], 1, "{u}");
        assert!(
            reason.contains("1 gpus per replica") && reason.contains("(short of gpus)"),
            "{reason}"
        );
    }
    // The replicas that have their GPUs keep serving.
    assert!(all_ready(&status(&server), "gpu", 2));

    let out = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let g1 = text.lines().find(|l| l.starts_with("g1")).unwrap();
    let c1 = text.lines().find(|l| l.starts_with("c1")).unwrap();
    assert!(text.contains("GPUS"), "{text}");
    assert!(g1.contains(" 2/2 "), "{g1}");
    assert!(c1.contains(" 0/0 "), "{c1}");
}
