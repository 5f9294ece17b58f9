//! Code preparation: sync a version and the versions it depends on, lay each out, and
//! build the environment they need.

use super::*;

/// Everything a worker needs to start, prepared once per replica.
pub(crate) struct Prepared {
    pub(super) python: PathBuf,
    pub(super) version_dir: PathBuf,
    /// Each dependency's name and directory, nearest first.
    pub(super) dependencies: Vec<(String, PathBuf)>,
    pub(super) manifest: Manifest,
    pub(super) serve: ServeOptions,
    pub(super) labels: ModelLabels,
    /// GPUs each worker gets.
    pub(super) gpus: u32,
}

/// Fetches what this node lacks of the assigned version and of every version it depends
/// on, and lays each out in its own directory. Returns the version's directory and each
/// dependency's name and directory, breadth first (its own dependencies by name, then
/// theirs), each component once.
///
/// The assigned id covers the ids of the direct dependencies, each of those covers
/// theirs, and every version is checked against its id: the whole tree is the one the
/// control plane resolved when the version was pushed.
pub(super) async fn sync(
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
pub(super) async fn sync_one(
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
                        check_signature(node, &version, &dir).await?;
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
            let fetched = Arc::new(Fetched::default());
            node.fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, Arc::clone(&fetched));
            let report = sync_version(&node.client, &node.cache, &version, &fetched).await;
            node.fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let report = report.map_err(|e| format!("sync failed: {e}"))?;
            node.metrics.fetched("blob", report.bytes_fetched);
            tracing::info!(version = %version.label(), fetched = report.bytes_fetched, blobs = report.blobs_fetched, "version synced");
            let dir = materialize(&node.cache, &node.versions_dir, &version)
                .await
                .map_err(|e| format!("materialize failed: {e}"))?;
            check_signature(node, &version, &dir).await?;
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

/// With trusted keys, refuses a version whose signature does not hold for the files
/// laid out in `dir`, before anything of it runs.
async fn check_signature(
    node: &NodeContext,
    version: &mycel_core::Version,
    dir: &std::path::Path,
) -> Result<(), String> {
    if node.trust.is_empty() {
        return Ok(());
    }
    let trusted = node.trust.clone();
    let checked = version.clone();
    let dir = dir.to_path_buf();
    let signer =
        tokio::task::spawn_blocking(move || crate::signature::check(&checked, &dir, &trusted))
            .await
            .map_err(|e| format!("signature check stopped: {e}"))?
            .map_err(|e| e.to_string())?;
    tracing::info!(version = %version.label(), signer, "signature verified");
    Ok(())
}

pub(super) async fn prepare(
    node: &NodeContext,
    assignment: &Assignment,
) -> Result<Prepared, String> {
    let replica = &assignment.replica;
    let mut prepared = prepare_code(
        node,
        &assignment.component,
        assignment.version,
        assignment.seq,
        |state, work| {
            node.set(replica, state, None, 0);
            if let Some(work) = work {
                node.waits_on(replica, work);
            }
        },
    )
    .await?;
    prepared.serve = assignment.serve;
    prepared.labels = labels_of(node, assignment);
    prepared.gpus = assignment.resources.gpus;
    Ok(prepared)
}

/// Syncs a version and what it depends on, and builds its environment; `phase` hears
/// when each step starts, and the work it waits on. Serving options and labels are
/// left at their defaults.
pub(crate) async fn prepare_code(
    node: &NodeContext,
    component: &str,
    version: VersionId,
    seq: u64,
    phase: impl Fn(ReplicaState, Option<Work>),
) -> Result<Prepared, String> {
    phase(ReplicaState::Syncing, Some(Work::Fetch(version)));
    let (version_dir, dependencies) = sync(node, component, version, seq).await?;
    let text = tokio::fs::read_to_string(version_dir.join(MANIFEST_FILE))
        .await
        .map_err(|e| format!("reading {MANIFEST_FILE}: {e}"))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;

    let spec =
        EnvSpec::from_tree(&manifest, &version_dir, &dependencies).map_err(|e| e.to_string())?;
    let runtime = node.envs.runtime_hash().await.map_err(|e| e.to_string())?;
    phase(
        ReplicaState::BuildingEnv,
        Some(Work::Env(spec.key(&runtime))),
    );
    let env = node
        .envs
        .ensure_with(&spec, &runtime)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(component, seq, env = %env.key, reused = env.reused, "environment ready");
    Ok(Prepared {
        python: env.python,
        version_dir,
        dependencies,
        manifest,
        serve: ServeOptions::default(),
        labels: ModelLabels::default(),
        gpus: 0,
    })
}
