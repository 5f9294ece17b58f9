//! One replica's life on this node: sync its version, build its environment, start its
//! worker, serve requests, and restart the worker with backoff when it dies.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mycel_core::fleet::{Assignment, ReplicaState, ReplicaStatus};
use mycel_core::manifest::{ServeOptions, MANIFEST_FILE};
use mycel_core::{Manifest, ResolvedDependency, VersionId};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::env::{EnvBuilder, EnvSpec};
use crate::metrics::{Metrics, ModelLabels, ReplicaLabels};
use crate::sync::{materialize, sync_version, BlobCache};
use crate::worker::{Frame, Tensor, WorkerConn, WorkerError};

/// How long a worker may take to import and construct the model.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Restart backoff: first delay, doubled per consecutive failure, capped.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that served this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Largest worker answer accepted.
const MAX_BODY: u64 = 4 << 30;
/// A worker idle this long is pinged; one that does not answer within
/// [`HEALTH_TIMEOUT`] is killed and restarted (and fails a rollout it is part of).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica no longer assigned may take to finish the requests it holds.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every replica on this node shares.
pub struct NodeContext {
    /// The control plane.
    pub client: mycel_client::Client,
    /// The local blob cache.
    pub cache: BlobCache,
    /// Where versions are materialized.
    pub versions_dir: PathBuf,
    /// What the node keeps on disk to serve without the control plane.
    pub state: crate::state::NodeState,
    /// Where worker sockets live (kept short: Unix socket paths are limited).
    pub run_dir: PathBuf,
    /// Where each replica's stdout and stderr go.
    pub logs_dir: PathBuf,
    /// Builds and caches environments.
    pub envs: EnvBuilder,
    /// Replica statuses, reported with every heartbeat.
    pub statuses: Mutex<HashMap<String, ReplicaStatus>>,
    /// Signalled when a replica's state changes, so the heartbeat reports it at once
    /// instead of at the next tick: gateways learn of a ready replica sooner.
    pub changed: tokio::sync::Notify,
    /// Where each running replica takes calls, for the data plane.
    pub callers: Mutex<HashMap<String, Caller>>,
    /// This node's location, for metrics.
    pub location: String,
    /// Inference metrics.
    pub metrics: Metrics,
    /// Versions synced and materialized on this node, or being so: replicas of one
    /// version, and versions that share a dependency, share one fetch.
    pub synced: Mutex<HashMap<VersionId, Arc<tokio::sync::OnceCell<SyncedVersion>>>>,
}

/// A version laid out on this node.
#[derive(Clone, Debug)]
pub struct SyncedVersion {
    /// Its read-only directory.
    pub dir: PathBuf,
    /// The versions it imports, as it records them.
    pub dependencies: Vec<ResolvedDependency>,
}

/// How the data plane reaches a replica.
#[derive(Clone)]
pub struct Caller {
    /// Its call queue.
    pub calls: mpsc::Sender<Call>,
    /// Its metric labels.
    pub labels: ModelLabels,
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
        let previous = statuses.insert(replica.to_owned(), status.clone());
        if previous.is_none_or(|p| p.state != status.state) {
            self.changed.notify_one();
        }
    }

    /// Forgets a stopped replica, unless a newer one under the same id (a changed
    /// assignment) has taken its place.
    pub fn remove(&self, replica: &str, calls: &mpsc::Sender<Call>) {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if callers
            .get(replica)
            .is_some_and(|c| !c.calls.same_channel(calls))
        {
            return;
        }
        callers.remove(replica);
        drop(callers);
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses.remove(replica);
    }

    /// Where to send calls for `replica`, if it runs here.
    pub fn caller(&self, replica: &str) -> Option<Caller> {
        let callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        callers.get(replica).cloned()
    }

    /// Whether `replica` is ready to take calls.
    pub fn is_ready(&self, replica: &str) -> bool {
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses
            .get(replica)
            .is_some_and(|s| s.state == ReplicaState::Ready)
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
    /// Other header fields, e.g. `config` for `train`.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Frame, WorkerError>>,
}

/// A running replica as the agent holds it.
pub struct ReplicaHandle {
    /// What the control plane assigned.
    pub assignment: Assignment,
    /// Requests for its worker.
    pub calls: mpsc::Sender<Call>,
    /// Cancelling stops the replica and its worker at once.
    pub stop: CancellationToken,
    /// Cancelling makes the replica refuse new requests, answer those it holds, and stop.
    pub drain: CancellationToken,
    /// The replica's task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a replica's task; cancelling `shutdown` stops it, draining or not.
pub fn start(
    node: Arc<NodeContext>,
    assignment: Assignment,
    shutdown: &CancellationToken,
) -> ReplicaHandle {
    let (calls, calls_rx) = mpsc::channel(1024);
    {
        let mut callers = node.callers.lock().unwrap_or_else(|p| p.into_inner());
        let caller = Caller {
            calls: calls.clone(),
            labels: labels_of(&node, &assignment),
        };
        callers.insert(assignment.replica.clone(), caller);
    }
    let stop = shutdown.child_token();
    let drain = CancellationToken::new();
    let task = tokio::spawn(run(
        Arc::clone(&node),
        assignment.clone(),
        calls_rx,
        Signals {
            stop: stop.clone(),
            drain: drain.clone(),
        },
    ));
    ReplicaHandle {
        assignment,
        calls,
        stop,
        drain,
        task,
    }
}

fn labels_of(node: &NodeContext, assignment: &Assignment) -> ModelLabels {
    ModelLabels {
        model: assignment.deployment.clone(),
        version: assignment.version.short(),
        location: node.location.clone(),
    }
}

/// Sets each replica's queue-depth gauge from its queue.
pub fn update_queue_depths(node: &NodeContext) {
    let callers = node.callers.lock().unwrap_or_else(|p| p.into_inner());
    node.metrics.queue_depth.clear();
    for (replica, caller) in callers.iter() {
        let waiting = caller.calls.max_capacity() - caller.calls.capacity();
        let labels = ReplicaLabels {
            model: caller.labels.model.clone(),
            replica: replica.clone(),
        };
        node.metrics
            .queue_depth
            .get_or_create(&labels)
            .set(waiting as i64);
    }
}

/// Everything a worker needs to start, prepared once per replica.
pub(crate) struct Prepared {
    python: PathBuf,
    version_dir: PathBuf,
    /// Each dependency's name and directory, nearest first.
    dependencies: Vec<(String, PathBuf)>,
    manifest: Manifest,
    serve: ServeOptions,
    labels: ModelLabels,
}

/// How a worker process starts beyond its code: where its output goes, the data it
/// may read, and the command it runs under to keep it off the network.
#[derive(Default)]
pub(crate) struct Launch<'a> {
    /// Its log file.
    pub log: PathBuf,
    /// `ctx.data_dir`.
    pub data_dir: Option<&'a std::path::Path>,
    /// A program and arguments the worker's command is appended to (`unshare --net`).
    pub sandbox: &'a [String],
}

/// Fetches what this node lacks of the assigned version and of every version it depends
/// on, and lays each out in its own directory. Returns the version's directory and each
/// dependency's name and directory, breadth first (its own dependencies by name, then
/// theirs), each component once.
///
/// The assigned id covers the ids of the direct dependencies, each of those covers
/// theirs, and every version is checked against its id: the whole tree is the one the
/// control plane resolved when the version was pushed.
async fn sync(
    node: &NodeContext,
    component: &str,
    version: VersionId,
    seq: u64,
) -> Result<(PathBuf, Vec<(String, PathBuf)>), String> {
    let top = sync_one(node, component, version).await?;
    let mut seen: HashMap<String, VersionId> = HashMap::from([(component.to_owned(), version)]);
    let mut queue: VecDeque<ResolvedDependency> = top.dependencies.into_iter().collect();
    let mut dependencies = Vec::new();
    while let Some(dependency) = queue.pop_front() {
        match seen.get(&dependency.component) {
            Some(id) if *id == dependency.id => continue,
            // The control plane refuses such versions; never run a tree it would refuse.
            Some(_) => {
                return Err(format!(
                    "two versions of {} in the dependencies of {component}@{seq}",
                    dependency.component
                ))
            }
            None => {}
        }
        seen.insert(dependency.component.clone(), dependency.id);
        let synced = sync_one(node, &dependency.component, dependency.id)
            .await
            .map_err(|e| format!("dependency {}: {e}", dependency.label()))?;
        queue.extend(synced.dependencies);
        dependencies.push((dependency.component, synced.dir));
    }
    Ok((top.dir, dependencies))
}

/// Fetches what this node lacks of one version and lays it out; once per version,
/// however many replicas run it or depend on it.
async fn sync_one(
    node: &NodeContext,
    component: &str,
    id: VersionId,
) -> Result<SyncedVersion, String> {
    let once = {
        let mut synced = node.synced.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(synced.entry(id).or_default())
    };
    let synced = once
        .get_or_try_init(|| async {
            // Laid out before: the saved file list and the blobs on disk are enough, so a
            // node restarted while the control plane is away still starts it.
            if let Some(version) = node.state.version(id) {
                match materialize(&node.cache, &node.versions_dir, &version).await {
                    Ok(dir) => {
                        return Ok(SyncedVersion {
                            dir,
                            dependencies: version.dependencies,
                        })
                    }
                    Err(e) => tracing::info!(version = %version.label(), error = %e, "not all on disk; fetching"),
                }
            }
            let (version, size) = node
                .client
                .version_sized(component, &id.to_string())
                .await
                .map_err(|e| format!("cannot fetch version {}: {e}", id.short()))?;
            node.metrics.fetched("version", size);
            // The control plane is trusted with bytes, not with meaning: the file list
            // (and the dependencies it was resolved against) must hash to the id that was
            // assigned, as every blob to its name.
            if version.id != id || version.content_id() != id {
                return Err(format!(
                    "the control plane sent a file list that does not hash to version {}",
                    id.short()
                ));
            }
            let report = sync_version(&node.client, &node.cache, &version)
                .await
                .map_err(|e| format!("sync failed: {e}"))?;
            node.metrics.fetched("blob", report.bytes_fetched);
            tracing::info!(version = %version.label(), fetched = report.bytes_fetched, blobs = report.blobs_fetched, "version synced");
            let dir = materialize(&node.cache, &node.versions_dir, &version)
                .await
                .map_err(|e| format!("materialize failed: {e}"))?;
            let saved = version.clone();
            node.state
                .save("a version's file list", move |s| s.save_version(&saved))
                .await;
            Ok(SyncedVersion {
                dir,
                dependencies: version.dependencies,
            })
        })
        .await?;
    Ok(synced.clone())
}

async fn prepare(node: &NodeContext, assignment: &Assignment) -> Result<Prepared, String> {
    let replica = &assignment.replica;
    let mut prepared = prepare_code(
        node,
        &assignment.component,
        assignment.version,
        assignment.seq,
        |state| node.set(replica, state, None, 0),
    )
    .await?;
    prepared.serve = assignment.serve;
    prepared.labels = labels_of(node, assignment);
    Ok(prepared)
}

/// Syncs a version and what it depends on, and builds its environment; `phase` hears
/// when each step starts. Serving options and labels are left at their defaults.
pub(crate) async fn prepare_code(
    node: &NodeContext,
    component: &str,
    version: VersionId,
    seq: u64,
    phase: impl Fn(ReplicaState),
) -> Result<Prepared, String> {
    phase(ReplicaState::Syncing);
    let (version_dir, dependencies) = sync(node, component, version, seq).await?;
    let text = tokio::fs::read_to_string(version_dir.join(MANIFEST_FILE))
        .await
        .map_err(|e| format!("reading {MANIFEST_FILE}: {e}"))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;

    phase(ReplicaState::BuildingEnv);
    let spec =
        EnvSpec::from_tree(&manifest, &version_dir, &dependencies).map_err(|e| e.to_string())?;
    let env = node.envs.ensure(&spec).await.map_err(|e| e.to_string())?;
    tracing::info!(component, seq, env = %env.key, reused = env.reused, "environment ready");
    Ok(Prepared {
        python: env.python,
        version_dir,
        dependencies,
        manifest,
        serve: ServeOptions::default(),
        labels: ModelLabels::default(),
    })
}

/// How a replica is told to end.
struct Signals {
    /// At once, killing a call in progress (the node is shutting down).
    stop: CancellationToken,
    /// After answering what it holds (it is no longer assigned).
    drain: CancellationToken,
}

impl Signals {
    /// Either signal; before a replica serves, draining is stopping.
    async fn ended(&self) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.drain.cancelled() => {}
        }
    }

    fn is_ended(&self) -> bool {
        self.stop.is_cancelled() || self.drain.is_cancelled()
    }
}

async fn run(
    node: Arc<NodeContext>,
    assignment: Assignment,
    mut calls: mpsc::Receiver<Call>,
    signals: Signals,
) {
    let replica = assignment.replica.clone();
    let prepared = tokio::select! {
        _ = signals.ended() => return,
        prepared = prepare(&node, &assignment) => prepared,
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(%replica, %reason, "replica failed");
            node.set(&replica, ReplicaState::Failed { reason }, None, 0);
            // Answer callers until stopped, so nobody waits on a replica that cannot start.
            drain_failed(&mut calls, &signals).await;
            return;
        }
    };

    let mut restarts = 0u32;
    let mut backoff = BACKOFF_START;
    loop {
        node.set(&replica, ReplicaState::Starting, None, restarts);
        let started = tokio::time::Instant::now();
        let outcome = serve_once(&node, &replica, &prepared, &mut calls, &signals, restarts).await;
        if signals.is_ended() {
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
            _ = signals.ended() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        restarts += 1;
    }
}

async fn drain_failed(calls: &mut mpsc::Receiver<Call>, signals: &Signals) {
    loop {
        tokio::select! {
            _ = signals.ended() => return,
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
/// stopped or drained (Ok).
async fn serve_once(
    node: &NodeContext,
    replica: &str,
    prepared: &Prepared,
    calls: &mut mpsc::Receiver<Call>,
    signals: &Signals,
    restarts: u32,
) -> Result<(), String> {
    let stop = &signals.stop;
    let socket = node.run_dir.join(format!("{replica}.sock"));
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let launch = Launch {
        log: node.log_path(replica),
        ..Launch::default()
    };
    let mut child = spawn_worker(prepared, &socket, &launch)?;
    let pid = child.id();

    let accepted = tokio::select! {
        _ = signals.ended() => { stop_worker(&mut child, None).await; return Ok(()); }
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
        _ = signals.ended() => { stop_worker(&mut child, Some(&mut conn)).await; return Ok(()); }
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

    let mut pending: VecDeque<Call> = VecDeque::new();
    let mut draining = false;
    loop {
        let first = match pending.pop_front() {
            Some(call) => call,
            None => tokio::select! {
                _ = stop.cancelled() => {
                    stop_worker(&mut child, Some(&mut conn)).await;
                    return Ok(());
                }
                // No longer assigned: refuse new calls (the gateway sends them to another
                // replica), answer the queued ones, then stop when the queue runs dry.
                _ = signals.drain.cancelled(), if !draining => {
                    draining = true;
                    node.set(replica, ReplicaState::Draining, pid, restarts);
                    calls.close();
                    continue;
                }
                status = child.wait() => return Err(exit_reason(node, replica, status)),
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {
                    let pong = tokio::time::timeout(
                        HEALTH_TIMEOUT,
                        conn.call("ping", Vec::new(), Default::default()),
                    )
                    .await;
                    match pong {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => {
                            let _ = child.kill().await;
                            let status = child.wait().await;
                            return Err(format!("failed its health check: {e}; {}", exit_reason(node, replica, status)));
                        }
                        Err(_) => {
                            let _ = child.kill().await;
                            let _ = child.wait().await;
                            return Err(format!(
                                "failed its health check: no answer to a ping within {}s; killed",
                                HEALTH_TIMEOUT.as_secs()
                            ));
                        }
                    }
                }
                call = calls.recv() => match call {
                    Some(call) => call,
                    None => {
                        stop_worker(&mut child, Some(&mut conn)).await;
                        return Ok(());
                    }
                },
            },
        };
        let batch = gather(first, &mut pending, calls, prepared.serve).await;
        if batch[0].method == "predict" {
            let rows = batch
                .iter()
                .map(|c| {
                    c.tensors
                        .first()
                        .and_then(|t| t.shape.first())
                        .copied()
                        .unwrap_or(1)
                })
                .sum();
            node.metrics.batch(&prepared.labels, rows);
        }
        let outcome = tokio::select! {
            outcome = run_batch(&mut conn, batch) => outcome,
            // A model stuck in a call must not hold up stopping: the callers of the
            // dropped batch get 503 and the gateway retries them elsewhere.
            _ = stop.cancelled() => {
                let _ = child.kill().await;
                let _ = child.wait().await;
                return Ok(());
            }
        };
        if let Err(e) = outcome {
            // The worker broke mid-call; its exit status says why.
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let status = match status {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await
                }
            };
            return Err(format!("{e}; {}", exit_reason(node, replica, status)));
        }
    }
}

/// The calls to answer with one worker call: `first` alone, or with every queued or
/// soon-arriving `predict` that can join its batch, up to `max_batch_size` rows.
/// Calls that cannot join wait in `pending`, in order.
async fn gather(
    first: Call,
    pending: &mut VecDeque<Call>,
    calls: &mut mpsc::Receiver<Call>,
    serve: ServeOptions,
) -> Vec<Call> {
    let max_rows = u64::from(serve.max_batch_size);
    let key = match batch_key_of(&first) {
        Some((key, rows)) if max_rows > 1 && rows < max_rows => (key, rows),
        _ => return vec![first],
    };
    let (key, mut rows) = key;
    let mut batch = vec![first];
    let fits = |call: &Call, rows: &mut u64| match batch_key_of(call) {
        Some((k, n)) if k == key && *rows + n <= max_rows => {
            *rows += n;
            true
        }
        _ => false,
    };
    let mut skipped = VecDeque::new();
    while let Some(call) = pending.pop_front() {
        if fits(&call, &mut rows) {
            batch.push(call);
        } else {
            skipped.push_back(call);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(serve.batch_wait_ms.into());
    while rows < max_rows {
        let next = match calls.try_recv() {
            Ok(call) => Some(call),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::timeout_at(deadline, calls.recv())
                    .await
                    .ok()
                    .flatten()
            }
        };
        let Some(call) = next else { break };
        if fits(&call, &mut rows) {
            batch.push(call);
        } else {
            skipped.push_back(call);
        }
    }
    *pending = skipped;
    batch
}

fn batch_key_of(call: &Call) -> Option<(batch::BatchKey, u64)> {
    if call.method != "predict" || !call.extra.is_empty() {
        return None;
    }
    batch::batch_key(&call.tensors)
}

/// Answers a batch of calls with one worker call. Errs only when the connection to the
/// worker broke, after telling every caller.
async fn run_batch(conn: &mut WorkerConn, mut batch: Vec<Call>) -> Result<(), WorkerError> {
    if batch.len() == 1 {
        let call = batch.swap_remove(0);
        let answer = conn.call(&call.method, call.tensors, call.extra).await;
        return match answer {
            Err(e @ (WorkerError::Io(_) | WorkerError::Protocol(_))) => {
                let _ = call.reply.send(Err(copy_error(&e)));
                Err(e)
            }
            answer => {
                let _ = call.reply.send(answer);
                Ok(())
            }
        };
    }
    let rows: Vec<u64> = batch
        .iter()
        .map(|c| {
            c.tensors
                .first()
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let inputs: Vec<&[Tensor]> = batch.iter().map(|c| c.tensors.as_slice()).collect();
    let joined = match batch::join(&inputs) {
        Ok(joined) => joined,
        Err(message) => {
            for call in batch {
                let _ = call.reply.send(Err(WorkerError::Protocol(message.clone())));
            }
            return Ok(());
        }
    };
    let answer = conn.call("predict", joined, Default::default()).await;
    let outcome = match answer {
        Ok(frame) => batch::split(frame.tensors, &rows).map_err(|message| WorkerError::Model {
            message,
            traceback: String::new(),
        }),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(parts) => {
            for (call, outputs) in batch.into_iter().zip(parts) {
                let _ = call.reply.send(Ok(Frame::new(0, "result", outputs)));
            }
            Ok(())
        }
        Err(e) => {
            for call in batch {
                let _ = call.reply.send(Err(copy_error(&e)));
            }
            match e {
                WorkerError::Io(_) | WorkerError::Protocol(_) => Err(e),
                _ => Ok(()),
            }
        }
    }
}

/// The same error for another caller of a batch (io errors are not `Clone`).
fn copy_error(e: &WorkerError) -> WorkerError {
    match e {
        WorkerError::Io(io) => WorkerError::Io(std::io::Error::new(io.kind(), io.to_string())),
        WorkerError::Protocol(m) => WorkerError::Protocol(m.clone()),
        WorkerError::Model { message, traceback } => WorkerError::Model {
            message: message.clone(),
            traceback: traceback.clone(),
        },
        WorkerError::TooLarge(a, b) => WorkerError::TooLarge(*a, *b),
    }
}

pub(crate) fn spawn_worker(
    prepared: &Prepared,
    socket: &std::path::Path,
    launch: &Launch<'_>,
) -> Result<Child, String> {
    let log_path = &launch.log;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let mut command = match launch.sandbox.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&prepared.python);
            command
        }
        None => Command::new(&prepared.python),
    };
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
    if let Some(data_dir) = launch.data_dir {
        command.arg("--data-dir").arg(data_dir);
    }
    for (name, dir) in &prepared.dependencies {
        let mut argument = std::ffi::OsString::from(format!("{name}="));
        argument.push(dir);
        command.arg("--dependency").arg(argument);
    }
    // Math libraries otherwise start a thread per core in every worker; many workers on
    // one node would then fight over the cores their replicas did not reserve.
    let threads = prepared.manifest.resources.cpus.ceil().max(1.0).to_string();
    for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] {
        command.env(var, &threads);
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
            conn.call("shutdown", Vec::new(), Default::default()),
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
    let tail = log_tail(&node.log_path(replica));
    format!("worker exited ({status})\n{tail}")
        .trim_end()
        .to_owned()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The end of a worker's log file (its last 10 lines), or nothing if it cannot be read.
pub(crate) fn log_tail(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .map(|log| tail(&log, 10))
        .unwrap_or_default()
}
