//! mycel's gateway: the Open Inference Protocol v2 (the KServe/Triton protocol), over
//! REST and, on a port of its own, gRPC, in front of every deployment. Each model is a deployment; each request goes to one
//! of its ready replicas, as a worker-protocol frame to that replica's agent.
//!
//! It talks to the control plane only through `mycel-client` (to follow the routing
//! table) and to agents only over HTTP.
#![warn(missing_docs)]

mod deadline;
mod generate;
mod grpc;
mod http;
mod infer;
mod metrics;
pub mod routes;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The default for [`Config::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// File in a data directory holding the URL of the gateway started there.
pub const URL_FILE: &str = "gateway.url";

/// File in a data directory holding the `host:port` where the gateway started there
/// serves gRPC, when it does.
pub const GRPC_ADDR_FILE: &str = "gateway.grpc";

/// How to run a gateway.
#[derive(Clone, Debug)]
pub struct Config {
    /// The control plane's URL.
    pub server: String,
    /// Bearer token for the control plane.
    pub token: Option<String>,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where to serve OIP over gRPC, if at all; port 0 picks a free one.
    pub grpc: Option<SocketAddr>,
    /// The gateway's location: replicas there are preferred.
    pub location: Option<String>,
    /// Largest request body accepted.
    pub max_request_bytes: usize,
    /// The longest a request may take; past it the client gets 504 (a client may ask
    /// for less with Triton's `parameters.timeout`).
    pub request_timeout: std::time::Duration,
    /// Whether callers must present an operator's token, scoped to the model's
    /// component where the token is.
    pub require_token: bool,
    /// How long a client connection may send nothing (no request head, or a stalled
    /// body) before it is closed, and how many connections it may hold at once.
    pub limits: mycel_tls::Limits,
    /// Where the last routing table is kept, so that a gateway restarted while the
    /// control plane is away serves at once; `None` keeps it in memory only.
    pub routes_file: Option<std::path::PathBuf>,
    /// The fleet's TLS, when the control plane speaks it.
    pub tls: Option<Tls>,
    /// Where clients (and Prometheus) reach it, told to the control plane with every
    /// routes request; `None`: its bound address, unless that is `0.0.0.0`.
    pub advertise: Option<String>,
}

/// A gateway in a fleet that speaks TLS.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The fleet's CA certificate, PEM: the only one trusted, for the control plane and
    /// agents alike.
    pub ca: String,
    /// The gateway's fleet certificate: shown to agents, which answer nobody else, and
    /// served with when `serve` is set.
    pub identity: mycel_tls::Identity,
    /// Whether the gateway's own clients speak TLS to it.
    pub serve: bool,
}

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener or the server failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The control plane client could not be built.
    #[error(transparent)]
    Client(#[from] mycel_client::ClientError),
    /// The gateway's certificate could not be used.
    #[error(transparent)]
    Tls(#[from] mycel_tls::TlsError),
}

/// Where a started gateway listens.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    /// REST.
    pub http: SocketAddr,
    /// gRPC, when asked for.
    pub grpc: Option<SocketAddr>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Io {
            what: format!("listening on {addr}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| GatewayError::Io {
        what: "reading the listen address".into(),
        source,
    })?;
    Ok((listener, bound))
}

/// Runs the gateway until `shutdown` resolves. `on_listening` gets the bound addresses
/// (for writing them where others can find them).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(Listening),
) -> Result<(), GatewayError> {
    let ca = config.tls.as_ref().map(|tls| tls.ca.as_str());
    let client = mycel_client::Client::with_ca(&config.server, config.token.clone(), ca)?;
    let agents_tls = match &config.tls {
        Some(tls) => Some(mycel_tls::client_config(&tls.ca, Some(&tls.identity))?),
        None => None,
    };
    let serve_tls = match &config.tls {
        Some(tls) if tls.serve => Some(mycel_tls::server_config(&tls.identity, None)?),
        _ => None,
    };
    let (listener, addr) = bind(config.listen).await?;
    let grpc = match config.grpc {
        Some(at) => Some(bind(at).await?),
        None => None,
    };
    let router = Arc::new(routes::Router::new(config.location.clone()));
    if let Some(path) = &config.routes_file {
        match routes::load(path) {
            Ok(Some(table)) => {
                tracing::info!(path = %path.display(), models = table.models.len(), "serving the routes kept from the last run");
                router.update(table);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "kept routes unreadable; waiting for the control plane")
            }
        }
    }
    let scheme = if serve_tls.is_some() { "https" } else { "http" };
    let advertised = config
        .advertise
        .clone()
        .or_else(|| (!addr.ip().is_unspecified()).then(|| format!("{scheme}://{addr}")));
    let stop = CancellationToken::new();
    let follower = tokio::spawn(routes::follow(
        client,
        Arc::clone(&router),
        config.routes_file.clone(),
        advertised.map(|url| (url, config.location.clone())),
        stop.clone(),
    ));
    let gateway = infer::Gateway::new(
        router,
        config.max_request_bytes,
        config.request_timeout,
        config.require_token,
        agents_tls,
    )
    .map_err(|e| GatewayError::Io {
        what: "building the HTTP client for agents".into(),
        source: std::io::Error::other(e),
    })?;
    let gateway = Arc::new(gateway);
    tracing::info!(url = %format!("{scheme}://{addr}"), "gateway listening");
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let grpc_server = grpc.map(|(listener, at)| {
        tracing::info!(%at, "gateway serving OIP over gRPC");
        // gRPC is HTTP/2: over TLS, clients pick it by ALPN.
        let tls = serve_tls.as_ref().map(|tls| {
            let mut tls = rustls::ServerConfig::clone(tls);
            tls.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(tls)
        });
        let app = grpc::app(Arc::clone(&gateway));
        let stopped = stop.clone().cancelled_owned();
        (
            at,
            tokio::spawn(mycel_tls::serve(listener, app, tls, config.limits, stopped)),
        )
    });
    on_listening(Listening {
        http: addr,
        grpc: grpc_server.as_ref().map(|(at, _)| *at),
    });
    let served = mycel_tls::serve(
        listener,
        http::app(gateway),
        serve_tls,
        config.limits,
        stop.clone().cancelled_owned(),
    )
    .await;
    stop.cancel();
    let grpc_served = match grpc_server {
        Some((_, task)) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        None => Ok(()),
    };
    let _ = follower.await;
    served.and(grpc_served).map_err(|source| GatewayError::Io {
        what: "serving".into(),
        source,
    })
}
