//! `/v1/tokens` and `/v1/audit`: operators' tokens by role and scope, and the log of
//! who changed what. Admins only (policy.rs).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use mycel_core::access::{AuditEntry, CreatedToken, Grant, NewToken};
use mycel_core::manifest::validate_name;
use mycel_core::ErrorCode;
use serde::Deserialize;

use super::{ApiError, ApiJson, Caller};
use crate::registry::blocking;
use crate::AppState;

/// The longest a token may be made to last for: a year. Longer, leave it unset.
const MAX_EXPIRY_S: u64 = 366 * 86_400;

/// `POST /v1/tokens`: a token with a role, scopes and an expiry; its secret is in this
/// answer only.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    ApiJson(request): ApiJson<NewToken>,
) -> Result<Json<CreatedToken>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    let secret = crate::auth::new_secret("mycel_").map_err(ApiError::internal)?;
    let name = match request.name {
        Some(name) => name,
        // Named after the secret's tail, which `token list` can then be matched to.
        None => format!("token-{}", &secret[secret.len() - 8..]),
    };
    validate_name(&name).map_err(|m| invalid(format!("token {m}")))?;
    if name == crate::auth::ADMIN {
        return Err(invalid(
            "the name \"admin\" is the data directory's admin token's".into(),
        ));
    }
    for component in &request.components {
        validate_name(component).map_err(|m| invalid(format!("component {m}")))?;
    }
    for location in &request.locations {
        validate_name(location).map_err(|m| invalid(format!("location {m}")))?;
    }
    if let Some(s) = request.expires_in_s {
        if !(1..=MAX_EXPIRY_S).contains(&s) {
            return Err(invalid(format!(
                "a token expiring in {s}s; expected 1 to {MAX_EXPIRY_S} seconds, or no expiry"
            )));
        }
    }
    let now = state.fleet.now_ms();
    let grant = Grant {
        name: name.clone(),
        role: request.role,
        components: request.components,
        locations: request.locations,
        expires_ms: request.expires_in_s.map(|s| now + s * 1000),
        created_ms: now,
        created_by: caller,
    };
    let hash = *blake3::hash(secret.as_bytes()).as_bytes();
    let stored = grant.clone();
    if !blocking(&state.store, move |s| s.insert_grant(&hash, &stored)).await? {
        return Err(invalid(format!(
            "a token named {name:?} exists; revoke it first or pick another name"
        )));
    }
    state.fleet.routes_changed();
    tracing::info!(token = %name, role = grant.role.as_str(), by = %grant.created_by, "token created");
    Ok(Json(CreatedToken {
        token: secret,
        grant,
    }))
}

/// `GET /v1/tokens`: every token's grant (never a secret).
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<Grant>>, ApiError> {
    Ok(Json(blocking(&state.store, |s| s.grants()).await?))
}

/// `DELETE /v1/tokens/{name}`: the token stops working at once.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if name == crate::auth::ADMIN {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the admin token is the data directory's admin.token; replace that file and restart to change it",
        ));
    }
    let owned = name.clone();
    if !blocking(&state.store, move |s| s.revoke_token(&owned)).await? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no token named {name:?}; `mycel token list` shows them"),
        ));
    }
    // Gateways that require tokens stop taking it with their next table.
    state.fleet.routes_changed();
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    /// How many of the newest entries.
    #[serde(default = "default_last")]
    last: usize,
}

fn default_last() -> usize {
    100
}

/// `GET /v1/audit?last=N`: the newest entries of the audit log, oldest first.
pub(super) async fn audit(
    State(state): State<Arc<AppState>>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let last = query.last.min(100_000);
    Ok(Json(blocking(&state.store, move |s| s.audit(last)).await?))
}
