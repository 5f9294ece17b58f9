//! The aggregation benchmark's driver (bench/federate/run.sh runs it).
//!
//! ```text
//! federate_bench throughput [--repeat R] [--fold-every K] [--chunk-len C] GLOBAL UPDATE...
//!     memcpy bandwidth, then FedAvg over the updates R times (example count 1 each);
//!     prints one JSON object.
//! federate_bench aggregate --strategy S --out OUT GLOBAL UPDATE:COUNT...
//!     one aggregation; prints the report as JSON.
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mycel_federate::{
    Aggregator, AggregatorConfig, ClientStatus, GlobalModel, Strategy, DEFAULT_CHUNK_LEN,
};
use rayon::prelude::*;

/// Bytes copied per memcpy round: far beyond any cache, like the updates.
const MEMCPY_BYTES: usize = 512 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("throughput") => throughput(&args[1..]),
        Some("aggregate") => aggregate(&args[1..]),
        _ => bail!("usage: federate_bench throughput|aggregate ... (see the source's docs)"),
    }
}

/// `--key value` pairs.
type Options = Vec<(String, String)>;

/// Splits `--key value` options from positional arguments.
fn options(args: &[String]) -> Result<(Options, Vec<String>)> {
    let mut opts = Vec::new();
    let mut rest = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(key) = arg.strip_prefix("--") {
            let value = iter
                .next()
                .with_context(|| format!("--{key} needs a value"))?;
            opts.push((key.to_string(), value.clone()));
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((opts, rest))
}

fn option<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn throughput(args: &[String]) -> Result<()> {
    let (opts, paths) = options(args)?;
    let repeat: usize = option(&opts, "repeat").unwrap_or("5").parse()?;
    let fold_every: usize = option(&opts, "fold-every").unwrap_or("16").parse()?;
    let (global, updates) = paths
        .split_first()
        .context("need GLOBAL and UPDATE files")?;
    let update_bytes: u64 = updates
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<Result<u64, _>>()?;

    let (memcpy_single, memcpy_parallel) = memcpy_bandwidth(repeat.max(3));

    let mut seconds = Vec::new();
    let mut report = None;
    let out = Path::new(global).with_file_name("throughput-aggregate.safetensors");
    let chunk_len: usize = match option(&opts, "chunk-len") {
        Some(c) => c.parse()?,
        None => DEFAULT_CHUNK_LEN,
    };
    for _ in 0..repeat {
        // A round writes a new file; replacing the last repeat's 100 MB output would
        // time the kernel freeing its pages, which no round does.
        std::fs::remove_file(&out).ok();
        let start = Instant::now();
        let config = AggregatorConfig {
            fold_every,
            chunk_len,
            ..AggregatorConfig::new(Strategy::FedAvg)
        };
        let mut aggregator = Aggregator::new(GlobalModel::open(Path::new(global))?, config)?;
        for (i, path) in updates.iter().enumerate() {
            aggregator.add_update(&format!("client-{i}"), Path::new(path), 1)?;
        }
        let aggregate = aggregator.finish(&out)?;
        seconds.push(start.elapsed().as_secs_f64());
        report = Some(aggregate);
    }
    std::fs::remove_file(&out).ok();
    let report = report.context("--repeat must be at least 1")?;
    seconds.sort_by(f64::total_cmp);
    let best = seconds[0];
    let median = seconds[seconds.len() / 2];
    let gbps = |s: f64| update_bytes as f64 / s / 1e9;
    let memcpy = memcpy_single.max(memcpy_parallel);
    let result = serde_json::json!({
        "clients": updates.len(),
        "update_bytes": update_bytes,
        "threads": rayon::current_num_threads(),
        "fold_every": fold_every,
        "chunk_len": chunk_len,
        "seconds": seconds,
        "fedavg_gbps_best": gbps(best),
        "fedavg_gbps_median": gbps(median),
        "memcpy_gbps_single_thread": memcpy_single,
        "memcpy_gbps_all_threads": memcpy_parallel,
        "ratio_best": gbps(best) / memcpy,
        "ratio_median": gbps(median) / memcpy,
        "peak_buffer_bytes": report.peak_buffer_bytes,
        "accumulator_bytes": report.accumulator_bytes,
        "update_bytes_read": report.update_bytes_read,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// memcpy bandwidth in GB/s (bytes copied per second), best of `rounds`: one thread
/// copying the whole buffer, and every thread copying its share.
fn memcpy_bandwidth(rounds: usize) -> (f64, f64) {
    let src = vec![1u8; MEMCPY_BYTES];
    let mut dst = vec![0u8; MEMCPY_BYTES];
    // Touch the destination once so page faults are not timed.
    dst.copy_from_slice(&src);
    let mut best = |copy: &mut dyn FnMut(&mut [u8], &[u8])| {
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                copy(&mut dst, &src);
                std::hint::black_box(&dst);
                MEMCPY_BYTES as f64 / start.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    let single = best(&mut |d, s| d.copy_from_slice(s));
    let parallel = best(&mut |d, s| {
        d.par_chunks_mut(1 << 20)
            .zip(s.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    (single, parallel)
}

fn aggregate(args: &[String]) -> Result<()> {
    let (opts, paths) = options(args)?;
    let strategy: Strategy = option(&opts, "strategy").unwrap_or("fedavg").parse()?;
    let out = PathBuf::from(option(&opts, "out").context("--out is required")?);
    let (global, updates) = paths
        .split_first()
        .context("need GLOBAL and UPDATE:COUNT arguments")?;
    let mut aggregator = Aggregator::new(
        GlobalModel::open(Path::new(global))?,
        AggregatorConfig::new(strategy),
    )?;
    for (i, spec) in updates.iter().enumerate() {
        let (path, count) = spec
            .rsplit_once(':')
            .with_context(|| format!("'{spec}' is not UPDATE:COUNT"))?;
        aggregator.add_update(&format!("client-{i}"), Path::new(path), count.parse()?)?;
    }
    let start = Instant::now();
    let report = aggregator.finish(&out)?;
    let rejected: Vec<String> = report
        .clients
        .iter()
        .filter_map(|c| match &c.status {
            ClientStatus::Rejected(r) => Some(format!("{}: {r}", c.client)),
            _ => None,
        })
        .collect();
    let result = serde_json::json!({
        "strategy": report.strategy.to_string(),
        "included": report.included,
        "examples": report.examples,
        "rejected": rejected,
        "finish_seconds": start.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
