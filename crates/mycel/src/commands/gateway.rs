//! `mycel gateway`: a gateway on its own, following a remote control plane.

use std::path::Path;

use anyhow::Context;
use mycel_client::{Client, ClientError};

use crate::cli::GatewayArgs;
use crate::connect;

/// Where a gateway keeps its last routing table, under its data directory.
const ROUTES_FILE: &str = "gateway/routes.json";
/// Where a gateway keeps its fleet certificate, under its data directory.
const TLS_DIR: &str = "gateway/tls";

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let (server, token) = connect::server_and_token(&args.connect)?;
    let data = connect::data_dir(&args.connect.data)?;
    let listens: Vec<_> = std::iter::once(args.listen).chain(args.grpc).collect();
    let serve_tls = super::speaks_tls(&args.tls, &listens);
    let https = server.split(',').all(|u| u.trim().starts_with("https://"));
    let scheme = if serve_tls && https { "https" } else { "http" };
    // Where clients reach it: what it prints, and a name in its certificate.
    let advertised = mycel_agent::advertise::url(
        args.advertise.as_deref(),
        args.listen,
        Client::new(&server, None)?.server_authority(),
        scheme == "https",
    )
    .await?;
    let tls = if https {
        let ca = connect::ca_pem(args.connect.ca.as_deref(), &data)?.context(
            "the control plane speaks TLS: give its CA with --ca FILE (DATA/tls/ca.pem on the control plane's machine)",
        )?;
        let client = Client::with_ca(&server, token.clone(), Some(&ca))?;
        let mut hosts: Vec<String> = listens.iter().map(|a| a.ip().to_string()).collect();
        hosts.extend(
            reqwest::Url::parse(&advertised)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned)),
        );
        hosts.extend(args.tls.names.iter().cloned());
        let identity = fleet_identity(&client, &data.join(TLS_DIR), &hosts).await?;
        Some(mycel_gateway::Tls {
            ca,
            identity,
            serve: serve_tls,
        })
    } else {
        if args.tls.tls {
            anyhow::bail!("--tls: the gateway's certificate comes from the fleet's CA, and the control plane at {server} does not speak TLS");
        }
        super::plain_http("--listen", args.listen, args.tls.insecure)?;
        if let Some(grpc) = args.grpc {
            super::plain_http("--grpc", grpc, args.tls.insecure)?;
        }
        None
    };
    let config = mycel_gateway::Config {
        server,
        token,
        listen: args.listen,
        grpc: args.grpc,
        location: args.location,
        routes_file: Some(data.join(ROUTES_FILE)),
        max_request_bytes: usize::try_from(args.max_request_size)
            .context("--max-request-size is too large for this machine")?,
        request_timeout: args.request_timeout,
        require_token: args.require_token,
        limits: limits(args.max_connections),
        tls,
        // On port 0 the URL is known only once bound; the gateway makes it then.
        advertise: (args.advertise.is_some() || args.listen.port() != 0)
            .then(|| advertised.clone()),
    };
    let given = args.advertise.is_some();
    mycel_gateway::run(config, super::shutdown_signal(), move |at| {
        let addr = at.http;
        // Port 0 was resolved only now.
        let mut url = reqwest::Url::parse(&advertised).ok();
        if let Some(url) = url.as_mut().filter(|_| !given) {
            let _ = url.set_port(Some(addr.port()));
        }
        let url = url.map_or(advertised, |u| u.as_str().trim_end_matches('/').to_owned());
        eprintln!("gateway listening on {addr}; clients reach it at {url}");
        if let Some(grpc) = at.grpc {
            eprintln!("gateway serving OIP over gRPC on {grpc}");
        }
    })
    .await?;
    Ok(())
}

/// The gateway's fleet certificate for `hosts`: a fresh one when the control plane
/// answers, else the one kept from the last start, so that a gateway restarted while
/// the control plane is away still reaches its agents.
async fn fleet_identity(
    client: &Client,
    dir: &Path,
    hosts: &[String],
) -> anyhow::Result<mycel_tls::Identity> {
    let (key, csr) = mycel_tls::request("mycel gateway", &mycel_tls::names_for(hosts))?;
    match client.fleet_certificate(csr).await {
        Ok(issued) => {
            let identity = mycel_tls::identity(&key, issued.certificate);
            identity.save(dir, "gateway")?;
            Ok(identity)
        }
        Err(e @ ClientError::Transport { .. }) => {
            match mycel_tls::Identity::load(dir, "gateway")? {
                Some(kept) => {
                    tracing::warn!(error = %e, "control plane unreachable; using the certificate kept from the last start");
                    Ok(kept)
                }
                None => Err(e).context("getting the gateway's certificate"),
            }
        }
        Err(e) => Err(e).context("getting the gateway's certificate"),
    }
}

/// The process's limits, with the connection limit the operator gave.
fn limits(max_connections: Option<u32>) -> mycel_tls::Limits {
    let limits = mycel_tls::Limits::for_this_process();
    match max_connections {
        Some(n) => mycel_tls::Limits {
            connections: n as usize,
            ..limits
        },
        None => limits,
    }
}
