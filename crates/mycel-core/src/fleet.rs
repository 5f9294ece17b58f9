//! The fleet's vocabulary: nodes, deployments, replicas and their states.
//!
//! The control plane stores these, the reconciler computes assignments from them, and
//! agents report against them; all of it crosses the wire as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::manifest::{Resources, ServeOptions, Signature};
use crate::version::VersionId;

/// What an agent says about its node when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique node name, same rules as component names.
    pub name: String,
    /// Where it is, e.g. `new-york`; same rules as component names.
    pub location: String,
    /// Free-form `key=value` labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CPU cores it offers to replicas.
    pub cpus: f64,
    /// Memory it offers to replicas, in bytes.
    pub memory_bytes: u64,
    /// GPUs it offers.
    #[serde(default)]
    pub gpus: u32,
    /// The agent's data-plane URL (logs, inference), e.g. `http://127.0.0.1:7801`.
    pub agent_url: String,
}

/// Whether the control plane hears from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped; its replicas are placed elsewhere.
    Lost,
}

/// A node as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// What the agent registered.
    pub spec: NodeSpec,
    /// Ready or lost.
    pub state: NodeState,
    /// Last heartbeat, ms since the Unix epoch.
    pub last_heartbeat_ms: u64,
}

/// Desired state: one component version served with so many copies per location.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Deployment name; the component's name unless given.
    pub name: String,
    /// The component.
    pub component: String,
    /// The version served.
    pub version: VersionId,
    /// Its sequence number, for display.
    pub seq: u64,
    /// Copies per location.
    pub copies: BTreeMap<String, u32>,
    /// Batching options, from the manifest unless overridden.
    pub serve: ServeOptions,
    /// What each replica needs, from the manifest unless overridden.
    pub resources: Resources,
    /// The tensors it takes and returns, from the manifest's `[signature]`.
    #[serde(default)]
    pub signature: Option<Signature>,
    /// Bumped on every change, so watchers can tell.
    pub generation: u64,
}

/// A replica's id: `deployment-location-index`, stable while the replica lives.
pub type ReplicaId = String;

/// One replica placed on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Stable id.
    pub replica: ReplicaId,
    /// The deployment it serves.
    pub deployment: String,
    /// The component.
    pub component: String,
    /// The version it runs.
    pub version: VersionId,
    /// The node it runs on.
    pub node: String,
    /// The node's location.
    pub location: String,
    /// What it needs from the node.
    pub resources: Resources,
    /// Batching options.
    pub serve: ServeOptions,
}

/// Copies of a deployment that could not be placed, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The deployment.
    pub deployment: String,
    /// The location asked for.
    pub location: String,
    /// How many copies are missing.
    pub count: u32,
    /// Why, for people: "no ready node in location tokyo", "not enough capacity: …".
    pub reason: String,
}

/// Where a replica is in its life, as its agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Assigned, not yet started on.
    Pending,
    /// Fetching the blobs the node lacks.
    Syncing,
    /// Building the Python environment.
    BuildingEnv,
    /// The worker process is loading the model.
    Starting,
    /// Serving.
    Ready,
    /// Not running; `reason` says why (a build error's tail, a traceback).
    Failed {
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaState::Pending => f.write_str("pending"),
            ReplicaState::Syncing => f.write_str("syncing"),
            ReplicaState::BuildingEnv => f.write_str("building-env"),
            ReplicaState::Starting => f.write_str("starting"),
            ReplicaState::Ready => f.write_str("ready"),
            ReplicaState::Failed { .. } => f.write_str("failed"),
        }
    }
}

/// An agent's report on one of its replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica.
    pub replica: ReplicaId,
    /// Its state.
    #[serde(flatten)]
    pub state: ReplicaState,
    /// The worker's process id, while one runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// How many times the worker was restarted.
    #[serde(default)]
    pub restarts: u32,
}
