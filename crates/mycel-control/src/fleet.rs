//! The fleet control loop: nodes register and heartbeat, deployments change, replicas
//! become ready or fail, and each change runs the pure reconciler, publishes the new
//! assignments to watchers and moves rollouts along ([`rollout`]).
//!
//! Durable: nodes, deployments, rollouts, assignments (in the [`Store`]). Soft, rebuilt
//! from the next heartbeats after a restart: last-heartbeat times and replica statuses.

mod rollout;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mycel_core::api::{
    DeploymentView, FleetStatus, Heartbeat, LocationCount, NodeView, ReplicaView, RouteModel,
    RouteReplica, RoutingTable,
};
use mycel_core::fleet::{
    Assignment, GpuUse, Node, NodeSpec, NodeState, ReplicaId, ReplicaState, ReplicaStatus, Unplaced,
};
use mycel_core::reconcile::reconcile_reported;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::registry::blocking;
use crate::store::{Store, StoreError};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The fleet's live state and the loop that keeps assignments up to date.
pub(crate) struct Fleet {
    store: Arc<dyn Store>,
    /// Bumped on every assignment change; long-polls wait on it.
    generation: watch::Sender<u64>,
    /// Bumped on every change a gateway cares about: assignments, and replicas becoming
    /// ready or not; gateways' long-polls wait on it.
    routes: watch::Sender<u64>,
    heartbeats: Mutex<HashMap<String, u64>>,
    /// Nodes whose replica states arrived since this process started.
    reported: Mutex<HashSet<String>>,
    /// How each node's GPUs were used at its last heartbeat.
    gpu_use: Mutex<HashMap<String, Vec<GpuUse>>>,
    /// Assignments by node, and the generation they were read at: one read of the
    /// table per generation however many nodes' long-polls it wakes. Held while it is
    /// filled, so those arriving together wait for one read instead of each making one.
    placed: tokio::sync::Mutex<(u64, Arc<Placed>)>,
    statuses: Mutex<HashMap<ReplicaId, ReplicaStatus>>,
    unplaced: Mutex<Vec<Unplaced>>,
    /// Serializes reconciles so two never interleave their read and write.
    reconciling: tokio::sync::Mutex<()>,
    /// Reconciles asked for so far, and how many of those a finished reconcile covered:
    /// callers queued behind one that started after they asked need not run another,
    /// so a burst of heartbeats costs a few reconciles, not one each.
    reconcile_asked: std::sync::atomic::AtomicU64,
    reconcile_covered: std::sync::atomic::AtomicU64,
    lost_after: Duration,
    /// When this process started: replica states are soft and arrive with heartbeats.
    started: std::time::Instant,
    /// What heartbeats, silences and rollout deadlines are measured by.
    clock: crate::Clock,
    /// How long reconciles take, for `/metrics`.
    reconcile_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Waits until `generation` passes `after`, `wait` elapses or `stop`; returns the
/// generation then. The long-polls of agents, gateways and the CLI rest on it.
pub(crate) async fn wait_past(
    generation: &watch::Sender<u64>,
    after: u64,
    wait: Duration,
    stop: &CancellationToken,
) -> u64 {
    let mut rx = generation.subscribe();
    if *rx.borrow_and_update() <= after {
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
    }
    let now = *generation.borrow();
    now
}

/// The replicas whose agents last said they are ready.
fn ready_set(statuses: &HashMap<ReplicaId, ReplicaStatus>) -> HashSet<&str> {
    statuses
        .values()
        .filter(|s| s.state == ReplicaState::Ready)
        .map(|s| s.replica.as_str())
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves plain data behind; keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Assignments, indexed for the calls every node makes.
#[derive(Default)]
struct Placed {
    /// Replica id → node.
    node_of: HashMap<String, String>,
    /// Node → its assignments.
    by_node: HashMap<String, Vec<Assignment>>,
}

impl Fleet {
    pub(crate) fn new(store: Arc<dyn Store>, lost_after: Duration, clock: crate::Clock) -> Self {
        Self {
            store,
            generation: watch::Sender::new(1),
            routes: watch::Sender::new(1),
            heartbeats: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            gpu_use: Mutex::new(HashMap::new()),
            // Generations start at 1: the first heartbeat reads the store.
            placed: tokio::sync::Mutex::new((0, Arc::default())),
            statuses: Mutex::new(HashMap::new()),
            unplaced: Mutex::new(Vec::new()),
            reconciling: tokio::sync::Mutex::new(()),
            reconcile_asked: Default::default(),
            reconcile_covered: Default::default(),
            lost_after,
            started: std::time::Instant::now(),
            clock,
            // 1 ms to ~16 s.
            reconcile_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
        }
    }

    /// How long reconciles take.
    pub(crate) fn reconcile_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.reconcile_seconds.clone()
    }

    /// Now, by the control plane's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Recomputes assignments; publishes a new generation if they changed. Returns once
    /// a reconcile that began after this call has finished: it saw whatever the caller
    /// changed before calling.
    pub(crate) async fn reconcile(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.reconcile_asked.fetch_add(1, SeqCst) + 1;
        let _guard = self.reconciling.lock().await;
        if self.reconcile_covered.load(SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken after its caller's change: this reconcile,
        // which reads the store and the statuses only now, covers them all.
        let covers = self.reconcile_asked.load(SeqCst);
        let started = std::time::Instant::now();
        let done = self.reconcile_locked().await;
        if done.is_ok() {
            self.reconcile_covered.fetch_max(covers, SeqCst);
        }
        self.reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        done
    }

    /// [`Fleet::reconcile`] for a caller that holds `reconciling`.
    async fn reconcile_locked(&self) -> Result<(), StoreError> {
        // A rollout that ends may change what a deployment serves (an automatic
        // rollback); that needs one more plan.
        for _ in 0..3 {
            if !self.reconcile_once().await? {
                break;
            }
        }
        Ok(())
    }

    /// One plan, written if it changed, then rollouts moved along; true if a rollout
    /// changed a deployment.
    async fn reconcile_once(&self) -> Result<bool, StoreError> {
        let (deployments, nodes, current) = blocking(&self.store, |s| {
            Ok((s.deployments()?, s.nodes()?, s.assignments()?))
        })
        .await?;
        let statuses = lock(&self.statuses).clone();
        let ready = ready_set(&statuses);
        let reported: HashSet<&str> = statuses.keys().map(String::as_str).collect();
        let plan = reconcile_reported(&deployments, &nodes, &current, &ready, &reported);
        *lock(&self.unplaced) = plan.unplaced.clone();
        if plan.assignments != current {
            let assignments = plan.assignments.clone();
            blocking(&self.store, move |s| s.replace_assignments(&assignments)).await?;
            let live: std::collections::HashSet<&str> = plan
                .assignments
                .iter()
                .map(|a| a.replica.as_str())
                .collect();
            lock(&self.statuses).retain(|replica, _| live.contains(replica.as_str()));
            self.generation.send_modify(|g| *g += 1);
            self.routes.send_modify(|g| *g += 1);
            tracing::info!(
                replicas = plan.assignments.len(),
                generation = *self.generation.borrow(),
                "assignments changed"
            );
        }
        self.advance_rollouts(&deployments, &plan.assignments, &statuses, &plan.in_place)
            .await
    }

    /// A revoked node is gone: forget what it reported and place its replicas elsewhere.
    pub(crate) async fn forget(&self, node: &str) -> Result<(), StoreError> {
        lock(&self.heartbeats).remove(node);
        self.reconcile().await?;
        self.routes.send_modify(|g| *g += 1);
        Ok(())
    }

    /// An agent registers (or re-registers) its node.
    pub(crate) async fn register(&self, spec: NodeSpec) -> Result<Node, StoreError> {
        let now = self.now_ms();
        let node = Node {
            spec,
            state: NodeState::Ready,
            last_heartbeat_ms: now,
        };
        lock(&self.heartbeats).insert(node.spec.name.clone(), now);
        let stored = node.clone();
        blocking(&self.store, move |s| s.put_node(&stored)).await?;
        tracing::info!(node = %node.spec.name, location = %node.spec.location, "node registered");
        self.reconcile().await?;
        Ok(node)
    }

    /// A heartbeat: the node is alive, and its replicas are as reported. Returns false
    /// if the node is unknown (it must register first).
    pub(crate) async fn heartbeat(
        &self,
        node_name: &str,
        Heartbeat { replicas, gpus }: Heartbeat,
    ) -> Result<bool, StoreError> {
        let owned = node_name.to_owned();
        let read = owned.clone();
        let Some(node) = blocking(&self.store, move |s| s.node(&read)).await? else {
            return Ok(false);
        };
        // A node speaks for the replicas assigned to it, and for no other.
        let placed = self.placed().await?;
        let mine = |replica: &str| placed.node_of.get(replica).is_some_and(|n| n == node_name);
        let now = self.now_ms();
        lock(&self.heartbeats).insert(node_name.to_owned(), now);
        lock(&self.reported).insert(node_name.to_owned());
        lock(&self.gpu_use).insert(node_name.to_owned(), gpus);
        let (readiness_changed, failed) = {
            let mut statuses = lock(&self.statuses);
            let (mut changed, mut failed) = (false, false);
            // A draining replica is no longer assigned; it has nothing to tell.
            for status in replicas
                .into_iter()
                .filter(|s| s.state != ReplicaState::Draining)
                .filter(|s| mine(&s.replica))
            {
                let ready = status.state == ReplicaState::Ready;
                let newly_failed = matches!(status.state, ReplicaState::Failed { .. });
                let old = statuses.insert(status.replica.clone(), status);
                let was_ready = old.as_ref().is_some_and(|o| o.state == ReplicaState::Ready);
                let was_failed =
                    old.is_some_and(|o| matches!(o.state, ReplicaState::Failed { .. }));
                changed |= ready != was_ready;
                failed |= newly_failed && !was_failed;
            }
            (changed, failed)
        };
        if readiness_changed {
            self.routes.send_modify(|g| *g += 1);
        }
        if readiness_changed || failed {
            // Rollouts move on readiness: an old replica goes, a new one starts, a
            // failure rolls back.
            self.reconcile().await?;
        }
        if node.state == NodeState::Lost {
            // Read again: a registration may have changed the node since, or a revoke
            // removed it; only its state is this heartbeat's to change.
            let fresh = blocking(&self.store, move |s| s.node(&owned)).await?;
            if let Some(mut fresh) = fresh.filter(|n| n.state == NodeState::Lost) {
                fresh.state = NodeState::Ready;
                fresh.last_heartbeat_ms = now;
                tracing::info!(node = %node_name, "node is back");
                blocking(&self.store, move |s| s.put_node(&fresh)).await?;
                // Its ready replicas are routable again: routes leave out those on
                // nodes that are not ready, and the readiness noted above was read
                // while this one still was not.
                self.routes.send_modify(|g| *g += 1);
                self.reconcile().await?;
            }
        }
        Ok(true)
    }

    /// Marks nodes whose heartbeats stopped as lost, and re-places their replicas.
    async fn check_heartbeats(&self) -> Result<(), StoreError> {
        let nodes = blocking(&self.store, |s| s.nodes()).await?;
        let now = self.now_ms();
        let lost_after = self.lost_after.as_millis() as u64;
        let mut lost = Vec::new();
        let mut lost_names = HashSet::new();
        for mut node in nodes.into_iter().filter(|n| n.state == NodeState::Ready) {
            // A node not heard from since this process started gets a full grace period.
            let last = *lock(&self.heartbeats)
                .entry(node.spec.name.clone())
                .or_insert(now);
            if now.saturating_sub(last) > lost_after {
                tracing::warn!(node = %node.spec.name, silent_ms = now - last, "node lost: no heartbeat");
                node.state = NodeState::Lost;
                node.last_heartbeat_ms = last;
                lost_names.insert(node.spec.name.clone());
                lost.push(node);
            }
        }
        if !lost.is_empty() {
            // One transaction however many went silent together.
            blocking(&self.store, move |s| s.put_nodes(&lost)).await?;
            // What a lost node's replicas last said is stale: none counts as ready (they
            // stay assigned until replaced, and say again when the node is back).
            let assignments = blocking(&self.store, |s| s.assignments()).await?;
            let stale: HashSet<&str> = assignments
                .iter()
                .filter(|a| lost_names.contains(&a.node))
                .map(|a| a.replica.as_str())
                .collect();
            lock(&self.statuses).retain(|replica, _| !stale.contains(replica.as_str()));
            self.routes.send_modify(|g| *g += 1);
            tracing::info!("re-placing the replicas of lost nodes");
        }
        // Also how rollout deadlines are noticed.
        self.reconcile().await
    }

    /// Runs the heartbeat checker until `stop` is cancelled.
    pub(crate) async fn watch_heartbeats(self: Arc<Self>, stop: CancellationToken) {
        let period = (self.lost_after / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = self.clock.moved() => {}
            }
            if let Err(e) = self.check_heartbeats().await {
                tracing::error!(error = %e, "heartbeat check failed");
            }
        }
    }

    /// The assignments as of now, by node and by replica.
    async fn placed(&self) -> Result<Arc<Placed>, StoreError> {
        let mut cached = self.placed.lock().await;
        // Read before the store: what is cached is at least this new, never older.
        let generation = self.generation();
        if cached.0 == generation {
            return Ok(Arc::clone(&cached.1));
        }
        let assignments = blocking(&self.store, |s| s.assignments()).await?;
        let mut placed = Placed::default();
        for a in assignments {
            placed.node_of.insert(a.replica.clone(), a.node.clone());
            placed.by_node.entry(a.node.clone()).or_default().push(a);
        }
        let placed = Arc::new(placed);
        *cached = (generation, Arc::clone(&placed));
        Ok(placed)
    }

    /// The assignments' generation now: it moves whenever they change.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// A node's assignments, waiting up to `wait` for a generation newer than `after`.
    pub(crate) async fn assignments_for(
        &self,
        node_name: &str,
        after: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<(u64, Vec<Assignment>), StoreError> {
        let generation = wait_past(&self.generation, after, wait, stop).await;
        let placed = self.placed().await?;
        let mine = placed.by_node.get(node_name).cloned().unwrap_or_default();
        Ok((generation, mine))
    }

    /// Right after a restart, waits until every node that was ready has reported its
    /// replicas (or `lost_after`, at most 20 s, has passed): a table built before would
    /// list no replica as ready, and gateways would drop routes that still serve. The
    /// bound keeps a gateway's long-poll inside its client's timeout.
    async fn hear_from_nodes(&self, stop: &CancellationToken) -> Result<(), StoreError> {
        let patience = self.lost_after.min(Duration::from_secs(20));
        while self.started.elapsed() < patience {
            let nodes = blocking(&self.store, |s| s.nodes()).await?;
            let silent = {
                let heard = lock(&self.reported);
                nodes
                    .iter()
                    .filter(|n| n.state == NodeState::Ready)
                    .any(|n| !heard.contains(&n.spec.name))
            };
            if !silent {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        Ok(())
    }

    /// The routing table, waiting up to `wait` for a generation newer than `after`.
    pub(crate) async fn routes(
        &self,
        after: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<RoutingTable, StoreError> {
        self.hear_from_nodes(stop).await?;
        // The generation is read before the state: a change racing this read bumps it
        // again, so the gateway's next poll picks it up.
        let generation = wait_past(&self.routes, after, wait, stop).await;
        let (deployments, nodes, assignments, tokens) = blocking(&self.store, |s| {
            Ok((
                s.deployments()?,
                s.nodes()?,
                s.assignments()?,
                route_tokens(s)?,
            ))
        })
        .await?;
        let statuses = lock(&self.statuses).clone();
        let urls: HashMap<&str, &str> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| (n.spec.name.as_str(), n.spec.agent_url.as_str()))
            .collect();
        let models = deployments
            .into_iter()
            .map(|d| {
                let replicas = assignments
                    .iter()
                    .filter(|a| a.deployment == d.name)
                    .filter(|a| {
                        statuses
                            .get(&a.replica)
                            .is_some_and(|s| s.state == ReplicaState::Ready)
                    })
                    .filter_map(|a| {
                        Some(RouteReplica {
                            replica: a.replica.clone(),
                            version: a.version,
                            seq: a.seq,
                            location: a.location.clone(),
                            agent_url: (*urls.get(a.node.as_str())?).to_owned(),
                        })
                    })
                    .collect();
                RouteModel {
                    name: d.name,
                    component: d.component,
                    version: d.version,
                    seq: d.seq,
                    signature: d.signature,
                    timeout_ms: d.serve.timeout_ms,
                    replicas,
                }
            })
            .collect();
        Ok(RoutingTable {
            generation,
            models,
            tokens,
        })
    }

    /// Gateways' routing tables changed other than through the fleet (a token made
    /// or revoked): wakes their long-polls.
    pub(crate) fn routes_changed(&self) {
        self.routes.send_modify(|g| *g += 1);
    }

    /// Everything `mycel status` shows.
    pub(crate) async fn status(&self) -> Result<FleetStatus, StoreError> {
        let (deployments, nodes, assignments, mut latest) = blocking(&self.store, |s| {
            let deployments = s.deployments()?;
            let latest = deployments
                .iter()
                .map(|d| Ok((d.name.clone(), s.rollouts(&d.name)?.pop())))
                .collect::<Result<HashMap<_, _>, StoreError>>()?;
            Ok((deployments, s.nodes()?, s.assignments()?, latest))
        })
        .await?;
        let statuses = lock(&self.statuses).clone();
        let gpu_use = lock(&self.gpu_use).clone();
        let is_ready = |a: &Assignment| {
            statuses
                .get(&a.replica)
                .is_some_and(|s| s.state == ReplicaState::Ready)
        };
        let nodes = nodes
            .into_iter()
            .map(|node| {
                let mine: Vec<&Assignment> = assignments
                    .iter()
                    .filter(|a| a.node == node.spec.name)
                    .collect();
                NodeView {
                    replicas: mine.len() as u32,
                    // Summing from 0.0: an empty `sum()` of f64 is -0.0.
                    cpus_used: mine.iter().fold(0.0, |used, a| used + a.resources.cpus),
                    memory_used: mine.iter().map(|a| a.resources.memory_bytes).sum(),
                    gpus_used: mine.iter().map(|a| a.resources.gpus).sum(),
                    gpu_use: gpu_use.get(&node.spec.name).cloned().unwrap_or_default(),
                    node,
                }
            })
            .collect();
        let deployments = deployments
            .into_iter()
            .map(|deployment| {
                let locations = deployment
                    .copies
                    .iter()
                    .map(|(location, &desired)| LocationCount {
                        location: location.clone(),
                        desired,
                        ready: assignments
                            .iter()
                            .filter(|a| {
                                a.deployment == deployment.name
                                    && &a.location == location
                                    && is_ready(a)
                            })
                            .count() as u32,
                    })
                    .collect();
                DeploymentView {
                    rollout: latest.remove(&deployment.name).flatten(),
                    deployment,
                    locations,
                }
            })
            .collect();
        let replicas = assignments
            .into_iter()
            .map(|assignment| ReplicaView {
                status: statuses.get(&assignment.replica).cloned(),
                assignment,
            })
            .collect();
        Ok(FleetStatus {
            nodes,
            deployments,
            replicas,
            unplaced: lock(&self.unplaced).clone(),
        })
    }
}

/// Every operator's token as gateways check callers: the admin token for every model,
/// the others as their grants say. Nodes' credentials call no models.
fn route_tokens(store: &dyn Store) -> Result<Vec<mycel_core::api::RouteToken>, StoreError> {
    let mut tokens = Vec::new();
    for (hash, name) in store.token_names()? {
        if name.starts_with(crate::store::NODE_TOKEN_PREFIX) {
            continue;
        }
        let hash = blake3::Hash::from_bytes(hash).to_hex().to_string();
        let (components, expires_ms) = if name == crate::auth::ADMIN {
            (Vec::new(), None)
        } else {
            match store.grant(&name)? {
                Some(grant) => (grant.components, grant.expires_ms),
                None => continue,
            }
        };
        tokens.push(mycel_core::api::RouteToken {
            hash,
            name,
            components,
            expires_ms,
        });
    }
    Ok(tokens)
}
