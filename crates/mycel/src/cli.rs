//! The command line, as clap types. `mycel --help` is the first page of the manual.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Deploy AI as source code: push a directory of model code, run it on a fleet, serve it.
#[derive(Parser, Debug)]
#[command(name = "mycel", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane: the /v1 API, the registry and the state store.
    Server(ServerArgs),
    /// Create a new component directory with a manifest and a numpy model.
    Init(InitArgs),
    /// Push a component directory as a new version; only blobs the server lacks travel.
    Push(PushArgs),
    /// List components with their newest version.
    Components(ListArgs),
    /// List the versions of a component.
    Versions(VersionsArgs),
    /// Show one version: its files, sizes, when and by whom it was pushed.
    Show(ShowArgs),
}

/// Where the local data directory is; `mycel server` keeps its state there and the
/// other commands find the server's URL and admin token there.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data directory [default: $XDG_DATA_HOME/mycel or ~/.local/share/mycel].
    #[arg(long, env = "MYCEL_DATA", global = true)]
    pub data: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Address to listen on; port 0 picks a free port (written to DATA/server.url).
    #[arg(long, env = "MYCEL_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Largest blob accepted, e.g. 8GiB or 500MB.
    #[arg(long, env = "MYCEL_MAX_BLOB_SIZE", default_value = "8GiB", value_parser = parse_size)]
    pub max_blob_size: u64,
}

/// How to reach a server.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Server URL [default: read from DATA/server.url].
    #[arg(long, env = "MYCEL_SERVER")]
    pub server: Option<String>,
    /// Bearer token [default: read from DATA/admin.token].
    #[arg(long, env = "MYCEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Component name: 1 to 64 of a-z, 0-9 and '-'.
    pub name: String,
    /// Directory to create [default: ./NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The component directory (holding mycel.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VersionsArgs {
    /// Component name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// `NAME@N`, `NAME@<id>` or `NAME` (the latest version).
    #[arg(value_name = "NAME@N")]
    pub target: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(text: &str) -> Result<u64, String> {
    mycel_core::manifest::parse_size(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
