//! Test support: the real `mycel` binary started on 127.0.0.1 with a temporary data
//! directory, and helpers to drive it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod cluster;
pub mod netns;
pub mod proxy;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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
        Self::spawn("server", data, extra)
    }

    /// `mycel server` on a fixed port, to come back where agents and gateways look.
    pub fn start_at(data: &Path, port: u16) -> Self {
        Self::spawn_at("server", data, &format!("127.0.0.1:{port}"), &[])
    }

    /// `mycel server` listening on `listen`, with more arguments.
    pub fn start_listening(data: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::spawn_at("server", data, listen, extra)
    }

    /// `mycel up`: control plane, gateway and one agent per node in one process.
    pub fn up(data: &Path, nodes: &str) -> Self {
        Self::up_with(data, nodes, &[])
    }

    /// [`TestServer::up`] with more arguments, e.g. `--tls`.
    pub fn up_with(data: &Path, nodes: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--nodes",
            nodes,
            "--node-cpus",
            "4",
            "--node-memory",
            "8GiB",
        ];
        args.extend(extra);
        Self::spawn("up", data, &args)
    }

    /// `mycel up` as a user runs it: every node offers this machine's cores and memory.
    pub fn up_with_defaults(data: &Path, nodes: &str) -> Self {
        Self::spawn("up", data, &["--nodes", nodes])
    }

    fn spawn(command: &str, data: &Path, extra: &[&str]) -> Self {
        Self::spawn_at(command, data, "127.0.0.1:0", extra)
    }

    fn spawn_at(command: &str, data: &Path, listen: &str, extra: &[&str]) -> Self {
        let url_file = data.join("server.url");
        let _ = std::fs::remove_file(&url_file);
        let child = Command::new(mycel_bin())
            .args([
                command,
                "--listen",
                listen,
                "--gateway",
                "127.0.0.1:0",
                "--data",
            ])
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

    /// The gateway's URL, once it listens.
    pub fn gateway(&self) -> String {
        eventually("the gateway URL", Duration::from_secs(10), || {
            std::fs::read_to_string(self.data.join("gateway.url"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
    }

    /// The gateway's gRPC address (`host:port`), when started with `--grpc`.
    pub fn grpc(&self) -> String {
        eventually(
            "the gateway's gRPC address",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(self.data.join("gateway.grpc"))
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            },
        )
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn client(&self) -> mycel_client::Client {
        mycel_client::Client::with_ca(&self.url, Some(self.token()), self.ca().as_deref()).unwrap()
    }

    /// The fleet's CA certificate, PEM, where the server made one.
    pub fn ca(&self) -> Option<String> {
        std::fs::read_to_string(self.data.join("tls/ca.pem")).ok()
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
    pub fn stop(self) {
        self.signal("TERM");
    }

    /// Sends SIGNAL (e.g. "INT" for Ctrl-C) and waits for a clean exit.
    pub fn signal(mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "mycel exited with {status} on SIG{signal}"
        );
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

/// Environment builds download packages on a cold cache; allow for it.
pub const READY_PATIENCE: Duration = Duration::from_secs(300);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A `mycel agent` process, stopped on drop.
pub struct TestAgent {
    pub name: String,
    child: Option<Child>,
}

impl TestAgent {
    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(server: &TestServer, root: &Path, name: &str, location: &str) -> Self {
        Self::start_with(server, root, name, location, &[])
    }

    /// [`TestAgent::start`] with more arguments, e.g. `--dataset`. Returns once the
    /// node is registered, so what a test deploys next can be placed on it.
    pub fn start_with(
        server: &TestServer,
        root: &Path,
        name: &str,
        location: &str,
        extra: &[&str],
    ) -> Self {
        let bin = Path::new(mycel_bin());
        let agent = Self::start_from(
            bin,
            &server.url,
            &server.token(),
            root,
            name,
            location,
            extra,
        );
        let http = reqwest::blocking::Client::new();
        eventually(
            &format!("node {name} to register"),
            Duration::from_secs(60),
            || {
                let status: Value = http
                    .get(format!("{}/v1/status", server.url))
                    .bearer_auth(server.token())
                    .send()
                    .ok()?
                    .json()
                    .ok()?;
                status["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["node"]["spec"]["name"] == name)
                    .then_some(())
            },
        );
        agent
    }

    /// [`TestAgent::start_with`] for a server that may be down now.
    pub fn start_with_server(
        url: &str,
        token: &str,
        root: &Path,
        name: &str,
        location: &str,
        extra: &[&str],
    ) -> Self {
        let bin = Path::new(mycel_bin());
        Self::start_from(bin, url, token, root, name, location, extra)
    }

    /// [`TestAgent::start_with`] running the binary at `bin`, from `root`, following the
    /// servers at `url` (several comma-separated), without waiting for it to register.
    pub fn start_from(
        bin: &Path,
        url: &str,
        token: &str,
        root: &Path,
        name: &str,
        location: &str,
        extra: &[&str],
    ) -> Self {
        let data = root.join(name);
        let child = Command::new(bin)
            .current_dir(root)
            .args([
                "agent",
                "--server",
                url,
                "--name",
                name,
                "--location",
                location,
            ])
            .args([
                "--cpus",
                "4",
                "--memory",
                "8GiB",
                "--heartbeat",
                "200ms",
                "--data",
            ])
            .arg(&data)
            .arg("--envs")
            .arg(root.join("envs"))
            .args(extra)
            .env("MYCEL_TOKEN", token)
            .env("MYCEL_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            name: name.into(),
            child: Some(child),
        }
    }

    /// SIGTERM, as an operator stopping the agent; waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "agent {} exited with {status}", self.name);
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

pub fn status(server: &TestServer) -> Value {
    server.cli_json(&["status"])
}

/// Replicas of `deployment` as (replica, node, state, pid, restarts).
pub fn replicas(
    status: &Value,
    deployment: &str,
) -> Vec<(String, String, String, Option<u64>, u64)> {
    status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["assignment"]["deployment"] == deployment)
        .map(|r| {
            let s = &r["status"];
            (
                r["assignment"]["replica"].as_str().unwrap().to_owned(),
                r["assignment"]["node"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap_or("unreported").to_owned(),
                s["pid"].as_u64(),
                s["restarts"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

pub fn all_ready(status: &Value, deployment: &str, count: usize) -> bool {
    let replicas = replicas(status, deployment);
    replicas.len() == count && replicas.iter().all(|r| r.2 == "ready")
}

pub fn alive(pid: u64) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

pub fn cmdline(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Clients posting to the gateway without pause, recording every answer.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// (HTTP status, version answered or -1, body on failure), in order per client.
    answers: Arc<Mutex<Vec<(u16, i64, String)>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(gateway: &str, model: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{gateway}/v2/models/{model}/infer");
        let clients = (0..clients)
            .map(|_| {
                let (stop, answers, url) = (Arc::clone(&stop), Arc::clone(&answers), url.clone());
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    let body = json!({"inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}
                    ]});
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match http.post(&url).json(&body).send() {
                            Ok(response) => {
                                let code = response.status().as_u16();
                                let text = response.text().unwrap_or_default();
                                let version = serde_json::from_str::<Value>(&text)
                                    .ok()
                                    .and_then(|v| v["outputs"][0]["data"][0].as_i64())
                                    .unwrap_or(-1);
                                (
                                    code,
                                    version,
                                    if code == 200 { String::new() } else { text },
                                )
                            }
                            Err(e) => (0, -1, e.to_string()),
                        };
                        answers.lock().unwrap().push(answer);
                    }
                })
            })
            .collect();
        Self {
            stop,
            answers,
            clients,
        }
    }

    /// Answers so far, from `from` on.
    pub fn since(&self, from: usize) -> Vec<(u16, i64, String)> {
        self.answers.lock().unwrap()[from..].to_vec()
    }

    pub fn count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits until `n` more answers have come back than had now: what a test needs
    /// to see the traffic after an event, instead of sleeping for it.
    pub fn wait_for_more(&self, n: usize) {
        let from = self.count();
        eventually(
            &format!("{n} more answers"),
            Duration::from_secs(60),
            || (self.count() >= from + n).then_some(()),
        );
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
    }
}

pub fn assert_no_failures(answers: &[(u16, i64, String)], during: &str) {
    let failed: Vec<&(u16, i64, String)> = answers.iter().filter(|a| a.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {during}; first: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
}

/// A port free on 127.0.0.1 a moment ago, for a process that must come back on the
/// same address after a restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `mycel gateway` process on its own, killed on drop.
pub struct TestGateway {
    pub url: String,
    child: Child,
}

impl TestGateway {
    /// Follows `server` from `port`, in `location`, keeping its routes under `data`.
    pub fn start(server_url: &str, token: &str, port: u16, location: &str, data: &Path) -> Self {
        let child = Command::new(mycel_bin())
            .args(["gateway", "--server", server_url, "--location", location])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .env("MYCEL_TOKEN", token)
            .env("MYCEL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        eventually("the gateway to listen", Duration::from_secs(10), || {
            reqwest::blocking::get(format!("{url}/v2/health/live"))
                .ok()
                .filter(|r| r.status().is_success())
        });
        Self { url, child }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `requests` inferences of the `noop` model (one `x` FP32 [1, 4] tensor) from
/// `clients` threads without pause through `gateway`, after a tenth as warmup, each
/// thread on one keep-alive connection of a client `http` makes: requests per second
/// and the p50 and p99 latencies in ms. Benchmarks only.
#[allow(dead_code)]
pub fn closed_loop(
    gateway: &str,
    http: impl Fn() -> reqwest::blocking::Client,
    clients: usize,
    requests: usize,
) -> (f64, f64, f64) {
    let url = format!("{gateway}/v2/models/noop/infer");
    let body = serde_json::json!({"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
    ]})
    .to_string();
    let run = |count: usize| {
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (url, body, http) = (url.clone(), body.clone(), http());
                std::thread::spawn(move || {
                    let mut latencies = Vec::with_capacity(count / clients);
                    for _ in 0..count / clients {
                        let sent = std::time::Instant::now();
                        let response = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .unwrap();
                        assert!(response.status().is_success());
                        response.bytes().unwrap();
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies: Vec<f64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let wall = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        (latencies.len() as f64 / wall, at(0.5), at(0.99))
    };
    run(requests / 10);
    run(requests)
}
