//! One replica's life on this node: sync its version, build its environment, start its
//! worker, serve requests, and restart the worker with backoff when it dies.
//!
//! This module holds what replicas share on a node ([`NodeContext`]) and how the agent
//! holds one ([`ReplicaHandle`], [`start`]); `prepare` lays out code and environments,
//! `supervise` runs a replica's worker and restarts it, `calls` answers requests in
//! batches, and `process` starts and stops worker processes.

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
use crate::sync::{materialize, sync_version, BlobCache, Fetched};
use crate::worker::{Frame, Tensor, WorkerConn, WorkerError};

/// How long a worker may take to import and construct the model.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Restart backoff: first delay, doubled per consecutive failure, capped.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that answered calls and lived this long is restarted at once when it dies.
const SERVED_A_WHILE: Duration = Duration::from_secs(1);
/// A worker that served this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Largest worker answer accepted.
const MAX_BODY: u64 = 4 << 30;
/// A worker idle this long is pinged; one that does not answer within
/// [`HEALTH_TIMEOUT`] is killed and restarted (and fails a rollout it is part of).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long past the latest deadline of its calls a worker may stay in a call before
/// it is killed and restarted: the callers have had their answer (504) by then.
const OVERDUE_GRACE: Duration = Duration::from_millis(500);
/// A worker in one call this many times longer than its calls usually take is held
/// up: the calls behind it go to another replica. Never sooner than the floor; before
/// its first answer, after the first wait.
const HELD_UP_FACTOR: u32 = 20;
const HELD_UP_FLOOR: Duration = Duration::from_secs(1);
const HELD_UP_FIRST: Duration = Duration::from_secs(10);
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
    /// When each replica entered its state, and what it waits on there.
    pub phases: Mutex<HashMap<String, Phase>>,
    /// Syncs under way, by version: their bytes so far.
    pub fetches: Mutex<HashMap<VersionId, Arc<Fetched>>>,
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
    /// The node's GPUs, and which replica holds each.
    pub gpus: crate::gpu::Gpus,
    /// Warm templates, one per environment, that serving workers are forked from.
    pub templates: template::Templates,
    /// Keys whose signatures this node trusts; none: it runs versions unsigned.
    pub trust: Vec<mycel_core::signing::PublicKey>,
    /// How serving workers are confined.
    pub sandbox: crate::sandbox::Sandbox,
    /// Replicas whose queue does not simply follow their state (see [`Flow`]).
    pub flow: Mutex<HashMap<String, Flow>>,
}

/// Why a replica's queue takes calls, or not, regardless of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Its worker died while serving and the next starts at once: calls wait for it.
    ComingBack,
    /// Its worker has been in one call far longer than it usually takes: calls go to
    /// another replica instead of waiting behind it.
    HeldUp,
}

/// Where a replica is in its state: since when, and the work it waits on, whose
/// progress its status carries.
#[derive(Clone, Debug)]
pub struct Phase {
    since: std::time::Instant,
    work: Option<Work>,
}

/// Work a replica waits on while it prepares, shared with the other replicas that
/// need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Fetching a version's blobs.
    Fetch(VersionId),
    /// Building the environment of this key.
    Env(String),
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
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        let last_failure = match &state {
            ReplicaState::Failed { reason } => Some(reason.clone()),
            _ => statuses.get(replica).and_then(|s| s.last_failure.clone()),
        };
        let status = ReplicaStatus {
            replica: replica.to_owned(),
            state,
            pid,
            restarts,
            for_ms: 0,
            progress: None,
            last_failure,
        };
        let previous = statuses.insert(replica.to_owned(), status.clone());
        if previous.is_none_or(|p| p.state != status.state) {
            let phase = Phase {
                since: std::time::Instant::now(),
                work: None,
            };
            let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
            phases.insert(replica.to_owned(), phase);
            self.changed.notify_one();
        }
    }

    /// `replica` waits on `work` in its present state.
    pub fn waits_on(&self, replica: &str, work: Work) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(phase) = phases.get_mut(replica) {
            phase.work = Some(work);
        }
    }

    /// What `work` has done so far, in words.
    fn progress(&self, work: &Work) -> Option<String> {
        match work {
            Work::Fetch(version) => {
                let fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
                fetches.get(version).map(|f| f.describe())
            }
            Work::Env(key) => self.envs.progress(key).map(|line| format!("uv: {line}")),
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
        drop(statuses);
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        phases.remove(replica);
    }

    /// Appends a line of the agent's own to `replica`'s log, beside its worker's output.
    pub async fn append_log(&self, replica: &str, text: &str) {
        use tokio::io::AsyncWriteExt;
        let path = self.log_path(replica);
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .await?;
            file.write_all(format!("[mycel] {}\n", text.trim_end()).as_bytes())
                .await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(%replica, error = %e, "cannot write to the replica's log");
        }
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

    /// Whether `replica` takes a call: it is ready, unless its worker is held up and the
    /// gateway has another replica for the call (`elsewhere`); or, when the gateway has
    /// none, its worker died while serving and the next one is on its way at once (see
    /// `supervise::restart_delay`), so the call waits in its queue rather than fail.
    pub fn takes_calls(&self, replica: &str, elsewhere: bool) -> bool {
        let flow = self.flow.lock().unwrap_or_else(|p| p.into_inner());
        match flow.get(replica) {
            // Wait for the next worker only where there is nowhere else to go.
            Some(Flow::ComingBack) => !elsewhere,
            Some(Flow::HeldUp) if elsewhere => false,
            _ => self.is_ready(replica),
        }
    }

    /// Records what stands between `replica`'s queue and its worker, if anything.
    fn set_flow(&self, replica: &str, now: Option<Flow>) {
        let mut flow = self.flow.lock().unwrap_or_else(|p| p.into_inner());
        match now {
            Some(now) => flow.insert(replica.to_owned(), now),
            None => flow.remove(replica),
        };
    }

    /// Every replica's status, with how long it has been in its state and, while it
    /// prepares, how far the work it waits on got.
    pub fn snapshot(&self) -> Vec<ReplicaStatus> {
        let mut all: Vec<ReplicaStatus> = {
            let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
            statuses.values().cloned().collect()
        };
        let phases = self
            .phases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for status in &mut all {
            if let Some(phase) = phases.get(&status.replica) {
                status.for_ms =
                    u64::try_from(phase.since.elapsed().as_millis()).unwrap_or(u64::MAX);
                status.progress = phase.work.as_ref().and_then(|w| self.progress(w));
            }
        }
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
    /// Run in a worker call of its own, never in a batch: it was in a batch that failed,
    /// and must not fail (or crash the worker) for another request again.
    pub alone: bool,
    /// When its caller stops waiting: past it, it is not started.
    pub deadline: Option<tokio::time::Instant>,
    /// It was in its worker when something outside killed it, and was queued again.
    pub requeued: bool,
    /// When it arrived, for the time it waits in the queue.
    pub arrived: std::time::Instant,
    /// Where a streamed answer's chunks go, as the worker sends them; the final frame
    /// still goes to `reply`. A streaming call runs alone and is never run twice.
    pub chunks: Option<mpsc::Sender<Frame>>,
    /// Whether its gateway has another replica to send it to, should this one be held
    /// up before it runs.
    pub elsewhere: bool,
}

impl Call {
    /// Whether nobody waits for the answer any more: the caller went away, or the
    /// deadline passed (then it is told so). Such a call is not run.
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
            || self
                .deadline
                .is_some_and(|d| d <= tokio::time::Instant::now())
    }
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
    let (calls, calls_rx) = mpsc::channel(assignment.serve.queue_capacity());
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

mod calls;
mod prepare;
mod process;
mod supervise;
pub mod template;

use calls::{gather, run_batch, verdict, Broke, Verdict};
use prepare::prepare;
pub(crate) use prepare::{prepare_code, Prepared};
use process::{exit_reason, start_worker, stop_worker};
pub(crate) use process::{log_tail, spawn_worker, tail, Launch};
use supervise::{run, Signals};
