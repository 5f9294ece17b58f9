//! The federation coordinator: runs each federation's rounds. A round picks clients
//! among the live nodes holding the dataset, hands them `train` tasks (agents take
//! them by long-poll), waits for their updates until the round's timeout, aggregates
//! them with `mycel-federate` straight from the blob store, and has the same clients
//! `evaluate` the aggregate. After the last round the aggregate is published as a new
//! version of the component (same files, new weights) and, if asked, rolled out.
//!
//! Durable: each federation's record, rewritten at every phase. Soft: the task queues
//! and the coordinators themselves; a control plane that restarts marks the
//! federations it was running as failed rather than guess where their clients are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use mycel_core::federation::{
    weighted_metrics, ClientEvaluation, ClientRecord, ClientStatus, Evaluation, Federation,
    FederationRequest, FederationState, NodeTasks, Published, Round, RoundPhase, Task, TaskKind,
    TaskResult,
};
use mycel_core::fleet::{Node, NodeState, RolloutKind};
use mycel_core::{BlobHash, ComponentPath};
use mycel_federate::{Aggregator, AggregatorConfig, FederateError, GlobalModel, Privacy};
use rand::seq::IndexedRandom;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::fleet::{now_ms, Fleet};
use crate::registry::{self, blocking};
use crate::store::{Store, StoreError};

/// How long a round waits for clients unless the federation says otherwise.
pub(crate) const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a waiting round checks that its clients' nodes are still alive.
const LIVENESS_TICK: Duration = Duration::from_millis(500);

/// Every federation this control plane runs, and the tasks waiting for agents.
pub(crate) struct Federations {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    fleet: Arc<Fleet>,
    /// Tasks not yet handed to their node's agent, by node.
    queued: Mutex<HashMap<String, Vec<Task>>>,
    /// Where each handed-out or queued task's result goes, by task id.
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Running federations: their nodes, and how to stop them.
    running: Mutex<HashMap<u64, Running>>,
    /// Bumped when tasks are queued or federations end; agents' long-polls wait on it.
    tasks_changed: watch::Sender<u64>,
    /// Bumped when any federation's record changes; the CLI's long-polls wait on it.
    changed: watch::Sender<u64>,
}

struct Running {
    nodes: BTreeSet<String>,
    cancel: CancellationToken,
}

/// A task whose result a round waits for.
struct Waiting {
    /// The node it was given to: the only one whose result counts.
    node: String,
    /// What the node needs to read for it: the version and the weights.
    version: mycel_core::VersionId,
    weights: BlobHash,
    result: oneshot::Sender<TaskResult>,
}

/// What became of a task's result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// Handed to the round waiting for it.
    Accepted,
    /// No round waits for it (it went on without it), or there is no such task.
    NotAwaited,
    /// Another node's task: refused, and the round keeps waiting for that node.
    NotYours {
        /// The node the task was given to.
        owner: String,
    },
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a federation stopped early.
enum Stop {
    Failed(String),
    Cancelled,
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Failed(e.to_string())
    }
}

impl Federations {
    pub(crate) fn new(store: Arc<dyn Store>, blobs: BlobStore, fleet: Arc<Fleet>) -> Self {
        Self {
            store,
            blobs,
            fleet,
            queued: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            tasks_changed: watch::Sender::new(1),
            changed: watch::Sender::new(1),
        }
    }

    /// Marks federations left running by an earlier process as failed: their tasks and
    /// partial rounds are gone with it.
    pub(crate) async fn recover(&self) -> Result<(), StoreError> {
        let orphans: Vec<Federation> = blocking(&self.store, |s| s.federations())
            .await?
            .into_iter()
            .filter(|f| !f.state.is_done())
            .collect();
        for mut federation in orphans {
            let round = federation.rounds.len();
            federation.state = FederationState::Failed {
                reason: format!(
                    "the control plane restarted during round {round}; start the federation again"
                ),
            };
            federation.ended_ms = Some(now_ms());
            blocking(&self.store, move |s| s.put_federation(&federation)).await?;
        }
        Ok(())
    }

    /// Live nodes that hold `dataset` and match the federation's selector, by name.
    pub(crate) async fn candidates(
        &self,
        dataset: &str,
        selector: &mycel_core::federation::Selector,
    ) -> Result<Vec<Node>, StoreError> {
        let nodes = blocking(&self.store, |s| s.nodes()).await?;
        Ok(nodes
            .into_iter()
            .filter(|n| n.state == NodeState::Ready)
            .filter(|n| n.spec.datasets.iter().any(|d| d == dataset))
            .filter(|n| selector.matches(&n.spec))
            .collect())
    }

    /// Stores a new federation and starts its rounds; returns it with its id.
    pub(crate) async fn start(
        self: &Arc<Self>,
        federation: Federation,
    ) -> Result<Federation, StoreError> {
        let federation = blocking(&self.store, move |s| s.insert_federation(federation)).await?;
        let cancel = CancellationToken::new();
        lock(&self.running).insert(
            federation.id,
            Running {
                nodes: BTreeSet::new(),
                cancel: cancel.clone(),
            },
        );
        self.changed.send_modify(|g| *g += 1);
        tracing::info!(federation = federation.id, component = %federation.request.component, seq = federation.seq, rounds = federation.request.rounds, "federation started");
        let this = Arc::clone(self);
        let started = federation.clone();
        tokio::spawn(async move { this.run(started, cancel).await });
        Ok(federation)
    }

    /// Stops a running federation; false if it is not running here.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        match lock(&self.running).get(&id) {
            Some(running) => {
                running.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every running federation (shutdown).
    pub(crate) fn cancel_all(&self) {
        for running in lock(&self.running).values() {
            running.cancel.cancel();
        }
    }

    /// A federation, waiting up to `wait` for a change past generation `after`.
    pub(crate) async fn watch(
        &self,
        id: u64,
        after: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<(u64, Federation)>, StoreError> {
        let generation = crate::fleet::wait_past(&self.changed, after, wait, stop).await;
        let federation = blocking(&self.store, move |s| s.federation(id)).await?;
        Ok(federation.map(|f| (generation, f)))
    }

    /// The tasks for `node` not handed out yet, waiting up to `wait` for some, and the
    /// running federations that include it.
    pub(crate) async fn tasks_for(
        &self,
        node: &str,
        wait: Duration,
        stop: &CancellationToken,
    ) -> NodeTasks {
        let mut rx = self.tasks_changed.subscribe();
        rx.borrow_and_update();
        let tasks = self.take_tasks(node);
        if !tasks.is_empty() {
            return NodeTasks {
                tasks,
                federations: self.federations_of(node),
            };
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
        NodeTasks {
            tasks: self.take_tasks(node),
            federations: self.federations_of(node),
        }
    }

    fn take_tasks(&self, node: &str) -> Vec<Task> {
        lock(&self.queued).remove(node).unwrap_or_default()
    }

    fn federations_of(&self, node: &str) -> Vec<u64> {
        lock(&self.running)
            .iter()
            .filter(|(_, r)| r.nodes.contains(node))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Hands a task's result to the round waiting for it; false if none waits (the
    /// round moved on, or no such task).
    /// `by` is the node that posted it, for a node's credential: a result counts only
    /// from the node the task was given to.
    pub(crate) fn complete(&self, task: &str, by: Option<&str>, result: TaskResult) -> Completion {
        let mut waiting = lock(&self.waiting);
        match waiting.get(task) {
            None => return Completion::NotAwaited,
            Some(w) if by.is_some_and(|node| node != w.node) => {
                return Completion::NotYours {
                    owner: w.node.clone(),
                }
            }
            Some(_) => {}
        }
        match waiting.remove(task).map(|w| w.result.send(result)) {
            Some(Ok(())) => Completion::Accepted,
            _ => Completion::NotAwaited,
        }
    }

    /// The versions and blobs `node`'s pending tasks need it to read.
    pub(crate) fn task_reads(&self, node: &str) -> Vec<(mycel_core::VersionId, BlobHash)> {
        lock(&self.waiting)
            .values()
            .filter(|w| w.node == node)
            .map(|w| (w.version, w.weights))
            .collect()
    }

    async fn save(&self, federation: &Federation) -> Result<(), StoreError> {
        let record = federation.clone();
        blocking(&self.store, move |s| s.put_federation(&record)).await?;
        self.changed.send_modify(|g| *g += 1);
        Ok(())
    }

    async fn run(self: Arc<Self>, mut federation: Federation, cancel: CancellationToken) {
        let outcome = self.rounds(&mut federation, &cancel).await;
        let outcome = match outcome {
            Ok(()) => self.publish(&mut federation).await,
            Err(stop) => Err(stop),
        };
        federation.state = match outcome {
            Ok(()) => FederationState::Complete,
            Err(Stop::Cancelled) => FederationState::Cancelled,
            Err(Stop::Failed(reason)) => FederationState::Failed { reason },
        };
        if let Some(round) = federation.rounds.last_mut() {
            if round.ended_ms.is_none() {
                round.ended_ms = Some(now_ms());
                round.phase = RoundPhase::Failed {
                    reason: federation.state.to_string(),
                };
            }
        }
        federation.ended_ms = Some(now_ms());
        tracing::info!(federation = federation.id, state = %federation.state, "federation ended");
        if let Err(e) = self.save(&federation).await {
            tracing::error!(federation = federation.id, error = %e, "cannot record the federation's end");
        }
        lock(&self.running).remove(&federation.id);
        // Agents stop the training workers of federations no longer running.
        self.tasks_changed.send_modify(|g| *g += 1);
    }

    async fn rounds(
        &self,
        federation: &mut Federation,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let config =
            aggregator_config(&federation.request).map_err(|e| Stop::Failed(e.to_string()))?;
        for number in 1..=federation.request.rounds {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            self.round(federation, number, config, cancel).await?;
        }
        Ok(())
    }

    async fn round(
        &self,
        federation: &mut Federation,
        number: u32,
        config: AggregatorConfig,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let request = &federation.request;
        let available = self.candidates(&request.dataset, &request.nodes).await?;
        let min = federation.min_clients as usize;
        if available.len() < min {
            return Err(Stop::Failed(format!(
                "round {number}: {} node(s) with dataset {:?} are up, fewer than min-clients {min}",
                available.len(),
                request.dataset
            )));
        }
        let wanted = clients_wanted(available.len(), request.fraction, min);
        let mut chosen: Vec<String> = available
            .choose_multiple(&mut rand::rng(), wanted)
            .map(|n| n.spec.name.clone())
            .collect();
        chosen.sort();
        if let Some(running) = lock(&self.running).get_mut(&federation.id) {
            running.nodes = chosen.iter().cloned().collect();
        }
        federation.rounds.push(Round {
            number,
            started_ms: now_ms(),
            ended_ms: None,
            phase: RoundPhase::Training,
            clients: chosen.iter().map(|node| ClientRecord::new(node)).collect(),
            included: 0,
            examples: 0,
            aggregate_ms: 0,
            train_metrics: BTreeMap::new(),
            evaluation: None,
            global: None,
        });
        self.save(federation).await?;
        tracing::info!(federation = federation.id, round = number, clients = ?chosen, "round started");

        // Train.
        let task_config = task_config(federation, number, config.strategy.proximal_mu());
        let trained = self
            .run_tasks(
                federation,
                number,
                &task_config,
                TaskKind::Train,
                &chosen,
                cancel,
            )
            .await?;
        let round_index = federation.rounds.len() - 1;
        let mut updates = Vec::new();
        for (node, result) in trained {
            let record = client_mut(&mut federation.rounds[round_index], &node);
            match result {
                Ok(TaskResult::Trained {
                    update,
                    examples,
                    metrics,
                    train_ms,
                }) => {
                    record.examples = examples;
                    record.train_ms = Some(train_ms);
                    record.metrics = metrics;
                    if self.blobs.size(&update).await.ok().flatten().is_some() {
                        updates.push((node, update, examples));
                    } else {
                        record.status = ClientStatus::Dropped {
                            reason: format!(
                                "its update blob {} was never uploaded",
                                update.short()
                            ),
                        };
                    }
                }
                Ok(TaskResult::Failed { reason }) => {
                    record.status = ClientStatus::Dropped { reason };
                }
                Ok(other) => {
                    record.status = ClientStatus::Dropped {
                        reason: format!("answered a train task with {other:?}"),
                    };
                }
                Err(reason) => record.status = ClientStatus::Dropped { reason },
            }
        }

        // Aggregate.
        federation.rounds[round_index].phase = RoundPhase::Aggregating;
        self.save(federation).await?;
        let started = std::time::Instant::now();
        let aggregated = self
            .aggregate(federation.global, &updates, config, min)
            .await;
        let round = &mut federation.rounds[round_index];
        round.aggregate_ms = started.elapsed().as_millis() as u64;
        let (aggregate, outcomes) = match aggregated {
            Ok(done) => done,
            Err(reason) => {
                round.phase = RoundPhase::Failed {
                    reason: reason.clone(),
                };
                round.ended_ms = Some(now_ms());
                return Err(Stop::Failed(format!("round {number}: {reason}")));
            }
        };
        for (node, status) in outcomes {
            client_mut(round, &node).status = status;
        }
        let included: Vec<&ClientRecord> = round
            .clients
            .iter()
            .filter(|c| c.status == ClientStatus::Included)
            .collect();
        round.included = included.len() as u32;
        round.examples = included.iter().map(|c| c.examples).sum();
        round.train_metrics = weighted_metrics(included.iter().map(|c| (c.examples, &c.metrics)));
        round.global = Some(aggregate);
        federation.global = aggregate;

        // Evaluate the aggregate on the same clients.
        round.phase = RoundPhase::Evaluating;
        self.save(federation).await?;
        let evaluated = self
            .run_tasks(
                federation,
                number,
                &task_config,
                TaskKind::Evaluate,
                &chosen,
                cancel,
            )
            .await?;
        let round = &mut federation.rounds[round_index];
        for (node, result) in evaluated {
            let record = client_mut(round, &node);
            match result {
                Ok(TaskResult::Evaluated {
                    loss,
                    examples,
                    metrics,
                }) => {
                    record.evaluation = Some(ClientEvaluation {
                        loss,
                        examples,
                        metrics,
                    })
                }
                Ok(TaskResult::Failed { reason }) | Err(reason) => {
                    record.evaluation_error = Some(reason)
                }
                Ok(other) => {
                    record.evaluation_error =
                        Some(format!("answered an evaluate task with {other:?}"))
                }
            }
        }
        round.evaluation = evaluation_of(&round.clients);
        round.phase = RoundPhase::Complete;
        round.ended_ms = Some(now_ms());
        tracing::info!(
            federation = federation.id,
            round = number,
            included = round.included,
            loss = round.evaluation.as_ref().map(|e| e.loss),
            "round complete"
        );
        self.save(federation).await?;
        Ok(())
    }

    /// Queues one task per node and waits for their results until the round's
    /// timeout; a node that is lost meanwhile is dropped at once.
    async fn run_tasks(
        &self,
        federation: &Federation,
        round: u32,
        config: &serde_json::Map<String, serde_json::Value>,
        kind: TaskKind,
        nodes: &[String],
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, Result<TaskResult, String>)>, Stop> {
        let weights_size = self
            .blobs
            .size(&federation.global)
            .await
            .map_err(|e| Stop::Failed(format!("reading the global weights: {e}")))?
            .ok_or_else(|| Stop::Failed("the global weights blob is missing".into()))?;
        let mut pending = FuturesUnordered::new();
        let mut ids = Vec::new();
        {
            let mut queued = lock(&self.queued);
            let mut waiting = lock(&self.waiting);
            for node in nodes {
                let id = format!("f{}-r{round}-{kind}-{node}", federation.id);
                let (tx, rx) = oneshot::channel();
                waiting.insert(
                    id.clone(),
                    Waiting {
                        node: node.clone(),
                        version: federation.version,
                        weights: federation.global,
                        result: tx,
                    },
                );
                queued.entry(node.clone()).or_default().push(Task {
                    id: id.clone(),
                    federation: federation.id,
                    round,
                    kind,
                    component: federation.request.component.clone(),
                    version: federation.version,
                    seq: federation.seq,
                    dataset: federation.request.dataset.clone(),
                    weights: federation.global,
                    weights_size,
                    config: config.clone(),
                });
                let node = node.clone();
                pending.push(async move { (node, rx.await) });
                ids.push(id);
            }
        }
        self.tasks_changed.send_modify(|g| *g += 1);

        let timeout = federation
            .request
            .round_timeout_s
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_ROUND_TIMEOUT);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut results: BTreeMap<String, Result<TaskResult, String>> = BTreeMap::new();
        let outcome = loop {
            if results.len() == nodes.len() {
                break Ok(());
            }
            tokio::select! {
                Some((node, result)) = pending.next() => {
                    let result = result.map_err(|_| "its task was withdrawn".to_string());
                    results.entry(node).or_insert(result);
                }
                _ = tokio::time::sleep(LIVENESS_TICK) => {
                    let live: BTreeSet<String> = self
                        .candidates(&federation.request.dataset, &federation.request.nodes)
                        .await?
                        .into_iter()
                        .map(|n| n.spec.name)
                        .collect();
                    for node in nodes.iter().filter(|n| !live.contains(*n)) {
                        results
                            .entry(node.clone())
                            .or_insert_with(|| Err("its node was lost (no heartbeat)".into()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    for node in nodes {
                        results.entry(node.clone()).or_insert_with(|| {
                            Err(format!("no {kind} result within the round timeout of {}s", timeout.as_secs()))
                        });
                    }
                    break Ok(());
                }
                _ = cancel.cancelled() => break Err(Stop::Cancelled),
            }
        };
        // Withdraw what is left: undelivered tasks, and results no one waits for.
        {
            let mut waiting = lock(&self.waiting);
            for id in &ids {
                waiting.remove(id);
            }
            let mut queued = lock(&self.queued);
            for list in queued.values_mut() {
                list.retain(|t| !ids.contains(&t.id));
            }
            queued.retain(|_, list| !list.is_empty());
        }
        outcome?;
        Ok(results.into_iter().collect())
    }

    /// Aggregates `updates` into a new global model stored as a blob; returns its hash
    /// and each client's status, or why there is no aggregate.
    async fn aggregate(
        &self,
        global: BlobHash,
        updates: &[(String, BlobHash, u64)],
        config: AggregatorConfig,
        min_clients: usize,
    ) -> Result<(BlobHash, Vec<(String, ClientStatus)>), String> {
        let global_path = self.blobs.path(&global);
        let updates: Vec<(String, PathBuf, u64)> = updates
            .iter()
            .map(|(node, hash, examples)| (node.clone(), self.blobs.path(hash), *examples))
            .collect();
        let out = self.blobs.temp_path("aggregate");
        let written = out.clone();
        let result = tokio::task::spawn_blocking(move || {
            let global = GlobalModel::open(&global_path).map_err(|e| e.to_string())?;
            let mut aggregator = Aggregator::new(global, config).map_err(|e| e.to_string())?;
            for (node, path, examples) in &updates {
                match aggregator.add_update(node, path, *examples) {
                    Ok(()) | Err(FederateError::Rejected { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let accepted = aggregator
                .outcomes()
                .iter()
                .filter(|o| !matches!(o.status, mycel_federate::ClientStatus::Rejected(_)))
                .count();
            if accepted < min_clients {
                return Err(too_few(accepted, min_clients, aggregator.outcomes()));
            }
            let aggregate = aggregator.finish(&written).map_err(|e| e.to_string())?;
            if aggregate.included < min_clients {
                return Err(too_few(aggregate.included, min_clients, &aggregate.clients));
            }
            Ok(aggregate
                .clients
                .into_iter()
                .map(|o| (o.client, status_of(o.status)))
                .collect::<Vec<_>>())
        })
        .await
        .map_err(|e| format!("aggregation task failed: {e}"))?;
        let statuses = match result {
            Ok(statuses) => statuses,
            Err(reason) => {
                let _ = std::fs::remove_file(&out);
                return Err(reason);
            }
        };
        let (hash, _) = self
            .blobs
            .adopt(&out)
            .await
            .map_err(|e| format!("storing the aggregate: {e}"))?;
        Ok((hash, statuses))
    }

    /// Publishes the final weights as a new version of the component and rolls it out
    /// if asked.
    async fn publish(&self, federation: &mut Federation) -> Result<(), Stop> {
        let base = blocking(&self.store, {
            let id = federation.version;
            move |s| s.version(&id)
        })
        .await?
        .ok_or_else(|| Stop::Failed("the trained version is gone from the store".into()))?;
        let size = self
            .blobs
            .size(&federation.global)
            .await
            .map_err(|e| Stop::Failed(format!("reading the final weights: {e}")))?
            .ok_or_else(|| Stop::Failed("the final weights blob is missing".into()))?;
        let weights_path = ComponentPath::new(&federation.weights_path)
            .map_err(|e| Stop::Failed(format!("weights path: {e}")))?;
        let files = base
            .files
            .iter()
            .cloned()
            .map(|mut file| {
                if file.path == weights_path {
                    file.hash = federation.global;
                    file.size = size;
                }
                file
            })
            .collect();
        let by = format!("federation {}", federation.id);
        let (version, _) = registry::create_version(
            &self.store,
            &self.blobs,
            &base.component,
            files,
            &by,
            now_ms(),
        )
        .await
        .map_err(|e| Stop::Failed(format!("publishing the result: {e}")))?;
        tracing::info!(federation = federation.id, version = %version.label(), "federation published its result");
        let mut published = Published {
            version: version.id,
            seq: version.seq,
            deployment: None,
            rollout: None,
        };
        if let Some(name) = &federation.request.deploy {
            let owned = name.clone();
            let existing = blocking(&self.store, move |s| {
                Ok(s.deployments()?.into_iter().find(|d| d.name == owned))
            })
            .await?;
            let Some(mut deployment) = existing else {
                federation.published = Some(published);
                return Err(Stop::Failed(format!(
                    "published {}, but deployment {name:?} no longer exists to roll it out to",
                    version.label()
                )));
            };
            deployment.version = version.id;
            deployment.seq = version.seq;
            let (_, rollout) = self
                .fleet
                .start_rollout(deployment, RolloutKind::Deploy, &by)
                .await?;
            published.deployment = Some(name.clone());
            published.rollout = rollout.map(|r| r.number);
        }
        federation.published = Some(published);
        Ok(())
    }
}

/// The aggregation a federation asks for, checked as the aggregator will check it.
pub(crate) fn aggregator_config(
    request: &FederationRequest,
) -> Result<AggregatorConfig, FederateError> {
    let mut config = AggregatorConfig::new(request.strategy.parse()?);
    config.privacy = request.privacy.as_ref().map(|p| Privacy {
        clip: p.clip,
        noise_multiplier: p.noise_multiplier,
        seed: p.seed,
    });
    config.check()?;
    Ok(config)
}

/// The `config` that round `round`'s `train` and `evaluate` calls receive.
fn task_config(
    federation: &Federation,
    round: u32,
    proximal_mu: Option<f64>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut config = federation.request.config.clone();
    config.insert("round".into(), round.into());
    config.insert("rounds".into(), federation.request.rounds.into());
    config.insert(
        "local_epochs".into(),
        federation.request.local_epochs.into(),
    );
    config.insert("federation".into(), federation.id.into());
    if let Some(mu) = proximal_mu {
        config.insert("proximal_mu".into(), mu.into());
    }
    config
}

/// How many of `available` nodes a round asks: the `fraction` of them rounded up, at
/// least `min`, at most all.
fn clients_wanted(available: usize, fraction: f64, min: usize) -> usize {
    ((fraction * available as f64).ceil() as usize)
        .max(min)
        .min(available)
}

fn client_mut<'a>(round: &'a mut Round, node: &str) -> &'a mut ClientRecord {
    let index = round
        .clients
        .iter()
        .position(|c| c.node == node)
        .unwrap_or_else(|| {
            round.clients.push(ClientRecord::new(node));
            round.clients.len() - 1
        });
    &mut round.clients[index]
}

fn status_of(status: mycel_federate::ClientStatus) -> ClientStatus {
    match status {
        mycel_federate::ClientStatus::Included | mycel_federate::ClientStatus::Pending => {
            ClientStatus::Included
        }
        mycel_federate::ClientStatus::NotSelected => ClientStatus::Rejected {
            reason: "not selected by the strategy (an outlier among the updates)".into(),
        },
        mycel_federate::ClientStatus::Rejected(reason) => ClientStatus::Rejected {
            reason: reason.to_string(),
        },
    }
}

fn too_few(got: usize, min: usize, outcomes: &[mycel_federate::ClientOutcome]) -> String {
    let rejected: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.status {
            mycel_federate::ClientStatus::Rejected(r) => Some(format!("{}: {r}", o.client)),
            _ => None,
        })
        .collect();
    let mut message = format!("{got} usable update(s), fewer than min-clients {min}");
    if !rejected.is_empty() {
        message.push_str(&format!(" (rejected: {})", rejected.join("; ")));
    }
    message
}

/// The round's federated evaluation: losses and metrics averaged by example count.
fn evaluation_of(clients: &[ClientRecord]) -> Option<Evaluation> {
    let answered: Vec<&ClientEvaluation> = clients
        .iter()
        .filter_map(|c| c.evaluation.as_ref())
        .collect();
    let examples: u64 = answered.iter().map(|e| e.examples).sum();
    if examples == 0 {
        return None;
    }
    let loss = answered
        .iter()
        .map(|e| e.loss * e.examples as f64)
        .sum::<f64>()
        / examples as f64;
    Some(Evaluation {
        loss,
        examples,
        metrics: weighted_metrics(answered.iter().map(|e| (e.examples, &e.metrics))),
        clients: answered.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluated(node: &str, loss: f64, examples: u64, accuracy: f64) -> ClientRecord {
        ClientRecord {
            node: node.into(),
            status: ClientStatus::Included,
            examples,
            train_ms: None,
            metrics: BTreeMap::new(),
            evaluation: Some(ClientEvaluation {
                loss,
                examples,
                metrics: BTreeMap::from([("accuracy".into(), accuracy)]),
            }),
            evaluation_error: None,
        }
    }

    #[tokio::test]
    async fn a_result_counts_only_from_the_node_the_task_was_given_to() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn Store> = Arc::new(
            crate::store::RedbStore::open(&dir.path().join("state.redb"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap_or_else(|e| panic!("{e}"));
        let fleet = Arc::new(Fleet::new(
            Arc::clone(&store),
            Duration::from_secs(15),
            crate::Clock::system(),
        ));
        let federations = Federations::new(store, blobs, fleet);
        let (tx, mut rx) = oneshot::channel();
        let weights = BlobHash::of(b"weights");
        lock(&federations.waiting).insert(
            "f1-r1-train-a".into(),
            Waiting {
                node: "a".into(),
                version: mycel_core::VersionId(BlobHash::of(b"v")),
                weights,
                result: tx,
            },
        );
        let failed = || TaskResult::Failed { reason: "x".into() };
        assert_eq!(federations.task_reads("a").len(), 1);
        assert!(federations.task_reads("b").is_empty());
        assert_eq!(
            federations.complete("f1-r1-train-a", Some("b"), failed()),
            Completion::NotYours { owner: "a".into() }
        );
        assert!(rx.try_recv().is_err(), "b's result reached the round");
        assert_eq!(
            federations.complete("f1-r1-train-a", Some("a"), failed()),
            Completion::Accepted
        );
        assert_eq!(rx.try_recv().ok(), Some(failed()));
        assert_eq!(
            federations.complete("f1-r1-train-a", None, failed()),
            Completion::NotAwaited
        );
    }

    #[test]
    fn evaluation_is_weighted_by_examples() {
        let mut silent = evaluated("c", 0.0, 0, 0.0);
        silent.evaluation = None;
        silent.evaluation_error = Some("gone".into());
        let clients = [
            evaluated("a", 1.0, 30, 0.9),
            evaluated("b", 3.0, 10, 0.5),
            silent,
        ];
        let evaluation = evaluation_of(&clients).unwrap();
        assert_eq!(evaluation.clients, 2);
        assert_eq!(evaluation.examples, 40);
        assert!((evaluation.loss - 1.5).abs() < 1e-12);
        assert!((evaluation.metrics["accuracy"] - 0.8).abs() < 1e-12);
        assert_eq!(evaluation_of(&clients[2..]), None);
    }

    #[test]
    fn a_round_asks_the_fraction_rounded_up_but_at_least_min_clients() {
        assert_eq!(clients_wanted(10, 1.0, 1), 10);
        assert_eq!(clients_wanted(10, 0.25, 1), 3);
        assert_eq!(clients_wanted(10, 0.1, 4), 4);
        assert_eq!(clients_wanted(3, 0.5, 5), 3);
        assert_eq!(clients_wanted(7, 0.01, 1), 1);
    }

    #[test]
    fn krum_leftovers_read_as_rejected_with_a_reason() {
        match status_of(mycel_federate::ClientStatus::NotSelected) {
            ClientStatus::Rejected { reason } => assert!(reason.contains("not selected")),
            other => panic!("{other:?}"),
        }
    }
}
