//! The gateway's routing table: which ready replicas serve each model, kept current by
//! long-polling the control plane, and the choice of replica per request (least
//! outstanding requests, same location first). The last table can be kept on disk, so a
//! gateway restarted while the control plane is away serves at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mycel_core::api::{RouteModel, RouteReplica, RouteToken, RoutingTable};
use tokio_util::sync::CancellationToken;

/// A replica as the router sees it.
#[derive(Debug)]
pub struct Replica {
    /// Id, location, URL.
    pub route: RouteReplica,
    /// Requests sent and not yet answered; shared across table updates.
    pub outstanding: Arc<AtomicU32>,
}

/// One model's routes.
#[derive(Debug)]
pub struct Model {
    /// As the control plane describes it.
    pub info: RouteModel,
    /// Its ready replicas.
    pub replicas: Vec<Arc<Replica>>,
}

impl Model {
    /// Whether a ready replica (of version `seq`, if given) besides `this` and those in
    /// `exclude` could take a request.
    pub fn has_other(&self, seq: Option<u64>, exclude: &[String], this: &str) -> bool {
        self.replicas.iter().any(|r| {
            r.route.replica != this
                && !exclude.contains(&r.route.replica)
                && seq.is_none_or(|seq| r.route.seq == seq)
        })
    }
}

/// All models, by name.
#[derive(Debug, Default)]
pub struct Table {
    /// The control plane's generation this was built from.
    pub generation: u64,
    /// Models by name.
    pub models: HashMap<String, Arc<Model>>,
    /// Operators' tokens by hash (hex), for a gateway that requires one.
    pub tokens: HashMap<String, RouteToken>,
}

/// The live table and the counters that outlive its updates.
pub struct Router {
    table: RwLock<Arc<Table>>,
    counters: std::sync::Mutex<HashMap<String, Arc<AtomicU32>>>,
    location: Option<String>,
    /// Breaks ties between equally loaded replicas, so they share the load.
    turn: AtomicUsize,
}

/// Decrements a replica's outstanding count when the request ends, however it ends.
pub struct InFlight(Arc<Replica>);

impl InFlight {
    /// The replica serving this request.
    pub fn replica(&self) -> &Replica {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Router {
    /// An empty router for a gateway in `location` (if any).
    pub fn new(location: Option<String>) -> Self {
        Self {
            table: RwLock::new(Arc::new(Table::default())),
            counters: Default::default(),
            location,
            turn: AtomicUsize::new(0),
        }
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the table, keeping the outstanding counts of replicas that remain.
    pub fn update(&self, routing: RoutingTable) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = HashMap::new();
        let models = routing
            .models
            .into_iter()
            .map(|mut info| {
                let replicas = std::mem::take(&mut info.replicas)
                    .into_iter()
                    .map(|route| {
                        let outstanding = counters.get(&route.replica).cloned().unwrap_or_default();
                        live.insert(route.replica.clone(), Arc::clone(&outstanding));
                        Arc::new(Replica { route, outstanding })
                    })
                    .collect();
                (info.name.clone(), Arc::new(Model { info, replicas }))
            })
            .collect();
        *counters = live;
        let tokens = routing
            .tokens
            .into_iter()
            .map(|token| (token.hash.clone(), token))
            .collect();
        let table = Arc::new(Table {
            generation: routing.generation,
            models,
            tokens,
        });
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// Picks the replica for one request: among replicas (of version `seq`, if given) in
    /// this gateway's location if any is ready there, else among all, the one with the
    /// fewest outstanding requests. `exclude` are replicas that already failed this
    /// request.
    pub fn pick(&self, model: &Model, seq: Option<u64>, exclude: &[String]) -> Option<InFlight> {
        let candidates = |local: bool| {
            model.replicas.iter().filter(move |r| {
                !exclude.contains(&r.route.replica)
                    && seq.is_none_or(|seq| r.route.seq == seq)
                    && (!local || self.location.as_deref() == Some(r.route.location.as_str()))
            })
        };
        let local = self.location.is_some() && candidates(true).next().is_some();
        let count = candidates(local).count();
        if count == 0 {
            return None;
        }
        // Start the scan at a rotating offset so that ties go round-robin.
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % count;
        let chosen = candidates(local)
            .cycle()
            .skip(start)
            .take(count)
            .min_by_key(|r| r.outstanding.load(Ordering::Relaxed))?;
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(chosen)))
    }
}

/// Keeps `router` current until `stop`: long-polls the control plane's routing table,
/// backing off while it is unreachable (the last table keeps serving meanwhile), and
/// keeps each new table in `file` if given. Each request says where this gateway is
/// (`me`: its URL and location), for Prometheus's discovery.
pub async fn follow(
    client: mycel_client::Client,
    router: Arc<Router>,
    file: Option<PathBuf>,
    me: Option<(String, Option<String>)>,
    stop: CancellationToken,
) {
    let mut after = 0;
    let mut retry = Duration::from_millis(100);
    let me = me
        .as_ref()
        .map(|(url, location)| (url.as_str(), location.as_deref()));
    loop {
        let poll = client.watch_routes(after, Duration::from_secs(30), me);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = poll => result,
        };
        match result {
            Ok(table) => {
                retry = Duration::from_millis(100);
                if table.generation != after {
                    after = table.generation;
                    tracing::debug!(
                        generation = after,
                        models = table.models.len(),
                        "routes updated"
                    );
                    if let Some(path) = file.clone() {
                        let kept = table.clone();
                        let saved = tokio::task::spawn_blocking(move || save(&path, &kept)).await;
                        if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
                            tracing::warn!(error = %e, "cannot keep the routing table on disk");
                        }
                    }
                    router.update(table);
                }
            }
            Err(e) => {
                // A control plane that restarts counts generations from the start: ask
                // for its table at once when it is back.
                after = 0;
                tracing::warn!(error = %e, "cannot read routes from the control plane; serving the last known");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The routing table kept in `path`; `None` if there is none.
pub fn load(path: &Path) -> std::io::Result<Option<RoutingTable>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

/// Keeps `table` in `path`: a synced temporary file renamed over the last one.
fn save(path: &Path, table: &RoutingTable) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut file, table)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mycel_core::hash::BlobHash;
    use mycel_core::VersionId;

    fn routing(replicas: &[(&str, &str)]) -> RoutingTable {
        let version = VersionId(BlobHash::of(b"v1"));
        RoutingTable {
            generation: 1,
            models: vec![RouteModel {
                name: "m".into(),
                component: "m".into(),
                version,
                seq: 1,
                signature: None,
                timeout_ms: None,
                replicas: replicas
                    .iter()
                    .map(|(id, location)| RouteReplica {
                        replica: (*id).into(),
                        version,
                        seq: 1,
                        location: (*location).into(),
                        agent_url: format!("http://{id}"),
                    })
                    .collect(),
            }],
            tokens: Vec::new(),
        }
    }

    fn pick(router: &Router, exclude: Option<&str>) -> Option<InFlight> {
        let table = router.table();
        let exclude: Vec<String> = exclude.into_iter().map(str::to_owned).collect();
        router.pick(&table.models["m"], None, &exclude)
    }

    #[test]
    fn least_outstanding_wins_and_ties_rotate() {
        let router = Router::new(None);
        router.update(routing(&[("a", "x"), ("b", "x")]));
        let first = pick(&router, None).unwrap();
        let second = pick(&router, None).unwrap();
        assert_ne!(
            first.replica().route.replica,
            second.replica().route.replica
        );
        drop(first);
        // The one with nothing outstanding now is the one just released.
        let third = pick(&router, None).unwrap();
        assert_ne!(
            third.replica().route.replica,
            second.replica().route.replica
        );
    }

    #[test]
    fn same_location_first_then_anywhere() {
        let router = Router::new(Some("tokyo".into()));
        router.update(routing(&[("far", "london"), ("near", "tokyo")]));
        let held: Vec<InFlight> = (0..3).map(|_| pick(&router, None).unwrap()).collect();
        assert!(held.iter().all(|f| f.replica().route.replica == "near"));
        let other = pick(&router, Some("near")).unwrap();
        assert_eq!(other.replica().route.replica, "far");
        assert!(pick(&router, Some("far")).is_some());
    }

    #[test]
    fn outstanding_counts_survive_updates_and_none_when_empty() {
        let router = Router::new(None);
        router.update(routing(&[("a", "x")]));
        let held = pick(&router, None).unwrap();
        router.update(routing(&[("a", "x"), ("b", "x")]));
        // "a" still has one outstanding request, so "b" is chosen.
        assert_eq!(pick(&router, None).unwrap().replica().route.replica, "b");
        drop(held);
        router.update(routing(&[]));
        assert!(pick(&router, None).is_none());
        assert!(pick(&router, Some("a")).is_none());
    }
}
