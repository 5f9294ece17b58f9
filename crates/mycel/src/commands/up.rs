//! `mycel up` and `mycel server`: roles run as tasks of one process — the control plane
//! with its embedded store, the gateway, and for `up` one agent per named node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{ServerArgs, UpArgs};
use crate::commands::agent::{machine_cpus, machine_memory, runtime_dir};
use crate::connect::data_dir;

/// Roles running in this process, stopped together.
struct Roles {
    data: PathBuf,
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    server: String,
    token: String,
    /// The fleet's CA certificate, when the fleet speaks TLS.
    ca: Option<String>,
    /// Extra names for certificates (`--tls-name`).
    tls_names: Vec<String>,
}

impl Roles {
    /// Starts the control plane and waits until it listens.
    async fn start(config: mycel_control::Config) -> anyhow::Result<Self> {
        let data = config.data_dir.clone();
        let (tls, tls_names) = (config.tls, config.tls_names.clone());
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let url_file = data.join(mycel_control::URL_FILE);
        let _ = std::fs::remove_file(&url_file);
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let stopped = stop.clone();
        tasks.spawn(async move {
            mycel_control::run(config, stopped.cancelled_owned())
                .await
                .map_err(anyhow::Error::from)
        });
        let server = tokio::select! {
            url = wait_for_file(&url_file) => url?,
            // The control plane failed before listening: say why.
            Some(result) = tasks.join_next() => {
                result??;
                anyhow::bail!("the control plane stopped before it started listening");
            }
        };
        let token = std::fs::read_to_string(data.join(mycel_control::auth::ADMIN_TOKEN_FILE))
            .context("reading the admin token")?
            .trim()
            .to_owned();
        let ca = match tls {
            true => {
                let path = data.join(mycel_control::TLS_DIR).join(mycel_tls::CA_FILE);
                let pem = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                eprintln!(
                    "speaking TLS with the fleet's CA {} (SHA-256 {}); clients elsewhere need it: --ca FILE",
                    path.display(),
                    mycel_tls::fingerprint(&pem)?
                );
                Some(pem)
            }
            false => None,
        };
        Ok(Self {
            data,
            stop,
            tasks,
            server,
            token,
            ca,
            tls_names,
        })
    }

    /// Starts a gateway following this control plane; its URL goes to DATA/gateway.url,
    /// and its gRPC address, if it serves gRPC, to DATA/gateway.grpc.
    fn gateway(
        &mut self,
        listen: SocketAddr,
        grpc: Option<SocketAddr>,
        max_request_size: u64,
        request_timeout: Duration,
        require_token: bool,
    ) -> anyhow::Result<()> {
        let tls = match &self.ca {
            Some(ca) => {
                let authority =
                    mycel_tls::Ca::load_or_create(&self.data.join(mycel_control::TLS_DIR))?;
                let mut hosts = vec![listen.ip().to_string()];
                hosts.extend(grpc.map(|grpc| grpc.ip().to_string()));
                hosts.extend(self.tls_names.iter().cloned());
                let identity = authority.own_identity(
                    mycel_tls::Kind::Fleet,
                    "mycel gateway",
                    &mycel_tls::names_for(&hosts),
                )?;
                Some(mycel_gateway::Tls {
                    ca: ca.clone(),
                    identity,
                    serve: true,
                })
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let config = mycel_gateway::Config {
            server: self.server.clone(),
            token: Some(self.token.clone()),
            listen,
            grpc,
            location: None,
            routes_file: None,
            max_request_bytes: usize::try_from(max_request_size)
                .context("--max-request-size is too large for this machine")?,
            request_timeout,
            require_token,
            limits: mycel_tls::Limits::for_this_process(),
            tls,
            advertise: None,
        };
        let url_file = self.data.join(mycel_gateway::URL_FILE);
        let grpc_file = self.data.join(mycel_gateway::GRPC_ADDR_FILE);
        let _ = std::fs::remove_file(&grpc_file);
        let stopped = self.stop.clone();
        self.tasks.spawn(async move {
            mycel_gateway::run(config, stopped.cancelled_owned(), move |at| {
                if let Some(grpc) = at.grpc {
                    let grpc = mycel_control::client_addr(grpc);
                    if let Err(e) = std::fs::write(&grpc_file, format!("{grpc}\n")) {
                        tracing::warn!(error = %e, file = %grpc_file.display(), "cannot write the gateway's gRPC address");
                    }
                }
                let addr = mycel_control::client_addr(at.http);
                if let Err(e) = std::fs::write(&url_file, format!("{scheme}://{addr}\n")) {
                    tracing::warn!(error = %e, file = %url_file.display(), "cannot write the gateway URL");
                }
            })
            .await
            .map_err(anyhow::Error::from)
        });
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, or until a role fails; then stops every role and
    /// waits for them (agents stop their workers first).
    async fn run(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            _ = super::shutdown_signal() => {}
            Some(result) = self.tasks.join_next() => {
                failure = Some(result.map_err(anyhow::Error::from).and_then(|r| r).err());
            }
        }
        if failure.is_none() {
            // Workers take a moment to exit (PyTorch's teardown is slow): say so at once.
            eprintln!("stopping: every node's workers, then the agents, gateway and control plane");
        }
        self.stop.cancel();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result.map_err(anyhow::Error::from).and_then(|r| r) {
                failure.get_or_insert(Some(e));
            }
        }
        if failure.is_none() {
            eprintln!("stopped");
        }
        match failure.flatten() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Every address a control plane with its gateway listens on.
fn listens(control: SocketAddr, gateway: SocketAddr, grpc: Option<SocketAddr>) -> Vec<SocketAddr> {
    [control, gateway].into_iter().chain(grpc).collect()
}

/// `mycel server`: control plane and gateway.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = mycel_control::Config {
        data_dir: data_dir(&args.data)?,
        listen: args.listen,
        max_blob_bytes: args.max_blob_size,
        lost_after: args.lost_after,
        tls: super::speaks_tls(&args.tls, &listens(args.listen, args.gateway, args.grpc)),
        tls_names: args.tls.names.clone(),
        clock: mycel_control::Clock::system(),
        require_signed: args.require_signed,
    };
    let mut roles = Roles::start(config).await?;
    roles.gateway(
        args.gateway,
        args.grpc,
        args.max_request_size,
        args.request_timeout,
        args.require_token,
    )?;
    roles.run().await
}

/// `mycel up`: control plane, gateway and one agent per node.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    for node in &args.nodes {
        mycel_core::manifest::validate_name(node)
            .map_err(|m| anyhow::anyhow!("--nodes: node {m}"))?;
    }
    let mut datasets: std::collections::BTreeMap<
        &str,
        std::collections::BTreeMap<String, PathBuf>,
    > = Default::default();
    for (node, name, path) in &args.datasets {
        if !args.nodes.contains(node) {
            anyhow::bail!(
                "--dataset {node}:{name}: there is no node {node:?}; the nodes are {}",
                args.nodes.join(", ")
            );
        }
        if datasets
            .entry(node)
            .or_default()
            .insert(name.clone(), path.clone())
            .is_some()
        {
            anyhow::bail!(
                "--dataset {node}:{name} is given twice; expected one directory per dataset"
            );
        }
    }
    let data = data_dir(&args.data)?;
    let mut ports = vec![("--listen", args.listen), ("--gateway", args.gateway)];
    ports.extend(args.grpc.map(|grpc| ("--grpc", grpc)));
    let findings = super::doctor::node_checks(&args.runtime.uv, &data, &ports).await;
    super::doctor::refuse(&findings, "mycel up")?;
    let control = mycel_control::Config {
        data_dir: data.clone(),
        listen: args.listen,
        max_blob_bytes: mycel_control::DEFAULT_MAX_BLOB_BYTES,
        lost_after: mycel_control::DEFAULT_LOST_AFTER,
        tls: super::speaks_tls(&args.tls, &listens(args.listen, args.gateway, args.grpc)),
        tls_names: args.tls.names.clone(),
        clock: mycel_control::Clock::system(),
        require_signed: args.require_signed,
    };
    let mut roles = Roles::start(control).await?;
    roles.gateway(
        args.gateway,
        args.grpc,
        args.max_request_size,
        args.request_timeout,
        args.require_token,
    )?;
    let runtime = runtime_dir(&args.runtime, &data)?;
    let gpus = share_gpus(&args.nodes)?;
    let trust_keys = super::sign::trust_keys(&args.trust_keys)?;
    for (node, gpus) in args.nodes.iter().zip(gpus) {
        let config = mycel_agent::Config {
            server: roles.server.clone(),
            token: Some(roles.token.clone()),
            name: node.clone(),
            location: node.clone(),
            labels: Default::default(),
            cpus: args.node_cpus.unwrap_or_else(machine_cpus),
            memory_bytes: args.node_memory.unwrap_or_else(machine_memory),
            gpus: Some(gpus),
            data_dir: data.join("nodes").join(node),
            envs_dir: data.join("envs"),
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            uv: args.runtime.uv.clone(),
            runtime_dir: runtime.clone(),
            heartbeat: args.runtime.heartbeat,
            warm_start: !args.runtime.no_warm_start,
            max_request_bytes: mycel_agent::DEFAULT_MAX_REQUEST_BYTES,
            datasets: datasets.remove(node.as_str()).unwrap_or_default(),
            ca: roles.ca.clone(),
            trust_keys: trust_keys.clone(),
            sandbox: args.runtime.sandbox,
            // The control plane's store, token and CA live there.
            hidden: vec![data.clone()],
        };
        let stopped = roles.stop.clone();
        roles.tasks.spawn(async move {
            mycel_agent::run(config, stopped.cancelled_owned())
                .await
                .map_err(anyhow::Error::from)
        });
    }
    let mut gateway = wait_for_file(&data.join(mycel_gateway::URL_FILE)).await?;
    if args.grpc.is_some() {
        // Written before the URL, so it is there now.
        let grpc = std::fs::read_to_string(data.join(mycel_gateway::GRPC_ADDR_FILE))
            .context("reading the gateway's gRPC address")?;
        gateway = format!("{gateway} (gRPC {})", grpc.trim());
    }
    eprintln!(
        "mycel is up: control plane {}, gateway {gateway}, nodes {}, data {}\n\
         push with `mycel push DIR`, deploy with `mycel deploy NAME --copies {}=1`; Ctrl-C stops everything",
        roles.server,
        args.nodes.join(", "),
        data.display(),
        args.nodes[0]
    );
    roles.run().await
}

/// The machine's GPUs dealt out to the local nodes in turn, so that no two nodes hand
/// out the same GPU (unlike cores and memory, which every node offers whole).
fn share_gpus(nodes: &[String]) -> anyhow::Result<Vec<Vec<u32>>> {
    let found = mycel_agent::gpu::Gpus::detect(None)?;
    Ok(deal(
        found.devices().iter().map(|g| g.index).collect(),
        nodes.len(),
    ))
}

/// `indices` dealt to `hands` in turn.
fn deal(indices: Vec<u32>, hands: usize) -> Vec<Vec<u32>> {
    let mut dealt = vec![Vec::new(); hands];
    for (n, index) in indices.into_iter().enumerate() {
        if let Some(hand) = dealt.get_mut(n % hands.max(1)) {
            hand.push(index);
        }
    }
    dealt
}

async fn wait_for_file(path: &Path) -> anyhow::Result<String> {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{} did not appear within 30s", path.display())
}

#[cfg(test)]
mod tests {
    use super::deal;

    #[test]
    fn gpus_are_dealt_to_nodes_in_turn_never_twice() {
        assert_eq!(deal(vec![0, 1, 2], 2), vec![vec![0, 2], vec![1]]);
        assert_eq!(deal(vec![0], 3), vec![vec![0], vec![], vec![]]);
        assert_eq!(deal(Vec::new(), 2), vec![Vec::<u32>::new(); 2]);
    }
}
