//! The agent's main loop: register, heartbeat, watch assignments, start and stop
//! replicas to match them, and serve the node's data plane (statuses and logs).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mycel_core::api::Heartbeat;
use mycel_core::fleet::NodeSpec;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::env::EnvBuilder;
use crate::replica::{self, NodeContext, ReplicaHandle};
use crate::state::NodeState;
use crate::sync::BlobCache;

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct Config {
    /// The control plane's URL.
    pub server: String,
    /// Bearer token for the control plane.
    pub token: Option<String>,
    /// Node name.
    pub name: String,
    /// Node location.
    pub location: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// CPUs offered to replicas.
    pub cpus: f64,
    /// Memory offered to replicas, in bytes.
    pub memory_bytes: u64,
    /// The GPUs to offer, by index; `None`: every GPU the driver reports.
    pub gpus: Option<Vec<u32>>,
    /// Whether serving workers are forked from a warm template per environment (its
    /// framework imported once) rather than started cold.
    pub warm_start: bool,
    /// Where blobs, versions, environments and logs live.
    pub data_dir: PathBuf,
    /// Where environments are built; shared by agents on one machine.
    pub envs_dir: PathBuf,
    /// Data-plane address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data-plane URL gateways dial; by default made from `listen` (see
    /// [`crate::advertise`]).
    pub advertise: Option<String>,
    /// The `uv` binary.
    pub uv: PathBuf,
    /// The worker runtime package (the repository's `python/`).
    pub runtime_dir: PathBuf,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Largest inference request body accepted by the data plane.
    pub max_request_bytes: usize,
    /// Datasets for federated learning, by name: directories on this node that training
    /// workers see as `ctx.data_dir`.
    pub datasets: BTreeMap<String, PathBuf>,
    /// The fleet's CA certificate (PEM) when the control plane speaks TLS: the agent
    /// trusts only it, gets a certificate for its data plane, and answers only clients
    /// with a fleet certificate (gateways, the control plane).
    pub ca: Option<String>,
    /// Keys whose signatures this node trusts; with any, it runs only versions signed
    /// by one of them (see [`crate::signature`]).
    pub trust_keys: Vec<mycel_core::signing::PublicKey>,
    /// How serving workers are confined (see [`crate::sandbox`]).
    pub sandbox: crate::sandbox::Mode,
    /// Directories serving workers must not see besides the agent's data directory and
    /// its user's home (`mycel up` adds its own, which holds the control plane's).
    pub hidden: Vec<PathBuf>,
}

/// Default for [`Config::max_request_bytes`].
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 256 << 20;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Local disk or socket trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The control plane client could not be built.
    #[error(transparent)]
    Client(#[from] mycel_client::ClientError),
    /// The node's saved state.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// No URL to give the control plane for the data plane.
    #[error(transparent)]
    Advertise(#[from] crate::advertise::AdvertiseError),
    /// The data plane's certificate.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The GPUs to offer.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// The sandbox asked for.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Runs the agent until `shutdown` resolves; every worker is stopped before it returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    for dir in ["blobs", "versions", "logs"] {
        let dir = config.data_dir.join(dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    std::fs::create_dir_all(&config.envs_dir)
        .map_err(io(format!("creating {}", config.envs_dir.display())))?;
    // Whole paths from here on: the sandbox hides and shows directories by where they
    // really are, whatever the flags said (`--data ./n1`, a symlink).
    let canonical = |dir: &PathBuf| {
        dir.canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))
    };
    let data = &canonical(&config.data_dir)?;
    let envs_dir = canonical(&config.envs_dir)?;
    // Only the agent reads its data: versions, blobs, logs, credentials.
    std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io(format!("restricting {}", data.display())))?;
    let run_dir = socket_dir(data);
    std::fs::create_dir_all(&run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    let client =
        mycel_client::Client::with_ca(&config.server, config.token.clone(), config.ca.as_deref())?;
    let key = blake3::hash(data.as_os_str().as_encoded_bytes()).to_hex();
    // And a worker sees no dataset: training reads those, serving does not.
    let hidden = std::iter::once(data.clone())
        .chain(config.hidden.iter().cloned())
        .chain(config.datasets.values().cloned())
        .collect();
    let confined = crate::sandbox::Sandbox::probe(config.sandbox, &key[..12], hidden).await?;
    let node = Arc::new(NodeContext {
        client: client.clone(),
        cache: BlobCache::open(data.join("blobs")).map_err(io("opening the blob cache"))?,
        versions_dir: data.join("versions"),
        state: NodeState::open(data.join("state"))?,
        run_dir: run_dir.clone(),
        logs_dir: data.join("logs"),
        envs: EnvBuilder::new(envs_dir, config.uv.clone(), config.runtime_dir.clone()),
        statuses: Mutex::new(HashMap::new()),
        phases: Mutex::new(HashMap::new()),
        fetches: Mutex::new(HashMap::new()),
        changed: tokio::sync::Notify::new(),
        callers: Mutex::new(HashMap::new()),
        location: config.location.clone(),
        metrics: Default::default(),
        synced: Mutex::new(HashMap::new()),
        gpus: crate::gpu::Gpus::detect(config.gpus.as_deref())?,
        templates: replica::template::Templates::new(run_dir, data.join("logs"), config.warm_start),
        trust: config.trust_keys.clone(),
        sandbox: confined,
        flow: Mutex::default(),
    });

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("listening on {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the listen address"))?;
    let agent_url = crate::advertise::url(
        config.advertise.as_deref(),
        addr,
        client.server_authority(),
        config.ca.is_some(),
    )
    .await?;
    let tls = match &config.ca {
        Some(ca) => Some(
            crate::tls::data_plane(
                &client,
                &data.join("tls"),
                &config.name,
                ca,
                &agent_url,
                addr,
            )
            .await?,
        ),
        None => None,
    };
    let sandbox = crate::isolation::probe().await;
    let spec = NodeSpec {
        name: config.name.clone(),
        location: config.location.clone(),
        labels: config.labels.clone(),
        cpus: config.cpus,
        memory_bytes: config.memory_bytes,
        gpus: node.gpus.devices().len() as u32,
        gpu_devices: node.gpus.devices().to_vec(),
        agent_url,
        datasets: config.datasets.keys().cloned().collect(),
        isolation: sandbox.isolation,
        sandbox: node.sandbox.confinement(),
    };

    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let data_plane = tokio::spawn(mycel_tls::serve(
        listener,
        crate::data_plane::router(Arc::clone(&node), config.max_request_bytes),
        tls,
        mycel_tls::Limits::for_this_process(),
        stop.clone().cancelled_owned(),
    ));
    tracing::info!(node = %config.name, location = %config.location, url = %spec.agent_url, isolation = %sandbox.isolation, sandbox = %spec.sandbox, "agent starting");

    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        spec.clone(),
        Arc::clone(&node),
        config.heartbeat,
        stop.clone(),
    ));
    let training = tokio::spawn(crate::training::task_loop(
        Arc::new(crate::training::Trainer {
            node: Arc::clone(&node),
            name: config.name.clone(),
            datasets: config.datasets.clone(),
            sandbox,
        }),
        stop.clone(),
    ));
    let mut replicas = Replicas {
        running: HashMap::new(),
        draining: TaskTracker::new(),
    };
    // Static stability: serve what was assigned last, before and without asking the
    // control plane. Its first answer replaces this; unchanged replicas stay as they are.
    match node.state.assignments() {
        Ok(Some(saved)) => {
            tracing::info!(
                replicas = saved.len(),
                "starting the replicas assigned before this restart"
            );
            apply(&node, &mut replicas, saved, &stop);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "saved assignments unreadable; waiting for the control plane")
        }
    }
    watch_loop(&client, &spec, &node, &mut replicas, &stop).await;

    // Shutdown: `stop` has stopped every replica, draining ones too; wait for every
    // worker to be gone before returning.
    for (_, handle) in replicas.running.drain() {
        let _ = handle.task.await;
    }
    replicas.draining.close();
    replicas.draining.wait().await;
    let _ = training.await;
    let _ = heartbeats.await;
    let _ = data_plane.await;
    // With every worker gone, the templates they were forked from go too.
    node.templates.stop().await;
    tracing::info!(node = %config.name, "agent stopped");
    Ok(())
}

/// Unix socket paths are limited to ~108 bytes; fall back to a short temp dir when the
/// data directory is deep.
fn socket_dir(data: &std::path::Path) -> PathBuf {
    let preferred = data.join("run");
    if preferred.as_os_str().len() < 60 {
        return preferred;
    }
    let hash = blake3::hash(data.as_os_str().as_encoded_bytes()).to_hex();
    std::env::temp_dir().join(format!("mycel-{}", &hash[..12]))
}

async fn heartbeat_loop(
    client: mycel_client::Client,
    spec: NodeSpec,
    node: Arc<NodeContext>,
    period: Duration,
    stop: CancellationToken,
) {
    // While the control plane is away this fails every period: say so once.
    let mut failing = false;
    loop {
        let heartbeat = Heartbeat {
            replicas: node.snapshot(),
            gpus: node.gpus.sample(),
        };
        match client.heartbeat(&spec.name, &heartbeat).await {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("heartbeats reach the control plane again");
                }
            }
            Err(e) if e.code() == Some(mycel_core::ErrorCode::NotFound) => {
                // The control plane forgot us (new data directory): register again.
                if let Err(e) = client.register_node(&spec).await {
                    tracing::warn!(error = %e, "re-registering failed");
                }
            }
            Err(e) if failing => tracing::debug!(error = %e, "heartbeat failed"),
            Err(e) => {
                failing = true;
                tracing::warn!(error = %e, "heartbeat failed; replicas keep serving from what this node has");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = node.changed.notified() => {}
        }
    }
}

/// The replicas this agent runs, and the tasks of those draining.
struct Replicas {
    running: HashMap<String, ReplicaHandle>,
    draining: TaskTracker,
}

async fn watch_loop(
    client: &mycel_client::Client,
    spec: &NodeSpec,
    node: &Arc<NodeContext>,
    replicas: &mut Replicas,
    stop: &CancellationToken,
) {
    let mut registered = false;
    let mut generation = 0u64;
    let mut retry = Duration::from_millis(200);
    while !stop.is_cancelled() {
        if !registered {
            match tokio::select! { _ = stop.cancelled() => return, r = client.register_node(spec) => r }
            {
                Ok(_) => registered = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register with the control plane; retrying");
                    backoff(&mut retry, stop).await;
                    continue;
                }
            }
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = client.watch_assignments(&spec.name, generation, Duration::from_secs(30)) => answer,
        };
        match answer {
            Ok(answer) => {
                retry = Duration::from_millis(200);
                generation = answer.generation;
                let saved = answer.assignments.clone();
                node.state
                    .save("assignments", move |s| s.save_assignments(&saved))
                    .await;
                apply(node, replicas, answer.assignments, stop);
            }
            Err(e) => {
                // Keep serving what we run; the control plane may be restarting, and a
                // new process counts generations from the start: ask for its table at once.
                tracing::warn!(error = %e, "watching assignments failed; retrying");
                generation = 0;
                registered = e.code() != Some(mycel_core::ErrorCode::NotFound);
                backoff(&mut retry, stop).await;
            }
        }
    }
}

async fn backoff(retry: &mut Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(*retry) => {}
    }
    *retry = (*retry * 2).min(Duration::from_secs(5));
}

/// Starts replicas newly assigned and drains those no longer assigned.
fn apply(
    node: &Arc<NodeContext>,
    replicas: &mut Replicas,
    assignments: Vec<mycel_core::fleet::Assignment>,
    shutdown: &CancellationToken,
) {
    let Replicas { running, draining } = replicas;
    let wanted: HashMap<String, mycel_core::fleet::Assignment> = assignments
        .into_iter()
        .map(|a| (a.replica.clone(), a))
        .collect();
    let gone: Vec<String> = running
        .iter()
        .filter(|(id, handle)| wanted.get(*id) != Some(&handle.assignment))
        .map(|(id, _)| id.clone())
        .collect();
    for id in gone {
        if let Some(mut handle) = running.remove(&id) {
            tracing::info!(replica = %id, "draining replica");
            handle.drain.cancel();
            let node = Arc::clone(node);
            draining.spawn(async move {
                let drained = tokio::time::timeout(replica::DRAIN_TIMEOUT, &mut handle.task).await;
                if drained.is_err() {
                    tracing::warn!(replica = %id, "replica did not drain in time; stopping it");
                    handle.stop.cancel();
                    let _ = handle.task.await;
                }
                node.remove(&id, &handle.calls);
            });
        }
    }
    for (id, assignment) in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(id) {
            tracing::info!(replica = %slot.key(), version = %assignment.version.short(), "starting replica");
            slot.insert(replica::start(Arc::clone(node), assignment, shutdown));
        }
    }
}
