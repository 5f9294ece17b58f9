//! The agent's HTTP data plane: inference calls from gateways (bodies are worker
//! protocol frames, so tensors pass through as raw bytes), replica statuses and logs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use mycel_core::api::{ErrorBody, ErrorDetail};
use mycel_core::frame;
use mycel_core::ErrorCode;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use crate::replica::{Call, Caller, NodeContext};
use crate::worker::WorkerError;

/// The content type of frame bodies.
pub const FRAME_CONTENT_TYPE: &str = "application/x-mycel-frame";

pub(crate) fn router(node: Arc<NodeContext>, max_request_bytes: usize) -> Router {
    Router::new()
        .route(
            "/v1/replicas/{replica}/infer",
            post(infer).layer(DefaultBodyLimit::max(max_request_bytes)),
        )
        .route("/v1/replicas", get(replicas))
        .route("/metrics", get(metrics))
        .route("/v1/replicas/{replica}/logs", get(logs))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<NodeContext>>) -> Response {
    crate::replica::update_queue_depths(&node);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

async fn replicas(
    State(node): State<Arc<NodeContext>>,
) -> Json<Vec<mycel_core::fleet::ReplicaStatus>> {
    Json(node.snapshot())
}

#[derive(Deserialize)]
struct LogQuery {
    /// Bytes already seen; the answer starts there (for following).
    #[serde(default)]
    offset: u64,
}

/// A replica's log from `offset`; the `x-log-offset` header says where to continue.
async fn logs(
    State(node): State<Arc<NodeContext>>,
    Path(replica): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let valid = !replica.is_empty()
        && replica
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return (StatusCode::BAD_REQUEST, "invalid replica id").into_response();
    }
    match tokio::fs::read(node.log_path(&replica)).await {
        Ok(bytes) => {
            let start = (query.offset as usize).min(bytes.len());
            let end = bytes.len().to_string();
            ([("x-log-offset", end)], bytes[start..].to_vec()).into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            StatusCode::NOT_FOUND,
            format!("no logs for replica {replica:?} on this node"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

/// `POST /v1/replicas/{replica}/infer`: one `predict` frame in, one `result` frame out.
/// A replica that is not here, not ready or draining answers 503 `not_serving`: nothing
/// ran, so the gateway tries another.
async fn infer(
    State(node): State<Arc<NodeContext>>,
    Path(replica): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let caller = node.caller(&replica);
    let deadline = headers
        .get(frame::DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
    let (response, outcome) = call(&node, &replica, caller.as_ref(), body, deadline).await;
    if let Some(caller) = caller {
        node.metrics
            .observe(&caller.labels, outcome, started.elapsed().as_secs_f64());
    }
    response
}

async fn call(
    node: &NodeContext,
    replica: &str,
    caller: Option<&Caller>,
    body: Bytes,
    deadline: Option<tokio::time::Instant>,
) -> (Response, &'static str) {
    let request = match frame::decode_from(body) {
        Ok(request) => request,
        Err(e) => return (error(ErrorCode::InvalidRequest, e.to_string()), "invalid"),
    };
    let caller = match caller {
        Some(caller) if node.is_ready(replica) => caller,
        _ => {
            let message = format!("replica {replica} is not ready on this node");
            return (error(ErrorCode::NotServing, message), "unavailable");
        }
    };
    let (reply, answer) = oneshot::channel();
    let call = Call {
        method: "predict".into(),
        tensors: request.tensors,
        extra: Default::default(),
        reply,
        alone: false,
        deadline,
        requeued: false,
        arrived: std::time::Instant::now(),
    };
    match caller.calls.try_send(call) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            let message = format!(
                "replica {replica} has {} requests waiting, its most",
                caller.calls.max_capacity()
            );
            return (error(ErrorCode::Overloaded, message), "overloaded");
        }
        Err(TrySendError::Closed(_)) => {
            // Draining or stopped before the call got in: nothing ran.
            let message = format!("replica {replica} is stopping");
            return (error(ErrorCode::NotServing, message), "unavailable");
        }
    }
    match answer.await {
        Ok(Ok(result)) => {
            let mut answer = frame::Frame::new(request.id, "result", result.tensors);
            if let Some(timing) = frame::Timing::read(&result.extra) {
                timing.write(&mut answer.extra);
            }
            match frame::encode_to_vec(&answer) {
                Ok(bytes) => {
                    let content_type = [(axum::http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)];
                    ((content_type, bytes).into_response(), "ok")
                }
                Err(e) => (error(ErrorCode::Internal, e.to_string()), "invalid"),
            }
        }
        Ok(Err(WorkerError::Model { message, traceback })) => {
            // The traceback names files and paths on this node: it goes to the
            // replica's log (`mycel logs`), the client gets the exception.
            if !traceback.is_empty() {
                node.append_log(
                    replica,
                    &format!("a request failed: {message}\n{traceback}"),
                )
                .await;
            }
            (error(ErrorCode::ModelError, message), "model_error")
        }
        Ok(Err(e @ WorkerError::Expired)) => (
            error(
                ErrorCode::DeadlineExceeded,
                format!("replica {replica}: {e}"),
            ),
            "deadline",
        ),
        Ok(Err(e @ WorkerError::Crashed(_))) => {
            let message = format!(
                "replica {replica}: {e}; it restarts, and the request is not retried elsewhere (see `mycel logs`)"
            );
            (error(ErrorCode::ModelCrashed, message), "model_error")
        }
        Ok(Err(e)) => {
            let message = format!("replica {replica} failed during the call: {e}");
            (error(ErrorCode::Unavailable, message), "unavailable")
        }
        Err(_) => {
            let message = format!("replica {replica} stopped during the call");
            (error(ErrorCode::Unavailable, message), "unavailable")
        }
    }
}
