//! mycel's gateway: the Open Inference Protocol v2 REST API (the KServe/Triton protocol)
//! in front of every deployment. Each model is a deployment; each request goes to one
//! of its ready replicas, as a worker-protocol frame to that replica's agent.
//!
//! It talks to the control plane only through `mycel-client` (to follow the routing
//! table) and to agents only over HTTP.
#![warn(missing_docs)]

mod deadline;
mod http;
mod metrics;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The default for [`Config::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// File in a data directory holding the URL of the gateway started there.
pub const URL_FILE: &str = "gateway.url";

/// How to run a gateway.
#[derive(Clone, Debug)]
pub struct Config {
    /// The control plane's URL.
    pub server: String,
    /// Bearer token for the control plane.
    pub token: Option<String>,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The gateway's location: replicas there are preferred.
    pub location: Option<String>,
    /// Largest request body accepted.
    pub max_request_bytes: usize,
    /// The longest a request may take; past it the client gets 504 (a client may ask
    /// for less with Triton's `parameters.timeout`).
    pub request_timeout: std::time::Duration,
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

/// Runs the gateway until `shutdown` resolves. `on_listening` gets the bound address
/// (for writing it where others can find it).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
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
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Io {
            what: format!("listening on {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Io {
        what: "reading the listen address".into(),
        source,
    })?;
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
    let app = http::app(
        router,
        config.max_request_bytes,
        config.request_timeout,
        agents_tls,
    )
    .map_err(|e| GatewayError::Io {
        what: "building the HTTP client for agents".into(),
        source: std::io::Error::other(e),
    })?;
    tracing::info!(url = %format!("{scheme}://{addr}"), "gateway listening");
    on_listening(addr);
    let stopping = stop.clone();
    let served = mycel_tls::serve(listener, app, serve_tls, config.limits, async move {
        shutdown.await;
        stopping.cancel();
    })
    .await;
    stop.cancel();
    let _ = follower.await;
    served.map_err(|source| GatewayError::Io {
        what: "serving".into(),
        source,
    })
}
