//! `mycel top`: every model's traffic, live, from the gateways' `/metrics` and the
//! control plane's replica counts. The arithmetic is in top.rs.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::TopArgs;
use crate::connect::{self, data_dir};
use crate::output;
use crate::top::{self, Counters, Row};

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        bail!("--interval must be more than 0, e.g. 2s");
    }
    let data = data_dir(&args.connect.data)?;
    let http = connect::http_client(args.connect.ca.as_deref(), &data)?;
    // Without a control plane there are still the gateways' numbers.
    let control = connect::client(&args.connect).ok();
    let gateways = match args.gateways.is_empty() {
        false => args
            .gateways
            .iter()
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .collect(),
        true => known_gateways(control.as_ref(), &data).await?,
    };
    let live = !args.json && std::io::stdout().is_terminal();
    let mut before = scrape(&http, &gateways).await?;
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let now = scrape(&http, &gateways).await?;
        let seconds = at.elapsed().as_secs_f64();
        at = Instant::now();
        let replicas = match &control {
            Some(client) => replicas(client).await,
            None => None,
        };
        let rows = top::rows(
            &before,
            &now,
            seconds,
            &replicas.clone().unwrap_or_default(),
        );
        before = now;
        let mut out = std::io::stdout().lock();
        if args.json {
            let update = json!({
                "seconds": seconds,
                "gateways": gateways,
                "models": rows,
            });
            writeln!(out, "{update}")?;
        } else {
            let mut text = String::new();
            if live {
                // Home and clear: redraw in place.
                text.push_str("\x1b[H\x1b[2J");
            }
            text.push_str(&format!(
                "{} gateway{}, over {seconds:.1} s{}\n\n",
                gateways.len(),
                if gateways.len() == 1 { "" } else { "s" },
                if replicas.is_none() {
                    " (replicas unknown: the control plane did not answer)"
                } else {
                    ""
                }
            ));
            text.push_str(&table(&rows));
            if !live {
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
        }
        out.flush()?;
        if args.once {
            return Ok(());
        }
    }
}

fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no models yet: deploy one with `mycel deploy NAME`\n".into();
    }
    let ms = |v: Option<f64>| v.map_or("-".into(), |ms| format!("{ms:.1}"));
    let mut lines = vec![["MODEL", "REPLICAS", "REQ/S", "ERR/S", "P50 MS", "P99 MS"]
        .map(String::from)
        .to_vec()];
    for row in rows {
        lines.push(vec![
            row.model.clone(),
            match (row.ready, row.desired) {
                (Some(ready), Some(desired)) => format!("{ready}/{desired}"),
                _ => "-".into(),
            },
            format!("{:.1}", row.requests_per_s),
            format!("{:.1}", row.errors_per_s),
            ms(row.p50_ms),
            ms(row.p99_ms),
        ]);
    }
    output::table_text(&lines)
}

/// The gateways the control plane has heard from, else the local one.
async fn known_gateways(
    control: Option<&mycel_client::Client>,
    data: &std::path::Path,
) -> anyhow::Result<Vec<String>> {
    if let Some(client) = control {
        if let Ok(groups) = client.prometheus_targets().await {
            let urls = gateway_targets(&groups);
            if !urls.is_empty() {
                return Ok(urls);
            }
        }
    }
    Ok(vec![connect::gateway_url(None, data)?])
}

/// The gateway URLs among service-discovery target groups.
fn gateway_targets(groups: &[Value]) -> Vec<String> {
    let mut urls = Vec::new();
    for group in groups {
        if group["labels"]["job"] != "mycel-gateway" {
            continue;
        }
        let scheme = group["labels"]["__scheme__"].as_str().unwrap_or("http");
        for target in group["targets"].as_array().into_iter().flatten() {
            if let Some(address) = target.as_str() {
                urls.push(format!("{scheme}://{address}"));
            }
        }
    }
    urls
}

/// Every model's counters, summed over the gateways.
async fn scrape(
    http: &reqwest::Client,
    gateways: &[String],
) -> anyhow::Result<BTreeMap<String, Counters>> {
    let mut samples = Vec::new();
    for gateway in gateways {
        let url = format!("{gateway}/metrics");
        let text = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("cannot read the gateway's metrics at {url}"))?
            .text()
            .await
            .with_context(|| format!("cannot read the gateway's metrics at {url}"))?;
        samples.extend(top::parse(&text));
    }
    Ok(top::counters(&samples))
}

/// Ready and desired replicas per deployment; `None` if the control plane did not answer.
async fn replicas(client: &mycel_client::Client) -> Option<BTreeMap<String, (u32, u32)>> {
    let status = client.status().await.ok()?;
    Some(
        status
            .deployments
            .iter()
            .map(|view| {
                let ready = view.locations.iter().map(|l| l.ready).sum();
                let desired = view.locations.iter().map(|l| l.desired).sum();
                (view.deployment.name.clone(), (ready, desired))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn gateways_are_found_among_the_targets() {
        let groups = [
            json!({"targets": ["10.0.0.1:7900"], "labels": {"job": "mycel-agent", "__scheme__": "http"}}),
            json!({"targets": ["10.0.0.2:7800"], "labels": {"job": "mycel-gateway", "__scheme__": "https"}}),
            json!({"targets": ["10.0.0.3:7800"], "labels": {"job": "mycel-gateway"}}),
        ];
        assert_eq!(
            super::gateway_targets(&groups),
            ["https://10.0.0.2:7800", "http://10.0.0.3:7800"]
        );
    }
}
