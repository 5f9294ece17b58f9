//! `mycel token create|list|revoke` and `mycel audit`: operators' tokens and the log of
//! who changed what.

use anyhow::Context;
use mycel_core::access::NewToken;

use crate::cli::{AuditArgs, ListArgs, TokenCreateArgs, TokenRevokeArgs};
use crate::connect::client;
use crate::output;

pub async fn create(args: TokenCreateArgs) -> anyhow::Result<()> {
    let request = NewToken {
        name: args.name,
        role: args.role,
        components: args.components,
        locations: args.locations,
        expires_in_s: args.expires.map(|d| d.as_secs().max(1)),
    };
    let created = client(&args.connect)?
        .create_token(&request)
        .await
        .context("creating a token")?;
    if args.json {
        return output::json(&created);
    }
    // The token alone on stdout, so `TOKEN=$(mycel token create ...)` works.
    println!("{}", created.token);
    let grant = &created.grant;
    eprintln!(
        "token {:?}: {} of {} in {}, {}; it is shown only now (MYCEL_TOKEN=... or --token)",
        grant.name,
        grant.role.as_str(),
        scope(&grant.components, "every component"),
        scope(&grant.locations, "every location"),
        grant
            .expires_ms
            .map_or("never expires".to_owned(), |ms| format!(
                "expires {}",
                output::time(ms)
            ))
    );
    Ok(())
}

fn scope(names: &[String], all: &str) -> String {
    if names.is_empty() {
        all.to_owned()
    } else {
        names.join(", ")
    }
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let grants = client(&args.connect)?.tokens().await?;
    if args.json {
        return output::json(&grants);
    }
    let mut rows = vec![[
        "NAME",
        "ROLE",
        "COMPONENTS",
        "LOCATIONS",
        "EXPIRES",
        "CREATED",
        "BY",
    ]
    .map(String::from)
    .to_vec()];
    for grant in &grants {
        rows.push(vec![
            grant.name.clone(),
            grant.role.as_str().into(),
            scope(&grant.components, "all"),
            scope(&grant.locations, "all"),
            grant.expires_ms.map_or("never".into(), output::time),
            output::time(grant.created_ms),
            grant.created_by.clone(),
        ]);
    }
    output::table(&rows);
    if grants.is_empty() {
        eprintln!(
            "only the admin token so far; make others with `mycel token create --role viewer`"
        );
    }
    Ok(())
}

pub async fn revoke(args: TokenRevokeArgs) -> anyhow::Result<()> {
    client(&args.connect)?.revoke_token(&args.name).await?;
    eprintln!("revoked token {:?}", args.name);
    Ok(())
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let entries = client(&args.connect)?.audit(args.last).await?;
    if args.json {
        return output::json(&entries);
    }
    let mut rows = vec![["WHEN", "WHO", "WHAT", "STATUS", "FROM"]
        .map(String::from)
        .to_vec()];
    for entry in &entries {
        rows.push(vec![
            output::time(entry.at_ms),
            entry.who.clone(),
            entry.what.clone(),
            entry.status.to_string(),
            entry.from.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    output::table(&rows);
    Ok(())
}
