//! What a rollout says while it waits: the slowest replica, what it is doing and for how
//! long, through `deploy --wait` and the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::TestServer;

#[test]
fn deploy_wait_says_what_the_slowest_replica_is_doing() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::up(data.path(), "local");
    let dir = data.path().join("slow");
    let out = server.cli(&["init", "slow", "--dir", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A model that takes a while to load, as big ones do.
    let model = std::fs::read_to_string(dir.join("model.py")).unwrap();
    let model = model.replace(
        "        rng = np.random.default_rng(0)",
        "        import time\n        time.sleep(5)\n        rng = np.random.default_rng(0)",
    );
    std::fs::write(dir.join("model.py"), model).unwrap();
    assert!(server
        .cli(&["push", dir.to_str().unwrap()])
        .status
        .success());

    let out = server.cli(&["deploy", "slow", "--copies", "local=1", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let loading: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains(
                "slowest: slow-local-0 on local, loading the model (import and __init__) for ",
            )
        })
        .collect();
    // Five seconds of loading are not one silent wait: it says so as it goes.
    assert!(loading.len() >= 2, "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("1/1 replicas ready"),
        "{stderr}"
    );
}
