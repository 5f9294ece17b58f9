//! `mycel doctor`, and `mycel up` and `mycel agent` refusing to start, with the same
//! words, where they would fail later: no uv, a port in use, a wrong token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};

use support::{mycel_bin, TestServer};

fn mycel(args: &[&str]) -> Output {
    Command::new(mycel_bin())
        .args(args)
        .env_remove("MYCEL_SERVER")
        .env_remove("MYCEL_TOKEN")
        .env("MYCEL_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn without_uv_doctor_up_and_agent_say_how_to_get_it() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    let quiet = ["--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"];
    let no_uv = ["--uv", "/nonexistent/uv", "--data", data];

    let out = mycel(&[&["doctor"][..], &quiet, &no_uv].concat());
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("FAIL  uv"), "{said}");
    assert!(said.contains("/nonexistent/uv not found"), "{said}");
    assert!(said.contains("fix: install it (`pip install uv`"), "{said}");
    // What works is said too.
    assert!(said.contains("ok    disk"), "{said}");

    let out = mycel(&[&["up"][..], &quiet, &no_uv].concat());
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("mycel up cannot start here (1 problem"),
        "{said}"
    );
    assert!(said.contains("fix: install it (`pip install uv`"), "{said}");
    // It stopped before starting anything.
    assert!(!std::path::Path::new(data).join("server.url").exists());

    let out = mycel(&[
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--name",
        "n",
        "--location",
        "l",
        "--uv",
        "/nonexistent/uv",
        "--data",
        data,
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("mycel agent cannot start here"), "{said}");
    assert!(said.contains("/nonexistent/uv not found"), "{said}");
}

#[test]
fn a_port_in_use_is_found_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = mycel(&[
        "up",
        "--listen",
        &addr,
        "--gateway",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("{addr} (--listen) is in use")),
        "{said}"
    );
    assert!(
        said.contains("or pass --listen with another port"),
        "{said}"
    );
}

#[test]
fn doctor_checks_the_server_and_the_token() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let path = data.path().to_str().unwrap();
    let args = [
        "doctor",
        "--data",
        path,
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        "127.0.0.1:0",
    ];

    let out = mycel(&args);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "{} answers, and the token is accepted",
            server.url
        )),
        "{said}"
    );

    let out = mycel(&[&args[..], &["--token", "not-the-token"]].concat());
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refuses the token"), "{said}");
    assert!(said.contains("admin.token"), "{said}");

    let out = mycel(&[&args[..], &["--json"]].concat());
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for check in ["uv", "python", "disk", "isolation", "server"] {
        assert!(checks.contains(&check), "{checks:?}");
    }
}
