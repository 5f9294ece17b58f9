//! What a node's credential may read: the versions assigned to the node or named by its
//! pending federation tasks, every version those depend on, their blobs, and the tasks'
//! weights. Computed from the store on each request, so an assignment that moves away
//! takes the access with it.

use std::collections::HashSet;

use mycel_core::{BlobHash, ErrorCode, VersionId};

use super::{ApiError, Principal};
use crate::registry::blocking;
use crate::AppState;

/// What a node may read.
#[derive(Debug, Default)]
pub(crate) struct NodeReads {
    versions: HashSet<VersionId>,
    blobs: HashSet<BlobHash>,
}

impl NodeReads {
    /// Everything `node` may read now.
    pub(crate) async fn of(state: &AppState, node: &str) -> Result<Self, ApiError> {
        let tasks = state.federations.task_reads(node);
        let owned = node.to_owned();
        blocking(&state.store, move |s| {
            let mut reads = NodeReads::default();
            let mut pending: Vec<VersionId> = s
                .assignments()?
                .into_iter()
                .filter(|a| a.node == owned)
                .map(|a| a.version)
                .collect();
            for (version, weights) in tasks {
                pending.push(version);
                reads.blobs.insert(weights);
            }
            while let Some(id) = pending.pop() {
                if !reads.versions.insert(id) {
                    continue;
                }
                let Some(version) = s.version(&id)? else {
                    continue;
                };
                reads.blobs.extend(version.files.iter().map(|f| f.hash));
                pending.extend(version.dependencies.iter().map(|d| d.id));
            }
            Ok(reads)
        })
        .await
        .map_err(ApiError::internal)
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
    if NodeReads::of(state, node).await?.versions.contains(&id) {
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
    if NodeReads::of(state, node).await?.blobs.contains(&hash) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("node {node:?} may read only the blobs of what is assigned to it; {hash} is not"),
    ))
}
