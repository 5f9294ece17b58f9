//! Serving a router on a bound listener, in plain HTTP or TLS, until told to stop,
//! with the timeouts that keep slow or silent clients from holding connections.

use std::future::{Future, Ready};

use axum_server::accept::NoDelayAcceptor;
use futures::future::Either;
use std::sync::Arc;
use std::time::Duration;

/// How long in-flight requests get to finish once a listener is told to stop.
const DRAIN: Duration = Duration::from_secs(10);

/// The default for [`Limits::idle`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most connections a listener holds by default (see [`Limits::for_this_process`]).
pub const MAX_CONNECTIONS: usize = 10_000;

/// The most connections the control plane holds: every node keeps a long-poll open and
/// heartbeats beside it, so a fleet needs a little more than one connection per node.
pub const MAX_FLEET_CONNECTIONS: usize = 100_000;

/// Files the control plane keeps for itself beside its connections (store, blobs).
const RESERVED_FILES: u64 = 1024;

/// What one listener lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A connection that sends no complete request head for this long (a slow or
    /// partial head, or nothing at all between requests) is closed, and a request body
    /// that sends nothing for this long is cut off.
    pub idle: Duration,
    /// Connections open at once; one past it is closed as soon as it is accepted, so
    /// that file descriptors (and memory) stay for the clients already served.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            idle: IDLE_TIMEOUT,
            connections: MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// The defaults, with the connection limit lowered to half of what this process
    /// may open (after raising its soft open-file limit to the hard one, as a server
    /// should): the other half stays for blobs, workers and outgoing links.
    pub fn for_this_process() -> Self {
        Self::within_open_files(MAX_CONNECTIONS, |files| files / 2)
    }

    /// The control plane's limits: its clients are the fleet's nodes, one long-poll
    /// each, so all but a reserve of what this process may open goes to connections
    /// (a limit of half, capped at 10,000, turned the 10,000th node away).
    pub fn for_control_plane() -> Self {
        Self::within_open_files(MAX_FLEET_CONNECTIONS, |files| {
            files.saturating_sub(RESERVED_FILES)
        })
    }

    fn within_open_files(max: usize, share: impl Fn(u64) -> u64) -> Self {
        let files = raise_open_file_limit();
        let connections = files.map_or(max, |n| {
            max.min(usize::try_from(share(n)).unwrap_or(usize::MAX))
        });
        Self {
            connections: connections.max(64),
            ..Self::default()
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit; the soft limit
/// now, or `None` if it cannot be read.
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            ..limit
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    // `None` means unlimited.
    Some(limit.current.unwrap_or(u64::MAX))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish. Connections send at once (`TCP_NODELAY`): a streamed answer's small steps
/// must not wait for the client's acknowledgement of the one before. With `tls`, every connection is TLS (a plain HTTP request gets no answer);
/// the handshake happens on the connection's own task, so a slow client holds up
/// nobody. `limits` bounds what clients can hold: idle and stalled connections are
/// closed, and connections past the limit are refused.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.idle,
        ))
        // Handlers may read the peer's address (`ConnectInfo`): the audit log does.
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(DRAIN));
    });
    let listener = listener.into_std()?;
    match tls {
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(NoDelayAcceptor::new())
                .handle(handle.clone())
                .map(|inner| Limited {
                    inner,
                    handle: handle.clone(),
                    most: limits.connections,
                })
                .first_request_timeout(limits.idle);
            server
                .http_builder()
                .http1()
                .header_read_timeout(limits.idle);
            server.serve(app).await
        }
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .acceptor(NoDelayAcceptor::new());
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(acceptor)
                .handle(handle.clone())
                .map(|inner| Limited {
                    inner,
                    handle: handle.clone(),
                    most: limits.connections,
                })
                .first_request_timeout(limits.idle);
            server
                .http_builder()
                .http1()
                .header_read_timeout(limits.idle);
            server.serve(app).await
        }
    }
}

/// An acceptor that turns connections away past a limit, before any TLS handshake or
/// byte of HTTP is spent on them.
#[derive(Clone)]
struct Limited<A> {
    inner: A,
    handle: axum_server::Handle<std::net::SocketAddr>,
    most: usize,
}

impl<A, I, S> axum_server::accept::Accept<I, S> for Limited<A>
where
    A: axum_server::accept::Accept<I, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Either<Ready<std::io::Result<(A::Stream, A::Service)>>, A::Future>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        // The count includes the connection being accepted.
        if self.handle.connection_count() > self.most {
            drop(stream);
            let refused =
                std::io::Error::other(format!("over the limit of {} connections", self.most));
            return Either::Left(std::future::ready(Err(refused)));
        }
        Either::Right(self.inner.accept(stream, service))
    }
}
