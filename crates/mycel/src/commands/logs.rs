//! `mycel logs DEPLOYMENT`: each replica's stdout and stderr, read from its agent.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;

use crate::cli::LogsArgs;
use crate::connect::client;

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let client = client(&args.connect)?;
    let mut offsets: HashMap<String, u64> = HashMap::new();
    loop {
        let status = client.status().await?;
        let agents: HashMap<&str, &str> = status
            .nodes
            .iter()
            .map(|n| (n.node.spec.name.as_str(), n.node.spec.agent_url.as_str()))
            .collect();
        let replicas: Vec<_> = status
            .replicas
            .iter()
            .filter(|r| r.assignment.deployment == args.deployment)
            .filter(|r| {
                args.replica
                    .as_ref()
                    .is_none_or(|id| &r.assignment.replica == id)
            })
            .collect();
        if replicas.is_empty() && offsets.is_empty() {
            bail!(
                "no replicas of deployment {:?}{}; see `mycel status`",
                args.deployment,
                args.replica
                    .as_ref()
                    .map(|r| format!(" named {r:?}"))
                    .unwrap_or_default()
            );
        }
        let prefix = replicas.len() > 1;
        for replica in replicas {
            let id = &replica.assignment.replica;
            let Some(agent) = agents.get(replica.assignment.node.as_str()) else {
                continue;
            };
            let offset = offsets.get(id).copied().unwrap_or(0);
            match client.replica_logs(agent, id, offset).await {
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
                Err(e) => eprintln!("[{id}] cannot read logs from {agent}: {e}"),
            }
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
