//! The gateway's Prometheus metrics: requests, errors and latency by model, version and
//! the location of the replica that served.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of every request metric.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The model (deployment) name; empty for requests naming no deployed model.
    pub model: String,
    /// The model version served.
    pub version: String,
    /// Where the replica that served it is; empty when none did.
    pub location: String,
    /// HTTP status of the answer.
    pub code: u16,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    retries: Family<RequestLabels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mycel_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        // 100 µs to ~6.5 s.
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        let retries = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Inference requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to answer",
            latency.clone(),
        );
        registry.register(
            "retries",
            "Requests retried on another replica after theirs failed",
            retries.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            retries,
        }
    }

    /// Counts one answered request.
    pub(crate) fn observe(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.latency.get_or_create(labels).observe(seconds);
    }

    /// Counts one retry.
    pub(crate) fn retried(&self, labels: &RequestLabels) {
        self.retries.get_or_create(labels).inc();
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
