//! Federated learning's vocabulary: a federation trains a component's weights over
//! rounds on nodes' own datasets; each round sends tasks to agents and records what
//! every client did. The control plane coordinates (docs/federated.md), agents run the
//! tasks, and this module holds the records both sides and the CLI share.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::NodeSpec;
use crate::{BlobHash, VersionId};

/// How a node keeps a training worker from the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Not isolated: the platform allows neither of the others.
    #[default]
    None,
    /// A fresh network namespace with only a downed loopback (`unshare --net`).
    Netns,
    /// bubblewrap's `--unshare-net`.
    Bubblewrap,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::None => "none",
            Isolation::Netns => "netns",
            Isolation::Bubblewrap => "bubblewrap",
        })
    }
}

/// Which nodes may train: comma-separated terms, all of which must hold. `key=value`
/// matches a label, `location=L` and `name=N` the node's location and name; a bare
/// word is a node name. Empty selects every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    terms: Vec<(String, String)>,
}

impl Selector {
    /// Whether `node` satisfies every term.
    pub fn matches(&self, node: &NodeSpec) -> bool {
        self.terms.iter().all(|(key, value)| match key.as_str() {
            "name" => &node.name == value,
            "location" => &node.location == value,
            _ => node.labels.get(key) == Some(value),
        })
    }

    /// Whether it selects every node.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value) = match term.split_once('=') {
                Some((key, value)) => (key.trim(), value.trim()),
                None => ("name", term),
            };
            if key.is_empty() || value.is_empty() || value.contains('=') {
                return Err(format!(
                    "node selector term {term:?} is malformed; expected KEY=VALUE or a node name, e.g. location=tokyo,edge=true"
                ));
            }
            terms.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self { terms })
    }
}

impl TryFrom<String> for Selector {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Selector> for String {
    fn from(selector: Selector) -> String {
        selector.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self.terms.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&terms.join(","))
    }
}

/// Differential privacy for the aggregate (DP-FedAvg): each update's change to the
/// global model is clipped to L2 norm `clip`, and Gaussian noise of standard deviation
/// `noise_multiplier · clip / n` is added to the mean of the `n` clipped changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyParams {
    /// The L2 norm each update's change is clipped to.
    pub clip: f64,
    /// Noise standard deviation relative to `clip / n`; 0 clips only.
    #[serde(default)]
    pub noise_multiplier: f64,
    /// Seeds the noise, for reproducible runs; drawn from the OS when absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `POST /v1/federations`: train a version of a component on nodes' datasets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederationRequest {
    /// The component.
    pub component: String,
    /// Its version: a number, `latest` or an id.
    #[serde(default = "latest")]
    pub version: String,
    /// The dataset name nodes declare with `mycel agent --dataset NAME=PATH`.
    pub dataset: String,
    /// Which nodes may take part; all with the dataset when empty.
    #[serde(default)]
    pub nodes: Selector,
    /// Rounds to run.
    pub rounds: u32,
    /// Aggregation strategy, e.g. `fedavg`, `trimmed-mean:beta=0.2`, `krum:f=1`.
    #[serde(default = "fedavg")]
    pub strategy: String,
    /// A round needs updates from at least this many clients.
    #[serde(default)]
    pub min_clients: Option<u32>,
    /// The share of available nodes asked to train each round, 0 < f ≤ 1.
    #[serde(default = "one")]
    pub fraction: f64,
    /// Epochs each client trains per round (`config["local_epochs"]`).
    #[serde(default = "one_u32")]
    pub local_epochs: u32,
    /// How long a round waits for clients before going on without them, in seconds.
    #[serde(default)]
    pub round_timeout_s: Option<u64>,
    /// The weights file that is trained, when the component lists more than one.
    #[serde(default)]
    pub weights: Option<String>,
    /// More keys for the `config` every `train` and `evaluate` call receives.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Differential privacy, if wanted.
    #[serde(default)]
    pub privacy: Option<PrivacyParams>,
    /// A deployment to roll the result out to once published.
    #[serde(default)]
    pub deploy: Option<String>,
}

fn latest() -> String {
    "latest".into()
}

fn fedavg() -> String {
    "fedavg".into()
}

fn one() -> f64 {
    1.0
}

fn one_u32() -> u32 {
    1
}

/// Where a federation stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum FederationState {
    /// Rounds are running.
    Running,
    /// Every round ran and the result is published.
    Complete,
    /// It stopped early.
    Failed {
        /// Why.
        reason: String,
    },
    /// Someone stopped it (`mycel federation stop`).
    Cancelled,
}

impl FederationState {
    /// Whether it has ended.
    pub fn is_done(&self) -> bool {
        !matches!(self, FederationState::Running)
    }
}

impl fmt::Display for FederationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FederationState::Running => f.write_str("running"),
            FederationState::Complete => f.write_str("complete"),
            FederationState::Failed { reason } => write!(f, "failed: {reason}"),
            FederationState::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A federation as the control plane records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Federation {
    /// 1 for the first federation, counting up.
    pub id: u64,
    /// What was asked for, with `version` resolved to the id below.
    pub request: FederationRequest,
    /// The version trained.
    pub version: VersionId,
    /// Its sequence number.
    pub seq: u64,
    /// The weights file trained, as the component names it.
    pub weights_path: String,
    /// Clients that must send an update for a round to count.
    pub min_clients: u32,
    /// Who started it.
    pub by: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// Where it stands.
    #[serde(flatten)]
    pub state: FederationState,
    /// The global weights now: the version's file, then each round's aggregate.
    pub global: BlobHash,
    /// Rounds so far, the one running last.
    #[serde(default)]
    pub rounds: Vec<Round>,
    /// The version holding the result, once published.
    #[serde(default)]
    pub published: Option<Published>,
}

/// The version a federation published, and the rollout it started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The new version.
    pub version: VersionId,
    /// Its sequence number.
    pub seq: u64,
    /// The deployment rolled out to, with `deploy`.
    #[serde(default)]
    pub deployment: Option<String>,
    /// That deployment's rollout number.
    #[serde(default)]
    pub rollout: Option<u64>,
}

/// One round: train on the chosen clients, aggregate, evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// 1-based.
    pub number: u32,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// What it is doing or how it ended.
    #[serde(flatten)]
    pub phase: RoundPhase,
    /// Every client asked to take part.
    pub clients: Vec<ClientRecord>,
    /// Updates in the aggregate.
    #[serde(default)]
    pub included: u32,
    /// Training examples behind the aggregate.
    #[serde(default)]
    pub examples: u64,
    /// Time spent aggregating, ms.
    #[serde(default)]
    pub aggregate_ms: u64,
    /// Train metrics, averaged over the included clients by example count.
    #[serde(default)]
    pub train_metrics: BTreeMap<String, f64>,
    /// Federated evaluation of the aggregate.
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
    /// The aggregate's weights blob.
    #[serde(default)]
    pub global: Option<BlobHash>,
}

/// A round's phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum RoundPhase {
    /// Clients are training.
    Training,
    /// Updates are being combined.
    Aggregating,
    /// Clients are evaluating the aggregate.
    Evaluating,
    /// Done; its aggregate is the new global model.
    Complete,
    /// It could not produce an aggregate.
    Failed {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for RoundPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoundPhase::Training => f.write_str("training"),
            RoundPhase::Aggregating => f.write_str("aggregating"),
            RoundPhase::Evaluating => f.write_str("evaluating"),
            RoundPhase::Complete => f.write_str("complete"),
            RoundPhase::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Federated evaluation: each client's `evaluate()` on its own data, combined.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Loss averaged by example count.
    pub loss: f64,
    /// Examples evaluated.
    pub examples: u64,
    /// Numeric metrics averaged by example count, e.g. `accuracy`.
    pub metrics: BTreeMap<String, f64>,
    /// Clients that answered.
    pub clients: u32,
}

/// What one client did in a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The node.
    pub node: String,
    /// How its training went.
    #[serde(flatten)]
    pub status: ClientStatus,
    /// Examples it trained on.
    #[serde(default)]
    pub examples: u64,
    /// Its `train()` call, ms as the agent timed it.
    #[serde(default)]
    pub train_ms: Option<u64>,
    /// The metrics its `train()` returned.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Its evaluation of the round's aggregate.
    #[serde(default)]
    pub evaluation: Option<ClientEvaluation>,
    /// Why it has no evaluation, when it was asked for one.
    #[serde(default)]
    pub evaluation_error: Option<String>,
}

impl ClientRecord {
    /// A client just asked to train.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            status: ClientStatus::Training,
            examples: 0,
            train_ms: None,
            metrics: BTreeMap::new(),
            evaluation: None,
            evaluation_error: None,
        }
    }
}

/// A client's `evaluate()` result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientEvaluation {
    /// Its loss.
    pub loss: f64,
    /// Examples evaluated.
    pub examples: u64,
    /// Its metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// A client's part in a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ClientStatus {
    /// Asked to train; no answer yet.
    Training,
    /// Its update is in the aggregate.
    Included,
    /// It sent an update the aggregator refused (wrong names or shapes, NaN/Inf…), or
    /// the strategy left it out (Krum).
    Rejected {
        /// Why.
        reason: String,
    },
    /// It did not send an update: its training failed, its node went away or the
    /// round timed out.
    Dropped {
        /// Why.
        reason: String,
    },
    /// It sent an update that arrived after the round went on.
    Late,
}

impl ClientStatus {
    /// One word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            ClientStatus::Training => "training",
            ClientStatus::Included => "included",
            ClientStatus::Rejected { .. } => "rejected",
            ClientStatus::Dropped { .. } => "dropped",
            ClientStatus::Late => "late",
        }
    }
}

/// Work for one node's agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique while the control plane runs; results name it.
    pub id: String,
    /// The federation.
    pub federation: u64,
    /// The round.
    pub round: u32,
    /// What to run.
    pub kind: TaskKind,
    /// The component.
    pub component: String,
    /// The version whose code runs.
    pub version: VersionId,
    /// Its sequence number.
    pub seq: u64,
    /// The node's dataset to train or evaluate on.
    pub dataset: String,
    /// The global weights to start from (a safetensors blob).
    pub weights: BlobHash,
    /// Its size in bytes.
    pub weights_size: u64,
    /// The config handed to `train` or `evaluate`.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// Which method a task calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// `train(weights, config)`: the update goes back as a blob.
    Train,
    /// `evaluate(weights, config)`: loss and metrics go back.
    Evaluate,
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::Train => "train",
            TaskKind::Evaluate => "evaluate",
        })
    }
}

/// `GET /v1/nodes/{name}/tasks`: new tasks, and the federations still running on this
/// node (an agent stops the training workers of any other).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeTasks {
    /// Tasks not handed out before.
    pub tasks: Vec<Task>,
    /// Running federations that include this node.
    pub federations: Vec<u64>,
}

/// `POST /v1/tasks/{id}`: how a task went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum TaskResult {
    /// `train` returned; its weights were uploaded as a safetensors blob.
    Trained {
        /// The update's blob.
        update: BlobHash,
        /// Examples trained on.
        examples: u64,
        /// What `train` reported.
        metrics: BTreeMap<String, f64>,
        /// How long `train` ran, ms.
        train_ms: u64,
    },
    /// `evaluate` returned.
    Evaluated {
        /// Its loss.
        loss: f64,
        /// Examples evaluated.
        examples: u64,
        /// Its metrics.
        metrics: BTreeMap<String, f64>,
    },
    /// The task could not run or the user's code raised.
    Failed {
        /// Why, with the traceback's end when there is one.
        reason: String,
    },
}

/// `GET /v1/federations/{id}?after=N`: the federation once its record changes past
/// `generation`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederationWatch {
    /// Bumped on every change.
    pub generation: u64,
    /// The federation now.
    pub federation: Federation,
}

/// Numeric entries of a metrics object; others (strings, lists, null) are dropped.
pub fn numeric_metrics(
    metrics: &serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64().filter(|x| x.is_finite())?)))
        .collect()
}

/// The example-weighted mean of each metric over `(examples, metrics)` pairs; a metric
/// only some clients report is averaged over those.
pub fn weighted_metrics<'a>(
    items: impl IntoIterator<Item = (u64, &'a BTreeMap<String, f64>)>,
) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (examples, metrics) in items {
        for (key, value) in metrics {
            let entry = sums.entry(key.clone()).or_default();
            entry.0 += value * examples as f64;
            entry.1 += examples as f64;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(k, (sum, n))| (k, sum / n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, location: &str, labels: &[(&str, &str)]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            location: location.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cpus: 1.0,
            memory_bytes: 1,
            gpus: 0,
            gpu_devices: Vec::new(),
            agent_url: String::new(),
            datasets: Vec::new(),
            isolation: Isolation::None,
            sandbox: Default::default(),
        }
    }

    #[test]
    fn selector_matches_labels_location_and_names() {
        let a = node("a", "tokyo", &[("edge", "true")]);
        let b = node("b", "london", &[("edge", "true")]);
        let c = node("c", "tokyo", &[]);
        let pick = |s: &str| -> Vec<String> {
            let selector: Selector = s.parse().unwrap();
            [&a, &b, &c]
                .into_iter()
                .filter(|n| selector.matches(n))
                .map(|n| n.name.clone())
                .collect()
        };
        assert_eq!(pick(""), ["a", "b", "c"]);
        assert_eq!(pick("location=tokyo"), ["a", "c"]);
        assert_eq!(pick("edge=true"), ["a", "b"]);
        assert_eq!(pick("location=tokyo, edge=true"), ["a"]);
        assert_eq!(pick("b"), ["b"]);
        assert_eq!(pick("gpu=yes"), Vec::<String>::new());
    }

    #[test]
    fn malformed_selectors_name_the_term() {
        for bad in ["=x", "edge=", "a=b=c"] {
            let error = bad.parse::<Selector>().unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        let round_trip: Selector = "location=tokyo,edge=true".parse().unwrap();
        assert_eq!(round_trip.to_string(), "location=tokyo,edge=true");
    }

    #[test]
    fn metrics_are_weighted_by_examples() {
        let a = BTreeMap::from([("accuracy".to_string(), 1.0), ("loss".to_string(), 2.0)]);
        let b = BTreeMap::from([("accuracy".to_string(), 0.0)]);
        let mean = weighted_metrics([(3, &a), (1, &b)]);
        assert_eq!(mean["accuracy"], 0.75);
        assert_eq!(mean["loss"], 2.0);
        let json = serde_json::json!({"a": 1, "b": "x", "c": null, "d": 0.5});
        let numeric = numeric_metrics(json.as_object().unwrap());
        assert_eq!(numeric.len(), 2);
    }

    #[test]
    fn requests_take_defaults() {
        let request: FederationRequest = serde_json::from_value(serde_json::json!({
            "component": "digits", "dataset": "digits", "rounds": 3
        }))
        .unwrap();
        assert_eq!(request.version, "latest");
        assert_eq!(request.strategy, "fedavg");
        assert_eq!(request.fraction, 1.0);
        assert_eq!(request.local_epochs, 1);
        assert!(request.nodes.is_empty());
    }
}
