//! `mycel logs DEPLOYMENT`: each replica's stdout and stderr, read from its agent.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;

use crate::cli::LogsArgs;
use crate::connect::client;

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    print(
        &client,
        &args.deployment,
        args.replica.as_deref(),
        args.follow,
        false,
    )
    .await
}

/// Prints the logs of `deployment`'s replicas (or one `replica`), then, if `follow`,
/// new lines as they come, replicas that start later included. Fails when there is no
/// replica to read, unless `patient` (a replica may be on its way).
pub async fn print(
    client: &mycel_client::Client,
    deployment: &str,
    replica: Option<&str>,
    follow: bool,
    patient: bool,
) -> anyhow::Result<()> {
    let mut offsets: HashMap<String, u64> = HashMap::new();
    loop {
        let status = client.status().await?;
        let replicas: Vec<_> = status
            .replicas
            .iter()
            .filter(|r| r.assignment.deployment == deployment)
            .filter(|r| replica.is_none_or(|id| r.assignment.replica == id))
            .collect();
        if replicas.is_empty() && offsets.is_empty() && !patient {
            bail!(
                "no replicas of deployment {deployment:?}{}; see `mycel status`",
                replica.map(|r| format!(" named {r:?}")).unwrap_or_default()
            );
        }
        let prefix = replicas.len() > 1 || patient;
        for replica in replicas {
            let id = &replica.assignment.replica;
            let offset = offsets.get(id).copied().unwrap_or(0);
            match client.replica_logs(id, offset).await {
                Ok((text, next)) => {
                    for line in text.lines() {
                        if prefix {
                            println!("[{id}] {line}");
                        } else {
                            println!("{line}");
                        }
                    }
                    offsets.insert(id.clone(), next);
                }
                Err(e) => eprintln!(
                    "[{id}] cannot read logs from node {}: {e}",
                    replica.assignment.node
                ),
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
