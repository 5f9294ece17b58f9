//! The OIP v2 REST handlers: health, server and model metadata, readiness, and infer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mycel_core::api::ErrorBody;
use mycel_core::frame::{self, Frame};
use mycel_core::oip;
use mycel_core::ErrorCode;
use serde_json::json;

use crate::metrics::{Metrics, RequestLabels};
use crate::routes::{self, Model};

/// The binary-data extension's header: how many leading body bytes are JSON.
const HEADER_LENGTH: &str = "inference-header-content-length";
const FRAME_CONTENT_TYPE: &str = "application/x-mycel-frame";

struct Gateway {
    router: Arc<routes::Router>,
    agents: reqwest::Client,
    max_request_bytes: usize,
    request_timeout: Duration,
    metrics: Metrics,
}

/// The gateway's routes; agents are dialled with `agents_tls` where the fleet speaks
/// TLS.
pub(crate) fn app(
    router: Arc<routes::Router>,
    max_request_bytes: usize,
    request_timeout: Duration,
    agents_tls: Option<rustls::ClientConfig>,
) -> Result<Router, reqwest::Error> {
    let mut agents = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        // Agents close connections idle for 30 s: let go of them first.
        .pool_idle_timeout(Duration::from_secs(20))
        .tcp_nodelay(true);
    if let Some(tls) = agents_tls {
        agents = agents.use_preconfigured_tls(tls);
    }
    let agents = agents.build()?;
    let state = Arc::new(Gateway {
        router,
        agents,
        max_request_bytes,
        request_timeout,
        metrics: Metrics::new(),
    });
    Ok(Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/metrics", get(metrics))
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
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_at),
        )
        .fallback(|| async {
            oip_error(
                StatusCode::NOT_FOUND,
                "no such route; this is an Open Inference Protocol v2 endpoint (/v2/...)",
            )
        })
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state))
}

/// What a 503 asks the client to wait before it tries again, in seconds: long enough
/// for a queue to drain a little or a replica to become ready, short enough to matter.
const RETRY_AFTER_S: u64 = 1;

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

/// An error answer not yet rendered.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        oip_error(self.0, self.1)
    }
}

async fn server_ready(State(gw): State<Arc<Gateway>>) -> Response {
    // Ready once the routing table arrived: before that every model looks absent.
    let ready = gw.router.table().generation > 0;
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
        "extensions": ["binary_tensor_data"],
    }))
}

/// The model named in the path, and the version named (if any) as a sequence number.
/// During a rollout a model serves two versions; either may be asked for.
fn find(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<(Arc<Model>, Option<u64>), Failure> {
    let table = gw.router.table();
    let model = table.models.get(name).cloned().ok_or_else(|| {
        let mut known: Vec<&str> = table.models.keys().map(String::as_str).collect();
        known.sort_unstable();
        Failure(StatusCode::NOT_FOUND, not_deployed(name, &known))
    })?;
    let Some(version) = version else {
        return Ok((model, None));
    };
    let seq = version
        .parse::<u64>()
        .ok()
        .filter(|&seq| seq == model.info.seq || model.replicas.iter().any(|r| r.route.seq == seq));
    match seq {
        Some(seq) => Ok((model, Some(seq))),
        None => {
            let mut served: Vec<u64> = model.replicas.iter().map(|r| r.route.seq).collect();
            served.push(model.info.seq);
            served.sort_unstable();
            served.dedup();
            let served: Vec<String> = served.iter().map(u64::to_string).collect();
            Err(Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "model {name:?} has no version {version:?}; it serves version {}",
                    served.join(" and ")
                ),
            ))
        }
    }
}

/// Why `name` is not served, and the fix: which deployed model the caller may have
/// meant, and how to deploy it.
fn not_deployed(name: &str, known: &[&str]) -> String {
    let deploy = format!(
        "`mycel deploy {name} --copies LOCATION=1` serves a pushed component (`mycel status` lists deployments)"
    );
    if known.is_empty() {
        return format!("no model {name:?} is deployed, nor any other yet; {deploy}");
    }
    let meant = mycel_core::manifest::closest_name(name, known)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    format!(
        "no model {name:?} is deployed{meant}; deployed models: {}; {deploy}",
        known.join(", ")
    )
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
    let ready = model
        .replicas
        .iter()
        .any(|r| seq.is_none_or(|seq| r.route.seq == seq));
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

async fn infer(
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
    let mut labels = RequestLabels {
        model: String::new(),
        version: String::new(),
        location: String::new(),
        code: 0,
    };
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
    let model_limit = model.info.timeout_ms.map_or(gw.request_timeout, |ms| {
        gw.request_timeout.min(Duration::from_millis(ms.into()))
    });
    let limit = match crate::deadline::of_request(&request.parameters, model_limit) {
        Ok(limit) => limit,
        Err(message) => return oip_error(StatusCode::BAD_REQUEST, message),
    };
    let frame = match frame::encode_to_vec(&Frame::new(0, "predict", request.inputs.clone())) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => return oip_error(StatusCode::BAD_REQUEST, e.to_string()),
    };

    let deadline = tokio::time::Instant::now() + limit;
    let called = tokio::time::timeout_at(deadline, call(gw, &model, seq, frame, labels, deadline));
    let (outputs, answered_by) = match called.await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failure)) => return failure.into_response(),
        Err(_) => {
            return oip_error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "model {:?} gave no answer within {} ms (the request's deadline)",
                    model.info.name,
                    limit.as_millis()
                ),
            )
        }
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

/// How one attempt at a replica ended.
enum Attempt {
    Done(Vec<mycel_core::tensor::Tensor>),
    /// The replica took no part (unreachable, not ready, draining): nothing ran, so any
    /// other replica may take the request.
    Refused(String),
    /// The replica's queue is full: nothing ran; another replica may have room.
    Busy(String),
    /// The replica broke off mid-call (its worker died): the request may have run, so it
    /// is retried once.
    Broken(String),
    Fail(Failure),
}

/// Sends the frame to a replica of the model (of version `seq`, if given); on to the
/// next replica while replicas refuse it, and once more after one breaks off mid-call.
/// Returns the outputs and the version that computed them.
async fn call(
    gw: &Gateway,
    model: &Model,
    seq: Option<u64>,
    frame: Bytes,
    labels: &mut RequestLabels,
    deadline: tokio::time::Instant,
) -> Result<(Vec<mycel_core::tensor::Tensor>, u64), Failure> {
    let mut tried: Vec<String> = Vec::new();
    let mut broken_once = false;
    let mut last: Option<String> = None;
    let mut all_busy = true;
    while let Some(in_flight) = gw.router.pick(model, seq, &tried) {
        let replica = &in_flight.replica().route;
        labels.location.clone_from(&replica.location);
        let reason = match attempt(gw, replica, frame.clone(), deadline).await {
            Attempt::Done(outputs) => return Ok((outputs, replica.seq)),
            Attempt::Fail(response) => return Err(response),
            // Expected while replicas drain in a rollout: not worth a warning.
            Attempt::Refused(reason) => {
                tracing::debug!(replica = %replica.replica, %reason, "replica refused; trying another");
                all_busy = false;
                reason
            }
            Attempt::Busy(reason) => reason,
            Attempt::Broken(reason) if !broken_once => {
                broken_once = true;
                all_busy = false;
                tracing::warn!(replica = %replica.replica, %reason, "replica broke off; retrying once elsewhere");
                reason
            }
            Attempt::Broken(reason) => {
                last = Some(format!("{}: {reason}", replica.replica));
                break;
            }
        };
        gw.metrics.retried(labels);
        last = Some(format!("{}: {reason}", replica.replica));
        tried.push(replica.replica.clone());
    }
    let message = match last {
        Some(_) if all_busy => format!(
            "model {:?} is overloaded: all {} of its ready replicas have full queues; \
             retry after {} s",
            model.info.name,
            tried.len(),
            RETRY_AFTER_S
        ),
        Some(last) => format!(
            "no ready replica of model {:?} could serve the request (last: {last})",
            model.info.name
        ),
        None => format!(
            "model {:?} has no ready replica; see `mycel status`",
            model.info.name
        ),
    };
    Err(Failure(StatusCode::SERVICE_UNAVAILABLE, message))
}

async fn attempt(
    gw: &Gateway,
    replica: &mycel_core::api::RouteReplica,
    frame: Bytes,
    deadline: tokio::time::Instant,
) -> Attempt {
    let url = format!(
        "{}/v1/replicas/{}/infer",
        replica.agent_url, replica.replica
    );
    let sent = gw
        .agents
        .post(&url)
        .header(axum::http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)
        .header(
            frame::DEADLINE_HEADER,
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis()
                .to_string(),
        )
        .body(frame)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Attempt::Refused(format!("agent unreachable: {e}")),
        Err(e) => return Attempt::Broken(format!("agent answer broke off: {e}")),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Attempt::Broken(format!("agent answer broke off: {e}")),
    };
    if status.is_success() {
        return match frame::decode_from(body) {
            Ok(answer) => Attempt::Done(answer.tensors),
            Err(e) => Attempt::Fail(Failure(
                StatusCode::BAD_GATEWAY,
                format!("replica {} answered with {e}", replica.replica),
            )),
        };
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(body) => (Some(body.error.code), body.error.message),
        Err(_) => (None, String::from_utf8_lossy(&body).into_owned()),
    };
    match status.as_u16() {
        // 404: an agent that no longer knows the replica.
        _ if code == Some(ErrorCode::NotServing) => Attempt::Refused(message),
        _ if code == Some(ErrorCode::Overloaded) => Attempt::Busy(message),
        404 => Attempt::Refused(message),
        503 => Attempt::Broken(message),
        _ => {
            let status =
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Attempt::Fail(Failure(status, message))
        }
    }
}
