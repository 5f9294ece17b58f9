//! What the control plane tells Prometheus: its own metrics at `/metrics` (API latency
//! by route, reconcile time, nodes by state, deployments), and where every agent and
//! gateway is, in Prometheus's HTTP service-discovery format.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use mycel_core::fleet::{Node, NodeState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

/// A gateway not heard from for this long is no longer listed.
const GATEWAY_FORGOTTEN_AFTER: Duration = Duration::from_secs(120);

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ApiLabels {
    /// The route as declared, e.g. `/v1/deployments/{name}`: bounded, unlike paths.
    pub route: String,
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The control plane's metrics and the gateways it has heard from.
pub(crate) struct Observer {
    registry: Registry,
    api: Family<ApiLabels, Histogram>,
    nodes: Family<StateLabels, Gauge>,
    deployments: Gauge,
    /// Gateway URL → its location and when it last asked for routes (ms).
    gateways: Mutex<HashMap<String, (Option<String>, u64)>>,
}

/// One target group of Prometheus's HTTP service discovery.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Observer {
    /// Metrics registered, `reconcile` (the fleet's reconcile timer) among them.
    pub(crate) fn new(reconcile: Histogram) -> Self {
        let mut registry = Registry::with_prefix("mycel_control");
        // 100 µs to ~6.5 s.
        let api = Family::<ApiLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        let nodes = Family::<StateLabels, Gauge>::default();
        let deployments = Gauge::default();
        registry.register(
            "api_request_duration_seconds",
            "Time to answer /v1 requests, by route, method and status (long-polls included)",
            api.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to plan assignments and advance rollouts",
            reconcile,
        );
        registry.register("nodes", "Nodes by state", nodes.clone());
        registry.register("deployments", "Deployments", deployments.clone());
        Self {
            registry,
            api,
            nodes,
            deployments,
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one API request.
    pub(crate) fn observe(&self, labels: &ApiLabels, seconds: f64) {
        self.api.get_or_create(labels).observe(seconds);
    }

    /// The OpenMetrics text, with the fleet's gauges as they are now.
    pub(crate) fn render(&self, nodes: &[Node], deployments: usize) -> String {
        self.nodes.clear();
        // Every state shows, at 0 when no node is in it.
        for state in [NodeState::Ready, NodeState::Lost] {
            let labels = StateLabels {
                state: state_name(state).into(),
            };
            self.nodes.get_or_create(&labels).set(0);
        }
        for node in nodes {
            let labels = StateLabels {
                state: state_name(node.state).into(),
            };
            let _ = self.nodes.get_or_create(&labels).inc();
        }
        self.deployments.set(deployments as i64);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A gateway at `url` (in `location`) asked for routes at `now_ms`.
    pub(crate) fn saw_gateway(&self, url: &str, location: Option<&str>, now_ms: u64) {
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        gateways.insert(url.to_owned(), (location.map(str::to_owned), now_ms));
    }

    /// Where Prometheus finds every agent (its node's data plane) and every gateway
    /// heard from lately.
    pub(crate) fn targets(&self, nodes: &[Node], now_ms: u64) -> Vec<TargetGroup> {
        let mut groups = Vec::new();
        for node in nodes {
            if let Some((scheme, address)) = split_url(&node.spec.agent_url) {
                let labels = [
                    ("job", "mycel-agent"),
                    ("node", node.spec.name.as_str()),
                    ("location", node.spec.location.as_str()),
                    ("__scheme__", scheme),
                ];
                groups.push(group(address, &labels));
            }
        }
        let forgotten = u64::try_from(GATEWAY_FORGOTTEN_AFTER.as_millis()).unwrap_or(u64::MAX);
        let gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen: Vec<_> = gateways
            .iter()
            .filter(|(_, (_, at))| now_ms.saturating_sub(*at) <= forgotten)
            .collect();
        seen.sort_by(|a, b| a.0.cmp(b.0));
        for (url, (location, _)) in seen {
            if let Some((scheme, address)) = split_url(url) {
                let mut labels = vec![("job", "mycel-gateway"), ("__scheme__", scheme)];
                if let Some(location) = location {
                    labels.push(("location", location.as_str()));
                }
                groups.push(group(address, &labels));
            }
        }
        groups
    }
}

fn group(address: &str, labels: &[(&str, &str)]) -> TargetGroup {
    TargetGroup {
        targets: vec![address.to_owned()],
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Ready => "ready",
        NodeState::Lost => "lost",
    }
}

/// `https://10.0.0.7:7801/` → `("https", "10.0.0.7:7801")`.
fn split_url(url: &str) -> Option<(&'static str, &str)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        ("http", url.strip_prefix("http://")?)
    };
    let address = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some((scheme, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_scheme_and_address() {
        assert_eq!(
            split_url("https://10.0.0.7:7801/"),
            Some(("https", "10.0.0.7:7801"))
        );
        assert_eq!(
            split_url("http://127.0.0.1:9"),
            Some(("http", "127.0.0.1:9"))
        );
        assert_eq!(split_url("ftp://x"), None);
        assert_eq!(split_url("http://"), None);
    }

    #[test]
    fn gateways_are_listed_until_they_go_quiet() {
        let observer = Observer::new(Histogram::new(exponential_buckets(0.001, 2.0, 4)));
        observer.saw_gateway("http://10.0.0.9:7800", Some("tokyo"), 1_000);
        let listed = observer.targets(&[], 60_000);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].targets, ["10.0.0.9:7800"]);
        assert_eq!(listed[0].labels["job"], "mycel-gateway");
        assert_eq!(listed[0].labels["location"], "tokyo");
        assert!(observer.targets(&[], 1_000 + 121_000).is_empty());
    }
}
