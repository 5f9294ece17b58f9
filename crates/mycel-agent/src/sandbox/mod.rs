//! Serving workers run with least privilege: a user of their own, their version's files
//! read-only and nothing else of the node's, a private `/tmp`, no network unless the
//! manifest asks, and `[resources]` enforced. [`Sandbox::probe`] finds at agent start
//! which of these the platform allows (bubblewrap for the view, `setpriv` for the user,
//! cgroups or else rlimits for the limits); [`Sandbox::jail`] makes the command prefix
//! for one worker.

pub mod cgroup;
pub mod view;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use mycel_core::fleet::{Confinement, Limits};
use mycel_core::manifest::Resources;
use tokio::process::Command;

pub use view::View;

/// Whether serving workers are sandboxed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// As far as this platform allows, saying what is missing.
    #[default]
    Auto,
    /// Fully (own user, private files, no network, limits), or the agent refuses to
    /// start.
    On,
    /// Not at all: workers run as the agent does (and may fork from warm templates).
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            other => Err(format!("{other:?}: expected auto, on or off")),
        }
    }
}

/// Why the sandbox asked for is not available.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `--sandbox on`, and something it needs is missing.
    #[error("--sandbox on: {0}; install what is missing, or run with --sandbox auto to take what this machine allows")]
    Missing(String),
}

/// How this node confines serving workers; by default, not at all.
#[derive(Default)]
pub struct Sandbox {
    confinement: Confinement,
    /// Directories no worker sees: the agent's data, its user's home.
    hidden: Vec<PathBuf>,
    users: Option<Users>,
    cgroups: Option<cgroup::Cgroups>,
    /// Workers started so far, to name each one's cgroup.
    starts: std::sync::atomic::AtomicU64,
}

impl Sandbox {
    /// What `mode` gets on this platform; `key` names this agent's cgroups and user
    /// range apart from other agents' on the same machine, and `hidden` are the
    /// directories workers must not see.
    pub async fn probe(
        mode: Mode,
        key: &str,
        mut hidden: Vec<PathBuf>,
    ) -> Result<Sandbox, SandboxError> {
        if mode == Mode::Off {
            return Ok(Sandbox::default());
        }
        let root = rustix::process::geteuid().is_root();
        let view = works(&jail_command(&Parts {
            bwrap: Some(view::bwrap_args(&View::default())),
            own_user: None,
            ..Parts::default()
        }))
        .await;
        let own_user = root
            && view
            && works(&jail_command(&Parts {
                bwrap: Some(view::bwrap_args(&View::default())),
                own_user: Some(USER_BASE),
                ..Parts::default()
            }))
            .await;
        let cgroups = cgroup::Cgroups::probe(key);
        let limits = match &cgroups {
            Some(cgroups) => cgroups.kind(),
            None if works(&jail_command(&Parts {
                memory: Some(1 << 30),
                ..Parts::default()
            }))
            .await =>
            {
                Limits::Rlimit
            }
            None => Limits::None,
        };
        let confinement = Confinement {
            own_user,
            private_files: view,
            no_network: view,
            limits,
        };
        if mode == Mode::On {
            let mut missing = Vec::new();
            if !view {
                missing.push("bubblewrap (bwrap) does not run here");
            }
            if !own_user {
                missing.push("workers cannot get users of their own (it takes root and setpriv)");
            }
            if limits == Limits::None {
                missing.push("neither cgroups nor prlimit can limit a worker's memory");
            }
            if !missing.is_empty() {
                return Err(SandboxError::Missing(missing.join("; ")));
            }
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
            hidden.push(home.into());
        }
        hidden.retain(|dir| dir.is_dir());
        let hidden = hidden
            .into_iter()
            .filter_map(|dir| dir.canonicalize().ok())
            .collect();
        Ok(Sandbox {
            confinement,
            hidden,
            users: own_user.then(|| Users::new(key)),
            cgroups,
            starts: Default::default(),
        })
    }

    /// What is in force.
    pub fn confinement(&self) -> Confinement {
        self.confinement
    }

    /// Whether workers run as the agent does, so they may fork from warm templates.
    pub fn is_off(&self) -> bool {
        !self.confinement.any()
    }

    /// The prefix that starts one worker of `worker` confined; what it holds (a user,
    /// a cgroup) is given back when the jail is dropped.
    pub fn jail(&self, name: &str, worker: &JailSpec<'_>) -> std::io::Result<Jail> {
        let user = match &self.users {
            Some(users) => Some(users.take().ok_or_else(|| {
                std::io::Error::other(format!(
                    "all {USERS} of this agent's worker users are in use; a worker never runs as the agent's"
                ))
            })?),
            None => None,
        };
        // Each start its own: a dying worker's cgroup, and its OOM count, stay its own.
        let start = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup = match &self.cgroups {
            Some(cgroups) => Some(cgroups.create(&format!("{name}.{start}"), worker.resources)?),
            None => None,
        };
        let view = self.confinement.private_files.then(|| View {
            hidden: self.hidden.clone(),
            read_only: worker.read_only(),
            writable: vec![worker.socket.to_path_buf()],
            devices: worker.devices.to_vec(),
            network: worker.network,
        });
        if let Some(user) = &user {
            // The worker's end of its socket: only its own user may connect.
            std::os::unix::fs::chown(worker.socket, Some(user.uid), Some(user.uid))?;
        }
        let prefix = jail_command(&Parts {
            procs: cgroup
                .as_ref()
                .map(cgroup::Cgroup::procs)
                .unwrap_or_default(),
            memory: (self.confinement.limits == Limits::Rlimit)
                .then_some(worker.resources.memory_bytes),
            bwrap: view.as_ref().map(view::bwrap_args),
            own_user: user.as_ref().map(|u| u.uid),
        });
        Ok(Jail {
            prefix,
            viewed: view.is_some(),
            cgroup,
            _user: user,
        })
    }
}

/// The device files a worker holding the GPUs in `visible` (`CUDA_VISIBLE_DEVICES`,
/// e.g. `0,2`) needs: the driver's shared ones and each GPU's own, those that exist.
pub fn gpu_devices(visible: &str) -> Vec<PathBuf> {
    let shared = [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
    ];
    let own = visible
        .split(',')
        .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        .map(|i| format!("nvidia{i}"));
    shared
        .iter()
        .map(|s| s.to_string())
        .chain(own)
        .map(|name| Path::new("/dev").join(name))
        .filter(|path| path.exists())
        .collect()
}

/// What one worker needs to see.
pub struct JailSpec<'a> {
    /// Its version's directory and its dependencies'.
    pub code: Vec<&'a Path>,
    /// The environment's interpreter (`ENV/bin/python`).
    pub python: &'a Path,
    /// The socket it connects to.
    pub socket: &'a Path,
    /// GPU devices it may use.
    pub devices: &'a [PathBuf],
    /// Whether its manifest asks for the network.
    pub network: bool,
    /// What it may use.
    pub resources: &'a Resources,
}

impl JailSpec<'_> {
    /// Code, environment, and the interpreter the environment links to (under the
    /// agent's home, often, which is hidden).
    fn read_only(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.code.iter().map(|p| p.to_path_buf()).collect();
        if let Some(env) = self.python.parent().and_then(Path::parent) {
            paths.push(env.to_path_buf());
            let home = std::fs::read_to_string(env.join("pyvenv.cfg"))
                .ok()
                .and_then(|cfg| {
                    cfg.lines().find_map(|line| {
                        let (key, value) = line.split_once('=')?;
                        (key.trim() == "home").then(|| PathBuf::from(value.trim()))
                    })
                });
            // `home` is the base interpreter's bin directory; the link may point
            // elsewhere again. Each one's prefix holds its standard library.
            let linked = std::fs::canonicalize(self.python)
                .ok()
                .and_then(|bin| bin.parent().map(Path::to_path_buf));
            let home = home.map(|h| std::fs::canonicalize(&h).unwrap_or(h));
            for bin in [home, linked].into_iter().flatten() {
                if let Some(prefix) = bin.parent() {
                    paths.push(prefix.to_path_buf());
                }
            }
        }
        let mut seen = BTreeSet::new();
        paths.retain(|p| seen.insert(p.clone()));
        paths
    }
}

/// A worker's confinement while it runs.
pub struct Jail {
    /// The program and arguments the worker's command is appended to.
    pub prefix: Vec<OsString>,
    /// Whether it runs in bubblewrap's view (a private `/tmp`, the agent's home hidden).
    pub viewed: bool,
    /// Its cgroup, if it has one.
    pub cgroup: Option<cgroup::Cgroup>,
    _user: Option<UserLease>,
}

impl Jail {
    /// Why a worker that exited after `status` ended, when its sandbox says more than
    /// its status does.
    pub fn explain(&self, resources: &Resources) -> Option<String> {
        let kills = self.cgroup.as_ref().map_or(0, cgroup::Cgroup::oom_kills);
        (kills > 0).then(|| {
            format!(
                "killed for passing its memory limit ({} MiB, [resources] memory)",
                resources.memory_bytes >> 20
            )
        })
    }
}

/// The pieces of a jail's command line.
#[derive(Default)]
struct Parts {
    /// `cgroup.procs` files to enter before anything else runs.
    procs: Vec<PathBuf>,
    /// A data-size rlimit, in bytes, where there are no cgroups.
    memory: Option<u64>,
    /// bubblewrap's arguments.
    bwrap: Option<Vec<OsString>>,
    /// The user to become.
    own_user: Option<u32>,
}

/// `sh` enters the cgroups and marks itself first for the OOM killer, before it
/// `exec`s the rest, so no process of the worker ever runs outside them; then prlimit,
/// bubblewrap and setpriv, each `exec`ing the next.
fn jail_command(parts: &Parts) -> Vec<OsString> {
    const ENTER: &str = "echo 1000 > /proc/self/oom_score_adj 2>/dev/null; \
        for p; do [ \"$p\" = -- ] && break; echo $$ > \"$p\" || exit 125; shift; done; \
        shift; exec \"$@\"";
    let mut args: Vec<OsString> = vec!["sh".into(), "-c".into(), ENTER.into(), "mycel-jail".into()];
    args.extend(parts.procs.iter().map(|p| p.clone().into_os_string()));
    args.push("--".into());
    if let Some(bytes) = parts.memory {
        args.extend([
            "prlimit".into(),
            format!("--data={bytes}").into(),
            "--".into(),
        ]);
    }
    if let Some(bwrap) = &parts.bwrap {
        args.push("bwrap".into());
        args.extend(bwrap.iter().cloned());
        if parts.own_user.is_none() {
            // No user of its own: at least no root and no capability inside, even when
            // the agent is root (it could otherwise unmount what hides the agent's data).
            args.extend(["--unshare-user", "--cap-drop", "ALL"].map(OsString::from));
        }
        args.push("--".into());
    }
    if let Some(uid) = parts.own_user {
        args.extend(
            [
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
            .map(OsString::from),
        );
    }
    args
}

/// Whether `prefix` followed by `true` runs here.
async fn works(prefix: &[OsString]) -> bool {
    let Some((program, args)) = prefix.split_first() else {
        return false;
    };
    Command::new(program)
        .args(args)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The first uid of the range agents give their workers.
const USER_BASE: u32 = 1_000_000;
/// How many users one agent's range holds.
const USERS: u32 = 1_000;

/// An agent's range of user ids, one per running worker. Agents on one machine get
/// ranges from the hash of their data directory, so they rarely overlap.
struct Users {
    base: u32,
    taken: Arc<Mutex<BTreeSet<u32>>>,
}

impl Users {
    fn new(key: &str) -> Users {
        let hash = blake3::hash(key.as_bytes());
        let bytes = hash.as_bytes();
        let slot = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % 4_000;
        Users {
            base: USER_BASE + slot * USERS,
            taken: Arc::default(),
        }
    }

    fn take(&self) -> Option<UserLease> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let uid = (self.base..self.base + USERS).find(|uid| !taken.contains(uid))?;
        taken.insert(uid);
        Some(UserLease {
            uid,
            taken: Arc::clone(&self.taken),
        })
    }
}

/// A user id held by one worker, given back when dropped.
struct UserLease {
    uid: u32,
    taken: Arc<Mutex<BTreeSet<u32>>>,
}

impl Drop for UserLease {
    fn drop(&mut self) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::view::tests::text;
    use super::*;

    #[test]
    fn the_jail_enters_its_cgroup_before_anything_else_runs() {
        let args = text(&jail_command(&Parts {
            procs: vec![
                "/cg/memory/r1/cgroup.procs".into(),
                "/cg/cpu/r1/cgroup.procs".into(),
            ],
            memory: None,
            bwrap: Some(vec!["--unshare-net".into()]),
            own_user: Some(1_000_007),
        }));
        assert_eq!(args[..2], ["sh", "-c"]);
        let dash = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            args[4..dash],
            ["/cg/memory/r1/cgroup.procs", "/cg/cpu/r1/cgroup.procs"]
        );
        let bwrap = args.iter().position(|a| a == "bwrap").unwrap();
        let setpriv = args.iter().position(|a| a == "setpriv").unwrap();
        assert!(dash < bwrap && bwrap < setpriv);
        assert!(args.contains(&"--reuid=1000007".to_owned()));
        assert_eq!(args.last().unwrap(), "--");
        assert!(
            !args.contains(&"--cap-drop".to_owned()),
            "setpriv needs them to switch"
        );
        // Without a user of its own a worker still gets no root and no capability.
        let shared = text(&jail_command(&Parts {
            bwrap: Some(vec![]),
            ..Parts::default()
        }));
        let tail = shared.iter().position(|a| a == "bwrap").unwrap();
        assert_eq!(
            shared[tail + 1..],
            ["--unshare-user", "--cap-drop", "ALL", "--"]
        );
    }

    #[test]
    fn users_are_never_handed_out_twice_and_come_back() {
        let users = Users::new("/var/lib/mycel");
        let a = users.take().unwrap();
        let b = users.take().unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(a.uid >= USER_BASE);
        let uid = a.uid;
        drop(a);
        assert_eq!(users.take().unwrap().uid, uid);
    }

    /// Without cgroups a worker's memory is an rlimit: an allocation past it fails.
    #[tokio::test]
    async fn an_rlimit_stops_an_allocation_past_the_memory_limit() {
        let prefix = jail_command(&Parts {
            memory: Some(64 << 20),
            ..Parts::default()
        });
        if !works(&prefix).await {
            eprintln!("no prlimit here; nothing to check");
            return;
        }
        let (program, args) = prefix.split_first().unwrap();
        let run = |size: &str| {
            std::process::Command::new(program)
                .args(args)
                .args([
                    "python3",
                    "-c",
                    &format!("b = bytearray({size}); print(len(b))"),
                ])
                .output()
                .unwrap()
        };
        assert!(run("16 << 20").status.success());
        let big = run("256 << 20");
        assert!(!big.status.success());
        assert!(String::from_utf8_lossy(&big.stderr).contains("MemoryError"));
    }
}
