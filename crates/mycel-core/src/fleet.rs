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
    /// What those GPUs are, when the agent could ask the driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_devices: Vec<Gpu>,
    /// The agent's data-plane URL (logs, inference), e.g. `http://127.0.0.1:7801`.
    pub agent_url: String,
    /// Names of the datasets it holds for federated learning; the data stays on it.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// How its training workers are kept off the network.
    #[serde(default)]
    pub isolation: crate::federation::Isolation,
    /// How it confines its serving workers.
    #[serde(default)]
    pub sandbox: Confinement,
}

/// How a node confines its serving workers: what is in force, so an operator can see
/// where user code runs with less than it should (`mycel status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// Each worker runs as a user of its own, with no capabilities.
    pub own_user: bool,
    /// Each worker sees only its version's files (read-only), its environment and a
    /// private temporary directory: not the agent's data, nor other replicas' files.
    pub private_files: bool,
    /// Workers have no network unless their manifest asks (`[sandbox] network`).
    pub no_network: bool,
    /// How `[resources]` memory and CPU are enforced.
    pub limits: Limits,
}

impl Confinement {
    /// Whether any confinement is in force.
    pub fn any(&self) -> bool {
        self.own_user || self.private_files || self.no_network || self.limits != Limits::None
    }
}

impl fmt::Display for Confinement {
    /// `user,files,network,cgroup v2`: what is in force, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limits = self.limits.to_string();
        let parts: Vec<&str> = [
            (self.own_user, "user"),
            (self.private_files, "files"),
            (self.no_network, "network"),
            (self.limits != Limits::None, limits.as_str()),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        match parts.is_empty() {
            true => f.write_str("none"),
            false => f.write_str(&parts.join(",")),
        }
    }
}

/// How a node enforces each worker's `[resources]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limits {
    /// Not enforced.
    #[default]
    None,
    /// Memory as a data-size rlimit (an allocation past it fails); CPU not limited.
    Rlimit,
    /// Memory and CPU in a cgroup (v1 hierarchy) of its own.
    CgroupV1,
    /// Memory and CPU in a cgroup (v2) of its own.
    CgroupV2,
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limits::None => "no limits",
            Limits::Rlimit => "rlimit",
            Limits::CgroupV1 => "cgroup v1",
            Limits::CgroupV2 => "cgroup v2",
        })
    }
}

/// A GPU a node offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Its index as the driver numbers them (`nvidia-smi`, and CUDA in PCI bus order):
    /// what a replica's `CUDA_VISIBLE_DEVICES` names.
    pub index: u32,
    /// The product, e.g. `NVIDIA H200`; empty when the driver could not be asked.
    pub name: String,
    /// Its memory, in bytes; 0 when unknown.
    pub memory_bytes: u64,
}

/// How a GPU is used right now, as its node last reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUse {
    /// Which GPU (see [`Gpu::index`]).
    pub index: u32,
    /// Memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// Percent of the last sample period a kernel ran.
    pub utilization_percent: u32,
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
    /// How many new replicas per location a rolling update starts beyond `copies`.
    #[serde(default)]
    pub surge: Surge,
    /// How many copies per location a rolling update may take out of service at once
    /// when no node has room for a surge replica.
    #[serde(default)]
    pub max_unavailable: MaxUnavailable,
    /// Seconds a rollout may take to get every new replica ready before it is rolled
    /// back.
    #[serde(default = "default_deadline_s")]
    pub deadline_s: u64,
    /// Whether only signed versions may be rolled out to it.
    #[serde(default)]
    pub require_signed: bool,
}

/// Default for [`Deployment::deadline_s`]: long enough for a first environment build
/// with PyTorch in it.
pub const DEFAULT_DEADLINE_S: u64 = 600;

fn default_deadline_s() -> u64 {
    DEFAULT_DEADLINE_S
}

impl Deployment {
    /// What this deployment serves, apart from how many copies where.
    pub fn served(&self) -> Served {
        Served {
            version: self.version,
            seq: self.seq,
            serve: self.serve,
            resources: self.resources,
            signature: self.signature.clone(),
        }
    }

    /// Serves `served` from now on.
    pub fn serve(&mut self, served: Served) {
        self.version = served.version;
        self.seq = served.seq;
        self.serve = served.serve;
        self.resources = served.resources;
        self.signature = served.signature;
    }
}

/// A version and how to run it: everything a rollout changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// The version.
    pub version: VersionId,
    /// Its sequence number.
    pub seq: u64,
    /// Batching options.
    pub serve: ServeOptions,
    /// What each replica needs.
    pub resources: Resources,
    /// Declared inputs and outputs.
    #[serde(default)]
    pub signature: Option<Signature>,
}

/// How many replicas beyond the desired copies a rolling update may run at once, per
/// location: a count (`2`) or a share of the copies (`25%`, rounded up). Never less
/// than one, so that a rollout always makes progress without taking a ready replica
/// away first when there is room for one more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surge {
    /// So many replicas.
    Count(u32),
    /// This percentage of the copies, rounded up.
    Percent(u32),
}

impl Default for Surge {
    fn default() -> Self {
        Surge::Percent(25)
    }
}

impl Surge {
    /// The extra replicas allowed in a location that wants `copies`.
    pub fn of(self, copies: u32) -> u32 {
        let n = match self {
            Surge::Count(n) => n,
            Surge::Percent(p) => percent_of(copies, p, u64::div_ceil),
        };
        n.max(1)
    }
}

impl fmt::Display for Surge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Surge::Count(n) => write!(f, "{n}"),
            Surge::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Surge {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_share(s, "surge", "2", 1)? {
            Share::Count(n) => Ok(Surge::Count(n)),
            Share::Percent(p) => Ok(Surge::Percent(p)),
        }
    }
}

/// How many of a location's copies a rolling update may take out of service at once
/// when there is no room to start a new replica beside the old ones (a node without
/// spare capacity): a count (`1`) or a share of the copies (`25%`, rounded down, but at
/// least one). `0` never replaces in place: such a rollout waits for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    /// So many replicas.
    Count(u32),
    /// This percentage of the copies, rounded down; at least one unless it is 0 %.
    Percent(u32),
}

impl Default for MaxUnavailable {
    fn default() -> Self {
        MaxUnavailable::Percent(25)
    }
}

impl MaxUnavailable {
    /// How many of `copies` may be unavailable at once, at most `copies`.
    pub fn of(self, copies: u32) -> u32 {
        let n = match self {
            MaxUnavailable::Count(n) => n,
            MaxUnavailable::Percent(0) => 0,
            MaxUnavailable::Percent(p) => percent_of(copies, p, |a, b| a / b).max(1),
        };
        n.min(copies)
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for MaxUnavailable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_share(s, "max-unavailable", "1", 0)? {
            Share::Count(n) => Ok(MaxUnavailable::Count(n)),
            Share::Percent(p) if p <= 100 => Ok(MaxUnavailable::Percent(p)),
            Share::Percent(_) => Err(format!(
                "invalid max-unavailable {s:?}; a share of the copies goes up to 100%"
            )),
        }
    }
}

/// `p` percent of `copies`, rounded by `divide`.
fn percent_of(copies: u32, p: u32, divide: fn(u64, u64) -> u64) -> u32 {
    u32::try_from(divide(u64::from(copies) * u64::from(p), 100)).unwrap_or(u32::MAX)
}

/// A count of replicas or a share of the copies, as written.
enum Share {
    Count(u32),
    Percent(u32),
}

/// Parses `2` or `25%`, each at least `min`, naming `what` in the error.
fn parse_share(s: &str, what: &str, example: &str, min: u32) -> Result<Share, String> {
    let bad = || {
        format!(
            "invalid {what} {s:?}; expected a count of replicas such as {example} or a share of the copies such as 25%"
        )
    };
    match s.strip_suffix('%') {
        Some(p) => match p.parse::<u32>() {
            Ok(p) if (min..=1000).contains(&p) => Ok(Share::Percent(p)),
            _ => Err(bad()),
        },
        None => match s.parse::<u32>() {
            Ok(n) if (min..=10_000).contains(&n) => Ok(Share::Count(n)),
            _ => Err(bad()),
        },
    }
}

/// Serializes a share as its text: `"2"`, `"25%"`.
macro_rules! share_serde {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // `"25%"`, `"2"` or, in a deployment file, a bare `2`.
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Text(String),
                    Count(u64),
                }
                let text = match Raw::deserialize(deserializer)? {
                    Raw::Text(text) => text,
                    Raw::Count(n) => n.to_string(),
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

share_serde!(Surge);
share_serde!(MaxUnavailable);

/// One change of what a deployment serves: a deploy, a rollback, or an automatic
/// rollback, and how it ended. The history of a deployment is its rollouts in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The deployment.
    pub deployment: String,
    /// 1 for the deployment's first rollout, then counting up.
    pub number: u64,
    /// Why it started.
    pub kind: RolloutKind,
    /// The version served before, if any.
    #[serde(default)]
    pub from_seq: Option<u64>,
    /// What it rolls out.
    pub to: Served,
    /// Who started it: a token's name, or `mycel` for an automatic rollback.
    pub by: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// Where it stands.
    #[serde(flatten)]
    pub outcome: RolloutOutcome,
    /// Locations where it replaced old replicas in place, for want of room beside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_place: Vec<InPlace>,
}

/// Why a rollout started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutKind {
    /// `mycel deploy`.
    Deploy,
    /// `mycel rollback`.
    Rollback,
    /// The previous rollout failed and mycel restored the version before it.
    AutoRollback,
}

impl fmt::Display for RolloutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutKind::Deploy => "deploy",
            RolloutKind::Rollback => "rollback",
            RolloutKind::AutoRollback => "automatic rollback",
        })
    }
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum RolloutOutcome {
    /// New replicas are starting and old ones draining.
    Progressing,
    /// Every copy runs the new version, ready; the old replicas are gone.
    Complete,
    /// New replicas failed; the version before was restored (see the next rollout).
    RolledBack {
        /// What failed.
        reason: String,
    },
    /// New replicas failed and there was nothing to go back to.
    Failed {
        /// What failed.
        reason: String,
    },
    /// Another rollout started before this one finished.
    Superseded,
}

impl RolloutOutcome {
    /// Whether the rollout is over.
    pub fn is_final(&self) -> bool {
        !matches!(self, RolloutOutcome::Progressing)
    }
}

impl fmt::Display for RolloutOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutOutcome::Progressing => f.write_str("progressing"),
            RolloutOutcome::Complete => f.write_str("complete"),
            RolloutOutcome::RolledBack { .. } => f.write_str("rolled back"),
            RolloutOutcome::Failed { .. } => f.write_str("failed"),
            RolloutOutcome::Superseded => f.write_str("superseded"),
        }
    }
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
    /// That version's sequence number.
    #[serde(default)]
    pub seq: u64,
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

/// A location where a rolling update replaces old replicas in place, because no node
/// there has room to start a new one beside them: an old replica stops, then a new one
/// starts where it ran, at most `max_unavailable` at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlace {
    /// The deployment.
    pub deployment: String,
    /// The location.
    pub location: String,
    /// Copies the location wants.
    pub copies: u32,
    /// How many of them may be out of service at once.
    pub max_unavailable: u32,
    /// Why no new replica fits beside the old ones ("not enough capacity: …").
    pub reason: String,
}

impl InPlace {
    /// Whether the location is left with no replica while its new one starts.
    pub fn empties_location(&self) -> bool {
        self.max_unavailable >= self.copies
    }
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
    /// No longer assigned: takes no new requests, finishes those it has, then stops.
    Draining,
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
            ReplicaState::Draining => f.write_str("draining"),
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
    /// How long it had been in this state when reported, in milliseconds.
    #[serde(default)]
    pub for_ms: u64,
    /// What it is doing in this state, where there is more to say than the state: the
    /// bytes fetched so far while syncing, uv's latest line while building.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Why its worker last failed, kept after it restarted: a crash, a failed health
    /// check, the memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_reads_as_what_is_in_force() {
        assert_eq!(Confinement::default().to_string(), "none");
        let full = Confinement {
            own_user: true,
            private_files: true,
            no_network: true,
            limits: Limits::CgroupV2,
        };
        assert_eq!(full.to_string(), "user,files,network,cgroup v2");
        let partial = Confinement {
            own_user: false,
            limits: Limits::Rlimit,
            ..full
        };
        assert_eq!(partial.to_string(), "files,network,rlimit");
        // A node from before the sandbox reports none.
        let old: NodeSpec = serde_json::from_str(
            r#"{"name": "a", "location": "b", "cpus": 1, "memory_bytes": 1, "agent_url": "http://a"}"#,
        )
        .unwrap();
        assert!(!old.sandbox.any());
        let json = serde_json::to_value(full).unwrap();
        assert_eq!(json["limits"], "cgroup-v2");
    }
}
