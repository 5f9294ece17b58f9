//! mycel's node agent: registers its node, watches its assignments, syncs the blobs of
//! each assigned version, builds Python environments with `uv`, and supervises one
//! worker process per replica.
//!
//! It must not depend on the control plane or gateway crates: it talks to the control
//! plane over HTTP through `mycel-client` only.
#![warn(missing_docs)]

pub mod advertise;
mod agent;
mod batch;
mod data_plane;
pub mod env;
pub mod gpu;
pub mod isolation;
pub mod metrics;
pub mod replica;
pub mod sandbox;
pub mod signature;
pub mod state;
pub mod sync;
mod tls;
mod training;
pub mod worker;

pub use agent::{run, AgentError, Config, DEFAULT_MAX_REQUEST_BYTES};
pub use data_plane::FRAME_CONTENT_TYPE;
