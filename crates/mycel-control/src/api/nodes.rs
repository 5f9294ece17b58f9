//! `/v1/nodes`: nodes join with a one-time token, register, heartbeat and watch their
//! assignments; operators make join tokens and revoke nodes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use mycel_core::api::{
    Heartbeat, JoinRequest, JoinToken, JoinTokenRequest, Joined, NodeAssignments, NodeGrant,
};
use mycel_core::fleet::{Node, NodeSpec};
use mycel_core::manifest::validate_name;
use mycel_core::ErrorCode;
use serde::Deserialize;

use super::{ApiError, ApiJson, Caller, Principal};
use crate::registry::blocking;
use crate::store::Redeemed;
use crate::AppState;

/// The longest a watch may hang before answering with no change.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn register(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(mut spec): ApiJson<NodeSpec>,
) -> Result<Json<Node>, ApiError> {
    principal.may_act_for(&name)?;
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
    if principal.node().is_some() {
        // A joined node is where its grant says, with the labels it grants.
        let owned = name.clone();
        let grant = blocking(&state.store, move |s| s.node_grant(&owned)).await?;
        let Some(grant) = grant else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("node {name:?} has no grant; join it again with a new join token"),
            ));
        };
        if spec.location != grant.location {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "node {name:?} joined location {:?}; it may not register in {:?}",
                    grant.location, spec.location
                ),
            ));
        }
        spec.labels.extend(grant.labels);
    }
    Ok(Json(state.fleet.register(spec).await?))
}

pub(super) async fn heartbeat(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.may_act_for(&name)?;
    if state.fleet.heartbeat(&name, heartbeat).await? {
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

pub(super) fn default_wait() -> u64 {
    30_000
}

pub(super) async fn assignments(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(name): Path<String>,
    Query(query): Query<WatchQuery>,
) -> Result<Json<NodeAssignments>, ApiError> {
    principal.may_act_for(&name)?;
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

/// The longest a join token may stay usable: thirty days.
const MAX_JOIN_TOKEN_S: u64 = 30 * 86_400;

/// `POST /v1/join-tokens`: a one-time token for one node to join `location`.
pub(super) async fn create_join_token(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    ApiJson(request): ApiJson<JoinTokenRequest>,
) -> Result<Json<JoinToken>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    validate_name(&request.location).map_err(|m| invalid(format!("location {m}")))?;
    for (key, value) in &request.labels {
        if key.is_empty() || key.contains('=') || value.contains('=') {
            return Err(invalid(format!(
                "label {key:?}={value:?}; expected key=value with a non-empty key and no '=' inside"
            )));
        }
    }
    if let Some(s) = request.expires_s {
        if !(1..=MAX_JOIN_TOKEN_S).contains(&s) {
            return Err(invalid(format!(
                "a join token expiring in {s}s; expected 1 to {MAX_JOIN_TOKEN_S} seconds"
            )));
        }
    }
    let grant = NodeGrant {
        location: request.location,
        labels: request.labels,
        expires_ms: request.expires_s.map(|s| state.fleet.now_ms() + s * 1000),
        created_by: caller.clone(),
    };
    let secret = crate::auth::new_secret("mycel_join_").map_err(ApiError::internal)?;
    let hash = *blake3::hash(secret.as_bytes()).as_bytes();
    let token = format!("{secret}.{}", state.ca.fingerprint());
    let stored = grant.clone();
    blocking(&state.store, move |s| s.put_join_token(&hash, &stored)).await?;
    tracing::info!(location = %grant.location, by = %caller, "join token created");
    Ok(Json(JoinToken { token, grant }))
}

/// `POST /v1/nodes/{name}/join`: the join token in the body is the credential here.
pub(super) async fn join(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<JoinRequest>,
) -> Result<Json<Joined>, ApiError> {
    validate_name(&name)
        .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, format!("node {m}")))?;
    let (credential, credential_hash) = match &request.credential_hash {
        Some(hex) => {
            let hash = blake3::Hash::from_hex(hex.trim()).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("credential_hash {hex:?}: {e}; expected 64 hex digits, the BLAKE3 hash of the node's credential"),
                )
            })?;
            (None, *hash.as_bytes())
        }
        None => {
            let made = crate::auth::new_secret("mycel_node_").map_err(ApiError::internal)?;
            let hash = *blake3::hash(made.as_bytes()).as_bytes();
            (Some(made), hash)
        }
    };
    // The token's secret, without the CA fingerprint after the dot.
    let secret = request.token.trim().split('.').next().unwrap_or_default();
    let token_hash = *blake3::hash(secret.as_bytes()).as_bytes();
    let owned = name.clone();
    let now = state.fleet.now_ms();
    let redeemed = blocking(&state.store, move |s| {
        s.redeem_join_token(&token_hash, &owned, &credential_hash, now)
    })
    .await?;
    let refused = |code, message: String| Err(ApiError::new(code, message));
    match redeemed {
        Redeemed::Joined(grant) => {
            tracing::info!(node = %name, location = %grant.location, "node joined");
            Ok(Json(Joined {
                node: name,
                grant,
                credential,
            }))
        }
        Redeemed::Unknown => refused(
            ErrorCode::Unauthorized,
            "unknown join token, or one used already; make a new one with `mycel node token create`".into(),
        ),
        Redeemed::Expired => refused(
            ErrorCode::Unauthorized,
            "this join token has expired; make a new one with `mycel node token create`".into(),
        ),
        Redeemed::NameTaken => refused(
            ErrorCode::Forbidden,
            format!("a node named {name:?} is in the fleet already; pick another name, or `mycel node revoke {name}` first (the token is still good)"),
        ),
    }
}

/// `GET /v1/nodes/{name}/grant`: what the node joined with; a node may read its own.
pub(super) async fn grant(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<NodeGrant>, ApiError> {
    principal.may_act_for(&name)?;
    let owned = name.clone();
    blocking(&state.store, move |s| s.node_grant(&owned))
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("node {name:?} did not join with a join token"),
            )
        })
}

/// `DELETE /v1/nodes/{name}`: the node's credentials stop working at once and its
/// replicas are placed elsewhere.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owned = name.clone();
    if !blocking(&state.store, move |s| s.revoke_node(&owned)).await? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no node named {name:?}"),
        ));
    }
    tracing::warn!(node = %name, by = %caller, "node revoked");
    state.fleet.forget(&name).await?;
    Ok(Json(serde_json::json!({})))
}
