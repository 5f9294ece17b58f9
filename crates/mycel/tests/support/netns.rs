//! A network of test hosts on this machine: one Linux network namespace per host, each
//! with its own address on one bridge, set up and torn down by the test itself. Needs
//! root and iproute2; where they are missing a test says so and returns, except under
//! CI, where that is a failure.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Addresses of test hosts: 10.203.X.Y/16, on a bridge no other machine sees.
const SUBNET: &str = "10.203";

/// A set of namespaces joined by a bridge, the test process's own namespace included
/// (as 10.203.255.254), removed on drop.
pub struct Network {
    prefix: String,
    bridge: String,
    hosts: Vec<String>,
}

/// One host: its namespace and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Network {
    /// A network, or why there can be none here. Under CI there must be one.
    pub fn create() -> Option<Self> {
        let prefix = format!("m{}", std::process::id() % 100_000);
        match Self::try_create(&prefix) {
            Ok(network) => Some(network),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("network namespaces are needed for this test: {why}")
            }
            Err(why) => {
                eprintln!("skipped: network namespaces are not available here ({why})");
                None
            }
        }
    }

    fn try_create(prefix: &str) -> Result<Self, String> {
        let bridge = format!("{prefix}-br");
        ip(&["netns", "add", &bridge])?;
        let network = Self {
            prefix: prefix.to_owned(),
            bridge: bridge.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        // The test process's end, so it can be a client of every host.
        let (root, peer) = (format!("{prefix}r"), format!("{prefix}rb"));
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", &peer, "netns", &bridge,
        ])?;
        ip(&["-n", &bridge, "link", "set", &peer, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{SUBNET}.255.254/16"), "dev", &root])?;
        ip(&["link", "set", &root, "up"])?;
        Ok(network)
    }

    /// Adds host `name` at 10.203.`subnet`.`index`.
    pub fn host(&mut self, name: &str, subnet: u8, index: u8) -> Host {
        let ns = format!("{}-{name}", self.prefix);
        let n = self.hosts.len();
        let (inside, outside) = (
            format!("{}h{n}", self.prefix),
            format!("{}b{n}", self.prefix),
        );
        let address = format!("{SUBNET}.{subnet}.{index}");
        let steps: [&[&str]; 7] = [
            &["netns", "add", &ns],
            &[
                "link",
                "add",
                &inside,
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &outside,
                "netns",
                &self.bridge,
            ],
            &[
                "-n",
                &self.bridge,
                "link",
                "set",
                &outside,
                "master",
                "br0",
                "up",
            ],
            &["-n", &ns, "link", "set", "lo", "up"],
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/16"),
                "dev",
                &inside,
            ],
            &["-n", &ns, "link", "set", &inside, "up"],
            &["-n", &ns, "route", "show"],
        ];
        self.hosts.push(ns.clone());
        for step in steps {
            if let Err(e) = ip(step) {
                panic!("setting up host {name}: {e}");
            }
        }
        Host { ns, ip: address }
    }

    /// Cuts every path between `a` and `b` (both directions) until [`Network::heal`].
    pub fn partition(&self, a: &Host, b: &Host) {
        for (from, to) in [(a, b), (b, a)] {
            if let Err(e) = ip(&[
                "-n",
                &from.ns,
                "route",
                "add",
                "blackhole",
                &format!("{}/32", to.ip),
            ]) {
                panic!("partitioning {} from {}: {e}", from.ns, to.ns);
            }
        }
    }

    /// Undoes [`Network::partition`].
    pub fn heal(&self, a: &Host, b: &Host) {
        for (from, to) in [(a, b), (b, a)] {
            let _ = ip(&[
                "-n",
                &from.ns,
                "route",
                "del",
                "blackhole",
                &format!("{}/32", to.ip),
            ]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.bridge)) {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &format!("{}r", self.prefix)]);
    }
}

/// A process on a host, killed on drop.
pub struct Process {
    child: Option<Child>,
}

impl Host {
    /// Runs `bin args` inside this host's namespace.
    pub fn spawn(&self, bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns])
            .arg(bin)
            .args(args)
            .env("MYCEL_LOG", "warn")
            .stdout(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        Process {
            child: Some(
                command
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting {bin:?}: {e}")),
            ),
        }
    }
}

impl Process {
    /// Kills it at once, as a machine that dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
