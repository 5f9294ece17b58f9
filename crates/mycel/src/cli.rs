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
    /// Run the control plane (the /v1 API, the registry, the state store) and a gateway.
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
    /// Run a node agent: sync assigned versions, build environments, run workers.
    Agent(AgentArgs),
    /// Serve a component version with N copies per location.
    Deploy(DeployArgs),
    /// Remove a deployment and stop its replicas.
    Undeploy(UndeployArgs),
    /// Show nodes, deployments and replicas.
    Status(ListArgs),
    /// Watch every model's traffic live: requests and errors per second, p50/p99
    /// latency, replicas.
    Top(TopArgs),
    /// Print (or follow) the logs of a deployment's replicas.
    Logs(LogsArgs),
    /// Run the whole system on this machine: control plane, gateway, one agent per node.
    Up(UpArgs),
    /// Check what this machine needs to run mycel (uv, Python, disk, ports, network
    /// isolation, the server and token) and say how to fix each problem.
    Doctor(DoctorArgs),
    /// Print a shell completion script, e.g. `mycel completions bash >
    /// ~/.local/share/bash-completion/completions/mycel`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `mycel man > ~/.local/share/man/man1/mycel.1`.
    Man,
    /// Run a gateway alone: the Open Inference Protocol v2 in front of every deployment.
    Gateway(GatewayArgs),
    /// Send one inference request through the gateway and print the answer.
    Predict(PredictArgs),
    /// Follow a deployment's rollout.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Serve the version a deployment served before (or --to N), rolled out like a deploy.
    Rollback(RollbackArgs),
    /// Show a deployment's rollouts: who deployed which version when, and how it ended.
    History(HistoryArgs),
    /// Watch a component directory: push on every save, roll it out, stream the logs.
    Dev(DevArgs),
    /// Train a component on nodes' own datasets over rounds (federated learning) and
    /// publish the result as a new version.
    Federate(FederateArgs),
    /// List, follow or stop federations; show their rounds.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Let nodes join the fleet with their own credentials, or cut one off.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Operators' tokens: a role (viewer, deployer, admin), optionally only for some
    /// components and locations, and for a while.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Who changed what, when and from where.
    Audit(AuditArgs),
    /// Signing keys for signed versions (OpenSSF Model Signing).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check a version's signature with public keys: who signed it, and that every file
    /// is the one signed.
    Verify(VerifyArgs),
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make a signing key pair: PREFIX.key (private, PKCS#8 PEM, mode 0600) and
    /// PREFIX.pub (public, PEM), which `model_signing` reads too.
    Generate(KeyGenerateArgs),
}

#[derive(Args, Debug)]
pub struct KeyGenerateArgs {
    /// Where the pair goes: PREFIX.key and PREFIX.pub.
    #[arg(long, value_name = "PREFIX", default_value = "mycel-signing")]
    pub out: PathBuf,
    /// Replace a key pair already there.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// `NAME@N`, `NAME@<id>` or `NAME` (the latest version).
    #[arg(value_name = "NAME@N")]
    pub target: String,
    /// A public key (PEM) to trust, repeatable.
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it (shown this once).
    Create(TokenCreateArgs),
    /// List tokens: names, roles, scopes, expiry (never the secrets).
    List(ListArgs),
    /// Revoke a token: it stops working at once.
    Revoke(TokenRevokeArgs),
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// viewer (read), deployer (also push, deploy, roll back), admin (also nodes, tokens,
    /// the audit log).
    #[arg(long, value_parser = clap::value_parser!(mycel_core::access::Role))]
    pub role: mycel_core::access::Role,
    /// Its name, shown as who did what [default: token-<last 8 of the secret>].
    #[arg(long)]
    pub name: Option<String>,
    /// Only this component (and deployments of it), repeatable [default: all].
    #[arg(long = "component", value_name = "NAME")]
    pub components: Vec<String>,
    /// Only deploy to this location, repeatable [default: all].
    #[arg(long = "location", value_name = "LOCATION")]
    pub locations: Vec<String>,
    /// Stop working after this long, e.g. 30d or 12h [default: never].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<std::time::Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the token and its grant as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenRevokeArgs {
    /// The token's name (`mycel token list`).
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many of the newest entries.
    #[arg(long, default_value_t = 50)]
    pub last: usize,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// One-time join tokens: `mycel node token create --location tokyo`.
    #[command(subcommand)]
    Token(NodeTokenCommand),
    /// Revoke a node: its credential stops working at once and its replicas are placed
    /// on other nodes.
    Revoke(RevokeNodeArgs),
}

#[derive(Subcommand, Debug)]
pub enum NodeTokenCommand {
    /// Print a token with which one node joins (`mycel agent --join TOKEN`): it gets
    /// its own credential, good for that node's calls only, in this location.
    Create(JoinTokenArgs),
}

#[derive(Args, Debug)]
pub struct JoinTokenArgs {
    /// The location the node joins; it cannot register anywhere else.
    #[arg(long)]
    pub location: String,
    /// A label the node gets, repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// How long the token can be used, e.g. 1h [default: until it is used].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<std::time::Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the token and its grant as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeNodeArgs {
    /// The node's name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct FederateArgs {
    /// `NAME` (its newest version), `NAME@N` or `NAME@<id>`.
    #[arg(value_name = "NAME[@N]")]
    pub target: String,
    /// The dataset to train on: nodes declare it with `mycel agent --dataset NAME=PATH`.
    #[arg(long)]
    pub dataset: String,
    /// Which nodes may take part: KEY=VALUE labels, location=L, or node names,
    /// comma-separated, all of which must hold [default: every node with the dataset].
    #[arg(long, value_name = "SELECTOR", default_value = "")]
    pub nodes: mycel_core::federation::Selector,
    /// Rounds to run.
    #[arg(long)]
    pub rounds: u32,
    /// fedavg, fedprox:mu=M, fedmedian, trimmed-mean:beta=B or krum:f=F[,m=M].
    #[arg(long, default_value = "fedavg")]
    pub strategy: String,
    /// A round needs updates from at least this many clients; fewer fails it.
    #[arg(long, default_value_t = 1)]
    pub min_clients: u32,
    /// The share of available nodes asked to train each round.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// Epochs each client trains per round (config["local_epochs"]).
    #[arg(long, default_value_t = 1)]
    pub local_epochs: u32,
    /// How long a round waits for its clients before going on without them.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub round_timeout: std::time::Duration,
    /// The weights file to train, when the component lists more than one.
    #[arg(long)]
    pub weights: Option<String>,
    /// More config for train and evaluate, repeatable: --config lr=0.05 (values are
    /// JSON where they parse as JSON, else strings).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub config: Vec<(String, String)>,
    /// Differential privacy: clip each update's change to this L2 norm.
    #[arg(long)]
    pub clip: Option<f64>,
    /// Differential privacy: Gaussian noise of std NOISE × clip / clients on the mean.
    #[arg(long, requires = "clip", default_value_t = 0.0)]
    pub noise_multiplier: f64,
    /// Seed for the noise, for reproducible runs.
    #[arg(long, requires = "clip")]
    pub dp_seed: Option<u64>,
    /// Roll the result out to this deployment [default: the component's name].
    #[arg(long, value_name = "DEPLOYMENT", num_args = 0..=1, default_missing_value = "")]
    pub deploy: Option<String>,
    /// Print the federation's id and return instead of following its rounds.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the final record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum FederationCommand {
    /// List federations.
    List(ListArgs),
    /// Show where a federation stands; --watch follows it to the end.
    Status(FederationArgs),
    /// Show a federation's rounds: loss, accuracy, clients and durations.
    Rounds(FederationArgs),
    /// Stop a running federation.
    Stop(FederationArgs),
}

#[derive(Args, Debug)]
pub struct FederationArgs {
    /// The federation's id, as `mycel federate` printed it.
    pub id: u64,
    /// Follow it until it ends.
    #[arg(long, short)]
    pub watch: bool,
    /// With rounds: a line for every client of every round.
    #[arg(long)]
    pub clients: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// The component directory (holding mycel.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The deployment to roll out to [default: the component's name].
    #[arg(long)]
    pub deployment: Option<String>,
    /// Copies per location if the deployment does not exist yet: --copies local=1.
    #[arg(long, value_name = "LOCATION=N", value_parser = parse_copies)]
    pub copies: Vec<(String, u32)>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show where a deployment's latest rollout stands, per location.
    Status(RolloutStatusArgs),
}

#[derive(Args, Debug)]
pub struct RolloutStatusArgs {
    /// Deployment name.
    pub name: String,
    /// Follow the rollout until every copy is new and ready; fail if it is rolled back.
    #[arg(long, short)]
    pub watch: bool,
    /// How long --watch waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Deployment name.
    pub name: String,
    /// The version number to go back to [default: the one served before].
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
    /// Wait until the rollback has rolled out, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the deployment as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Deployment name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
    /// A node silent this long is marked lost and its replicas placed elsewhere.
    #[arg(long, env = "MYCEL_LOST_AFTER", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lost_after: std::time::Duration,
    #[command(flatten)]
    pub tls: ServeTlsArgs,
    /// Address of the gateway (OIP v2); its URL is written to DATA/gateway.url.
    #[arg(long, env = "MYCEL_GATEWAY_LISTEN", default_value = "127.0.0.1:7800")]
    pub gateway: SocketAddr,
    /// Also serve OIP over gRPC here (Triton's and KServe's GRPCInferenceService, as
    /// `tritonclient.grpc` speaks it), e.g. 127.0.0.1:7801; port 0 picks a free port
    /// (written to DATA/gateway.grpc).
    #[arg(long, env = "MYCEL_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// Largest inference request the gateway accepts, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_request_size: u64,
    /// The longest an inference request may take at the gateway: past it the client
    /// gets 504, and the request is not started, or its worker is restarted (a client
    /// may ask for less with `parameters.timeout`, in microseconds).
    #[arg(long, env = "MYCEL_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Take inference only from callers with an operator's token (`Authorization:
    /// Bearer`), and only for models of the components the token is scoped to.
    #[arg(long, env = "MYCEL_REQUIRE_TOKEN")]
    pub require_token: bool,
    /// Deploy only signed versions (a `model.sig` covering every file); agents with
    /// --trust-key check who signed.
    #[arg(long, env = "MYCEL_REQUIRE_SIGNED")]
    pub require_signed: bool,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The model: a deployment's name.
    pub model: String,
    /// An input, repeatable: NAME=FILE.npy, NAME=IMAGE.jpg|png (resized to the model's
    /// declared size), NAME=@FILE.json or NAME='[[1, 2], [3, 4]]'.
    #[arg(long = "input", short, value_name = "NAME=VALUE", value_parser = parse_input, required = true)]
    pub inputs: Vec<(String, String)>,
    /// Check that the model serves this version (the component's version number).
    #[arg(long = "model-version", value_name = "N")]
    pub model_version: Option<String>,
    /// Gateway URL [default: read from DATA/gateway.url].
    #[arg(long, env = "MYCEL_GATEWAY")]
    pub gateway: Option<String>,
    /// The fleet's CA certificate, for an https gateway [default: DATA/tls/ca.pem].
    #[arg(long, env = "MYCEL_CA")]
    pub ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the gateway's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
}

fn parse_input(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE, e.g. image=cat.jpg"))
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7800")]
    pub listen: SocketAddr,
    /// Also serve OIP over gRPC here (Triton's and KServe's GRPCInferenceService, as
    /// `tritonclient.grpc` speaks it), e.g. 127.0.0.1:7801.
    #[arg(long, env = "MYCEL_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// This gateway's location: requests go to replicas there while any is ready, and
    /// to other locations otherwise. The last routing table is kept in
    /// DATA/gateway/routes.json, so the gateway serves across restarts while the
    /// control plane is away.
    #[arg(long)]
    pub location: Option<String>,
    /// Largest request body, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_request_size: u64,
    /// The longest an inference request may take at the gateway: past it the client
    /// gets 504, and the request is not started, or its worker is restarted (a client
    /// may ask for less with `parameters.timeout`, in microseconds).
    #[arg(long, env = "MYCEL_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Take inference only from callers with an operator's token (`Authorization:
    /// Bearer`), and only for models of the components the token is scoped to.
    #[arg(long, env = "MYCEL_REQUIRE_TOKEN")]
    pub require_token: bool,
    /// Most client connections held at once; one past it is closed at once [default:
    /// 10000, or half of what the process may open when that is less].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    #[command(flatten)]
    pub tls: ServeTlsArgs,
    /// The URL clients reach this gateway at, e.g. https://gw.tokyo.example:7800: what
    /// it prints, and a name in its certificate [default: the --listen address; for
    /// 0.0.0.0, this machine's address on the route to the server].
    #[arg(long, env = "MYCEL_ADVERTISE", value_parser = parse_advertise)]
    pub advertise: Option<String>,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// The control-plane address `mycel up` would listen on.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// The gateway address `mycel up` would listen on.
    #[arg(long, default_value = "127.0.0.1:7800")]
    pub gateway: SocketAddr,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Whether a listener speaks TLS.
#[derive(Args, Debug, Clone)]
pub struct ServeTlsArgs {
    /// Speak TLS even on loopback (beyond loopback it is the default), with a
    /// certificate from the fleet's CA in DATA/tls (made on first start; put your own
    /// ca.pem and ca.key there first to use yours).
    #[arg(long, env = "MYCEL_TLS", conflicts_with = "insecure")]
    pub tls: bool,
    /// Listen beyond loopback with plain HTTP, tokens and all: only on a private network
    /// or VPN.
    #[arg(long, env = "MYCEL_INSECURE")]
    pub insecure: bool,
    /// A name clients dial this server by (DNS name or IP address), for its
    /// certificate; repeatable. The listen address and this machine's names are always
    /// in it.
    #[arg(
        long = "tls-name",
        value_name = "NAME",
        env = "MYCEL_TLS_NAMES",
        value_delimiter = ','
    )]
    pub names: Vec<String>,
}

/// How to reach a server.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Server URL, or several comma-separated, tried in turn when one cannot be reached
    /// [default: read from DATA/server.url].
    #[arg(long, env = "MYCEL_SERVER")]
    pub server: Option<String>,
    /// Bearer token [default: read from DATA/admin.token].
    #[arg(long, env = "MYCEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The fleet's CA certificate, for https servers [default: DATA/tls/ca.pem].
    #[arg(long, env = "MYCEL_CA")]
    pub ca: Option<PathBuf>,
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
#[command(group(clap::ArgGroup::new("rolls_out").args(["deploy", "cascade"]).multiple(true)))]
pub struct PushArgs {
    /// The component directory (holding mycel.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Then roll the new version out to the deployment of the same name (or --name),
    /// keeping its copies.
    #[arg(long)]
    pub deploy: bool,
    /// The deployment --deploy updates [default: the component's name].
    #[arg(long, requires = "deploy")]
    pub name: Option<String>,
    /// Then rebuild the deployments that import this component against it and roll
    /// them out, keeping their copies. Without it, push lists them; they keep the
    /// version they import.
    #[arg(long)]
    pub cascade: bool,
    /// With --deploy or --cascade: wait until the rollouts are complete, showing
    /// progress.
    #[arg(long, requires = "rolls_out")]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Sign the version with this private key (PEM): a `model.sig` in the OpenSSF Model
    /// Signing format covering every pushed file (`mycel key generate` makes one).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// A gateway to read, repeatable [default: every gateway the control plane knows,
    /// else DATA/gateway.url].
    #[arg(
        long = "gateway",
        value_name = "URL",
        env = "MYCEL_GATEWAY",
        value_delimiter = ','
    )]
    pub gateways: Vec<String>,
    /// Time between updates; rates and percentiles are over it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Print one update and exit.
    #[arg(long)]
    pub once: bool,
    /// One JSON object per update, one per line.
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

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Control plane URL; several, comma-separated, are tried in turn when one cannot be
    /// reached.
    #[arg(long, env = "MYCEL_SERVER")]
    pub server: String,
    /// Bearer token for the control plane: an operator's, for a node that did not join
    /// with --join (a node's own credential, once it joined, is read from DATA).
    #[arg(long, env = "MYCEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A one-time join token from `mycel node token create`: on first start the agent
    /// trades it for the node's own credential, kept in DATA/node.credential (0600).
    #[arg(long, env = "MYCEL_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Node name (a-z, 0-9, '-').
    #[arg(long, env = "MYCEL_NODE")]
    pub name: String,
    /// Node location, e.g. new-york [default: the one it joined].
    #[arg(long, env = "MYCEL_LOCATION")]
    pub location: Option<String>,
    /// Node label, repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// CPUs offered to replicas [default: the machine's cores].
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory offered to replicas, e.g. 16GiB [default: the machine's memory].
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// GPUs offered to replicas, by index as nvidia-smi numbers them, e.g. 0,1; or
    /// none [default: every NVIDIA GPU the driver reports].
    #[arg(long, value_name = "LIST", value_parser = parse_gpus)]
    pub gpus: Option<GpuList>,
    /// Agent data directory: blob cache, versions, environments, logs.
    #[arg(long, env = "MYCEL_AGENT_DATA")]
    pub data: PathBuf,
    /// Where environments are built [default: DATA/envs]; agents on one machine may
    /// share one directory, and then build each environment once.
    #[arg(long, env = "MYCEL_ENVS")]
    pub envs: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Data-plane address (inference, logs); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Listen beyond loopback with plain HTTP, where the control plane does not speak
    /// TLS: tokens and data cross the network in the clear.
    #[arg(long, env = "MYCEL_INSECURE")]
    pub insecure: bool,
    /// The fleet's CA certificate, for an https control plane [default: the one kept in
    /// DATA/tls/ca.pem, or fetched at join and checked against the join token].
    #[arg(long, env = "MYCEL_CA")]
    pub ca: Option<PathBuf>,
    /// The data-plane URL gateways dial, e.g. http://10.0.0.7:7801 [default: the
    /// --listen address; for 0.0.0.0, this machine's address on the route to the server].
    #[arg(long, env = "MYCEL_ADVERTISE", value_parser = parse_advertise)]
    pub advertise: Option<String>,
    /// A dataset on this node for federated learning, repeatable: training workers see
    /// PATH as ctx.data_dir; the data never leaves the node.
    #[arg(long = "dataset", value_name = "NAME=PATH", value_parser = parse_dataset)]
    pub datasets: Vec<(String, PathBuf)>,
    /// A public key (PEM) whose signatures this node trusts, repeatable: with any, the
    /// node runs only versions signed by one of them, checked against the files it laid
    /// out, and refuses the rest.
    #[arg(long = "trust-key", value_name = "FILE")]
    pub trust_keys: Vec<PathBuf>,
}

/// An http(s) URL with a host others can dial.
fn parse_advertise(text: &str) -> Result<String, String> {
    let expected = "expected the URL others reach this node at, such as http://10.0.0.7:7801";
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?}: {e}; {expected}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http or https URL; {expected}"));
    }
    let Some(host) = url.host_str() else {
        return Err(format!("{text:?} names no host; {expected}"));
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "{text:?}: {host} is where a server listens, not an address others can dial; {expected}"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn parse_dataset(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=PATH, e.g. digits=/data/digits"))?;
    mycel_core::manifest::validate_name(name).map_err(|m| format!("dataset {m}"))?;
    let path = PathBuf::from(path);
    if !path.is_dir() {
        return Err(format!(
            "dataset {name}: {} is not a directory; expected the directory training reads",
            path.display()
        ));
    }
    let path = path
        .canonicalize()
        .map_err(|e| format!("dataset {name}: {}: {e}", path.display()))?;
    Ok((name.to_owned(), path))
}

/// Where the agent finds its tools.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// The uv binary that builds environments.
    #[arg(long, env = "MYCEL_UV", default_value = "uv")]
    pub uv: PathBuf,
    /// The worker runtime package to install into environments [default: the one
    /// inside this binary, unpacked into DATA/runtime].
    #[arg(long, env = "MYCEL_RUNTIME")]
    pub runtime: Option<PathBuf>,
    /// Time between heartbeats.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: std::time::Duration,
    /// Start every serving worker as a process of its own, importing its framework
    /// anew, instead of forking it from a warm template of its environment (sandboxed
    /// workers always start so).
    #[arg(long, env = "MYCEL_NO_WARM_START")]
    pub no_warm_start: bool,
    /// Confine serving workers: a user of their own, their version's files read-only
    /// and nothing else of the node's, a private /tmp, no network unless the manifest's
    /// [sandbox] asks, [resources] enforced. auto: what this machine allows (`mycel
    /// status` shows it); on: all of it or refuse to start; off: workers run as the
    /// agent does.
    #[arg(
        long,
        env = "MYCEL_SANDBOX",
        default_value = "auto",
        value_name = "auto|on|off"
    )]
    pub sandbox: mycel_agent::sandbox::Mode,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// `NAME`, `NAME@N` or `NAME@<id>`; omit with --file.
    #[arg(value_name = "NAME[@N]", required_unless_present = "file")]
    pub target: Option<String>,
    /// Copies in a location, repeatable: --copies new-york=5 --copies london=3.
    #[arg(long, value_name = "LOCATION=N", value_parser = parse_copies)]
    pub copies: Vec<(String, u32)>,
    /// A deployment file (TOML) with one [[deployment]] table per deployment.
    #[arg(long, conflicts_with_all = ["target", "copies"])]
    pub file: Option<PathBuf>,
    /// Deployment name [default: the component's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Override the manifest's max_batch_size.
    #[arg(long)]
    pub max_batch_size: Option<u32>,
    /// Override the manifest's batch_wait_ms.
    #[arg(long)]
    pub batch_wait_ms: Option<u32>,
    /// The longest a request to this model may take, e.g. 5s (overrides the manifest's
    /// `[serve].timeout_ms`; the gateway's --request-timeout still caps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub request_timeout: Option<std::time::Duration>,
    /// New replicas a rolling update starts beyond the copies, per location: a count (2)
    /// or a share of the copies (25%, the default).
    #[arg(long)]
    pub surge: Option<mycel_core::fleet::Surge>,
    /// Where no node has room for new replicas beside the old ones, how many copies per
    /// location may be replaced in place at once: a count (1) or a share of the copies
    /// (25%, the default, rounded down but at least one). 0 waits for room instead.
    #[arg(long)]
    pub max_unavailable: Option<mycel_core::fleet::MaxUnavailable>,
    /// Roll back if the new replicas are not all ready within this time [default: 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<std::time::Duration>,
    /// Wait until the rollout is complete with every copy ready, showing progress; fail
    /// if it is rolled back.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Refuse the deployment unless the version is signed (and later versions rolled
    /// out to it too); agents with --trust-key check who signed.
    #[arg(long)]
    pub require_signed: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the deployments as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UndeployArgs {
    /// Deployment name.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Deployment name.
    pub deployment: String,
    /// Only this replica.
    #[arg(long)]
    pub replica: Option<String>,
    /// Keep printing new lines.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Nodes to run, one agent each, named by their location.
    #[arg(long, value_delimiter = ',', default_value = "local")]
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Control-plane address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Gateway address (OIP v2).
    #[arg(long, default_value = "127.0.0.1:7800")]
    pub gateway: SocketAddr,
    /// Also serve OIP over gRPC here (Triton's and KServe's GRPCInferenceService, as
    /// `tritonclient.grpc` speaks it), e.g. 127.0.0.1:7801; port 0 picks a free port
    /// (written to DATA/gateway.grpc).
    #[arg(long, env = "MYCEL_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: ServeTlsArgs,
    /// Largest inference request the gateway accepts, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_request_size: u64,
    /// The longest an inference request may take at the gateway: past it the client
    /// gets 504, and the request is not started, or its worker is restarted (a client
    /// may ask for less with `parameters.timeout`, in microseconds).
    #[arg(long, env = "MYCEL_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Take inference only from callers with an operator's token (`Authorization:
    /// Bearer`), and only for models of the components the token is scoped to.
    #[arg(long, env = "MYCEL_REQUIRE_TOKEN")]
    pub require_token: bool,
    /// Deploy only signed versions (a `model.sig` covering every file).
    #[arg(long, env = "MYCEL_REQUIRE_SIGNED")]
    pub require_signed: bool,
    /// A public key (PEM) whose signatures the local nodes trust, repeatable: with any,
    /// they run only versions signed by one of them.
    #[arg(long = "trust-key", value_name = "FILE")]
    pub trust_keys: Vec<PathBuf>,
    /// CPUs each local node offers [default: the machine's cores].
    #[arg(long)]
    pub node_cpus: Option<f64>,
    /// Memory each local node offers [default: the machine's memory].
    #[arg(long, value_parser = parse_size)]
    pub node_memory: Option<u64>,
    /// A dataset on one of the nodes for federated learning, repeatable:
    /// --dataset tokyo:digits=/data/digits/node-0.
    #[arg(long = "dataset", value_name = "NODE:NAME=PATH", value_parser = parse_node_dataset)]
    pub datasets: Vec<(String, String, PathBuf)>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn parse_node_dataset(text: &str) -> Result<(String, String, PathBuf), String> {
    let (node, dataset) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NODE:NAME=PATH, e.g. tokyo:digits=/data/digits"))?;
    let (name, path) = parse_dataset(dataset)?;
    Ok((node.to_owned(), name, path))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_copies(text: &str) -> Result<(String, u32), String> {
    let (location, count) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not LOCATION=N, e.g. new-york=5"))?;
    mycel_core::manifest::validate_name(location).map_err(|m| format!("location {m}"))?;
    let count = count
        .parse()
        .map_err(|_| format!("{count:?} in {text:?} is not a number of copies"))?;
    Ok((location.to_owned(), count))
}

/// GPU indices, as `--gpus` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuList(pub Vec<u32>);

fn parse_gpus(text: &str) -> Result<GpuList, String> {
    if text.trim() == "none" {
        return Ok(GpuList(Vec::new()));
    }
    text.split(',')
        .map(|part| {
            part.trim().parse::<u32>().map_err(|_| {
                format!("{part:?} is not a GPU index; expected indices like 0,1 (as nvidia-smi numbers them) or none")
            })
        })
        .collect::<Result<Vec<u32>, String>>()
        .map(GpuList)
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

    #[test]
    fn gpu_lists_are_indices_or_none() {
        assert_eq!(super::parse_gpus("0,2"), Ok(super::GpuList(vec![0, 2])));
        assert_eq!(super::parse_gpus("none"), Ok(super::GpuList(Vec::new())));
        let e = super::parse_gpus("0,gpu1").unwrap_err();
        assert!(e.contains("\"gpu1\" is not a GPU index"), "{e}");
    }
}
