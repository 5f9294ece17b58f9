//! The agent's Prometheus metrics: inference calls, their latency, queue depth and
//! batch sizes, by model (deployment), version and this node's location.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Which model a measurement is about.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Deployment name.
    pub model: String,
    /// Version, as its short id.
    pub version: String,
    /// This node's location.
    pub location: String,
}

/// A call's labels and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Deployment name.
    pub model: String,
    /// Version, as its short id.
    pub version: String,
    /// This node's location.
    pub location: String,
    /// `ok`, `model_error`, `unavailable` or `invalid`.
    pub outcome: &'static str,
}

/// A replica's queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// Deployment name.
    pub model: String,
    /// Replica id.
    pub replica: String,
}

/// What bytes fetched from the control plane were.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `blob` (file contents) or `version` (a version's file list).
    pub kind: &'static str,
}

/// Every metric the agent keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    latency: Family<ModelLabels, Histogram>,
    batch_size: Family<ModelLabels, Histogram>,
    queue_time: Family<ModelLabels, Histogram>,
    compute_time: Family<ModelLabels, Histogram>,
    /// Set from the replicas' queues when rendered.
    pub queue_depth: Family<ReplicaLabels, Gauge>,
    fetched: Family<FetchLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mycel_agent");
        let requests = Family::<OutcomeLabels, Counter>::default();
        // 100 µs to ~6.5 s.
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        // 1 to 512 rows.
        let batch_size = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 10))
        });
        // 100 µs to ~6.5 s, as the request latency.
        let queue_time = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        let compute_time = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        registry.register(
            "queue_duration_seconds",
            "Time a predict call waited for its replica's worker",
            queue_time.clone(),
        );
        registry.register(
            "compute_duration_seconds",
            "Time a worker took over one predict call (one batch)",
            compute_time.clone(),
        );
        let queue_depth = Family::<ReplicaLabels, Gauge>::default();
        registry.register("requests", "Inference calls answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from a call's arrival to its answer, queueing included",
            latency.clone(),
        );
        registry.register(
            "batch_size",
            "Rows per worker call after dynamic batching",
            batch_size.clone(),
        );
        registry.register(
            "queue_depth",
            "Calls waiting for a replica's worker",
            queue_depth.clone(),
        );
        let fetched = Family::<FetchLabels, Counter>::default();
        registry.register(
            "fetched_bytes",
            "Bytes fetched from the control plane to run versions: blobs this node lacked and version file lists",
            fetched.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch_size,
            queue_time,
            compute_time,
            queue_depth,
            fetched,
        }
    }
}

impl Metrics {
    /// Counts one answered call.
    pub fn observe(&self, labels: &ModelLabels, outcome: &'static str, seconds: f64) {
        let outcome = OutcomeLabels {
            model: labels.model.clone(),
            version: labels.version.clone(),
            location: labels.location.clone(),
            outcome,
        };
        self.requests.get_or_create(&outcome).inc();
        self.latency.get_or_create(labels).observe(seconds);
    }

    /// One predict call's wait for the worker.
    pub fn queued(&self, labels: &ModelLabels, seconds: f64) {
        self.queue_time.get_or_create(labels).observe(seconds);
    }

    /// One worker call's time (a batch of predict calls).
    pub fn computed(&self, labels: &ModelLabels, seconds: f64) {
        self.compute_time.get_or_create(labels).observe(seconds);
    }

    /// Records the rows of one worker call.
    pub fn batch(&self, labels: &ModelLabels, rows: u64) {
        self.batch_size.get_or_create(labels).observe(rows as f64);
    }

    /// Counts bytes fetched from the control plane.
    pub fn fetched(&self, kind: &'static str, bytes: u64) {
        self.fetched
            .get_or_create(&FetchLabels { kind })
            .inc_by(bytes);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
