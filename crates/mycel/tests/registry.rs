//! End-to-end tests of the registry: the real `mycel` binary as server and CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mycel_core::{BlobHash, ErrorCode};
use serde_json::{json, Value};
use support::{component, write_tree, TestServer};

fn blob_count(data: &std::path::Path) -> usize {
    walk_files(&data.join("blobs"))
        .into_iter()
        .filter(|p| !p.starts_with(data.join("blobs/tmp")))
        .count()
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn push_reuses_blobs_and_ships_only_changed_files() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    component(src.path(), "demo");
    let server = TestServer::start(data.path());
    let dir = src.path().to_str().unwrap();

    let first = server.cli_json(&["push", dir]);
    assert_eq!(first["created"], true);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["files"], 4);
    assert_eq!(first["bytes_sent"], first["total_bytes"]);
    assert_eq!(blob_count(data.path()), 4);

    let again = server.cli_json(&["push", dir]);
    assert_eq!(again["created"], false);
    assert_eq!(again["seq"], 1);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["bytes_sent"], 0);
    assert_eq!(again["blobs_sent"], 0);

    let model = b"class Model:\n    def __init__(self, ctx):\n        self.v = 2\n";
    write_tree(src.path(), &[("model.py", model)]);
    let changed = server.cli_json(&["push", dir]);
    assert_eq!(changed["created"], true);
    assert_eq!(changed["seq"], 2);
    assert_ne!(changed["id"], first["id"]);
    assert_eq!(changed["blobs_sent"], 1);
    assert_eq!(changed["bytes_sent"], model.len());
    assert_eq!(blob_count(data.path()), 5);

    let versions = server.cli_json(&["versions", "demo"]);
    let seqs: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(versions[0]["pushed_by"], "admin");

    let shown = server.cli_json(&["show", "demo@2"]);
    let paths: Vec<&str> = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["model.py", "mycel.toml", "util/helpers.py", "weights/w.bin"]
    );
    assert_eq!(shown["files"][0]["size"], model.len());
    assert_eq!(shown["files"][0]["hash"], BlobHash::of(model).to_hex());

    let components = server.cli_json(&["components"]);
    assert_eq!(components[0]["name"], "demo");
    assert_eq!(components[0]["versions"], 2);
}

#[tokio::test]
async fn wrong_hash_is_rejected_and_nothing_kept() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let client = server.client();
    let claimed = BlobHash::of(b"the real content");
    let err = client
        .put_blob(claimed, bytes::Bytes::from_static(b"something else"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::HashMismatch), "{err}");
    assert!(err.to_string().contains(&claimed.to_hex()), "{err}");
    assert_eq!(
        client.missing_blobs(vec![claimed]).await.unwrap(),
        vec![claimed]
    );
    assert_eq!(blob_count(data.path()), 0);
    assert!(walk_files(&data.path().join("blobs/tmp")).is_empty());

    let ok = client
        .put_blob(claimed, bytes::Bytes::from_static(b"the real content"))
        .await
        .unwrap();
    assert!(ok.created);
    assert_eq!(
        client.get_blob(claimed).await.unwrap().as_ref(),
        b"the real content"
    );
}

/// Sends a raw JSON file list, bypassing the client's own type checks.
async fn raw_create(server: &TestServer, name: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/components/{name}/versions", server.url))
        .bearer_auth(server.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn traversal_absolute_and_unknown_blob_paths_are_rejected() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let client = server.client();
    let manifest = b"[component]\nname = \"x\"\nentrypoint = \"model:M\"\n";
    let hash = BlobHash::of(manifest);
    client
        .put_blob(hash, bytes::Bytes::from_static(manifest))
        .await
        .unwrap();

    for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b", "a\\..\\b"] {
        let body = json!({"files": [{"path": bad, "hash": hash, "size": manifest.len()}]});
        let (status, answer) = raw_create(&server, "x", body).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid path"),
            "{answer}"
        );
    }

    let unknown = BlobHash::of(b"never uploaded");
    let body = json!({"files": [
        {"path": "mycel.toml", "hash": hash, "size": manifest.len()},
        {"path": "model.py", "hash": unknown, "size": 3},
    ]});
    let (status, answer) = raw_create(&server, "x", body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "missing_blobs");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&unknown.short()),
        "{answer}"
    );

    let (status, answer) = raw_create(&server, "x", json!({"files": "nope"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("files"),
        "{answer}"
    );
    assert!(client.components().await.unwrap().is_empty());
}

#[tokio::test]
async fn malformed_manifest_sent_to_the_api_is_rejected() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let client = server.client();
    let model = b"class M: pass\n";
    client
        .put_blob(BlobHash::of(model), bytes::Bytes::from_static(model))
        .await
        .unwrap();

    for (manifest, expected) in [
        (&b"[component]\nname = \"x\"\nentrypoint = \"model:M\"\ncolour = 1\n"[..], "unknown key `colour`"),
        (b"[component]\nname = \"x\"\nentrypoint = \"missing:M\"\n", "module \"missing\" not found"),
        (b"[component]\nname = \"y\"\nentrypoint = \"model:M\"\n", "pushed to \"x\""),
        (b"[component]\nname = \"x\"\nentrypoint = \"model:M\"\n[weights]\nfiles = [\"w.bin\"]\n", "[weights].files"),
    ] {
        let hash = BlobHash::of(manifest);
        client.put_blob(hash, bytes::Bytes::copy_from_slice(manifest)).await.unwrap();
        let body = json!({"files": [
            {"path": "mycel.toml", "hash": hash, "size": manifest.len()},
            {"path": "model.py", "hash": BlobHash::of(model), "size": model.len()},
        ]});
        let (status, answer) = raw_create(&server, "x", body).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_manifest");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected) && message.contains("mycel.toml"), "{message}");
    }
    assert!(client.components().await.unwrap().is_empty());
}

#[tokio::test]
async fn calls_without_a_valid_token_are_rejected() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let content = bytes::Bytes::from_static(b"payload");
    let hash = BlobHash::of(&content);

    for token in [None, Some("mycel_wrong".to_owned())] {
        let client = mycel_client::Client::new(&server.url, token).unwrap();
        let err = client.put_blob(hash, content.clone()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let err = client.components().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    }
    let raw = reqwest::Client::new()
        .put(format!("{}/v1/blobs/{hash}", server.url))
        .header("authorization", "Basic abc")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    assert_eq!(blob_count(data.path()), 0);

    // Health is the one open endpoint.
    let health = mycel_client::Client::new(&server.url, None)
        .unwrap()
        .health()
        .await
        .unwrap();
    assert_eq!(health.status, "ok");

    let token = std::fs::metadata(data.path().join("admin.token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(token.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn oversized_blob_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(data.path(), &["--max-blob-size", "1KiB"]);
    let client = server.client();
    let big = bytes::Bytes::from(vec![1u8; 2048]);
    let err = client
        .put_blob(BlobHash::of(&big), big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PayloadTooLarge), "{err}");
    assert!(err.to_string().contains("1024"), "{err}");
    let small = bytes::Bytes::from(vec![1u8; 1024]);
    client.put_blob(BlobHash::of(&small), small).await.unwrap();
    assert_eq!(blob_count(data.path()), 1);
}

#[test]
fn restart_keeps_every_version_token_and_blob() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    component(src.path(), "keep");
    let dir = src.path().to_str().unwrap();
    let server = TestServer::start(data.path());
    let token = server.token();
    server.cli_json(&["push", dir]);
    write_tree(
        src.path(),
        &[("model.py", b"# v2\nclass Model:\n    pass\n")],
    );
    server.cli_json(&["push", dir]);
    let before = server.cli_json(&["show", "keep@2"]);
    server.stop();

    let server = TestServer::start(data.path());
    assert_eq!(server.token(), token);
    let versions = server.cli_json(&["versions", "keep"]);
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(server.cli_json(&["show", "keep@2"]), before);
    let again = server.cli_json(&["push", dir]);
    assert_eq!(again["created"], false);
    assert_eq!(again["seq"], 2);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = server.client();
    for file in before["files"].as_array().unwrap() {
        let hash: BlobHash = file["hash"].as_str().unwrap().parse().unwrap();
        let bytes = rt.block_on(client.get_blob(hash)).unwrap();
        assert_eq!(BlobHash::of(&bytes), hash);
    }
}

#[test]
fn cli_errors_name_the_problem() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());

    let src = tempfile::tempdir().unwrap();
    component(src.path(), "bad");
    write_tree(src.path(), &[("mycel.toml", b"[component]\nname = \"bad\"\nentrypoint = \"model:Model\"\n[weights]\nfiles = [\"nope.bin\"]\n")]);
    let out = server.cli(&["push", src.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("[weights].files") && stderr.contains("nope.bin"),
        "{stderr}"
    );

    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "x").unwrap();
    let src = tempfile::tempdir().unwrap();
    component(src.path(), "leaky");
    std::os::unix::fs::symlink(outside.path().join("secret"), src.path().join("secret")).unwrap();
    let out = server.cli(&["push", src.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("points outside the component"), "{stderr}");

    let out = server.cli(&["show", "nothing@1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no component \"nothing\" has been pushed; pushed components: none yet"),
        "{stderr}"
    );
    let out = server.cli(&["show", "x@../../v1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a version"));
    assert!(server
        .cli_json(&["components"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn init_scaffolds_a_component_that_pushes() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path());
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("hello");
    let out = server.cli(&["init", "hello", "--dir", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = server.cli_json(&["push", dir.to_str().unwrap()]);
    assert_eq!(pushed["component"], "hello");
    let out = server.cli(&["init", "hello", "--dir", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let out = server.cli(&["init", "Bad_Name"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid name"));
}
