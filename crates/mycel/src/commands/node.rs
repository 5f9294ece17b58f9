//! `mycel node token create` and `mycel node revoke`: who may be a node.

use anyhow::Context;
use mycel_core::api::JoinTokenRequest;

use crate::cli::{JoinTokenArgs, RevokeNodeArgs};
use crate::connect::client;
use crate::output;

pub async fn create_token(args: JoinTokenArgs) -> anyhow::Result<()> {
    let request = JoinTokenRequest {
        location: args.location.clone(),
        labels: args.labels.into_iter().collect(),
        expires_s: args.expires.map(|d| d.as_secs().max(1)),
    };
    let created = client(&args.connect)?
        .create_join_token(&request)
        .await
        .context("creating a join token")?;
    if args.json {
        return output::json(&created);
    }
    // The token alone on stdout, so `TOKEN=$(mycel node token create ...)` works.
    println!("{}", created.token);
    let expires = created
        .grant
        .expires_ms
        .map_or("when it is used".to_owned(), output::time);
    eprintln!(
        "one node may join {} with it (until {expires}): mycel agent --server URL --join TOKEN --name NAME",
        created.grant.location
    );
    Ok(())
}

pub async fn revoke(args: RevokeNodeArgs) -> anyhow::Result<()> {
    client(&args.connect)?
        .revoke_node(&args.name)
        .await
        .with_context(|| format!("revoking node {}", args.name))?;
    eprintln!(
        "node {} revoked: its credential no longer works, its replicas move to other nodes",
        args.name
    );
    Ok(())
}
