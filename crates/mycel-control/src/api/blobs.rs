//! `/v1/blobs`: which blobs are missing, upload one, download one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mycel_core::api::{MissingBlobsRequest, MissingBlobsResponse, PutBlobResponse};
use mycel_core::{BlobHash, ErrorCode};
use tokio_util::io::ReaderStream;

use super::{ApiError, ApiJson, Caller, Principal};
use crate::AppState;

/// Most hashes one `missing` request may ask about.
const MAX_MISSING_QUERY: usize = 100_000;

fn parse_hash(hash: &str) -> Result<BlobHash, ApiError> {
    hash.parse().map_err(|e: mycel_core::hash::ParseHashError| {
        ApiError::new(ErrorCode::InvalidRequest, e.to_string())
    })
}

pub(super) async fn missing(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    ApiJson(request): ApiJson<MissingBlobsRequest>,
) -> Result<Json<MissingBlobsResponse>, ApiError> {
    if request.hashes.len() > MAX_MISSING_QUERY {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} hashes asked about; at most {MAX_MISSING_QUERY} per request",
                request.hashes.len()
            ),
        ));
    }
    let missing = state
        .blobs
        .missing(request.hashes)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(MissingBlobsResponse { missing }))
}

/// Nodes upload too, while they have a federation task: its update is a blob, checked
/// against its hash like any other.
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PutBlobResponse>, ApiError> {
    let hash = parse_hash(&hash)?;
    if let Some(node) = principal.node() {
        if state.federations.task_reads(node).is_empty() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "node {node:?} may upload only a federation task's update, and has no task"
                ),
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&l| l > state.max_blob_bytes) {
        // Refuse before reading a byte.
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "blob {hash} is {length} bytes; the limit is {} bytes",
                state.max_blob_bytes
            ),
        ));
    }
    let (size, created) = state
        .blobs
        .write(hash, body.into_data_stream(), state.max_blob_bytes)
        .await?;
    if created {
        tracing::debug!(%hash, size, "blob stored");
    }
    Ok(Json(PutBlobResponse {
        hash,
        size,
        created,
    }))
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash)?;
    super::access::check_blob(&state, &principal, hash).await?;
    let file = state
        .blobs
        .open_blob(&hash)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("blob {hash} not found")))?;
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, length.to_string()),
    ];
    Ok((
        headers,
        Body::from_stream(ReaderStream::with_capacity(file, 1 << 20)),
    )
        .into_response())
}
