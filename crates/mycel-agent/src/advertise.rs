//! The URL an agent gives the control plane for its data plane: the operator's
//! `--advertise`, or one made from the address it listens on. Never an unspecified
//! address such as `0.0.0.0`, which no gateway can dial.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Why no URL could be advertised.
#[derive(Debug, thiserror::Error)]
#[error(
    "listening on {bound}, and the address other machines reach this node at is unknown \
     ({why}); give it with --advertise {scheme}://HOST:PORT"
)]
pub struct AdvertiseError {
    /// The address the data plane listens on.
    pub bound: SocketAddr,
    /// What was tried.
    pub why: String,
    /// `http`, or `https` where the data plane speaks TLS.
    pub scheme: &'static str,
}

/// The data-plane URL to register: `advertise` if given, else `bound` itself, or, when
/// `bound` is an unspecified address, this machine's address on the route to `server`
/// (`host:port`) with the bound port. `tls` says whether the data plane speaks TLS.
pub async fn url(
    advertise: Option<&str>,
    bound: SocketAddr,
    server: Option<String>,
    tls: bool,
) -> Result<String, AdvertiseError> {
    let scheme = if tls { "https" } else { "http" };
    if let Some(url) = advertise {
        if !url.starts_with(&format!("{scheme}://")) {
            return Err(AdvertiseError {
                bound,
                why: format!(
                    "--advertise {url} does not start with {scheme}://, and the data plane speaks {}",
                    if tls { "TLS" } else { "plain HTTP" }
                ),
                scheme,
            });
        }
        return Ok(url.trim_end_matches('/').to_owned());
    }
    if !bound.ip().is_unspecified() {
        return Ok(format!("{scheme}://{bound}"));
    }
    let Some(server) = server else {
        return Err(AdvertiseError {
            bound,
            why: "the server URL names no host".into(),
            scheme,
        });
    };
    let probe = server.clone();
    let route = tokio::task::spawn_blocking(move || route_to(&probe))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match route {
        Ok(ip) if !ip.is_unspecified() => {
            Ok(format!("{scheme}://{}", SocketAddr::new(ip, bound.port())))
        }
        Ok(ip) => Err(AdvertiseError {
            bound,
            why: format!("the route to {server} leaves from {ip}"),
            scheme,
        }),
        Err(e) => Err(AdvertiseError {
            bound,
            why: format!("finding the route to {server}: {e}"),
            scheme,
        }),
    }
}

/// This machine's address on the route to `server` (`host:port`): a UDP socket
/// "connected" there takes the source address the kernel would use. Nothing is sent.
fn route_to(server: &str) -> std::io::Result<IpAddr> {
    use std::net::ToSocketAddrs;
    let target = server.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
    })?;
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_specific_bound_address_is_advertised_as_it_is() {
        let bound: SocketAddr = "10.1.2.3:7801".parse().unwrap();
        assert_eq!(
            url(None, bound, None, false).await.unwrap(),
            "http://10.1.2.3:7801"
        );
        assert_eq!(
            url(None, bound, None, true).await.unwrap(),
            "https://10.1.2.3:7801"
        );
        let given = url(Some("https://node-7.example:443/"), bound, None, true).await;
        assert_eq!(given.unwrap(), "https://node-7.example:443");
        let error = url(Some("http://node-7.example:80"), bound, None, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not start with https://"), "{error}");
    }

    #[tokio::test]
    async fn an_unspecified_bound_address_becomes_the_one_on_the_route_to_the_server() {
        let bound: SocketAddr = "0.0.0.0:7801".parse().unwrap();
        let found = url(None, bound, Some("127.0.0.1:7700".into()), false).await;
        assert_eq!(found.unwrap(), "http://127.0.0.1:7801");
        let v6: SocketAddr = "[::]:7801".parse().unwrap();
        if UdpSocket::bind("[::1]:0").is_ok() {
            let found = url(None, v6, Some("[::1]:7700".into()), false).await;
            assert_eq!(found.unwrap(), "http://[::1]:7801");
        }
    }

    #[tokio::test]
    async fn no_way_to_tell_says_what_to_give() {
        let bound: SocketAddr = "0.0.0.0:7801".parse().unwrap();
        let error = url(None, bound, None, false).await.unwrap_err().to_string();
        assert!(error.contains("0.0.0.0:7801"), "{error}");
        assert!(error.contains("--advertise http://HOST:PORT"), "{error}");
        let error = url(None, bound, Some("no-such-host.invalid:7700".into()), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no-such-host.invalid"), "{error}");
    }
}
