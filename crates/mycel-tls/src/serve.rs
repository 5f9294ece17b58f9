//! Serving a router on a bound listener, in plain HTTP or TLS, until told to stop.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

/// How long in-flight requests get to finish once a TLS listener is told to stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish. With `tls`, every connection is TLS (a plain HTTP request gets no answer);
/// the handshake happens on the connection's own task, so a slow client holds up nobody.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .into_future()
            .await;
    };
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(DRAIN));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
}
