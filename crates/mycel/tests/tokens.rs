//! Operators' tokens end to end: a real control plane, the CLI with tokens of each
//! role and scope, refusals that say why, expiry, revocation, and the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::{component, TestServer};

/// `mycel ARGS --token TOKEN`.
fn as_token(server: &TestServer, token: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--token", token]);
    server.cli(&all)
}

fn refused(out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a refusal ({why}), got success"
    );
    assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create(server: &TestServer, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let created = server.cli_json(&all);
    created["token"].as_str().unwrap().to_owned()
}

#[test]
fn tokens_are_held_to_their_role_scope_and_time_and_every_change_is_audited() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let echo = work.path().join("echo");
    let other = work.path().join("other");
    component(&echo, "echo");
    component(&other, "other");

    // A viewer reads, and is told why it may not change anything.
    let viewer = create(&server, &["--role", "viewer", "--name", "watcher"]);
    ok(&as_token(&server, &viewer, &["status"]));
    refused(
        &as_token(&server, &viewer, &["push", echo.to_str().unwrap()]),
        "token \"watcher\" is a viewer; this needs a deployer token",
    );

    // A deployer for echo in "here" pushes and deploys echo there, and nothing else.
    let deployer = create(
        &server,
        &[
            "--role",
            "deployer",
            "--name",
            "ci",
            "--component",
            "echo",
            "--location",
            "here",
        ],
    );
    ok(&as_token(
        &server,
        &deployer,
        &["push", echo.to_str().unwrap()],
    ));
    ok(&as_token(
        &server,
        &deployer,
        &["deploy", "echo", "--copies", "here=1"],
    ));
    refused(
        &as_token(
            &server,
            &deployer,
            &["deploy", "echo", "--copies", "there=1"],
        ),
        "token \"ci\" may deploy only to here; not to \"there\"",
    );
    refused(
        &as_token(&server, &deployer, &["push", other.to_str().unwrap()]),
        "token \"ci\" may touch only component echo; not \"other\"",
    );
    refused(
        &as_token(&server, &deployer, &["token", "create", "--role", "admin"]),
        "token \"ci\" is a deployer; this needs an admin token",
    );

    // Expiry and revocation take effect at once.
    let brief = create(&server, &["--role", "viewer", "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    refused(&as_token(&server, &brief, &["status"]), "has expired");
    ok(&server.cli(&["token", "revoke", "watcher"]));
    refused(&as_token(&server, &viewer, &["status"]), "unknown token");

    // The list shows grants, never secrets.
    let list = server.cli_json(&["token", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ci") && !names.contains(&"watcher"),
        "{list}"
    );
    assert!(!list.to_string().contains(&deployer), "a secret in {list}");
    assert_eq!(list[0]["created_by"], "admin");

    // Who did what, refusals included, from where.
    let audit = server.cli_json(&["audit"]);
    let entries = audit.as_array().unwrap();
    let find = |who: &str, what: &str, status: u64| -> &Value {
        entries
            .iter()
            .find(|e| e["who"] == who && e["what"] == what && e["status"] == status)
            .unwrap_or_else(|| panic!("no {who} {what} {status} in {audit:#}"))
    };
    find("admin", "POST /v1/tokens", 200);
    let deployed = find("ci", "PUT /v1/deployments/echo", 200);
    assert_eq!(deployed["from"], "127.0.0.1");
    find("ci", "PUT /v1/deployments/echo", 403);
    find("watcher", "POST /v1/blobs/missing", 403);
    find("admin", "DELETE /v1/tokens/watcher", 200);
    // Reads are not changes.
    assert!(
        entries
            .iter()
            .all(|e| !e["what"].as_str().unwrap().starts_with("GET")),
        "{audit:#}"
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The log outlives a restart.
    server.stop();
    let server = TestServer::start(data.path());
    let after = server.cli_json(&["audit", "--last", "1000"]);
    assert!(
        after.as_array().unwrap().len() >= entries.len(),
        "{after:#}"
    );
    refused(&as_token(&server, &brief, &["status"]), "has expired");
}
