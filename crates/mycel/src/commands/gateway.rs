//! `mycel gateway`: a gateway on its own, following a remote control plane.

use anyhow::Context;

use crate::cli::GatewayArgs;
use crate::connect;

/// Where a gateway keeps its last routing table, under its data directory.
const ROUTES_FILE: &str = "gateway/routes.json";

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    super::plain_http("--listen", args.listen, args.insecure)?;
    let (server, token) = connect::server_and_token(&args.connect)?;
    let config = mycel_gateway::Config {
        server,
        token,
        listen: args.listen,
        location: args.location,
        routes_file: Some(connect::data_dir(&args.connect.data)?.join(ROUTES_FILE)),
        max_request_bytes: usize::try_from(args.max_request_size)
            .context("--max-request-size is too large for this machine")?,
    };
    mycel_gateway::run(config, super::shutdown_signal(), |addr| {
        eprintln!("gateway listening on http://{addr}");
    })
    .await?;
    Ok(())
}
