//! One replica's life on this node: sync its version, build its environment, start its
//! worker, serve requests, and restart the worker with backoff when it dies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mycel_core::fleet::{Assignment, ReplicaState, ReplicaStatus};
use mycel_core::manifest::MANIFEST_FILE;
use mycel_core::Manifest;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::env::{EnvBuilder, EnvSpec};
use crate::sync::{materialize, sync_version, BlobCache};
use crate::worker::{Tensor, WorkerConn, WorkerError};

/// How long a worker may take to import and construct the model.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Restart backoff: first delay, doubled per consecutive failure, capped.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that served this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Largest worker answer accepted.
const MAX_BODY: u64 = 4 << 30;

/// What every replica on this node shares.
pub struct NodeContext {
    /// The control plane.
    pub client: mycel_client::Client,
    /// The local blob cache.
    pub cache: BlobCache,
    /// Where versions are materialized.
    pub versions_dir: PathBuf,
    /// Where worker sockets live (kept short: Unix socket paths are limited).
    pub run_dir: PathBuf,
    /// Where each replica's stdout and stderr go.
    pub logs_dir: PathBuf,
    /// Builds and caches environments.
    pub envs: EnvBuilder,
    /// Replica statuses, reported with every heartbeat.
    pub statuses: Mutex<HashMap<String, ReplicaStatus>>,
}

impl NodeContext {
    fn set(&self, replica: &str, state: ReplicaState, pid: Option<u32>, restarts: u32) {
        let status = ReplicaStatus {
            replica: replica.to_owned(),
            state,
            pid,
            restarts,
        };
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses.insert(replica.to_owned(), status);
    }

    /// Forgets a stopped replica.
    pub fn remove(&self, replica: &str) {
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses.remove(replica);
    }

    /// Every replica's status.
    pub fn snapshot(&self) -> Vec<ReplicaStatus> {
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<ReplicaStatus> = statuses.values().cloned().collect();
        all.sort_by(|a, b| a.replica.cmp(&b.replica));
        all
    }

    /// The log file of a replica.
    pub fn log_path(&self, replica: &str) -> PathBuf {
        self.logs_dir.join(format!("{replica}.log"))
    }
}

/// A request for a replica's worker.
pub struct Call {
    /// Method, e.g. `predict`.
    pub method: String,
    /// Input tensors.
    pub tensors: Vec<Tensor>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Vec<Tensor>, WorkerError>>,
}

/// A running replica as the agent holds it.
pub struct ReplicaHandle {
    /// What the control plane assigned.
    pub assignment: Assignment,
    /// Requests for its worker.
    pub calls: mpsc::Sender<Call>,
    /// Cancelling stops the replica and its worker.
    pub stop: CancellationToken,
    /// The replica's task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a replica's task.
pub fn start(node: Arc<NodeContext>, assignment: Assignment) -> ReplicaHandle {
    let (calls, calls_rx) = mpsc::channel(256);
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        Arc::clone(&node),
        assignment.clone(),
        calls_rx,
        stop.clone(),
    ));
    ReplicaHandle {
        assignment,
        calls,
        stop,
        task,
    }
}

/// Everything a worker needs to start, prepared once per replica.
struct Prepared {
    python: PathBuf,
    version_dir: PathBuf,
    manifest: Manifest,
}

async fn prepare(node: &NodeContext, assignment: &Assignment) -> Result<Prepared, String> {
    let replica = &assignment.replica;
    node.set(replica, ReplicaState::Syncing, None, 0);
    let version = node
        .client
        .version(&assignment.component, &assignment.version.to_string())
        .await
        .map_err(|e| format!("cannot fetch version {}: {e}", assignment.version.short()))?;
    let report = sync_version(&node.client, &node.cache, &version)
        .await
        .map_err(|e| format!("sync failed: {e}"))?;
    tracing::info!(%replica, fetched = report.bytes_fetched, blobs = report.blobs_fetched, "version synced");
    let version_dir = materialize(&node.cache, &node.versions_dir, &version)
        .await
        .map_err(|e| format!("materialize failed: {e}"))?;
    let text = tokio::fs::read_to_string(version_dir.join(MANIFEST_FILE))
        .await
        .map_err(|e| format!("reading {MANIFEST_FILE}: {e}"))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;

    node.set(replica, ReplicaState::BuildingEnv, None, 0);
    let spec = EnvSpec::from_manifest(&manifest, &version_dir).map_err(|e| e.to_string())?;
    let env = node.envs.ensure(&spec).await.map_err(|e| e.to_string())?;
    tracing::info!(%replica, env = %env.key, reused = env.reused, "environment ready");
    Ok(Prepared {
        python: env.python,
        version_dir,
        manifest,
    })
}

async fn run(
    node: Arc<NodeContext>,
    assignment: Assignment,
    mut calls: mpsc::Receiver<Call>,
    stop: CancellationToken,
) {
    let replica = assignment.replica.clone();
    let prepared = tokio::select! {
        _ = stop.cancelled() => return,
        prepared = prepare(&node, &assignment) => prepared,
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(%replica, %reason, "replica failed");
            node.set(&replica, ReplicaState::Failed { reason }, None, 0);
            // Answer callers until stopped, so nobody waits on a replica that cannot start.
            drain_failed(&mut calls, &stop).await;
            return;
        }
    };

    let mut restarts = 0u32;
    let mut backoff = BACKOFF_START;
    loop {
        node.set(&replica, ReplicaState::Starting, None, restarts);
        let started = tokio::time::Instant::now();
        let outcome = serve_once(&node, &replica, &prepared, &mut calls, &stop, restarts).await;
        if stop.is_cancelled() {
            return;
        }
        let reason = match outcome {
            Ok(()) => return,
            Err(reason) => reason,
        };
        tracing::warn!(%replica, %reason, "worker stopped; restarting");
        node.set(&replica, ReplicaState::Failed { reason }, None, restarts);
        if started.elapsed() > HEALTHY_AFTER {
            backoff = BACKOFF_START;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        restarts += 1;
    }
}

async fn drain_failed(calls: &mut mpsc::Receiver<Call>, stop: &CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            call = calls.recv() => match call {
                Some(call) => {
                    let error = std::io::Error::other("replica failed to start");
                    let _ = call.reply.send(Err(WorkerError::Io(error)));
                }
                None => return,
            }
        }
    }
}

/// Starts one worker process and serves calls until it dies (Err) or the replica is
/// stopped (Ok).
async fn serve_once(
    node: &NodeContext,
    replica: &str,
    prepared: &Prepared,
    calls: &mut mpsc::Receiver<Call>,
    stop: &CancellationToken,
    restarts: u32,
) -> Result<(), String> {
    let socket = node.run_dir.join(format!("{replica}.sock"));
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let mut child = spawn_worker(node, replica, prepared, &socket)?;
    let pid = child.id();

    let accepted = tokio::select! {
        _ = stop.cancelled() => { stop_worker(&mut child, None).await; return Ok(()); }
        status = child.wait() => Err(exit_reason(node, replica, status)),
        accepted = tokio::time::timeout(START_TIMEOUT, listener.accept()) => match accepted {
            Ok(Ok((stream, _))) => Ok(stream),
            Ok(Err(e)) => Err(format!("accepting the worker's connection: {e}")),
            Err(_) => Err(format!("worker did not connect within {}s", START_TIMEOUT.as_secs())),
        },
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let stream = match accepted {
        Ok(stream) => stream,
        Err(reason) => {
            stop_worker(&mut child, None).await;
            return Err(reason);
        }
    };
    let mut conn = WorkerConn::new(stream, MAX_BODY);
    let handshake = tokio::select! {
        _ = stop.cancelled() => { stop_worker(&mut child, Some(&mut conn)).await; return Ok(()); }
        handshake = tokio::time::timeout(START_TIMEOUT, conn.handshake()) => handshake,
    };
    match handshake {
        Ok(Ok(_)) => {}
        Ok(Err(WorkerError::Model { message, traceback })) => {
            stop_worker(&mut child, None).await;
            return Err(format!("model failed to load: {message}\n{traceback}"));
        }
        Ok(Err(e)) => {
            let status = child.wait().await;
            return Err(format!("{e}; {}", exit_reason(node, replica, status)));
        }
        Err(_) => {
            stop_worker(&mut child, None).await;
            return Err(format!(
                "model did not load within {}s",
                START_TIMEOUT.as_secs()
            ));
        }
    }
    node.set(replica, ReplicaState::Ready, pid, restarts);
    tracing::info!(%replica, pid, "replica ready");

    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                stop_worker(&mut child, Some(&mut conn)).await;
                return Ok(());
            }
            status = child.wait() => return Err(exit_reason(node, replica, status)),
            call = calls.recv() => {
                let Some(call) = call else {
                    stop_worker(&mut child, Some(&mut conn)).await;
                    return Ok(());
                };
                let answer = conn.call(&call.method, &call.tensors, Default::default()).await;
                let broken = matches!(answer, Err(WorkerError::Io(_) | WorkerError::Protocol(_)));
                let _ = call.reply.send(answer.map(|frame| frame.tensors));
                if broken {
                    let status = child.wait().await;
                    return Err(exit_reason(node, replica, status));
                }
            }
        }
    }
}

fn spawn_worker(
    node: &NodeContext,
    replica: &str,
    prepared: &Prepared,
    socket: &std::path::Path,
) -> Result<Child, String> {
    let log_path = node.log_path(replica);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let mut command = Command::new(&prepared.python);
    command
        .args(["-u", "-m", "mycel_worker", "--socket"])
        .arg(socket)
        .arg("--path")
        .arg(&prepared.version_dir)
        .arg("--entrypoint")
        .arg(prepared.manifest.component.entrypoint.to_string());
    for weights in &prepared.manifest.weights {
        command.arg("--weights").arg(weights.as_str());
    }
    command
        .current_dir(&prepared.version_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", prepared.python.display()))
}

/// Asks the worker to exit, then kills it if it does not within a few seconds.
async fn stop_worker(child: &mut Child, conn: Option<&mut WorkerConn>) {
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            conn.call("shutdown", &[], Default::default()),
        )
        .await;
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Why a worker exited, with the end of its log.
fn exit_reason(
    node: &NodeContext,
    replica: &str,
    status: std::io::Result<std::process::ExitStatus>,
) -> String {
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status ({e})"),
    };
    let tail = std::fs::read_to_string(node.log_path(replica))
        .map(|log| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        })
        .unwrap_or_default();
    format!("worker exited ({status})\n{tail}")
        .trim_end()
        .to_owned()
}
