//! What a node's credential may read: the versions assigned to the node or named by its
//! pending federation tasks, every version those depend on, their blobs, and the tasks'
//! weights. What follows from the assignments is kept per node until the assignments
//! change (a sync asks once per blob); what follows from tasks is read afresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use mycel_core::{BlobHash, ErrorCode, VersionId};

use super::{ApiError, Principal};
use crate::registry::blocking;
use crate::store::{Store, StoreError};
use crate::AppState;

/// What a node may read.
#[derive(Debug, Default)]
pub(crate) struct NodeReads {
    versions: HashSet<VersionId>,
    blobs: HashSet<BlobHash>,
}

/// Per node, the assignment generation its reads were worked out at, and them.
#[derive(Default)]
pub(crate) struct ReadsCache(Mutex<HashMap<String, (u64, Arc<NodeReads>)>>);

impl NodeReads {
    /// `versions`, the versions they depend on, and all their blobs.
    fn closure(store: &dyn Store, versions: Vec<VersionId>) -> Result<Self, StoreError> {
        let mut reads = NodeReads::default();
        let mut pending = versions;
        while let Some(id) = pending.pop() {
            if !reads.versions.insert(id) {
                continue;
            }
            let Some(version) = store.version(&id)? else {
                continue;
            };
            reads.blobs.extend(version.files.iter().map(|f| f.hash));
            pending.extend(version.dependencies.iter().map(|d| d.id));
        }
        Ok(reads)
    }

    /// What `node` may read because of its assignments.
    async fn assigned(state: &AppState, node: &str) -> Result<Arc<Self>, ApiError> {
        // Read before the store: the reads are at least this new, never older.
        let generation = state.fleet.generation();
        let cache = &state.node_reads.0;
        let cached = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .filter(|(at, _)| *at == generation)
            .map(|(_, reads)| Arc::clone(reads));
        if let Some(reads) = cached {
            return Ok(reads);
        }
        let owned = node.to_owned();
        let reads = blocking(&state.store, move |s| {
            let versions = s
                .assignments()?
                .into_iter()
                .filter(|a| a.node == owned)
                .map(|a| a.version)
                .collect();
            NodeReads::closure(s, versions)
        })
        .await
        .map_err(ApiError::internal)?;
        let reads = Arc::new(reads);
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned(), (generation, Arc::clone(&reads)));
        Ok(reads)
    }

    /// What `node` may read because of its pending federation tasks.
    async fn tasks(state: &AppState, node: &str) -> Result<Self, ApiError> {
        let tasks = state.federations.task_reads(node);
        if tasks.is_empty() {
            return Ok(Self::default());
        }
        let versions = tasks.iter().map(|(version, _)| *version).collect();
        let mut reads = blocking(&state.store, move |s| NodeReads::closure(s, versions))
            .await
            .map_err(ApiError::internal)?;
        reads
            .blobs
            .extend(tasks.iter().map(|(_, weights)| *weights));
        Ok(reads)
    }
}

/// Refuses a node's credential reading a version not assigned to it.
pub(crate) async fn check_version(
    state: &AppState,
    principal: &Principal,
    id: VersionId,
    label: &str,
) -> Result<(), ApiError> {
    let Some(node) = principal.node() else {
        return Ok(());
    };
    if NodeReads::assigned(state, node)
        .await?
        .versions
        .contains(&id)
        || NodeReads::tasks(state, node).await?.versions.contains(&id)
    {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("node {node:?} may read only the versions assigned to it; {label} is not"),
    ))
}

/// Refuses a node's credential reading a blob of no version assigned to it.
pub(crate) async fn check_blob(
    state: &AppState,
    principal: &Principal,
    hash: BlobHash,
) -> Result<(), ApiError> {
    let Some(node) = principal.node() else {
        return Ok(());
    };
    if NodeReads::assigned(state, node)
        .await?
        .blobs
        .contains(&hash)
        || NodeReads::tasks(state, node).await?.blobs.contains(&hash)
    {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("node {node:?} may read only the blobs of what is assigned to it; {hash} is not"),
    ))
}
