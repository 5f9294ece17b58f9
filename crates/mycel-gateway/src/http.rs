//! The OIP v2 REST handlers: health, server and model metadata, readiness, and infer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mycel_core::oip;
use serde_json::json;

use crate::generate;
use crate::infer::{self, find, Failure, Gateway, RETRY_AFTER_S};
use crate::metrics::RequestLabels;
use crate::routes::Model;

/// The binary-data extension's header: how many leading body bytes are JSON.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The extensions both front ends implement, as server metadata reports them.
pub(crate) const EXTENSIONS: &[&str] = &["binary_tensor_data", "statistics", "generate"];

/// The gateway's REST routes.
pub(crate) fn app(state: Arc<Gateway>) -> Router {
    let max_request_bytes = state.max_request_bytes;
    Router::new()
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats_at),
        )
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_at),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_at),
        )
        .route("/v2/models/{model}/generate", post(generate::generate))
        .route(
            "/v2/models/{model}/versions/{version}/generate",
            post(generate::generate_at),
        )
        .route(
            "/v2/models/{model}/generate_stream",
            post(generate::generate_stream),
        )
        .route(
            "/v2/models/{model}/versions/{version}/generate_stream",
            post(generate::generate_stream_at),
        )
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_at),
        )
        // Every route above names models; with --require-token each asks for a token.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            oip_error(
                StatusCode::NOT_FOUND,
                "no such route; this is an Open Inference Protocol v2 endpoint (/v2/...)",
            )
        })
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state)
}

/// Where the gateway requires a token: the caller's, good for the model the path names.
async fn require_token(
    State(gw): State<Arc<Gateway>>,
    params: axum::extract::RawPathParams,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match infer::admit(&gw, authorization) {
        Ok(token) => token,
        Err(failure) => return failure.into_response(),
    };
    let named = params.iter().find(|(key, _)| *key == "model");
    if let Some(model) = named.and_then(|(_, name)| gw.router.table().models.get(name).cloned()) {
        if let Err(failure) = infer::may_call(token.as_ref(), &model) {
            return failure.into_response();
        }
    }
    next.run(request).await
}

/// The protocol's error shape: `{"error": "..."}`. A 503 says when to come back.
fn oip_error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, Json(json!({ "error": message.into() }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER_S),
        );
    }
    response
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        oip_error(self.0, self.1)
    }
}

async fn server_ready(State(gw): State<Arc<Gateway>>) -> Response {
    let ready = gw.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "mycel",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

fn metadata(model: &Model) -> serde_json::Value {
    let tensors = |specs: Option<&Vec<mycel_core::manifest::TensorSpec>>| {
        specs
            .map(|specs| {
                specs
                    .iter()
                    .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let signature = model.info.signature.as_ref();
    json!({
        "name": model.info.name,
        "versions": [model.info.seq.to_string()],
        "platform": "mycel",
        "inputs": tensors(signature.map(|s| &s.inputs)),
        "outputs": tensors(signature.map(|s| &s.outputs)),
    })
}

async fn model_metadata(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    match find(&gw, &name, None) {
        Ok((model, _)) => Json(metadata(&model)).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn model_metadata_at(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match find(&gw, &name, Some(&version)) {
        Ok((model, _)) => Json(metadata(&model)).into_response(),
        Err(failure) => failure.into_response(),
    }
}

fn readiness(model: &Model, seq: Option<u64>) -> Response {
    let ready = infer::ready(model, seq);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "name": model.info.name, "ready": ready })),
    )
        .into_response()
}

/// The statistics extension's answer for `models`: `(model, version)` with the
/// version given, or every version seen and the one served.
fn stats_of<'a>(gw: &Gateway, models: impl Iterator<Item = (&'a Model, Option<u64>)>) -> Response {
    let mut entries = Vec::new();
    for (model, version) in models {
        for (seq, stats) in gw.stats.of(&model.info.name, model.info.seq, version) {
            entries.push(stats.to_json(&model.info.name, seq));
        }
    }
    Json(json!({ "model_stats": entries })).into_response()
}

async fn all_stats(State(gw): State<Arc<Gateway>>) -> Response {
    let table = gw.router.table();
    let mut models: Vec<&Model> = table.models.values().map(AsRef::as_ref).collect();
    models.sort_unstable_by(|a, b| a.info.name.cmp(&b.info.name));
    stats_of(&gw, models.into_iter().map(|m| (m, None)))
}

async fn model_stats(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    match find(&gw, &name, None) {
        Ok((model, _)) => stats_of(&gw, std::iter::once((&*model, None))),
        Err(failure) => failure.into_response(),
    }
}

async fn model_stats_at(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match find(&gw, &name, Some(&version)) {
        Ok((model, seq)) => stats_of(&gw, std::iter::once((&*model, seq))),
        Err(failure) => failure.into_response(),
    }
}

async fn model_ready(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    match find(&gw, &name, None) {
        Ok((model, seq)) => readiness(&model, seq),
        Err(failure) => failure.into_response(),
    }
}

async fn model_ready_at(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match find(&gw, &name, Some(&version)) {
        Ok((model, seq)) => readiness(&model, seq),
        Err(failure) => failure.into_response(),
    }
}

async fn infer_latest(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(&gw, &name, None, &headers, body).await
}

async fn infer_at(
    State(gw): State<Arc<Gateway>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(&gw, &name, Some(&version), &headers, body).await
}

/// Answers one infer request and records it in the metrics.
async fn serve(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let mut labels = RequestLabels::default();
    let response = answer(gw, name, version, headers, body, &mut labels).await;
    labels.code = response.status().as_u16();
    gw.metrics.observe(&labels, started.elapsed().as_secs_f64());
    response
}

async fn answer(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    labels: &mut RequestLabels,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return oip_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is over the gateway's limit of {} bytes",
                    gw.max_request_bytes
                ),
            )
        }
        Err(rejection) => return oip_error(rejection.status(), rejection.body_text()),
    };
    let (model, seq) = match find(gw, name, version) {
        Ok(found) => found,
        Err(failure) => return failure.into_response(),
    };
    labels.model.clone_from(&model.info.name);
    labels.version = seq.unwrap_or(model.info.seq).to_string();
    let json_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            Some(n) => Some(n),
            None => {
                return oip_error(
                    StatusCode::BAD_REQUEST,
                    "Inference-Header-Content-Length must be a byte count",
                )
            }
        },
    };
    let request = match oip::parse_request(body, json_len) {
        Ok(request) => request,
        Err(e) => return oip_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (outputs, answered_by) = match infer::infer(gw, &model, seq, &request, None, labels).await {
        Ok(answer) => answer,
        Err(failure) => return failure.into_response(),
    };
    // The version that computed the answer: during a rollout, not always the newest.
    let version = answered_by.to_string();
    match oip::encode_response(
        &model.info.name,
        &version,
        request.id.as_deref(),
        &outputs,
        &request,
    ) {
        Ok(encoded) => {
            let mut response = encoded.body.into_response();
            let headers = response.headers_mut();
            match encoded.json_len {
                Some(n) => {
                    headers.insert(HEADER_LENGTH, HeaderValue::from(n));
                    headers.insert(
                        axum::http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                }
                None => {
                    headers.insert(
                        axum::http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            response
        }
        Err(e) => oip_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
