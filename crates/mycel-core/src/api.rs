//! Request and response bodies of the control plane's `/v1` REST API.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::hash::BlobHash;
use crate::version::{FileEntry, ResolvedDependency, Version, VersionId};

/// Every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What was wrong and what was expected.
    pub message: String,
}

/// `POST /v1/blobs/missing`: which of these does the server lack?
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingBlobsRequest {
    /// Hashes the client is about to reference.
    pub hashes: Vec<BlobHash>,
}

/// Answer to [`MissingBlobsRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingBlobsResponse {
    /// The subset the server lacks, in request order.
    pub missing: Vec<BlobHash>,
}

/// `PUT /v1/blobs/{hash}` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutBlobResponse {
    /// The blob's hash, as verified by the server.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size: u64,
    /// False when the server already had it.
    pub created: bool,
}

/// `POST /v1/components/{name}/versions`: make a version from blobs already uploaded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateVersionRequest {
    /// Every file of the component, `mycel.toml` included.
    pub files: Vec<FileEntry>,
}

/// Answer to [`CreateVersionRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateVersionResponse {
    /// False when identical content was pushed before; `version` is then that one.
    pub created: bool,
    /// The version.
    pub version: Version,
}

/// `POST /v1/components/{name}/versions/{ref}/rebuild`: the version's files again, with
/// its dependencies resolved anew.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RebuildResponse {
    /// False when resolving again changed nothing; `version` is then the existing one.
    pub created: bool,
    /// The rebuilt version.
    pub version: Version,
    /// Versions of other components created on the way: a `"latest"` dependency that
    /// itself has dependencies is rebuilt first, so a change deep in the tree reaches
    /// the top.
    #[serde(default)]
    pub dependencies_rebuilt: Vec<ResolvedDependency>,
}

/// `GET /v1/components/{name}/dependents`: the deployments that import `name`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Dependents {
    /// The component asked about.
    pub component: String,
    /// Deployments whose version needs it, directly or through other components, by
    /// name.
    pub deployments: Vec<DependentDeployment>,
}

/// A deployment that imports another component.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DependentDeployment {
    /// The deployment.
    pub deployment: String,
    /// Its component.
    pub component: String,
    /// The version it serves.
    pub version: VersionId,
    /// That version's sequence number.
    pub seq: u64,
    /// The version of the component asked about that it imports.
    pub uses: ResolvedDependency,
    /// Whether its own manifest names that component (else it comes through others).
    pub direct: bool,
}

/// One line of `GET /v1/components`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentSummary {
    /// Component name.
    pub name: String,
    /// How many versions it has.
    pub versions: u64,
    /// Its newest version.
    pub latest: VersionSummary,
}

/// One line of `GET /v1/components/{name}/versions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VersionSummary {
    /// Sequence number.
    pub seq: u64,
    /// Content id.
    pub id: VersionId,
    /// Number of files.
    pub files: u64,
    /// Sum of the file sizes.
    pub total_bytes: u64,
    /// When it was pushed (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Who pushed it.
    pub pushed_by: String,
    /// The manifest's description.
    pub description: String,
    /// The versions of other components it imports, as resolved when it was pushed.
    #[serde(default)]
    pub dependencies: Vec<ResolvedDependency>,
}

impl From<&Version> for VersionSummary {
    fn from(v: &Version) -> Self {
        Self {
            seq: v.seq,
            id: v.id,
            files: v.files.len() as u64,
            total_bytes: v.total_bytes,
            created_at_ms: v.created_at_ms,
            pushed_by: v.pushed_by.clone(),
            description: v.description.clone(),
            dependencies: v.dependencies.clone(),
        }
    }
}

/// `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// Always "ok" when the server answers.
    pub status: String,
    /// The server's version string.
    pub version: String,
}

/// `POST /v1/nodes/{name}/heartbeat`: the agent is alive; here is how its replicas are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Every replica the agent runs or is starting.
    pub replicas: Vec<crate::fleet::ReplicaStatus>,
    /// How its GPUs are used, where it has any and the driver answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::fleet::GpuUse>,
}

/// `GET /v1/nodes/{name}/assignments?after=G`: a node's replicas as of `generation`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeAssignments {
    /// Bumped whenever any assignment changes; pass it back as `after` to wait for the
    /// next change.
    pub generation: u64,
    /// The replicas this node should run.
    pub assignments: Vec<crate::fleet::Assignment>,
}

/// `PUT /v1/deployments/{name}`: serve a component version with copies per location.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The component; defaults to the deployment's name.
    #[serde(default)]
    pub component: Option<String>,
    /// `latest`, a sequence number or a version id.
    #[serde(default = "latest")]
    pub version: String,
    /// Copies per location, e.g. `{"new-york": 5, "london": 3}`.
    pub copies: std::collections::BTreeMap<String, u32>,
    /// Overrides the manifest's `[serve].max_batch_size`.
    #[serde(default)]
    pub max_batch_size: Option<u32>,
    /// Overrides the manifest's `[serve].batch_wait_ms`.
    #[serde(default)]
    pub batch_wait_ms: Option<u32>,
    /// Overrides the manifest's `[serve].timeout_ms`: the longest a request may take.
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    /// New replicas a rolling update may start beyond `copies`, per location: `2` or
    /// `25%` (the default).
    #[serde(default)]
    pub surge: Option<crate::fleet::Surge>,
    /// Copies per location a rolling update may take out of service at once when no
    /// node has room for a new replica beside the old ones: `1` or `25%` (the default).
    #[serde(default)]
    pub max_unavailable: Option<crate::fleet::MaxUnavailable>,
    /// Seconds the rollout may take before it is rolled back (default 600).
    #[serde(default)]
    pub deadline_s: Option<u64>,
    /// Serve only signed versions, now and in later rollouts; unset keeps what the
    /// deployment had.
    #[serde(default)]
    pub require_signed: Option<bool>,
}

/// `POST /v1/deployments/{name}/rollback`: serve an earlier version again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version's sequence number; by default the version served before the current
    /// one.
    #[serde(default)]
    pub to: Option<u64>,
}

/// One location of a rollout in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutLocation {
    /// The location.
    pub location: String,
    /// Copies wanted.
    pub desired: u32,
    /// Replicas running what the deployment asks for now.
    pub updated: u32,
    /// Of those, how many are ready.
    pub ready: u32,
    /// Replicas of an earlier version (or options) still running.
    pub outdated: u32,
}

/// `GET /v1/deployments/{name}/rollout`: where a deployment's latest rollout stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Pass back as `after` to wait for the next change.
    pub generation: u64,
    /// The deployment as it is now.
    pub deployment: crate::fleet::Deployment,
    /// Its latest rollout; `None` for a deployment from before rollouts were recorded.
    pub rollout: Option<crate::fleet::Rollout>,
    /// Progress per location.
    pub locations: Vec<RolloutLocation>,
    /// Copies that cannot be placed, and why.
    pub unplaced: Vec<crate::fleet::Unplaced>,
    /// Replicas of what the deployment asks for now that are not ready yet, with what
    /// their agents last said of them: where a rollout spends its time.
    #[serde(default)]
    pub waiting: Vec<ReplicaView>,
}

fn latest() -> String {
    "latest".into()
}

/// One replica in `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Where it is placed and what it runs.
    pub assignment: crate::fleet::Assignment,
    /// What its agent last reported; `None` until the first report.
    pub status: Option<crate::fleet::ReplicaStatus>,
}

/// Desired and ready copies of one deployment in one location.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocationCount {
    /// The location.
    pub location: String,
    /// Copies asked for.
    pub desired: u32,
    /// Copies ready.
    pub ready: u32,
}

/// One deployment in `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeploymentView {
    /// The deployment.
    pub deployment: crate::fleet::Deployment,
    /// Desired and ready copies per location.
    pub locations: Vec<LocationCount>,
    /// Its latest rollout.
    #[serde(default)]
    pub rollout: Option<crate::fleet::Rollout>,
}

/// One node in `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// The node.
    pub node: crate::fleet::Node,
    /// Replicas assigned to it.
    pub replicas: u32,
    /// CPUs its replicas reserve.
    pub cpus_used: f64,
    /// Memory its replicas reserve, in bytes.
    pub memory_used: u64,
    /// GPUs its replicas reserve.
    #[serde(default)]
    pub gpus_used: u32,
    /// How its GPUs are used, as it last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_use: Vec<crate::fleet::GpuUse>,
}

/// `GET /v1/status`: the whole fleet at a glance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetStatus {
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// Every deployment.
    pub deployments: Vec<DeploymentView>,
    /// Every replica.
    pub replicas: Vec<ReplicaView>,
    /// Copies that could not be placed, and why.
    pub unplaced: Vec<crate::fleet::Unplaced>,
}

/// `GET /v1/routes`: what a gateway needs to route requests, and nothing more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Bumped whenever a model or the set of ready replicas changes.
    pub generation: u64,
    /// Every deployment, served under its name.
    pub models: Vec<RouteModel>,
    /// Operators' tokens, by hash, for gateways that require one of callers.
    #[serde(default)]
    pub tokens: Vec<RouteToken>,
}

/// An operator's token as a gateway checks it: its hash (never the token) and which
/// models it may call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteToken {
    /// The token's BLAKE3 hash, hex.
    pub hash: String,
    /// Its name, for messages.
    pub name: String,
    /// Components whose models it may call; empty means all.
    #[serde(default)]
    pub components: Vec<String>,
    /// When it stops working, in milliseconds since the epoch; `None` never.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// One deployment as the gateway serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteModel {
    /// The deployment's name: the model name clients use.
    pub name: String,
    /// The component it runs.
    pub component: String,
    /// The version it runs.
    pub version: crate::VersionId,
    /// That version's sequence number: the model version clients use.
    pub seq: u64,
    /// Declared inputs and outputs, for model metadata.
    pub signature: Option<crate::manifest::Signature>,
    /// The longest a request may take, in milliseconds, if the deployment says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Its ready replicas.
    pub replicas: Vec<RouteReplica>,
}

/// A ready replica and where to reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteReplica {
    /// Replica id.
    pub replica: String,
    /// The version this replica runs (during a rollout, not always the model's).
    pub version: crate::VersionId,
    /// That version's sequence number.
    #[serde(default)]
    pub seq: u64,
    /// Its location.
    pub location: String,
    /// The agent's data-plane URL.
    pub agent_url: String,
}

/// `POST /v1/join-tokens`: a one-time token with which one node joins the fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// The location the node joins.
    pub location: String,
    /// Labels the node gets, whatever it says of itself.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Seconds until the token can no longer be used; by default it does not expire.
    #[serde(default)]
    pub expires_s: Option<u64>,
}

/// What a node joining with a join token, and then holding its credential, is granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGrant {
    /// Its location; the node cannot register elsewhere.
    pub location: String,
    /// Labels it carries.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// When the join token stops working, ms since the Unix epoch.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// Who made the join token.
    pub created_by: String,
}

/// The answer to [`JoinTokenRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinToken {
    /// What to hand to `mycel agent --join`, shown once: the secret (stored only as a
    /// hash), a dot, and the SHA-256 of the fleet's CA certificate, by which the node
    /// knows the CA it is handed at join is the fleet's.
    pub token: String,
    /// What the node that uses it gets.
    pub grant: NodeGrant,
}

/// `POST /v1/nodes/{name}/join`: a node trades a join token for its own credential.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The one-time join token.
    pub token: String,
    /// The BLAKE3 hash (hex) of a credential the node made itself, to be its credential:
    /// the secret then never travels in an answer, and a node whose answer was lost
    /// still holds it. Without it the server makes one and answers with it.
    #[serde(default)]
    pub credential_hash: Option<String>,
}

/// `POST /v1/nodes/{name}/certificate` (a node's data plane) and
/// `POST /v1/tls/fleet-certificate` (a gateway): a certificate for a key the caller
/// holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// A PKCS#10 certificate signing request, PEM. Its key and names (IP addresses and
    /// DNS names) are used; the subject and usages are the control plane's to say.
    pub csr: String,
}

/// The answer to [`CertificateRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub certificate: String,
    /// The fleet's CA certificate, PEM.
    pub ca: String,
}

/// The answer to [`JoinRequest`]: the node's credential, shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Joined {
    /// The node's name.
    pub node: String,
    /// What it may be.
    pub grant: NodeGrant,
    /// Its bearer credential, when the server made it: it may do what a node does, for
    /// this node only.
    #[serde(default)]
    pub credential: Option<String>,
}
