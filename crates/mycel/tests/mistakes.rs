//! The mistakes a newcomer makes first, each answered with what is wrong and the command
//! that fixes it, asserted through the real binary. (uv missing and a port in use are
//! found by `mycel doctor` and `mycel up`: tests/doctor.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{free_port, mycel_bin, TestServer};

/// `mycel ARGS` with only `env` to find a server by (no data directory to fall back on).
fn mycel(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(mycel_bin())
        .args(args)
        .env("MYCEL_DATA", data)
        .env_remove("MYCEL_SERVER")
        .env_remove("MYCEL_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The command failed, and its error output says each of `says`.
fn fails_saying(out: &Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    for words in says {
        assert!(stderr.contains(words), "{words:?} not in:\n{stderr}");
    }
}

/// `mycel init NAME` in `root`, then `edit` applied to its manifest.
fn init(server: &TestServer, root: &Path, name: &str, edit: impl Fn(String) -> String) -> String {
    let dir = root.join(name);
    let out = server.cli(&["init", name, "--dir", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = dir.join("mycel.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(text)).unwrap();
    dir.to_str().unwrap().to_owned()
}

#[test]
fn no_server_running_says_how_to_start_one() {
    let data = tempfile::tempdir().unwrap();
    // Nothing says where a server is.
    let out = mycel(data.path(), &[], &["components"]);
    fails_saying(&out, &["no server to talk to", "`mycel up` runs one"]);
    // A server named, but not running.
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = mycel(data.path(), &[("MYCEL_SERVER", &url)], &["components"]);
    fails_saying(
        &out,
        &[
            &format!("cannot reach the mycel server at {url}"),
            "hint: is the server running? `mycel up` runs one",
        ],
    );
    // Each cause once, not quoted again by the next.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("error sending request").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_wrong_token_says_where_the_admin_token_is() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let out = mycel(
        elsewhere.path(),
        &[
            ("MYCEL_SERVER", &server.url),
            ("MYCEL_TOKEN", "not-the-token"),
        ],
        &["components"],
    );
    fails_saying(
        &out,
        &[
            "unknown token",
            "hint: the admin token is in admin.token",
            "MYCEL_TOKEN",
        ],
    );
}

#[test]
fn pushing_a_directory_without_a_manifest_says_mycel_init() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = mycel(
        data.path(),
        &[("MYCEL_SERVER", &url), ("MYCEL_TOKEN", "t")],
        &["push", data.path().to_str().unwrap()],
    );
    fails_saying(
        &out,
        &[
            "has no mycel.toml, so it is not a component",
            "`mycel init NAME`",
        ],
    );
}

#[test]
fn deploying_or_predicting_a_name_nobody_pushed_offers_the_one_meant() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let hello = init(&server, data.path(), "hello", |m| m);
    assert!(server.cli(&["push", &hello]).status.success());

    let out = server.cli(&["deploy", "helo", "--copies", "local=1"]);
    fails_saying(
        &out,
        &[
            "no component \"helo\" has been pushed (did you mean \"hello\"?)",
            "pushed components: hello",
            "`mycel push DIR`",
        ],
    );
    let out = server.cli(&["deploy", "hello@9", "--copies", "local=1"]);
    fails_saying(&out, &["hello has no version 9; its versions are 1 to 1"]);

    // Nothing deployed yet: the gateway says so, and how to deploy.
    let gateway = server.gateway();
    let out = server.cli(&[
        "predict",
        "hello",
        "--gateway",
        &gateway,
        "--input",
        "input=[[1, 2, 3, 4]]",
    ]);
    fails_saying(
        &out,
        &[
            "no model \"hello\" is deployed, nor any other yet",
            "`mycel deploy hello --copies LOCATION=1`",
        ],
    );
}

#[test]
fn a_class_the_module_lacks_names_the_ones_it_defines() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::up(data.path(), "local");
    let dir = init(&server, data.path(), "typo", |m| {
        m.replace("model:Model", "model:Modle")
    });
    assert!(server.cli(&["push", &dir]).status.success());
    let out = server.cli(&["deploy", "typo", "--copies", "local=1", "--wait"]);
    fails_saying(
        &out,
        &[
            "module 'model' has no class 'Modle'",
            "it defines Model: set [component] entrypoint in mycel.toml to 'model:Model' and push again",
        ],
    );
}

#[test]
fn a_requirement_that_does_not_resolve_says_to_fix_the_manifest() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::up(data.path(), "local");
    let dir = init(&server, data.path(), "unresolved", |m| {
        m.replace("\"numpy\"", "\"numpy\", \"mycel-no-such-package-xyz\"")
    });
    assert!(server.cli(&["push", &dir]).status.success());
    let out = server.cli(&["deploy", "unresolved", "--copies", "local=1", "--wait"]);
    fails_saying(
        &out,
        &[
            "mycel-no-such-package-xyz",
            "fix: a requirement in mycel.toml's [python] requirements",
        ],
    );
}

#[test]
fn an_input_the_model_does_not_take_names_the_ones_it_does() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::up(data.path(), "local");
    let dir = init(&server, data.path(), "hello", |m| m);
    assert!(server.cli(&["push", &dir]).status.success());
    let out = server.cli(&["deploy", "hello", "--copies", "local=1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gateway = server.gateway();
    let predict = |model: &str, input: &str| {
        server.cli(&["predict", model, "--gateway", &gateway, "--input", input])
    };

    let out = predict("hello", "inp=[[1, 2, 3, 4]]");
    fails_saying(
        &out,
        &["model \"hello\" has no input \"inp\"; it takes input (FP32 [-1, 4]): `--input input=...`"],
    );
    // A model deployed under a near name: the gateway offers it.
    let out = predict("helo", "input=[[1, 2, 3, 4]]");
    fails_saying(
        &out,
        &["no model \"helo\" is deployed (did you mean \"hello\"?); deployed models: hello"],
    );
    let out = predict("hello", "input=[[1, 2, 3, 4]]");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
