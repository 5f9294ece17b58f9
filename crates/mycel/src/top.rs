//! What `mycel top` shows, computed from two scrapes of the gateways' Prometheus
//! metrics: per model, requests and errors per second and latency percentiles over the
//! interval between the scrapes. No I/O here; commands/top.rs fetches and draws.

use std::collections::BTreeMap;

use serde::Serialize;

const REQUESTS: &str = "mycel_gateway_requests_total";
const LATENCY_BUCKET: &str = "mycel_gateway_request_duration_seconds_bucket";

/// One sample of the Prometheus text format: `name{label="value",...} number`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a text exposition; comments and lines that are not samples are
/// skipped (a gateway of another version may add families this one does not know).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(sample).collect()
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"")?;
            let (value, after) = quoted(after)?;
            labels.push((label.trim().to_owned(), value));
            rest = after;
        }
    }
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A label value up to its closing quote, unescaped, and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

/// One model's counters at one moment, summed over versions, locations and gateways.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    /// Requests answered with a status of 400 or more.
    pub errors: f64,
    /// Cumulative latency buckets: upper bound in seconds, requests at or under it.
    pub buckets: BTreeMap<Bound, f64>,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Clone, Copy, Debug)]
pub struct Bound(pub f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Every model's counters in the samples of one or more gateways.
pub fn counters(samples: &[Sample]) -> BTreeMap<String, Counters> {
    let mut models: BTreeMap<String, Counters> = BTreeMap::new();
    for sample in samples {
        // Requests for no deployed model carry an empty model label.
        let Some(model) = sample.label("model").filter(|m| !m.is_empty()) else {
            continue;
        };
        if sample.name == REQUESTS {
            let entry = models.entry(model.to_owned()).or_default();
            entry.requests += sample.value;
            let code: u16 = sample
                .label("code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if code >= 400 {
                entry.errors += sample.value;
            }
        } else if sample.name == LATENCY_BUCKET {
            let Some(le) = sample.label("le").and_then(|le| match le {
                "+Inf" => Some(f64::INFINITY),
                other => other.parse().ok(),
            }) else {
                continue;
            };
            let entry = models.entry(model.to_owned()).or_default();
            *entry.buckets.entry(Bound(le)).or_default() += sample.value;
        }
    }
    models
}

/// A line of `mycel top`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub model: String,
    /// Ready replicas, and those asked for, where the control plane said.
    pub ready: Option<u32>,
    pub desired: Option<u32>,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// Latency percentiles over the interval; `None` without requests in it.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Rows for every model seen now or deployed, from counters `seconds` apart. A model
/// whose counters went down (its gateway restarted) counts from zero.
pub fn rows(
    before: &BTreeMap<String, Counters>,
    now: &BTreeMap<String, Counters>,
    seconds: f64,
    replicas: &BTreeMap<String, (u32, u32)>,
) -> Vec<Row> {
    let empty = Counters::default();
    let mut names: Vec<&String> = now.keys().chain(replicas.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|model| {
            let now = now.get(model).unwrap_or(&empty);
            let was = before.get(model).unwrap_or(&empty);
            let restarted = now.requests < was.requests;
            let was = if restarted { &empty } else { was };
            let delta = |a: f64, b: f64| (a - b).max(0.0);
            let buckets: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .map(|(bound, n)| {
                    let old = was.buckets.get(bound).copied().unwrap_or(0.0);
                    (bound.0, delta(*n, old))
                })
                .collect();
            let per_s = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
            Row {
                model: model.clone(),
                ready: replicas.get(model).map(|r| r.0),
                desired: replicas.get(model).map(|r| r.1),
                requests_per_s: per_s(delta(now.requests, was.requests)),
                errors_per_s: per_s(delta(now.errors, was.errors)),
                p50_ms: quantile(0.5, &buckets).map(|s| s * 1e3),
                p99_ms: quantile(0.99, &buckets).map(|s| s * 1e3),
            }
        })
        .collect()
}

/// The `q` quantile of cumulative buckets (upper bound, count), interpolated within
/// its bucket as Prometheus's `histogram_quantile` does; `None` without observations.
/// In the last, unbounded bucket it is that bucket's lower bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * share);
        }
        lower = upper;
        below = count;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP mycel_gateway_requests Inference requests answered.
# TYPE mycel_gateway_requests counter
mycel_gateway_requests_total{model="echo",version="1",location="tokyo",code="200"} 90
mycel_gateway_requests_total{model="echo",version="2",location="london",code="200"} 8
mycel_gateway_requests_total{model="echo",version="2",location="london",code="500"} 2
mycel_gateway_requests_total{model="",version="",location="",code="404"} 7
mycel_gateway_requests_total{model="say \"hi\"",version="1",location="a",code="200"} 1
mycel_gateway_request_duration_seconds_bucket{model="echo",version="1",location="tokyo",code="200",le="0.001"} 50
mycel_gateway_request_duration_seconds_bucket{model="echo",version="1",location="tokyo",code="200",le="0.002"} 90
mycel_gateway_request_duration_seconds_bucket{model="echo",version="1",location="tokyo",code="200",le="+Inf"} 90
mycel_gateway_request_duration_seconds_bucket{model="echo",version="2",location="london",code="200",le="0.001"} 0
mycel_gateway_request_duration_seconds_bucket{model="echo",version="2",location="london",code="200",le="0.002"} 8
mycel_gateway_request_duration_seconds_bucket{model="echo",version="2",location="london",code="200",le="+Inf"} 10
# EOF
"#;

    #[test]
    fn samples_are_read_with_their_labels_and_escapes() {
        let samples = parse(SCRAPE);
        assert_eq!(samples.len(), 11);
        assert_eq!(samples[0].name, "mycel_gateway_requests_total");
        assert_eq!(samples[0].label("location"), Some("tokyo"));
        assert_eq!(samples[0].value, 90.0);
        assert_eq!(samples[4].label("model"), Some("say \"hi\""));
        assert_eq!(samples[7].label("le"), Some("+Inf"));
        assert!(parse("garbage{model=\"x\n").is_empty());
        assert_eq!(parse("up 1 1700000000000")[0].value, 1.0);
    }

    #[test]
    fn counters_sum_versions_and_locations_and_skip_unknown_models() {
        let models = counters(&parse(SCRAPE));
        assert_eq!(models.keys().collect::<Vec<_>>(), ["echo", "say \"hi\""]);
        let echo = &models["echo"];
        assert_eq!((echo.requests, echo.errors), (100.0, 2.0));
        let buckets: Vec<_> = echo.buckets.iter().map(|(b, n)| (b.0, *n)).collect();
        assert_eq!(
            buckets,
            [(0.001, 50.0), (0.002, 98.0), (f64::INFINITY, 100.0)]
        );
    }

    #[test]
    fn rows_are_rates_and_percentiles_over_the_interval() {
        let before = counters(&parse(SCRAPE));
        let later = SCRAPE
            .replace("\"200\"} 90", "\"200\"} 190")
            .replace("le=\"0.002\"} 90", "le=\"0.002\"} 190")
            .replace("le=\"+Inf\"} 90", "le=\"+Inf\"} 190");
        let now = counters(&parse(&later));
        let replicas = BTreeMap::from([("echo".into(), (2, 3)), ("idle".into(), (1, 1))]);
        let rows = rows(&before, &now, 2.0, &replicas);
        let names: Vec<_> = rows.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(names, ["echo", "idle", "say \"hi\""]);
        let echo = &rows[0];
        assert_eq!((echo.ready, echo.desired), (Some(2), Some(3)));
        assert_eq!(echo.requests_per_s, 50.0);
        assert_eq!(echo.errors_per_s, 0.0);
        // All 100 new requests took 1 to 2 ms.
        assert_eq!(echo.p50_ms, Some(1.5));
        assert!((echo.p99_ms.unwrap() - 1.99).abs() < 1e-9);
        // Nothing new: no latency to report.
        assert_eq!((rows[1].requests_per_s, rows[1].p50_ms), (0.0, None));
    }

    #[test]
    fn a_restarted_gateway_counts_from_zero() {
        let before = counters(&parse(SCRAPE));
        let now = counters(&parse(
            "mycel_gateway_requests_total{model=\"echo\",code=\"200\"} 4",
        ));
        let rows = rows(&before, &now, 1.0, &BTreeMap::new());
        assert_eq!(rows[0].requests_per_s, 4.0);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(0.1, 10.0), (0.2, 30.0), (f64::INFINITY, 40.0)];
        assert_eq!(quantile(0.25, &buckets), Some(0.1));
        assert!((quantile(0.5, &buckets).unwrap() - 0.15).abs() < 1e-12);
        // In the unbounded bucket: its lower bound.
        assert_eq!(quantile(0.99, &buckets), Some(0.2));
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }
}
