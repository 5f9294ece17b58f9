//! The closed set of error codes every role uses, and the HTTP status each maps to.

use serde::{Deserialize, Serialize};

/// What went wrong, in a form a client can branch on.
///
/// This is the one place codes meet HTTP statuses; the JSON error body carries the code
/// as a snake_case string next to a message for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: bad JSON, bad hash, bad path.
    InvalidRequest,
    /// No token, or a token the server does not know.
    Unauthorized,
    /// A known token that may not do this (a node's credential asking for what only an
    /// operator, or another node, may do).
    Forbidden,
    /// No such component, version, blob or route.
    NotFound,
    /// The request body is over the configured limit.
    PayloadTooLarge,
    /// An uploaded blob's bytes do not hash to the name it was sent under.
    HashMismatch,
    /// A file list names blobs the server does not have.
    MissingBlobs,
    /// The component's `mycel.toml` is invalid.
    InvalidManifest,
    /// The server cannot serve this now; try again later.
    Unavailable,
    /// A replica did not take the request (not ready, draining, or not on this node):
    /// nothing ran, so any other replica may take it.
    NotServing,
    /// Every replica that could take the request has a full queue; nothing ran. The
    /// answer carries `Retry-After`.
    Overloaded,
    /// The model's own code raised; the message carries its exception.
    ModelError,
    /// The model's worker process died while handling this request (the request may be
    /// what killed it). It is not retried on another replica, which it could kill too.
    ModelCrashed,
    /// The request's deadline passed before it was answered (or before it ran).
    DeadlineExceeded,
    /// The client stopped sending mid-request for too long (a stalled upload).
    RequestTimeout,
    /// A bug or an I/O failure on the server.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::HashMismatch | ErrorCode::MissingBlobs | ErrorCode::InvalidManifest => 422,
            ErrorCode::Unavailable | ErrorCode::NotServing | ErrorCode::Overloaded => 503,
            ErrorCode::Internal | ErrorCode::ModelError | ErrorCode::ModelCrashed => 500,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::RequestTimeout => 408,
        }
    }
}
