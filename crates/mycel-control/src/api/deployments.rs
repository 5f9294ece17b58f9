//! `/v1/deployments` and `/v1/status`: desired state, and the fleet as it is.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use mycel_core::api::{DeployRequest, FleetStatus, RoutingTable};
use mycel_core::fleet::Deployment;
use mycel_core::manifest::validate_name;
use mycel_core::ErrorCode;

use super::{ApiError, ApiJson, Caller};
use crate::registry::{self, blocking};
use crate::AppState;

/// The most copies of one deployment in one location.
const MAX_COPIES: u32 = 1000;

pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<Json<Deployment>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    validate_name(&name).map_err(|m| invalid(format!("deployment {m}")))?;
    let component = request.component.unwrap_or_else(|| name.clone());
    validate_name(&component).map_err(|m| invalid(format!("component {m}")))?;
    if request.copies.is_empty() {
        return Err(invalid(
            "no copies given; expected copies per location such as {\"new-york\": 2}".into(),
        ));
    }
    for (location, &copies) in &request.copies {
        validate_name(location).map_err(|m| invalid(format!("location {m}")))?;
        if copies > MAX_COPIES {
            return Err(invalid(format!(
                "{copies} copies in {location}; at most {MAX_COPIES}"
            )));
        }
    }
    let version = registry::find_version(&state.store, &component, &request.version).await?;
    let manifest = registry::manifest_of(&state.blobs, &version).await?;
    let mut serve = manifest.serve;
    if let Some(n) = request.max_batch_size {
        if !(1..=4096).contains(&n) {
            return Err(invalid(format!(
                "max_batch_size {n} is out of range; expected 1 to 4096"
            )));
        }
        serve.max_batch_size = n;
    }
    if let Some(ms) = request.batch_wait_ms {
        serve.batch_wait_ms = ms.min(60_000);
    }
    let owned = name.clone();
    let previous = blocking(&state.store, move |s| {
        Ok(s.deployments()?.into_iter().find(|d| d.name == owned))
    })
    .await?;
    let deployment = Deployment {
        name,
        component,
        version: version.id,
        seq: version.seq,
        copies: request.copies,
        serve,
        resources: manifest.resources,
        signature: manifest.signature,
        generation: previous.map_or(1, |p| p.generation + 1),
    };
    let stored = deployment.clone();
    blocking(&state.store, move |s| s.put_deployment(&stored)).await?;
    tracing::info!(deployment = %deployment.name, version = %version.label(), by = %caller, "deployed");
    state.fleet.reconcile().await?;
    Ok(Json(deployment))
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    Ok(Json(blocking(&state.store, |s| s.deployments()).await?))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owned = name.clone();
    if !blocking(&state.store, move |s| s.delete_deployment(&owned)).await? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("deployment {name:?} not found"),
        ));
    }
    state.fleet.reconcile().await?;
    Ok(Json(serde_json::json!({})))
}

pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<FleetStatus>, ApiError> {
    Ok(Json(state.fleet.status().await?))
}

/// `GET /v1/routes?after=G&wait_ms=W`: the routing table, long-polled by gateways.
pub(super) async fn routes(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Query(query): Query<super::nodes::WatchQuery>,
) -> Result<Json<RoutingTable>, ApiError> {
    let wait = Duration::from_millis(query.wait_ms).min(super::nodes::MAX_WAIT);
    let table = state.fleet.routes(query.after, wait, &state.stop).await?;
    Ok(Json(table))
}
