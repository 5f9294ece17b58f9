//! Test support: the real `mycel` binary started on 127.0.0.1 with a temporary data
//! directory, and helpers to drive it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn mycel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mycel")
}

/// Retries `check` until it returns `Some` or `patience` runs out.
pub fn eventually<T>(what: &str, patience: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `mycel server` process, killed on drop.
pub struct TestServer {
    pub data: PathBuf,
    pub url: String,
    child: Child,
}

impl TestServer {
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        let url_file = data.join("server.url");
        let _ = std::fs::remove_file(&url_file);
        let child = Command::new(mycel_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("MYCEL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Self {
            data: data.to_path_buf(),
            url: String::new(),
            child,
        };
        server.url = eventually(
            "the server to write its URL",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("mycel server exited early: {status}");
                }
                std::fs::read_to_string(&url_file)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            },
        );
        server
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn client(&self) -> mycel_client::Client {
        mycel_client::Client::new(&self.url, Some(self.token())).unwrap()
    }

    /// Runs `mycel ARGS` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(mycel_bin())
            .args(args)
            .env("MYCEL_DATA", &self.data)
            .env_remove("MYCEL_SERVER")
            .env_remove("MYCEL_TOKEN")
            .output()
            .unwrap()
    }

    /// Runs `mycel ARGS --json`, asserts success and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "mycel {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Stops the server with SIGTERM and waits for it, as an operator would.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status} on SIGTERM");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `files` (path, content) under `root`, creating directories.
pub fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// A small valid component named `name`.
pub fn component(root: &Path, name: &str) {
    let manifest = format!(
        "[component]\nname = \"{name}\"\nentrypoint = \"model:Model\"\n\n[python]\nrequirements = [\"numpy\"]\n\n[weights]\nfiles = [\"weights/w.bin\"]\n"
    );
    write_tree(
        root,
        &[
            ("mycel.toml", manifest.as_bytes()),
            (
                "model.py",
                b"class Model:\n    def __init__(self, ctx):\n        pass\n",
            ),
            ("weights/w.bin", &[7u8; 4096]),
            ("util/helpers.py", b"X = 1\n"),
        ],
    );
}
