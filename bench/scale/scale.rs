//! Fleet-scale simulation: N simulated agents in one process, speaking real HTTP to a
//! real control plane (register, heartbeat every 5 s, long-poll assignments, report
//! their replicas ready; no Python workers). Measures what the control plane does
//! with a fleet of that size. Run by `bench/scale/run.sh`, which starts the server.
//!
//! scale URL TOKEN SERVER_PID NODES LOCATIONS LOST_AFTER_S

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mycel_core::api::{DeployRequest, Heartbeat};
use mycel_core::fleet::{NodeSpec, ReplicaState, ReplicaStatus};
use tokio_util::sync::CancellationToken;

const HEARTBEAT: Duration = Duration::from_secs(5);

/// What every simulated node shares with the driver.
#[derive(Default)]
struct Shared {
    /// Heartbeat round trips, in microseconds.
    heartbeats: Mutex<Vec<u64>>,
    /// Heartbeats that failed.
    heartbeat_errors: AtomicUsize,
    /// Each node's replicas as last assigned, by node.
    assigned: Mutex<HashMap<String, Vec<String>>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, pid, nodes, locations, lost_after] = args.as_slice() else {
        anyhow::bail!("usage: scale URL TOKEN SERVER_PID NODES LOCATIONS LOST_AFTER_S");
    };
    let pid: u32 = pid.parse()?;
    let nodes: usize = nodes.parse()?;
    let locations: usize = locations.parse()?;
    let lost_after = Duration::from_secs(lost_after.parse()?);
    let client = mycel_client::Client::new(url, Some(token.clone()))?;
    let shared = Arc::new(Shared::default());

    let specs: Vec<NodeSpec> = (0..nodes)
        .map(|i| NodeSpec {
            name: format!("sim-{i:05}"),
            location: format!("loc-{:02}", i % locations),
            labels: BTreeMap::new(),
            cpus: 2.0,
            memory_bytes: 4 << 30,
            gpus: 0,
            gpu_devices: Vec::new(),
            agent_url: format!("http://127.0.0.1:{}", 20000 + i % 40000),
            datasets: Vec::new(),
            isolation: Default::default(),
            sandbox: Default::default(),
        })
        .collect();

    let started = Instant::now();
    let registered = AtomicUsize::new(0);
    futures::future::try_join_all(specs.chunks(nodes.div_ceil(64)).map(|chunk| {
        let client = client.clone();
        let registered = &registered;
        async move {
            for spec in chunk {
                client.register_node(spec).await?;
                registered.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    println!(
        "registered {nodes} nodes in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let stops: Vec<CancellationToken> = specs.iter().map(|_| CancellationToken::new()).collect();
    for (i, spec) in specs.iter().enumerate() {
        // Heartbeats spread over the period, as real agents' would be.
        let offset = HEARTBEAT.mul_f64(i as f64 / nodes as f64);
        tokio::spawn(simulate(
            client.clone(),
            spec.name.clone(),
            Arc::clone(&shared),
            stops[i].clone(),
            offset,
        ));
    }
    tokio::time::sleep(HEARTBEAT * 2).await;
    let idle = sample(pid, HEARTBEAT * 2).await?;
    println!(
        "steady, no deployments: control plane {:.0} MiB RSS, {:.0} % of a core",
        idle.rss_mib, idle.cpu_percent
    );
    let idle_p99 = take_p99(&shared);

    // One replica per node: every location's copies equal its nodes, one core each on
    // nodes of two, so the spread puts one on every node.
    let per_location = (0..locations)
        .map(|l| {
            (
                format!("loc-{l:02}"),
                specs
                    .iter()
                    .filter(|s| s.location == format!("loc-{l:02}"))
                    .count() as u32,
            )
        })
        .collect::<BTreeMap<_, _>>();
    let request = DeployRequest {
        component: Some("sim".into()),
        version: "latest".into(),
        copies: per_location.clone(),
        max_batch_size: None,
        batch_wait_ms: None,
        timeout_ms: None,
        surge: None,
        max_unavailable: None,
        deadline_s: None,
        require_signed: None,
    };
    let deployed = Instant::now();
    client.deploy("sim", &request).await?;
    let answer = deployed.elapsed();
    wait_until(
        &shared,
        deployed,
        "every node to get its replica",
        |assigned| assigned.values().filter(|r| !r.is_empty()).count() == nodes,
    )
    .await;
    let to_all = deployed.elapsed();
    println!(
        "deploy of {nodes} replicas: API answered in {:.2} s, every node had its assignment after {:.2} s",
        answer.as_secs_f64(),
        to_all.as_secs_f64()
    );
    tokio::time::sleep(HEARTBEAT * 2).await;
    let busy = sample(pid, HEARTBEAT * 2).await?;
    let busy_p99 = take_p99(&shared);
    println!(
        "steady, {nodes} replicas ready: control plane {:.0} MiB RSS, {:.0} % of a core",
        busy.rss_mib, busy.cpu_percent
    );

    // 10 % of nodes go silent at once; their replicas must move to the others.
    // A tenth of every location, so each has room left for what it loses.
    let is_lost = |i: usize| (i / locations).is_multiple_of(10);
    let lost: Vec<String> = specs
        .iter()
        .enumerate()
        .filter(|(i, _)| is_lost(*i))
        .map(|(_, s)| s.name.clone())
        .collect();
    let moved: usize = {
        let assigned = shared.assigned.lock().unwrap_or_else(|p| p.into_inner());
        lost.iter()
            .map(|n| assigned.get(n).map_or(0, Vec::len))
            .sum()
    };
    let lost_set: std::collections::HashSet<&String> = lost.iter().collect();
    let silenced = Instant::now();
    for (i, stop) in stops.iter().enumerate() {
        if is_lost(i) {
            stop.cancel();
        }
    }
    wait_until(
        &shared,
        silenced,
        "the lost nodes' replicas to be placed elsewhere",
        |assigned| {
            let on_survivors: usize = assigned
                .iter()
                .filter(|(n, _)| !lost_set.contains(n))
                .map(|(_, r)| r.len())
                .sum();
            on_survivors >= nodes
        },
    )
    .await;
    let replaced = silenced.elapsed();
    println!(
        "{} nodes lost at once: their {} replicas placed elsewhere {:.2} s after they went silent ({:.2} s after --lost-after)",
        lost.len(),
        moved,
        replaced.as_secs_f64(),
        replaced.saturating_sub(lost_after).as_secs_f64()
    );
    println!(
        "heartbeat round trip p99: {:.1} ms idle, {:.1} ms with replicas; {} failed",
        idle_p99 as f64 / 1000.0,
        busy_p99 as f64 / 1000.0,
        shared.heartbeat_errors.load(Ordering::Relaxed)
    );
    println!(
        "| {nodes} | {:.0} MiB | {:.0} % | {:.1} ms | {:.2} s | {:.2} s | {:.0} MiB | {:.0} % |",
        idle.rss_mib,
        idle.cpu_percent,
        busy_p99 as f64 / 1000.0,
        to_all.as_secs_f64(),
        replaced.saturating_sub(lost_after).as_secs_f64(),
        busy.rss_mib,
        busy.cpu_percent
    );
    Ok(())
}

/// One simulated agent: heartbeats reporting its replicas ready, and a long-poll for
/// its assignments, until `stop`.
async fn simulate(
    client: mycel_client::Client,
    name: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    offset: Duration,
) {
    let replicas: Arc<Mutex<Vec<String>>> = Arc::default();
    let watch = {
        let (client, name, shared, stop, replicas) = (
            client.clone(),
            name.clone(),
            Arc::clone(&shared),
            stop.clone(),
            Arc::clone(&replicas),
        );
        async move {
            let mut generation = 0;
            loop {
                let answer = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = client.watch_assignments(&name, generation, Duration::from_secs(30)) => a,
                };
                match answer {
                    Ok(answer) => {
                        generation = answer.generation;
                        let now: Vec<String> =
                            answer.assignments.into_iter().map(|a| a.replica).collect();
                        *replicas.lock().unwrap_or_else(|p| p.into_inner()) = now.clone();
                        shared
                            .assigned
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(name.clone(), now);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    };
    let beat = async move {
        tokio::time::sleep(offset).await;
        loop {
            let heartbeat = Heartbeat {
                replicas: replicas
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|r| ReplicaStatus {
                        replica: r.clone(),
                        state: ReplicaState::Ready,
                        pid: Some(1),
                        restarts: 0,
                        for_ms: 0,
                        progress: None,
                        last_failure: None,
                    })
                    .collect(),
                gpus: Vec::new(),
            };
            let sent = Instant::now();
            match client.heartbeat(&name, &heartbeat).await {
                Ok(()) => shared
                    .heartbeats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sent.elapsed().as_micros() as u64),
                Err(_) => {
                    shared.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    };
    tokio::join!(watch, beat);
}

async fn wait_until(
    shared: &Shared,
    since: Instant,
    what: &str,
    done: impl Fn(&HashMap<String, Vec<String>>) -> bool,
) {
    loop {
        if done(&shared.assigned.lock().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        if since.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up waiting for {what} after 600 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The heartbeat p99 since the last call, in microseconds.
fn take_p99(shared: &Shared) -> u64 {
    let mut times =
        std::mem::take(&mut *shared.heartbeats.lock().unwrap_or_else(|p| p.into_inner()));
    times.sort_unstable();
    times
        .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

struct Sample {
    rss_mib: f64,
    cpu_percent: f64,
}

/// The server's RSS at the end of `window`, and its CPU use over it.
async fn sample(pid: u32, window: Duration) -> anyhow::Result<Sample> {
    let ticks = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).unwrap_or(&"0").parse()?;
        let stime: u64 = fields.get(12).unwrap_or(&"0").parse()?;
        Ok(utime + stime)
    };
    let before = ticks()?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let used = ticks()? - before;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0")
        .parse()?;
    // Linux reports CPU time in clock ticks of 1/100 s.
    let cpu_percent = used as f64 / start.elapsed().as_secs_f64();
    Ok(Sample {
        rss_mib: rss_kib / 1024.0,
        cpu_percent,
    })
}
