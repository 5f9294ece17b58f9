//! `/v1/nodes`: agents register, heartbeat and watch their assignments.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use mycel_core::api::{Heartbeat, NodeAssignments};
use mycel_core::fleet::{Node, NodeSpec};
use mycel_core::manifest::validate_name;
use mycel_core::ErrorCode;
use serde::Deserialize;

use super::{ApiError, ApiJson, Caller};
use crate::AppState;

/// The longest a watch may hang before answering with no change.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn register(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<NodeSpec>,
) -> Result<Json<Node>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    if spec.name != name {
        return Err(invalid(format!(
            "node name {:?} in the body differs from {name:?} in the URL",
            spec.name
        )));
    }
    validate_name(&spec.name).map_err(|m| invalid(format!("node {m}")))?;
    validate_name(&spec.location).map_err(|m| invalid(format!("location {m}")))?;
    if !(spec.cpus.is_finite() && spec.cpus > 0.0) || spec.memory_bytes == 0 {
        return Err(invalid(format!(
            "node {name} offers {} cpus and {} bytes of memory; expected both above 0",
            spec.cpus, spec.memory_bytes
        )));
    }
    Ok(Json(state.fleet.register(spec).await?))
}

pub(super) async fn heartbeat(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if state.fleet.heartbeat(&name, heartbeat.replicas).await? {
        Ok(Json(serde_json::json!({})))
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("node {name:?} is not registered; register it first"),
        ))
    }
}

#[derive(Deserialize)]
pub(super) struct WatchQuery {
    /// Answer once the generation is past this one.
    #[serde(default)]
    pub(super) after: u64,
    /// How long to wait for a change, in milliseconds.
    #[serde(default = "default_wait")]
    pub(super) wait_ms: u64,
}

fn default_wait() -> u64 {
    30_000
}

pub(super) async fn assignments(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<WatchQuery>,
) -> Result<Json<NodeAssignments>, ApiError> {
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let (generation, assignments) = state
        .fleet
        .assignments_for(&name, query.after, wait, &state.stop)
        .await?;
    Ok(Json(NodeAssignments {
        generation,
        assignments,
    }))
}
