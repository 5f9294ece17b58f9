//! Signed versions end to end, in the OpenSSF Model Signing format: mycel signs and
//! `model_signing` (the PyPI package) verifies, `model_signing` signs and mycel
//! verifies; an agent that trusts a key runs what that key signed and refuses, with a
//! reason and a rollback, what is unsigned, signed by another key, or altered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{
    component, eventually, repo_root, status, write_tree, TestAgent, TestServer, READY_PATIENCE,
};

fn model_signing() -> PathBuf {
    let bin = repo_root().join(".venv/bin/model_signing");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test.sh installs model-signing into .venv",
        bin.display()
    );
    bin
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_ok(server: &TestServer, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "mycel {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_err(server: &TestServer, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(!out.status.success(), "mycel {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The last rollout of `deployment` once it has ended.
fn ended_rollout(server: &TestServer, deployment: &str, number: usize) -> Value {
    eventually(
        &format!("rollout {number} of {deployment} to end"),
        READY_PATIENCE,
        || {
            let history = server.cli_json(&["history", deployment]);
            let rollout = history.as_array()?.get(number - 1)?.clone();
            (rollout["outcome"] != "progressing").then_some(rollout)
        },
    )
}

#[test]
fn signatures_interoperate_with_model_signing_and_agents_enforce_them() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let keys = root.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let out = cli_ok(&server, &["key", "generate", "--out", s(&keys.join("dev"))]);
    assert!(out.contains("key hint"), "{out}");
    cli_ok(
        &server,
        &["key", "generate", "--out", s(&keys.join("other"))],
    );
    let (key, public) = (keys.join("dev.key"), keys.join("dev.pub"));
    let other_key = keys.join("other.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is readable by others");
    let again = cli_err(&server, &["key", "generate", "--out", s(&keys.join("dev"))]);
    assert!(again.contains("exists"), "{again}");

    let agent = TestAgent::start_with(
        &server,
        root.path(),
        "a",
        "here",
        &["--trust-key", s(&public)],
    );

    // mycel signs; model_signing verifies what the agent laid out.
    let ours = root.path().join("ours");
    component(&ours, "ours");
    let pushed = server.cli_json(&["push", s(&ours), "--sign", s(&key)]);
    let hint = pushed["signed_by"].as_str().unwrap().to_owned();
    assert_eq!(hint.len(), 64);
    let again = server.cli_json(&["push", s(&ours), "--sign", s(&key)]);
    assert_eq!(
        again["created"], false,
        "signing the same files again changed them"
    );
    let show = cli_ok(&server, &["show", "ours@1"]);
    assert!(show.contains(&format!("signed by   key {hint}")), "{show}");
    assert!(show.contains("model.sig"), "{show}");
    let verified = server.cli_json(&["verify", "ours@1", "--key", s(&public)]);
    assert_eq!(verified["signer"], hint.as_str());
    assert_eq!(verified["files"], 4);
    let refused = cli_err(
        &server,
        &["verify", "ours@1", "--key", s(&keys.join("other.pub"))],
    );
    assert!(refused.contains("unknown key"), "{refused}");

    cli_ok(
        &server,
        &[
            "deploy",
            "ours",
            "--copies",
            "here=1",
            "--wait",
            "--timeout",
            "300s",
        ],
    );
    let id = pushed["id"].as_str().unwrap();
    let laid_out = root.path().join("a/versions").join(id);
    run_ok(
        Command::new(model_signing())
            .args(["verify", "key", "--public_key", s(&public), "--signature"])
            .arg(laid_out.join("model.sig"))
            .arg(&laid_out),
    );

    // model_signing signs; mycel verifies, and the agent runs it.
    let theirs = root.path().join("theirs");
    component(&theirs, "theirs");
    run_ok(
        Command::new(model_signing())
            .args(["sign", "key", "--private_key", s(&key), "--signature"])
            .arg(theirs.join("model.sig"))
            .arg(&theirs),
    );
    let pushed = server.cli_json(&["push", s(&theirs)]);
    assert_eq!(pushed["seq"], 1);
    let verified = server.cli_json(&["verify", "theirs", "--key", s(&public)]);
    assert_eq!(verified["signer"], hint.as_str());
    cli_ok(
        &server,
        &[
            "deploy",
            "theirs",
            "--copies",
            "here=1",
            "--wait",
            "--timeout",
            "300s",
        ],
    );

    // A file changed after signing: mycel verify names it, the agent refuses it and
    // the rollout goes back to the signed version.
    write_tree(&theirs, &[("model.py", b"import os\nos.system('true')\n")]);
    assert_eq!(server.cli_json(&["push", s(&theirs)])["seq"], 2);
    let refused = cli_err(&server, &["verify", "theirs@2", "--key", s(&public)]);
    assert!(refused.contains("changed: model.py"), "{refused}");
    let failed = cli_err(
        &server,
        &["deploy", "theirs@2", "--copies", "here=1", "--wait"],
    );
    assert!(failed.contains("rolled back"), "{failed}");
    let rollout = ended_rollout(&server, "theirs", 2);
    assert_eq!(rollout["outcome"], "rolled-back");
    let reason = rollout["reason"].as_str().unwrap();
    assert!(
        reason.contains("signature check failed") && reason.contains("changed: model.py"),
        "{reason}"
    );
    assert_eq!(ended_rollout(&server, "theirs", 3)["outcome"], "complete");

    // Signed, but by a key this node does not trust.
    write_tree(&ours, &[("util/helpers.py", b"X = 2\n")]);
    assert_eq!(
        server.cli_json(&["push", s(&ours), "--sign", s(&other_key)])["seq"],
        2
    );
    cli_err(
        &server,
        &["deploy", "ours@2", "--copies", "here=1", "--wait"],
    );
    let reason = ended_rollout(&server, "ours", 2)["reason"].clone();
    assert!(reason.as_str().unwrap().contains("unknown key"), "{reason}");

    // Unsigned: the agent refuses it; a deployment that requires signatures refuses it
    // before any node sees it.
    write_tree(&ours, &[("util/helpers.py", b"X = 3\n")]);
    assert_eq!(server.cli_json(&["push", s(&ours)])["seq"], 3);
    let show = cli_ok(&server, &["show", "ours@3"]);
    assert!(show.contains("signed by   unsigned"), "{show}");
    let refused = cli_err(
        &server,
        &["deploy", "ours@3", "--copies", "here=1", "--require-signed"],
    );
    assert!(
        refused.contains("only signed versions") && refused.contains("unsigned"),
        "{refused}"
    );
    // The refusal changed nothing; without the requirement the agent says no itself.
    cli_err(
        &server,
        &["deploy", "ours@3", "--copies", "here=1", "--wait"],
    );
    // Rollouts of ours: 1 deploy, 2 other key, 3 back to @1, 4 unsigned, 5 back.
    let rollout = ended_rollout(&server, "ours", 4);
    assert!(
        rollout["reason"].as_str().unwrap().contains("unsigned"),
        "{rollout}"
    );
    // Still serving the version it started with, and ready.
    eventually("ours@1 ready again", READY_PATIENCE, || {
        let status = status(&server);
        let replicas = support::replicas(&status, "ours");
        let deployment = status["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["deployment"]["name"] == "ours")?
            .clone();
        (deployment["deployment"]["seq"] == 1 && replicas.iter().all(|r| r.2 == "ready"))
            .then_some(())
    });
    drop(agent);
}
