//! The agent's HTTP data plane: inference calls from gateways (bodies are worker
//! protocol frames, so tensors pass through as raw bytes), streamed generations,
//! replica statuses and logs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use futures::StreamExt;
use mycel_core::api::{ErrorBody, ErrorDetail};
use mycel_core::frame;
use mycel_core::ErrorCode;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

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
        .route(
            "/v1/replicas/{replica}/generate",
            post(generate).layer(DefaultBodyLimit::max(max_request_bytes)),
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
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let terms = Terms {
        deadline: header(frame::DEADLINE_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms)),
        elsewhere: header(frame::ELSEWHERE_HEADER) == Some("1"),
    };
    let (response, outcome) = call(&node, &replica, caller.as_ref(), body, terms).await;
    if let Some(caller) = caller {
        node.metrics
            .observe(&caller.labels, outcome, started.elapsed().as_secs_f64());
    }
    response
}

/// What the gateway asks of a call besides its tensors.
#[derive(Clone, Copy, Default)]
struct Terms {
    /// When its caller stops waiting.
    deadline: Option<tokio::time::Instant>,
    /// Whether the gateway has another replica for it (`x-mycel-elsewhere`).
    elsewhere: bool,
}

/// Decodes a request and puts it in the replica's queue; the receiver of its answer,
/// or the refusal (nothing ran, so the gateway may try another replica).
fn enqueue(
    node: &NodeContext,
    replica: &str,
    caller: Option<&Caller>,
    body: Bytes,
    terms: Terms,
    chunks: Option<mpsc::Sender<frame::Frame>>,
) -> Result<Answer, Refusal> {
    let request = match frame::decode_from(body) {
        Ok(request) => request,
        Err(e) => return Err(Refusal(ErrorCode::InvalidRequest, e.to_string(), "invalid")),
    };
    let caller = match caller {
        Some(caller) if node.takes_calls(replica, terms.elsewhere) => caller,
        _ => {
            let message = format!("replica {replica} is not ready on this node");
            return Err(Refusal(ErrorCode::NotServing, message, "unavailable"));
        }
    };
    let (reply, answer) = oneshot::channel();
    let streaming = chunks.is_some();
    let call = Call {
        method: if streaming { "generate" } else { "predict" }.into(),
        tensors: request.tensors,
        extra: Default::default(),
        reply,
        // A stream is not batched, and once chunks went out it must not run again.
        alone: streaming,
        deadline: terms.deadline,
        requeued: streaming,
        arrived: std::time::Instant::now(),
        chunks,
        elsewhere: terms.elsewhere,
    };
    match caller.calls.try_send(call) {
        Ok(()) => Ok(Answer(request.id, answer)),
        Err(TrySendError::Full(_)) => {
            let message = format!(
                "replica {replica} has {} requests waiting, its most",
                caller.calls.max_capacity()
            );
            Err(Refusal(ErrorCode::Overloaded, message, "overloaded"))
        }
        Err(TrySendError::Closed(_)) => {
            // Draining or stopped before the call got in: nothing ran.
            let message = format!("replica {replica} is stopping");
            Err(Refusal(ErrorCode::NotServing, message, "unavailable"))
        }
    }
}

/// Why a request was not queued: its code, message and metrics outcome.
struct Refusal(ErrorCode, String, &'static str);

/// A queued request's id and where its answer comes.
struct Answer(u64, oneshot::Receiver<Result<frame::Frame, WorkerError>>);

/// Why a call that was taken failed: the code, the message, and the metrics outcome.
fn failure(
    replica: &str,
    failed: Result<WorkerError, oneshot::error::RecvError>,
) -> (ErrorCode, String, &'static str) {
    match failed {
        Ok(WorkerError::Model { message, .. }) => (ErrorCode::ModelError, message, "model_error"),
        Ok(e @ WorkerError::Expired) => (
            ErrorCode::DeadlineExceeded,
            format!("replica {replica}: {e}"),
            "deadline",
        ),
        Ok(e @ WorkerError::Refused(_)) => (ErrorCode::NotServing, e.to_string(), "unavailable"),
        Ok(e @ WorkerError::Crashed(_)) => (
            ErrorCode::ModelCrashed,
            format!(
                "replica {replica}: {e}; it restarts, and the request is not retried elsewhere (see `mycel logs`)"
            ),
            "model_error",
        ),
        Ok(e) => (
            ErrorCode::Unavailable,
            format!("replica {replica} failed during the call: {e}"),
            "unavailable",
        ),
        Err(_) => (
            ErrorCode::Unavailable,
            format!("replica {replica} stopped during the call"),
            "unavailable",
        ),
    }
}

async fn call(
    node: &NodeContext,
    replica: &str,
    caller: Option<&Caller>,
    body: Bytes,
    terms: Terms,
) -> (Response, &'static str) {
    let Answer(id, answer) = match enqueue(node, replica, caller, body, terms, None) {
        Ok(queued) => queued,
        Err(Refusal(code, message, outcome)) => return (error(code, message), outcome),
    };
    let failed = match answer.await {
        Ok(Ok(result)) => {
            let mut answer = frame::Frame::new(id, "result", result.tensors);
            if let Some(timing) = frame::Timing::read(&result.extra) {
                timing.write(&mut answer.extra);
            }
            return match frame::encode_to_vec(&answer) {
                Ok(bytes) => {
                    let content_type = [(axum::http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)];
                    ((content_type, bytes).into_response(), "ok")
                }
                Err(e) => (error(ErrorCode::Internal, e.to_string()), "invalid"),
            };
        }
        Ok(Err(failed)) => Ok(failed),
        Err(gone) => Err(gone),
    };
    if let Ok(WorkerError::Model { message, traceback }) = &failed {
        // The traceback names files and paths on this node: it goes to the replica's
        // log (`mycel logs`), the client gets the exception.
        if !traceback.is_empty() {
            node.append_log(
                replica,
                &format!("a request failed: {message}\n{traceback}"),
            )
            .await;
        }
    }
    let (code, message, outcome) = failure(replica, failed);
    (error(code, message), outcome)
}

/// `POST /v1/replicas/{replica}/generate`: one request frame in; the answer streams
/// out as frames, each `chunk` as the worker yields it, then `end`, or `error` with
/// `code` and `message` if the call failed on the way. Refusals before anything ran
/// are answered as `infer` answers them. A client that goes away stops the generation.
async fn generate(
    State(node): State<Arc<NodeContext>>,
    Path(replica): Path<String>,
    body: Bytes,
) -> Response {
    let caller = node.caller(&replica);
    let (sender, mut chunks) = mpsc::channel::<frame::Frame>(16);
    let Answer(id, answer) = match enqueue(
        &node,
        &replica,
        caller.as_ref(),
        body,
        Terms::default(),
        Some(sender),
    ) {
        Ok(queued) => queued,
        Err(Refusal(code, message, _)) => return error(code, message),
    };
    let chunks = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
    let end = futures::stream::once(async move {
        match answer.await {
            Ok(Ok(_)) => frame::Frame::new(id, "end", Vec::new()),
            Ok(Err(failed)) => {
                if let WorkerError::Model { message, traceback } = &failed {
                    if !traceback.is_empty() {
                        let text = format!("a generation failed: {message}\n{traceback}");
                        node.append_log(&replica, &text).await;
                    }
                }
                stream_error(id, &replica, Ok(failed))
            }
            Err(gone) => stream_error(id, &replica, Err(gone)),
        }
    });
    let frames = chunks.chain(end).map(|frame| {
        frame::encode_to_vec(&frame)
            .map(Bytes::from)
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    (
        [(axum::http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)],
        axum::body::Body::from_stream(frames),
    )
        .into_response()
}

fn stream_error(
    id: u64,
    replica: &str,
    failed: Result<WorkerError, oneshot::error::RecvError>,
) -> frame::Frame {
    let (code, message, _) = failure(replica, failed);
    let mut frame = frame::Frame::new(id, "error", Vec::new());
    frame.extra.insert(
        "code".into(),
        serde_json::to_value(code).unwrap_or_default(),
    );
    frame.extra.insert("message".into(), message.into());
    frame
}
