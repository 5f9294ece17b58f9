//! The `/v1` REST API: routing, authentication and the one error shape.

mod access;
mod blobs;
mod components;
mod deployments;
mod error;
mod federations;
mod guard;
mod nodes;
mod tls;
mod tokens;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use mycel_core::api::Health;
use mycel_core::ErrorCode;

pub(crate) use access::ReadsCache;
pub(crate) use error::{ApiError, ApiJson};

use crate::{registry, AppState};

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
        .route(
            "/v1/nodes/{name}",
            put(nodes::register).delete(nodes::revoke),
        )
        .route("/v1/nodes/{name}/join", post(nodes::join))
        .route("/v1/nodes/{name}/grant", get(nodes::grant))
        .route("/v1/join-tokens", post(nodes::create_join_token))
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
        .route("/v1/replicas/{replica}/logs", get(tls::replica_logs))
        .route("/v1/tls/ca", get(tls::ca))
        .route("/v1/tls/fleet-certificate", post(tls::fleet_certificate))
        .route("/v1/nodes/{name}/certificate", post(tls::node_certificate))
        .route("/v1/routes", get(deployments::routes))
        .route("/v1/prometheus/targets", get(prometheus_targets))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}", axum::routing::delete(tokens::revoke))
        .route("/v1/audit", get(tokens::audit))
        // Every route above passes the guard (policy.rs has its rule), timed with it.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::guard,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            timed,
        ))
        // Unauthenticated, as Prometheus scrapes: counts and timings, nothing else.
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such API route") })
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(state)
}

/// Times every matched request by its route, for `/metrics`.
async fn timed(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let labels = crate::observe::ApiLabels {
        route,
        method,
        code: response.status().as_u16(),
    };
    state
        .observer
        .observe(&labels, started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (nodes, deployments) =
        registry::blocking(&state.store, |s| Ok((s.nodes()?, s.deployments()?.len()))).await?;
    let text = state.observer.render(&nodes, deployments);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Prometheus's HTTP service discovery: every agent and every gateway heard from lately.
async fn prometheus_targets(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<crate::observe::TargetGroup>>, ApiError> {
    let nodes = registry::blocking(&state.store, |s| s.nodes()).await?;
    Ok(Json(state.observer.targets(&nodes, state.fleet.now_ms())))
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Who made a request: an operator's token (by name) or a node's credential (by node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A token that may do anything.
    Operator(String),
    /// A node's credential: it may do what a node does, for itself.
    Node(String),
}

impl Principal {
    /// Refuses a node acting for another node.
    pub(crate) fn may_act_for(&self, node: &str) -> Result<(), ApiError> {
        match self {
            Principal::Node(own) if own != node => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this credential is node {own:?}'s; it may not act for node {node:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// The node, for a node's credential.
    pub(crate) fn node(&self) -> Option<&str> {
        match self {
            Principal::Node(node) => Some(node),
            Principal::Operator(_) => None,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        // The guard has authenticated the caller already.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        authenticate(state, &parts.headers).await
    }
}

/// Who presented the request's bearer token.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Principal, ApiError> {
    let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    let header = headers
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
        .ok_or_else(|| unauthorized("malformed Authorization header; expected \"Bearer <token>\""))?
        .to_owned();
    let store = Arc::clone(&state.store);
    let name = crate::registry::blocking(&store, move |s| crate::auth::token_name(s, &token))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            unauthorized("unknown token (a revoked node's credential is unknown too)")
        })?;
    Ok(match name.strip_prefix(crate::store::NODE_TOKEN_PREFIX) {
        Some(node) => Principal::Node(node.to_owned()),
        None => Principal::Operator(name),
    })
}

/// What the operator's token that made the request was granted (the guard put it
/// there); a route that only operators may call has one.
pub(crate) struct Scope(pub mycel_core::access::Grant);

impl FromRequestParts<Arc<AppState>> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<mycel_core::access::Grant>()
            .cloned()
            .map(Scope)
            .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "this needs an operator's token"))
    }
}

/// The name of the operator's token that made the request; extracting it is what
/// requires one, and refuses a node's credential.
pub(crate) struct Caller(pub String);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Operator(name) => Ok(Caller(name)),
            Principal::Node(node) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "node {node:?}'s credential may only register and heartbeat the node, read its own assignments and tasks, fetch what is assigned to it and post its own results; this needs an operator's token"
                ),
            )),
        }
    }
}
