//! The data plane's certificate: asked of the control plane at every start it can
//! reach, for the names the node is dialled by now, and kept on disk for the starts it
//! cannot (an edge node restarting while cut off keeps answering its gateways).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mycel_client::{Client, ClientError};
use mycel_tls::Identity;

/// The node certificate's file stem in DATA/tls.
const NODE_CERT: &str = "node";

/// Why the data plane has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The control plane refused, or could not be reached and none is kept.
    #[error("no certificate for the data plane: the control plane {0}")]
    Refused(ClientError),
    /// Making, keeping or using the certificate failed.
    #[error("the data plane's certificate: {0}")]
    Certificate(#[from] mycel_tls::TlsError),
}

/// The data plane's TLS configuration: a node certificate for `advertised` (and the
/// `bound` address), answering only clients with a fleet certificate from `ca`.
pub async fn data_plane(
    client: &Client,
    dir: &Path,
    node: &str,
    ca: &str,
    advertised: &str,
    bound: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let host = advertised
        .split_once("://")
        .map_or(advertised, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    // Strip the port, leaving a bracketed IPv6 address whole.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let names = mycel_tls::names_for(&[host.to_owned(), bound.ip().to_string()]);
    let (key, csr) = mycel_tls::request(node, &names)?;
    let identity = match client.node_certificate(node, csr).await {
        Ok(issued) => {
            let identity = mycel_tls::identity(&key, issued.certificate);
            identity.save(dir, NODE_CERT)?;
            identity
        }
        Err(e @ ClientError::Transport { .. }) => match Identity::load(dir, NODE_CERT)? {
            Some(kept) => {
                tracing::warn!(error = %e, "control plane unreachable; serving with the certificate kept from the last start");
                kept
            }
            None => return Err(TlsError::Refused(e)),
        },
        Err(e) => return Err(TlsError::Refused(e)),
    };
    Ok(mycel_tls::server_config(&identity, Some(ca))?)
}
