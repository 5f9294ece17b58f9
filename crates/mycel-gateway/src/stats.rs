//! The OIP statistics extension, as Triton reports it: per model and version, the
//! requests this gateway answered and failed with their time, each request's wait in
//! its replica's queue and its batch's time in the worker (as agents report them with
//! every answer), and executions by batch size. Each gateway counts what it saw, as
//! each Triton server does; Prometheus (`/metrics`) is where a fleet's view adds up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use mycel_core::frame::Timing;
use serde::Serialize;
use serde_json::{json, Value};

/// A count of events and their total time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Duration {
    /// How many.
    pub count: u64,
    /// Their total, in nanoseconds.
    pub ns: u64,
}

impl Duration {
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.ns = self.ns.saturating_add(ns);
    }
}

/// One model version's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// When it last answered, in milliseconds since the Unix epoch; 0 if never.
    pub last_inference_ms: u64,
    /// Inferences answered: rows (axis 0 of the first input) of successful requests.
    pub inference_count: u64,
    /// Worker calls that answered them: one per batch, counted by the gateway whose
    /// request came first in it.
    pub execution_count: u64,
    /// Successful requests and their time at the gateway.
    pub success: Duration,
    /// Failed requests and their time at the gateway.
    pub fail: Duration,
    /// Successful requests' wait in their replica's queue.
    pub queue: Duration,
    /// Successful requests' batch time in the worker.
    pub compute_infer: Duration,
    /// Worker time per execution, by the rows in its batch.
    pub batches: BTreeMap<u64, Duration>,
}

/// How a request ended, for its model version's statistics.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Answered: `rows` inferences, with the agent's timing if it sent one.
    Success {
        /// Axis 0 of the first input (1 for a scalar or no input).
        rows: u64,
        /// How it ran on its replica.
        timing: Option<Timing>,
    },
    /// Failed after the model was found.
    Fail,
}

impl ModelStats {
    /// Adds one request that took `ns` at the gateway and ended at `now_ms`.
    pub fn record(&mut self, now_ms: u64, ns: u64, outcome: Outcome) {
        match outcome {
            Outcome::Fail => self.fail.add(ns),
            Outcome::Success { rows, timing } => {
                self.success.add(ns);
                self.inference_count = self.inference_count.saturating_add(rows);
                self.last_inference_ms = self.last_inference_ms.max(now_ms);
                if let Some(t) = timing {
                    self.queue.add(t.queue_ns);
                    self.compute_infer.add(t.compute_ns);
                    if t.first {
                        self.execution_count += 1;
                        self.batches
                            .entry(t.batch_rows)
                            .or_default()
                            .add(t.compute_ns);
                    }
                }
            }
        }
    }

    /// Triton's JSON for one model version.
    pub fn to_json(&self, name: &str, version: u64) -> Value {
        let none = Duration::default();
        let batches: Vec<Value> = self
            .batches
            .iter()
            .map(|(rows, d)| {
                json!({
                    "batch_size": rows,
                    "compute_input": none,
                    "compute_infer": d,
                    "compute_output": none,
                })
            })
            .collect();
        json!({
            "name": name,
            "version": version.to_string(),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success,
                "fail": self.fail,
                "queue": self.queue,
                "compute_input": none,
                "compute_infer": self.compute_infer,
                "compute_output": none,
                "cache_hit": none,
                "cache_miss": none,
            },
            "batch_stats": batches,
        })
    }
}

/// Every model version's statistics, as this gateway saw them.
#[derive(Default)]
pub struct Stats {
    models: Mutex<HashMap<String, BTreeMap<u64, ModelStats>>>,
}

impl Stats {
    /// Adds one request to `model` at `version`.
    pub fn record(&self, model: &str, version: u64, ns: u64, outcome: Outcome) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let versions = match models.get_mut(model) {
            Some(versions) => versions,
            None => models.entry(model.to_owned()).or_default(),
        };
        versions
            .entry(version)
            .or_default()
            .record(now_ms, ns, outcome);
    }

    /// The statistics of `model`: of `version` alone if given, else of every version
    /// seen and `serving` (which has zeros if it answered nothing yet), oldest first.
    pub fn of(&self, model: &str, serving: u64, version: Option<u64>) -> Vec<(u64, ModelStats)> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let seen = models.get(model);
        let get = |v: u64| seen.and_then(|s| s.get(&v)).cloned().unwrap_or_default();
        match version {
            Some(v) => vec![(v, get(v))],
            None => {
                let mut versions: Vec<u64> = seen
                    .map(|s| s.keys().copied().collect())
                    .unwrap_or_default();
                if !versions.contains(&serving) {
                    versions.push(serving);
                    versions.sort_unstable();
                }
                versions.into_iter().map(|v| (v, get(v))).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn timing(queue_ns: u64, compute_ns: u64, batch_rows: u64, first: bool) -> Option<Timing> {
        Some(Timing {
            queue_ns,
            compute_ns,
            batch_rows,
            first,
        })
    }

    #[test]
    fn a_batch_counts_once_and_every_request_its_own_wait() {
        let mut s = ModelStats::default();
        // Two requests of 2 and 1 rows ran in one batch of 3 rows; then one alone.
        s.record(
            10,
            1_000,
            Outcome::Success {
                rows: 2,
                timing: timing(100, 500, 3, true),
            },
        );
        s.record(
            11,
            2_000,
            Outcome::Success {
                rows: 1,
                timing: timing(300, 500, 3, false),
            },
        );
        s.record(
            12,
            700,
            Outcome::Success {
                rows: 1,
                timing: timing(0, 400, 1, true),
            },
        );
        s.record(13, 50, Outcome::Fail);
        assert_eq!(s.inference_count, 4);
        assert_eq!(s.execution_count, 2);
        assert_eq!(
            s.success,
            Duration {
                count: 3,
                ns: 3_700
            }
        );
        assert_eq!(s.fail, Duration { count: 1, ns: 50 });
        assert_eq!(s.queue, Duration { count: 3, ns: 400 });
        assert_eq!(
            s.compute_infer,
            Duration {
                count: 3,
                ns: 1_400
            }
        );
        assert_eq!(s.batches[&3], Duration { count: 1, ns: 500 });
        assert_eq!(s.batches[&1], Duration { count: 1, ns: 400 });
        // A failure is not an inference.
        assert_eq!(s.last_inference_ms, 12);
    }

    #[test]
    fn an_answer_without_timing_counts_as_a_success_only() {
        let mut s = ModelStats::default();
        s.record(
            1,
            10,
            Outcome::Success {
                rows: 1,
                timing: None,
            },
        );
        assert_eq!(s.success.count, 1);
        assert_eq!((s.queue.count, s.execution_count), (0, 0));
    }

    #[test]
    fn the_json_is_tritons() {
        let mut s = ModelStats::default();
        s.record(
            5,
            9,
            Outcome::Success {
                rows: 2,
                timing: timing(1, 2, 2, true),
            },
        );
        let json = s.to_json("m", 3);
        assert_eq!(json["version"], "3");
        assert_eq!(
            json["inference_stats"]["success"],
            json!({"count": 1, "ns": 9})
        );
        assert_eq!(
            json["inference_stats"]["cache_hit"],
            json!({"count": 0, "ns": 0})
        );
        assert_eq!(json["batch_stats"][0]["batch_size"], 2);
        assert_eq!(
            json["batch_stats"][0]["compute_infer"],
            json!({"count": 1, "ns": 2})
        );
    }

    #[test]
    fn every_version_seen_and_the_one_served_are_listed() {
        let stats = Stats::default();
        stats.record("m", 1, 5, Outcome::Fail);
        let versions: Vec<u64> = stats.of("m", 2, None).iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, vec![1, 2]);
        assert_eq!(stats.of("m", 2, Some(1))[0].1.fail.count, 1);
        assert_eq!(stats.of("other", 4, None)[0], (4, ModelStats::default()));
    }
}
