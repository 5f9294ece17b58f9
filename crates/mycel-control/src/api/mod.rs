//! The `/v1` REST API: routing, authentication and the one error shape.

mod blobs;
mod components;
mod deployments;
mod error;
mod federations;
mod nodes;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use mycel_core::api::Health;
use mycel_core::ErrorCode;

pub(crate) use error::{ApiError, ApiJson};

use crate::AppState;

/// Largest JSON body: a file list of 100,000 files fits with room to spare.
const MAX_JSON_BYTES: usize = 64 << 20;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/blobs/missing", post(blobs::missing))
        .route(
            "/v1/blobs/{hash}",
            // Blob bodies are streamed to disk and bounded by their own limit.
            put(blobs::put)
                .get(blobs::get)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/components", get(components::list))
        .route(
            "/v1/components/{name}/versions",
            get(components::versions).post(components::create_version),
        )
        .route(
            "/v1/components/{name}/versions/{reference}",
            get(components::show),
        )
        .route(
            "/v1/components/{name}/versions/{reference}/rebuild",
            post(components::rebuild),
        )
        .route(
            "/v1/components/{name}/dependents",
            get(components::dependents),
        )
        .route("/v1/nodes/{name}", put(nodes::register))
        .route("/v1/nodes/{name}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{name}/assignments", get(nodes::assignments))
        .route("/v1/deployments", get(deployments::list))
        .route(
            "/v1/deployments/{name}",
            put(deployments::put).delete(deployments::delete),
        )
        .route("/v1/deployments/{name}/rollout", get(deployments::rollout))
        .route("/v1/deployments/{name}/history", get(deployments::history))
        .route(
            "/v1/deployments/{name}/rollback",
            post(deployments::rollback),
        )
        .route(
            "/v1/federations",
            get(federations::list).post(federations::create),
        )
        .route("/v1/federations/{id}", get(federations::show))
        .route("/v1/federations/{id}/stop", post(federations::stop))
        .route("/v1/nodes/{name}/tasks", get(federations::tasks))
        .route("/v1/tasks/{id}", post(federations::result))
        .route("/v1/status", get(deployments::status))
        .route("/v1/routes", get(deployments::routes))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such API route") })
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(state)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The name of the token that made the request; extracting it is what requires one.
pub(crate) struct Caller(pub String);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized("missing Authorization header; expected \"Bearer <token>\" (the admin token is in the server's data directory, admin.token)")
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("malformed Authorization header; expected \"Bearer <token>\"")
            })?
            .to_owned();
        let store = Arc::clone(&state.store);
        let name = crate::registry::blocking(&store, move |s| crate::auth::token_name(s, &token))
            .await
            .map_err(ApiError::internal)?;
        name.map(Caller)
            .ok_or_else(|| unauthorized("unknown token"))
    }
}
