//! One module per subcommand; `run` dispatches.

mod agent;
mod deploy;
mod dev;
mod doctor;
mod federate;
mod gateway;
mod init;
mod list;
mod logs;
mod node;
mod predict;
mod push;
mod rollout;
mod sign;
mod status;
mod token;
mod top;
mod up;

use crate::cli::{
    Cli, Command, FederationCommand, KeyCommand, NodeCommand, NodeTokenCommand, RolloutCommand,
    TokenCommand,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(
        cli.command,
        Command::Server(_) | Command::Agent(_) | Command::Up(_) | Command::Gateway(_)
    ) {
        last_for_the_oom_killer();
    }
    match cli.command {
        Command::Server(args) => up::server(args).await,
        Command::Init(args) => init::run(args),
        Command::Push(args) => push::run(args).await,
        Command::Components(args) => list::components(args).await,
        Command::Versions(args) => list::versions(args).await,
        Command::Show(args) => list::show(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Deploy(args) => deploy::run(args).await,
        Command::Undeploy(args) => deploy::undeploy(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Top(args) => top::run(args).await,
        Command::Token(TokenCommand::Create(args)) => token::create(args).await,
        Command::Token(TokenCommand::List(args)) => token::list(args).await,
        Command::Token(TokenCommand::Revoke(args)) => token::revoke(args).await,
        Command::Audit(args) => token::audit(args).await,
        Command::Key(KeyCommand::Generate(args)) => sign::generate(args),
        Command::Verify(args) => sign::verify(args).await,
        Command::Logs(args) => logs::run(args).await,
        Command::Up(args) => up::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut command, "mycel", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Gateway(args) => gateway::run(args).await,
        Command::Predict(args) => predict::run(args).await,
        Command::Rollout(RolloutCommand::Status(args)) => rollout::status(args).await,
        Command::Rollback(args) => rollout::rollback(args).await,
        Command::History(args) => rollout::history(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Federate(args) => federate::run(args).await,
        Command::Federation(FederationCommand::List(args)) => federate::list(args).await,
        Command::Federation(FederationCommand::Status(args)) => federate::status(args).await,
        Command::Federation(FederationCommand::Rounds(args)) => federate::rounds(args).await,
        Command::Federation(FederationCommand::Stop(args)) => federate::stop(args).await,
        Command::Node(NodeCommand::Token(NodeTokenCommand::Create(args))) => {
            node::create_token(args).await
        }
        Command::Node(NodeCommand::Revoke(args)) => node::revoke(args).await,
    }
}

/// Whether listeners on `addrs` speak TLS: when asked, and by default beyond loopback,
/// where tokens and model data would otherwise cross the network in the clear.
/// `--insecure` says the operator knows (a private network or VPN).
pub fn speaks_tls(args: &crate::cli::ServeTlsArgs, addrs: &[std::net::SocketAddr]) -> bool {
    args.tls || (!args.insecure && addrs.iter().any(|a| !a.ip().is_loopback()))
}

/// Refuses to listen beyond loopback with plain HTTP unless `insecure` says the operator
/// knows: bearer tokens and model data would cross the network in the clear.
pub fn plain_http(flag: &str, addr: std::net::SocketAddr, insecure: bool) -> anyhow::Result<()> {
    if insecure || addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "{flag} {addr} reaches beyond this machine, but the control plane speaks plain HTTP, so this would too: tokens and data would cross the network in the clear. Start the control plane with TLS (the default when it listens beyond loopback) and give it here as https://…, or pass --insecure (MYCEL_INSECURE=true) on a private network or VPN"
    )
}

/// The OOM score mycel's own long-running processes ask for: among the last the
/// kernel kills (workers ask for the first place, 1000).
const OWN_OOM_SCORE_ADJ: &str = "-900";

/// Asks the kernel's OOM killer to take anything before this process, so that a model
/// that leaks takes down its worker, never the agent or the control plane. Lowering
/// the score needs privilege (root, or CAP_SYS_RESOURCE); without it nothing changes
/// and the workers' raised score still puts them first.
fn last_for_the_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", OWN_OOM_SCORE_ADJ) {
        tracing::debug!(error = %e, "cannot lower this process's OOM score");
    }
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    ) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
