//! The agent's HTTP data plane: replica statuses and logs (inference joins it with the
//! gateway).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::replica::NodeContext;

pub(crate) fn router(node: Arc<NodeContext>) -> Router {
    Router::new()
        .route("/v1/replicas", get(replicas))
        .route("/v1/replicas/{replica}/logs", get(logs))
        .with_state(node)
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
