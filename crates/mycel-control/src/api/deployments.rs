//! `/v1/deployments` and `/v1/status`: desired state, its rollouts, and the fleet as it
//! is.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use mycel_core::api::{DeployRequest, FleetStatus, RollbackRequest, RolloutStatus, RoutingTable};
use mycel_core::fleet::{Deployment, Rollout, RolloutKind, RolloutOutcome, Served};
use mycel_core::manifest::validate_name;
use mycel_core::ErrorCode;

use serde::Deserialize;

use super::{ApiError, ApiJson, Caller, Scope};
use crate::registry::{self, blocking};
use crate::AppState;

/// The most copies of one deployment in one location.
const MAX_COPIES: u32 = 1000;

pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Scope(grant): Scope,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<Json<Deployment>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    validate_name(&name).map_err(|m| invalid(format!("deployment {m}")))?;
    let component = request.component.unwrap_or_else(|| name.clone());
    validate_name(&component).map_err(|m| invalid(format!("component {m}")))?;
    grant.check_component(&component).map_err(forbidden)?;
    if let Some(existing) = find(&state, &name).await? {
        within(&grant, &existing)?;
    }
    if request.copies.is_empty() {
        return Err(invalid(
            "no copies given; expected copies per location such as {\"new-york\": 2}".into(),
        ));
    }
    for (location, &copies) in &request.copies {
        validate_name(location).map_err(|m| invalid(format!("location {m}")))?;
        grant.check_location(location).map_err(forbidden)?;
        if copies > MAX_COPIES {
            return Err(invalid(format!(
                "{copies} copies in {location}; at most {MAX_COPIES}"
            )));
        }
    }
    let version = registry::find_version(&state.store, &component, &request.version).await?;
    let manifest = registry::manifest_of(&state.blobs, &version).await?;
    let existing = find(&state, &name).await?;
    let require_signed = request
        .require_signed
        .or(existing.as_ref().map(|e| e.require_signed))
        .unwrap_or(false);
    if require_signed || state.require_signed {
        registry::check_signed(&state.blobs, &version).await?;
    }
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
    if let Some(ms) = request.timeout_ms {
        if !(1..=mycel_core::manifest::MAX_TIMEOUT_MS).contains(&ms) {
            return Err(invalid(format!(
                "timeout_ms {ms} is out of range; expected 1 to {} milliseconds",
                mycel_core::manifest::MAX_TIMEOUT_MS
            )));
        }
        serve.timeout_ms = Some(ms);
    }
    if let Some(deadline) = request.deadline_s {
        if !(1..=MAX_DEADLINE_S).contains(&deadline) {
            return Err(invalid(format!(
                "deadline of {deadline}s is out of range; expected 1 to {MAX_DEADLINE_S} seconds"
            )));
        }
    }
    if let Some(existing) = &existing {
        if existing.component != component {
            return Err(invalid(format!(
                "deployment {name:?} serves component {:?}, not {component:?}; delete it first to serve another component under this name",
                existing.component
            )));
        }
    }
    let deployment = Deployment {
        name,
        component,
        version: version.id,
        seq: version.seq,
        copies: request.copies,
        serve,
        resources: manifest.resources,
        signature: manifest.signature,
        generation: 0,
        surge: request
            .surge
            .or(existing.as_ref().map(|e| e.surge))
            .unwrap_or_default(),
        max_unavailable: request
            .max_unavailable
            .or(existing.as_ref().map(|e| e.max_unavailable))
            .unwrap_or_default(),
        deadline_s: request
            .deadline_s
            .or(existing.as_ref().map(|e| e.deadline_s))
            .unwrap_or(mycel_core::fleet::DEFAULT_DEADLINE_S),
        require_signed,
    };
    let (deployment, rollout) = state
        .fleet
        .start_rollout(deployment, RolloutKind::Deploy, &caller)
        .await?;
    tracing::info!(deployment = %deployment.name, version = %version.label(), by = %caller, rollout = ?rollout.map(|r| r.number), "deployed");
    Ok(Json(deployment))
}

/// Longest rollout deadline accepted: a day.
const MAX_DEADLINE_S: u64 = 86_400;

fn forbidden(denied: crate::policy::Denied) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, denied.0)
}

/// Refuses a token changing a deployment of a component, or with copies in a location,
/// outside its scope.
fn within(grant: &mycel_core::access::Grant, deployment: &Deployment) -> Result<(), ApiError> {
    grant
        .check_component(&deployment.component)
        .map_err(forbidden)?;
    for (location, _) in deployment.copies.iter().filter(|(_, &n)| n > 0) {
        grant.check_location(location).map_err(forbidden)?;
    }
    Ok(())
}

async fn find(state: &AppState, name: &str) -> Result<Option<Deployment>, ApiError> {
    let owned = name.to_owned();
    Ok(blocking(&state.store, move |s| {
        Ok(s.deployments()?.into_iter().find(|d| d.name == owned))
    })
    .await?)
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("deployment {name:?} not found"),
    )
}

/// `POST /v1/deployments/{name}/rollback`: serve an earlier version again, rolled out
/// like any other.
pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Scope(grant): Scope,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RollbackRequest>,
) -> Result<Json<Deployment>, ApiError> {
    let current = find(&state, &name).await?.ok_or_else(|| not_found(&name))?;
    within(&grant, &current)?;
    let history = state.fleet.history(&name).await?;
    let target: Served = match request.to {
        // What that version last ran with, or its manifest's options if it never ran.
        Some(seq) => match history.iter().rev().find(|r| r.to.seq == seq) {
            Some(rollout) => rollout.to.clone(),
            None => {
                let version =
                    registry::find_version(&state.store, &current.component, &seq.to_string())
                        .await?;
                let manifest = registry::manifest_of(&state.blobs, &version).await?;
                Served {
                    version: version.id,
                    seq: version.seq,
                    serve: current.serve,
                    resources: manifest.resources,
                    signature: manifest.signature,
                }
            }
        },
        None => previous(&history, &current)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "nothing to roll back to: deployment {name:?} has no earlier version that rolled out completely; name one with `to`"
                    ),
                )
            })?
            .to
            .clone(),
    };
    if target == current.served() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "deployment {name:?} already serves {}@{}",
                current.component, target.seq
            ),
        ));
    }
    if current.require_signed || state.require_signed {
        let version = registry::find_version(
            &state.store,
            &current.component,
            &target.version.to_string(),
        )
        .await?;
        registry::check_signed(&state.blobs, &version).await?;
    }
    let mut deployment = current;
    deployment.serve(target);
    let (deployment, _) = state
        .fleet
        .start_rollout(deployment, RolloutKind::Rollback, &caller)
        .await?;
    Ok(Json(deployment))
}

/// The newest rollout that completed with another version than the one served now.
fn previous<'h>(history: &'h [Rollout], current: &Deployment) -> Option<&'h Rollout> {
    history
        .iter()
        .rev()
        .find(|r| r.outcome == RolloutOutcome::Complete && r.to.version != current.version)
}

/// `GET /v1/deployments/{name}/history`: every rollout, oldest first.
pub(super) async fn history(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<Rollout>>, ApiError> {
    let history = state.fleet.history(&name).await?;
    if history.is_empty() && find(&state, &name).await?.is_none() {
        return Err(not_found(&name));
    }
    Ok(Json(history))
}

/// `GET /v1/deployments/{name}/rollout?after=G&wait_ms=W`: the latest rollout's progress,
/// long-polled by `mycel rollout status` and `mycel deploy --wait`.
pub(super) async fn rollout(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<super::nodes::WatchQuery>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let wait = Duration::from_millis(query.wait_ms).min(super::nodes::MAX_WAIT);
    state
        .fleet
        .rollout_status(&name, query.after, wait, &state.stop)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&name))
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    Ok(Json(blocking(&state.store, |s| s.deployments()).await?))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Scope(grant): Scope,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(existing) = find(&state, &name).await? {
        within(&grant, &existing)?;
    }
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
/// `GET /v1/routes`: the routing table, long-polled by gateways, which say where they
/// serve (listed for Prometheus at `/v1/prometheus/targets`).
#[derive(Deserialize)]
pub(super) struct RoutesQuery {
    /// Answer once the generation is past this one.
    #[serde(default)]
    after: u64,
    /// How long to wait for a change, in milliseconds.
    #[serde(default = "super::nodes::default_wait")]
    wait_ms: u64,
    /// The asking gateway's URL.
    gateway: Option<String>,
    /// Its location.
    location: Option<String>,
}

pub(super) async fn routes(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Query(query): Query<RoutesQuery>,
) -> Result<Json<RoutingTable>, ApiError> {
    if let Some(url) = &query.gateway {
        let valid = url.len() <= 256
            && (url.starts_with("http://") || url.starts_with("https://"))
            && !url.chars().any(char::is_control);
        if !valid {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("gateway {url:?} is not a URL; expected http(s)://HOST:PORT"),
            ));
        }
        let location = query.location.as_deref();
        if let Some(location) = location {
            validate_name(location)
                .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, format!("location {m}")))?;
        }
        state
            .observer
            .saw_gateway(url, location, state.fleet.now_ms());
    }
    let wait = Duration::from_millis(query.wait_ms).min(super::nodes::MAX_WAIT);
    let table = state.fleet.routes(query.after, wait, &state.stop).await?;
    Ok(Json(table))
}
