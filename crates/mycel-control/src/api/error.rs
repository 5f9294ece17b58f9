//! The API's one error shape, `{"error": {"code", "message"}}`, and a JSON extractor
//! whose rejections use it.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mycel_core::api::{ErrorBody, ErrorDetail};
use mycel_core::ErrorCode;

use crate::blobs::BlobError;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// An error on its way to the client.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A server-side failure: logged in full, reported without internals.
    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(ErrorCode::Internal, format!("internal error: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e.code() {
            ErrorCode::Internal => ApiError::internal(e),
            code => ApiError::new(code, e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        let code = match &e {
            BlobError::HashMismatch { .. } => ErrorCode::HashMismatch,
            BlobError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            BlobError::Body { .. } => ErrorCode::InvalidRequest,
            BlobError::Stalled { .. } => ErrorCode::RequestTimeout,
            BlobError::Io(_) => return ApiError::internal(e),
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::InvalidRequest,
        };
        // body_text names the field and position serde stopped at.
        ApiError::new(code, rejection.body_text())
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub T);
