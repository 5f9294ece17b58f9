//! A real Prometheus (Debian's `prometheus`, installed by .ci/run) finds a `mycel up`
//! fleet through `/v1/prometheus/targets`, scrapes its agent, gateway and control plane,
//! and answers a per-model query, and every query of the Grafana dashboard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, free_port, TestServer};

/// Stops Prometheus when the test ends, however it ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_discovers_the_fleet_and_rates_a_model() {
    let found = Command::new("prometheus").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test runs a real Prometheus: install it (Debian: apt-get install prometheus; .ci/run does)"
    );
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::up(data.path(), "local");
    let dir = data.path().join("hello");
    assert!(server
        .cli(&["init", "hello", "--dir", dir.to_str().unwrap()])
        .status
        .success());
    assert!(server
        .cli(&["push", dir.to_str().unwrap()])
        .status
        .success());
    let out = server.cli(&["deploy", "hello", "--copies", "local=1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The targets Prometheus will read: the node's agent and the gateway.
    let http = reqwest::blocking::Client::new();
    let targets: Value = http
        .get(format!("{}/v1/prometheus/targets", server.url))
        .bearer_auth(server.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let jobs: Vec<&str> = targets
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["labels"]["job"].as_str().unwrap())
        .collect();
    assert!(
        jobs.contains(&"mycel-agent") && jobs.contains(&"mycel-gateway"),
        "{targets}"
    );
    let refused = http
        .get(format!("{}/v1/prometheus/targets", server.url))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);

    let gateway = server.gateway();
    for _ in 0..20 {
        let answer = http
            .post(format!("{gateway}/v2/models/hello/infer"))
            .json(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}))
            .send()
            .unwrap();
        assert_eq!(answer.status(), 200);
    }

    let port = free_port();
    let control = server.url.trim_start_matches("http://").to_owned();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fleet\n    http_sd_configs:\n      - url: {}/v1/prometheus/targets\n        refresh_interval: 1s\n        authorization:\n          type: Bearer\n          credentials: {}\n  - job_name: mycel-control\n    static_configs:\n      - targets: ['{control}']\n",
        server.url,
        server.token()
    );
    let config_file = data.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |promql: &str| -> Option<f64> {
        let answer: Value = http
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", promql)])
            .send()
            .ok()?
            .json()
            .ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    eventually(
        "Prometheus to scrape every target",
        Duration::from_secs(60),
        || (query("count(up == 1)")? >= 3.0).then_some(()),
    );
    eventually(
        "hello's requests in Prometheus",
        Duration::from_secs(60),
        || {
            let gateway = query("sum(mycel_gateway_requests_total{model=\"hello\",code=\"200\"})")?;
            let agent = query("sum(mycel_agent_requests_total{model=\"hello\"})")?;
            // Each request's wait for the worker, and the worker's time per batch.
            let queued = query("sum(mycel_agent_queue_duration_seconds_count{model=\"hello\"})")?;
            let computed =
                query("sum(mycel_agent_compute_duration_seconds_count{model=\"hello\"})")?;
            (gateway >= 20.0 && agent >= 20.0 && queued >= 20.0 && computed >= 1.0).then_some(())
        },
    );
    assert_eq!(query("mycel_control_nodes{state=\"ready\"}"), Some(1.0));
    assert_eq!(query("mycel_control_deployments"), Some(1.0));
    let routes = query(
        "sum(mycel_control_api_request_duration_seconds_count{route=\"/v1/deployments/{name}\"})",
    );
    assert!(routes.is_some_and(|n| n >= 1.0), "{routes:?}");

    // Every query of the Grafana dashboard is valid PromQL over metrics mycel exports,
    // and its first panel, requests per second by model, shows hello.
    let path = support::repo_root().join("deploy/grafana/mycel.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // What mycel exports, from the families its targets declare (`# TYPE`); a family
    // with labels appears once something was counted, which in this fleet no retry was.
    let mut families: Vec<String> = vec!["mycel_gateway_retries".into()];
    let agent = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["labels"]["job"] == "mycel-agent")
        .map(|g| g["targets"][0].as_str().unwrap().to_owned())
        .unwrap();
    for target in [
        gateway.clone(),
        format!("http://{agent}"),
        server.url.clone(),
    ] {
        let text = http
            .get(format!("{target}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        families.extend(
            text.lines()
                .filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned())),
        );
    }
    let exported = |metric: &str| {
        ["_total", "_bucket", "_sum", "_count", ""]
            .iter()
            .any(|suffix| {
                metric
                    .strip_suffix(suffix)
                    .is_some_and(|family| families.iter().any(|f| f == family))
            })
    };
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$model", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(queries.len() >= 15, "{} queries", queries.len());
    for (title, expr) in &queries {
        let metrics = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("mycel_"));
        for metric in metrics {
            assert!(
                exported(metric),
                "panel {title:?} reads {metric}, which no mycel target exports ({families:?})"
            );
        }
        let answer: Value = http
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", expr)])
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            answer["status"], "success",
            "panel {title:?}: {expr}: {answer}"
        );
    }
    let (title, rate) = &queries[0];
    assert_eq!(title, "Requests per second by model");
    eventually(
        "the dashboard's rate for hello",
        Duration::from_secs(30),
        || query(rate),
    );
}
