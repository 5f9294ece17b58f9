//! A whole fleet in the test's own process: the control plane, a gateway and one agent
//! per node, run as the libraries `mycel up` runs, on 127.0.0.1 with ports the system
//! picks. Its clock is the test's to move forward, so what waits on time (a node's
//! silence, a join token's expiry, a rollout's deadline) happens when the test says,
//! not after a sleep. Workers are real Python processes.
//!
//! ```ignore
//! let cluster = Cluster::builder().node("tokyo-1", "tokyo").build().await;
//! cluster.clock.advance(Duration::from_secs(60));
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a node may be silent before it is lost, unless a test says otherwise: long,
/// so that only a test moving the clock makes a node lost, never a slow machine.
const LOST_AFTER: Duration = Duration::from_secs(120);

/// How often agents heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(200);

pub struct ClusterBuilder {
    nodes: Vec<(String, String)>,
    lost_after: Duration,
    cpus: f64,
}

impl ClusterBuilder {
    /// A node named `name` in `location`.
    pub fn node(mut self, name: &str, location: &str) -> Self {
        self.nodes.push((name.to_owned(), location.to_owned()));
        self
    }

    /// One node per location, named after it (as `mycel up --nodes` does).
    pub fn nodes<'a>(mut self, locations: impl IntoIterator<Item = &'a str>) -> Self {
        for location in locations {
            self = self.node(location, location);
        }
        self
    }

    /// CPUs each node offers.
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.cpus = cpus;
        self
    }

    /// Starts everything and returns once every node is registered.
    pub async fn build(self) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let clock = mycel_control::Clock::system();
        let stop = CancellationToken::new();
        let config = mycel_control::Config {
            data_dir: dir.path().join("server"),
            listen: "127.0.0.1:0".parse().unwrap(),
            max_blob_bytes: mycel_control::DEFAULT_MAX_BLOB_BYTES,
            lost_after: self.lost_after,
            tls: false,
            tls_names: Vec::new(),
            clock: clock.clone(),
            require_signed: false,
        };
        let url_file = config.data_dir.join(mycel_control::URL_FILE);
        let control = tokio::spawn(mycel_control::run(config, stop.clone().cancelled_owned()));
        let server = wait_for_line(&url_file).await;
        let token = std::fs::read_to_string(
            dir.path()
                .join("server")
                .join(mycel_control::auth::ADMIN_TOKEN_FILE),
        )
        .unwrap()
        .trim()
        .to_owned();

        let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        let gateway_config = mycel_gateway::Config {
            server: server.clone(),
            token: Some(token.clone()),
            listen: "127.0.0.1:0".parse().unwrap(),
            grpc: None,
            location: None,
            max_request_bytes: 64 << 20,
            routes_file: None,
            request_timeout: mycel_gateway::DEFAULT_REQUEST_TIMEOUT,
            require_token: false,
            limits: mycel_tls::Limits::default(),
            tls: None,
            advertise: None,
        };
        let gateway_task = tokio::spawn(mycel_gateway::run(
            gateway_config,
            stop.clone().cancelled_owned(),
            move |addr| {
                let _ = tx.send(addr.http);
            },
        ));
        let gateway = format!("http://{}", rx.await.unwrap());

        let mut cluster = Cluster {
            server,
            token,
            gateway,
            clock,
            stop,
            control,
            gateway_task,
            agents: BTreeMap::new(),
            cpus: self.cpus,
            lost_after: self.lost_after,
            dir,
        };
        for (name, location) in &self.nodes {
            cluster.start_node(name, location).await;
        }
        cluster
    }
}

/// A running fleet; dropping it stops everything (`shutdown` waits for it).
pub struct Cluster {
    pub server: String,
    pub token: String,
    /// The gateway's base URL.
    pub gateway: String,
    /// The control plane's clock: `advance` it to make time pass.
    pub clock: mycel_control::Clock,
    stop: CancellationToken,
    control: JoinHandle<Result<(), mycel_control::Error>>,
    gateway_task: JoinHandle<Result<(), mycel_gateway::GatewayError>>,
    agents: BTreeMap<
        String,
        (
            CancellationToken,
            JoinHandle<Result<(), mycel_agent::AgentError>>,
        ),
    >,
    cpus: f64,
    lost_after: Duration,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: Vec::new(),
            lost_after: LOST_AFTER,
            cpus: 4.0,
        }
    }

    /// Lets `by` pass for the control plane while every running node keeps
    /// heartbeating: the clock moves in steps shorter than `--lost-after`, each followed
    /// by a few heartbeats. What is due by then (a deadline, an expiry) happens; nothing
    /// that is alive is lost.
    pub async fn pass(&self, by: Duration) {
        let step = self.lost_after / 2;
        let mut left = by;
        while !left.is_zero() {
            let now = left.min(step);
            self.clock.advance(now);
            left -= now;
            tokio::time::sleep(HEARTBEAT * 3).await;
        }
    }

    /// A client with the admin token.
    pub fn client(&self) -> mycel_client::Client {
        mycel_client::Client::new(&self.server, Some(self.token.clone())).unwrap()
    }

    /// Starts an agent for node `name` in `location` and waits until it is registered.
    pub async fn start_node(&mut self, name: &str, location: &str) {
        let data: PathBuf = self.dir.path().join("nodes").join(name);
        let config = mycel_agent::Config {
            server: self.server.clone(),
            token: Some(self.token.clone()),
            name: name.to_owned(),
            location: location.to_owned(),
            labels: BTreeMap::new(),
            cpus: self.cpus,
            memory_bytes: 8 << 30,
            gpus: Some(Vec::new()),
            warm_start: true,
            envs_dir: self.dir.path().join("envs"),
            data_dir: data,
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            uv: PathBuf::from("uv"),
            runtime_dir: super::repo_root().join("python"),
            heartbeat: HEARTBEAT,
            max_request_bytes: mycel_agent::DEFAULT_MAX_REQUEST_BYTES,
            datasets: BTreeMap::new(),
            ca: None,
            trust_keys: Vec::new(),
            sandbox: mycel_agent::sandbox::Mode::Auto,
            hidden: vec![self.dir.path().to_path_buf()],
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(mycel_agent::run(config, stop.clone().cancelled_owned()));
        self.agents.insert(name.to_owned(), (stop, task));
        let client = self.client();
        self.eventually(
            &format!("node {name} to register"),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let status = client.status().await.ok()?;
                    status
                        .nodes
                        .iter()
                        .any(|n| n.node.spec.name == name)
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Stops node `name`'s agent (its workers with it), as a machine switched off.
    pub async fn stop_node(&mut self, name: &str) {
        let (stop, task) = self.agents.remove(name).unwrap();
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    /// Retries `check` until it returns `Some` or `patience` runs out.
    pub async fn eventually<T, F, Fut>(&self, what: &str, patience: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every agent, then the gateway and the control plane, and waits for them.
    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for name in names {
            self.stop_node(&name).await;
        }
        self.stop.cancel();
        (&mut self.gateway_task).await.unwrap().unwrap();
        (&mut self.control).await.unwrap().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (stop, _) in self.agents.values() {
            stop.cancel();
        }
        self.stop.cancel();
    }
}

async fn wait_for_line(path: &std::path::Path) -> String {
    for _ in 0..1500 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} did not appear", path.display())
}
