//! `mycel components`, `mycel versions NAME`, `mycel show NAME@N`.

use anyhow::bail;

use crate::cli::{ListArgs, ShowArgs, VersionsArgs};
use crate::connect::client;
use crate::output;

pub async fn components(args: ListArgs) -> anyhow::Result<()> {
    let components = client(&args.connect)?.components().await?;
    if args.json {
        return output::json(&components);
    }
    if components.is_empty() {
        println!("no components yet; push one with `mycel push DIR`");
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "VERSIONS".into(),
        "LATEST".into(),
        "SIZE".into(),
        "PUSHED".into(),
        "DESCRIPTION".into(),
    ]];
    for c in &components {
        rows.push(vec![
            c.name.clone(),
            c.versions.to_string(),
            format!("@{} {}", c.latest.seq, c.latest.id.short()),
            output::bytes(c.latest.total_bytes),
            output::time(c.latest.created_at_ms),
            c.latest.description.clone(),
        ]);
    }
    output::table(&rows);
    Ok(())
}

pub async fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    mycel_core::manifest::validate_name(&args.name).map_err(anyhow::Error::msg)?;
    let versions = client(&args.connect)?.versions(&args.name).await?;
    if args.json {
        return output::json(&versions);
    }
    let mut rows = vec![vec![
        "VERSION".into(),
        "ID".into(),
        "FILES".into(),
        "SIZE".into(),
        "CREATED".into(),
        "BY".into(),
    ]];
    for v in &versions {
        rows.push(vec![
            format!("{}@{}", args.name, v.seq),
            v.id.short(),
            v.files.to_string(),
            output::bytes(v.total_bytes),
            output::time(v.created_at_ms),
            v.pushed_by.clone(),
        ]);
    }
    output::table(&rows);
    Ok(())
}

/// Splits `NAME@REF` (REF defaulting to `latest`) and checks both parts.
pub fn parse_version_ref(text: &str) -> anyhow::Result<(String, String)> {
    let (name, reference) = text.split_once('@').unwrap_or((text, "latest"));
    mycel_core::manifest::validate_name(name).map_err(anyhow::Error::msg)?;
    let valid = reference == "latest"
        || reference.parse::<u64>().is_ok()
        || reference.parse::<mycel_core::BlobHash>().is_ok();
    if !valid {
        bail!("{text:?}: version {reference:?} is not a version; expected NAME@N, NAME@latest or NAME@<64-hex-digit id>");
    }
    Ok((name.to_owned(), reference.to_owned()))
}

pub async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let (name, reference) = parse_version_ref(&args.target)?;
    let client = client(&args.connect)?;
    let version = client.version(&name, &reference).await?;
    if args.json {
        return output::json(&version);
    }
    let signer = super::sign::signer(&client, &version).await;
    println!("version     {}", version.label());
    println!("id          {}", version.id);
    if !version.description.is_empty() {
        println!("description {}", version.description);
    }
    println!("created     {}", output::time(version.created_at_ms));
    println!("pushed by   {}", version.pushed_by);
    println!("signed by   {signer}");
    println!(
        "total       {} in {} files",
        output::bytes(version.total_bytes),
        version.files.len()
    );
    if !version.dependencies.is_empty() {
        let labels: Vec<String> = version
            .dependencies
            .iter()
            .map(|d| format!("{} ({})", d.label(), d.id.short()))
            .collect();
        println!("imports     {}", labels.join(", "));
    }
    println!();
    let mut rows = vec![vec![
        "PATH".into(),
        "SIZE".into(),
        "MODE".into(),
        "BLOB".into(),
    ]];
    for f in &version.files {
        let mode = match f.mode {
            mycel_core::FileMode::Regular => "644",
            mycel_core::FileMode::Executable => "755",
        };
        rows.push(vec![
            f.path.to_string(),
            output::bytes(f.size),
            mode.into(),
            f.hash.short(),
        ]);
    }
    output::table(&rows);
    Ok(())
}
