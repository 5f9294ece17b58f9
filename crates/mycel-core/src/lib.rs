//! mycel's shared vocabulary: content hashes, component paths, versions, the `mycel.toml`
//! manifest, REST API types and the error codes every role maps to HTTP in one place.
//!
//! This crate does no I/O (no files, no network, no clock): callers hand it bytes and
//! answers, so every rule here is testable on plain data.
#![warn(missing_docs)]

pub mod access;
pub mod api;
pub mod dependency;
pub mod error;
pub mod federation;
pub mod fleet;
pub mod frame;
pub mod hash;
pub mod manifest;
pub mod oip;
pub mod path;
pub mod reconcile;
pub mod signing;
pub mod tensor;
#[cfg(test)]
mod testing;
pub mod version;

pub use error::ErrorCode;
pub use hash::BlobHash;
pub use manifest::Manifest;
pub use path::ComponentPath;
pub use version::{FileEntry, FileMode, ResolvedDependency, Version, VersionId};
