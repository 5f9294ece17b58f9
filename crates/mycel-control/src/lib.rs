//! mycel's control plane: the `/v1` REST API, the registry of blobs and versions, and
//! the durable state behind them.
//!
//! It is a library so that the `mycel` binary, `mycel up` and tests run the same wiring:
//! [`run`] binds, serves until the shutdown future resolves, then returns. It must not
//! depend on the agent or the gateway.
#![warn(missing_docs)]

mod api;
pub mod auth;
pub mod blobs;
mod clock;
mod federation;
mod fleet;
mod observe;
pub mod policy;
pub mod registry;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use clock::Clock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Blobs larger than this are refused unless configured otherwise: 8 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 8 << 30;

/// Name of the file, in the data directory, that holds the URL the server listens on.
pub const URL_FILE: &str = "server.url";

/// How to run a control plane.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the store, blobs and admin token live.
    pub data_dir: PathBuf,
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// A node silent this long is lost and its replicas move.
    pub lost_after: std::time::Duration,
    /// Serve the API over TLS, with a certificate from the fleet's CA.
    pub tls: bool,
    /// Names (DNS or IP) clients reach the server by, beyond the listen address and
    /// this machine's own names, for its certificate.
    pub tls_names: Vec<String>,
    /// What time it is: the system's, unless a test moves it forward.
    pub clock: Clock,
    /// Deploy only signed versions.
    pub require_signed: bool,
}

/// The directory, under the data directory, that holds the fleet's CA.
pub const TLS_DIR: &str = "tls";

/// Nodes are lost after this long without a heartbeat unless configured otherwise.
pub const DEFAULT_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The fleet's CA or the server's certificate could not be made or used.
    #[error(transparent)]
    Tls(#[from] mycel_tls::TlsError),
    /// The HTTP client for agents could not be built.
    #[error("building the HTTP client for agents: {0}")]
    AgentClient(#[source] reqwest::Error),
    /// Binding or serving failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Shared by every request handler.
pub(crate) struct AppState {
    store: Arc<dyn store::Store>,
    blobs: blobs::BlobStore,
    max_blob_bytes: u64,
    fleet: Arc<fleet::Fleet>,
    federations: Arc<federation::Federations>,
    /// What each node's credential may read, while its assignments stay the same.
    node_reads: api::ReadsCache,
    /// Cancelled on shutdown, so long-polls answer at once instead of holding it up.
    stop: CancellationToken,
    /// The fleet's certificate authority.
    ca: Arc<mycel_tls::Ca>,
    /// Dials agents' data planes (for replica logs), with the fleet's certificate.
    agents: reqwest::Client,
    /// Metrics, and the gateways heard from.
    observer: observe::Observer,
    /// Every deployment serves only signed versions.
    require_signed: bool,
}

/// Runs the control plane until `shutdown` resolves.
///
/// Once listening it writes the URL it serves on to `DATA/server.url`, which is how the
/// CLI and tests find a server started on port 0.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let data_dir = config.data_dir.clone();
    let io_err = |source| Error::DataDir {
        path: data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&data_dir).map_err(io_err)?;
    let blobs = blobs::BlobStore::open(data_dir.join("blobs")).map_err(io_err)?;
    let store = store::RedbStore::open(&data_dir.join("state.redb"))?;
    auth::ensure_admin_token(&store, &data_dir)?;

    let ca = Arc::new(mycel_tls::Ca::load_or_create(&data_dir.join(TLS_DIR))?);
    let mut hosts = vec![config.listen.ip().to_string()];
    hosts.extend(config.tls_names.iter().cloned());
    let identity = ca.own_identity(
        mycel_tls::Kind::Fleet,
        "mycel control plane",
        &mycel_tls::names_for(&hosts),
    )?;
    let agents = agents_client(&ca, &identity)?;
    let tls = match config.tls {
        true => Some(mycel_tls::server_config(&identity, None)?),
        false => None,
    };

    let store: Arc<dyn store::Store> = Arc::new(store);
    let fleet = Arc::new(fleet::Fleet::new(
        Arc::clone(&store),
        config.lost_after,
        config.clock.clone(),
    ));
    fleet.reconcile().await?;
    let federations = Arc::new(federation::Federations::new(
        Arc::clone(&store),
        blobs.clone(),
        Arc::clone(&fleet),
    ));
    federations.recover().await?;
    let stop = CancellationToken::new();
    let state = Arc::new(AppState {
        store,
        blobs,
        max_blob_bytes: config.max_blob_bytes,
        fleet: Arc::clone(&fleet),
        federations: Arc::clone(&federations),
        node_reads: Default::default(),
        stop: stop.clone(),
        ca,
        agents,
        observer: observe::Observer::new(fleet.reconcile_seconds()),
        require_signed: config.require_signed,
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", client_addr(addr));
    std::fs::write(data_dir.join(URL_FILE), format!("{url}\n")).map_err(io_err)?;
    tracing::info!(%url, data = %data_dir.display(), "control plane listening");

    let heartbeats = tokio::spawn(fleet.watch_heartbeats(stop.clone()));
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let served = mycel_tls::serve(
        listener,
        api::router(state),
        tls,
        mycel_tls::Limits::for_control_plane(),
        stop.clone().cancelled_owned(),
    )
    .await;
    stop.cancel();
    federations.cancel_all();
    let _ = heartbeats.await;
    served.map_err(|source| Error::Listen { addr, source })
}

/// A client for agents' data planes: it trusts the fleet's CA and shows the fleet's
/// certificate, which agents serving TLS require. Plain-HTTP agents it dials as is.
fn agents_client(
    ca: &mycel_tls::Ca,
    identity: &mycel_tls::Identity,
) -> Result<reqwest::Client, Error> {
    let tls = mycel_tls::client_config(ca.cert_pem(), Some(identity))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(std::time::Duration::from_secs(4))
        .build()
        .map_err(Error::AgentClient)
}

/// The address a local client should dial: a wildcard bind is reachable on loopback.
pub fn client_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}
