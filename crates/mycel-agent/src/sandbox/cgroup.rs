//! A cgroup per worker, so `[resources]` memory and CPU are limits and not only
//! figures for placement: cgroup v2 where its memory and cpu controllers can be
//! delegated, else the v1 memory and cpu hierarchies. The values written are pure
//! functions ([`settings`]); this module's I/O is making, filling and removing
//! directories.

use std::path::{Path, PathBuf};

use mycel_core::fleet::Limits;
use mycel_core::manifest::Resources;

/// Where cgroup file systems are mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// The CPU period quotas are given in, in microseconds.
const PERIOD_US: u64 = 100_000;

/// The files to write in a worker's cgroup, in order, for `resources`; those marked
/// optional may be missing (no swap accounting) without failing the limit.
pub fn settings(kind: Limits, resources: &Resources) -> Vec<Setting> {
    let memory = resources.memory_bytes.to_string();
    // A fraction of a core is a quota per period; a tiny one still gets a slice.
    let quota = ((resources.cpus * PERIOD_US as f64).round() as u64).max(1_000);
    let required = |file: &'static str, value: String| Setting {
        file,
        value,
        optional: false,
    };
    let optional = |file: &'static str, value: String| Setting {
        file,
        value,
        optional: true,
    };
    match kind {
        Limits::CgroupV2 => vec![
            required("memory.max", memory),
            // Past its memory a worker is stopped, not swapped into a crawl.
            optional("memory.swap.max", "0".into()),
            required("cpu.max", format!("{quota} {PERIOD_US}")),
        ],
        Limits::CgroupV1 => vec![
            required("memory.limit_in_bytes", memory.clone()),
            optional("memory.memsw.limit_in_bytes", memory),
            required("cpu.cfs_period_us", PERIOD_US.to_string()),
            required("cpu.cfs_quota_us", quota.to_string()),
        ],
        Limits::None | Limits::Rlimit => Vec::new(),
    }
}

/// One file of a cgroup and what goes in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The file's name, e.g. `memory.max`; v1's `cpu.*` files live in the cpu hierarchy.
    pub file: &'static str,
    /// What to write.
    pub value: String,
    /// Whether the kernel may lack it.
    pub optional: bool,
}

/// How many times the OOM killer stopped a process in the cgroup, from
/// `memory.events` (v2) or `memory.oom_control` (v1): both have an `oom_kill N` line.
pub fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// This process's path in `controller`'s v1 hierarchy, from `/proc/self/cgroup`.
fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

/// The node's cgroups: a directory per agent, one below it per worker.
#[derive(Debug)]
pub struct Cgroups {
    kind: Limits,
    /// The agent's directory: in the memory hierarchy for v1, the only one for v2.
    memory: PathBuf,
    /// v1's cpu hierarchy, where it is mounted apart.
    cpu: Option<PathBuf>,
}

impl Cgroups {
    /// Makes this agent's cgroup directory, named `mycel-{key}`, where the platform
    /// lets it: `None` if neither v2 nor v1 can be used (no permission, no controller).
    pub fn probe(key: &str) -> Option<Cgroups> {
        let name = format!("mycel-{key}");
        let found = v2(Path::new(ROOT), &name).or_else(|| v1(Path::new(ROOT), &name))?;
        // Workers of an agent that was killed leave empty directories behind.
        for dir in std::iter::once(&found.memory).chain(found.cpu.as_ref()) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        Some(found)
    }

    /// Which kind these are.
    pub fn kind(&self) -> Limits {
        self.kind
    }

    /// A cgroup for one worker, named `name`, limited to `resources`.
    pub fn create(&self, name: &str, resources: &Resources) -> std::io::Result<Cgroup> {
        let name: String = name
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
                _ => '_',
            })
            .collect();
        let memory = self.memory.join(&name);
        let cpu = self.cpu.as_ref().map(|dir| dir.join(&name));
        let cgroup = Cgroup {
            kind: self.kind,
            dirs: std::iter::once(memory.clone()).chain(cpu.clone()).collect(),
        };
        for dir in &cgroup.dirs {
            match std::fs::create_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        for setting in settings(self.kind, resources) {
            let dir = match (&cpu, setting.file.starts_with("cpu.")) {
                (Some(cpu), true) => cpu,
                _ => &memory,
            };
            let path = dir.join(setting.file);
            if let Err(e) = std::fs::write(&path, &setting.value) {
                if !setting.optional {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("writing {} to {}: {e}", setting.value, path.display()),
                    ));
                }
            }
        }
        Ok(cgroup)
    }
}

fn v2(root: &Path, name: &str) -> Option<Cgroups> {
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !(has("memory") && has("cpu")) {
        return None;
    }
    // Controllers reach a cgroup only through every parent's subtree_control; the
    // root's may be enabled while it holds processes, a child's only while it holds
    // none, which is why workers live two levels down in a tree of mycel's own.
    let enable = |dir: &Path| {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu").is_ok()
            || std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                .is_ok_and(|s| s.contains("memory") && s.contains("cpu"))
    };
    let shared = root.join("mycel");
    let agent = shared.join(name);
    let made = enable(root)
        && std::fs::create_dir_all(&agent).is_ok()
        && enable(&shared)
        && enable(&agent);
    made.then(|| Cgroups {
        kind: Limits::CgroupV2,
        memory: agent,
        cpu: None,
    })
}

fn v1(root: &Path, name: &str) -> Option<Cgroups> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let dir = |controller: &str| -> Option<PathBuf> {
        let mount = root.join(controller);
        let limits = match controller {
            "memory" => "memory.limit_in_bytes",
            _ => "cpu.cfs_quota_us",
        };
        if !mount.join(limits).exists() {
            return None;
        }
        // Under this process's own cgroup where that is visible (a container sees its
        // own), else at the hierarchy's root.
        let below = own_path(&own, controller)
            .map(|p| mount.join(p.trim_start_matches('/')))
            .filter(|p| p.is_dir())
            .unwrap_or(mount);
        let agent = below.join(name);
        std::fs::create_dir_all(&agent).ok()?;
        agent.join(limits).exists().then_some(agent)
    };
    let memory = dir("memory")?;
    Some(Cgroups {
        kind: Limits::CgroupV1,
        memory,
        cpu: dir("cpu"),
    })
}

impl Drop for Cgroups {
    /// The agent's directory goes with the agent (its workers' went before it).
    fn drop(&mut self) {
        for dir in std::iter::once(&self.memory).chain(self.cpu.as_ref()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// One worker's cgroup; removed when dropped, once its processes are gone.
#[derive(Debug)]
pub struct Cgroup {
    kind: Limits,
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// The `cgroup.procs` files a process writes its pid to, to enter it.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many of its processes the OOM killer stopped.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.kind {
            Limits::CgroupV2 => "memory.events",
            _ => "memory.oom_control",
        };
        self.dirs
            .first()
            .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
            .map_or(0, |text| oom_kills(&text))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.iter().all(|d| std::fs::remove_dir(d).is_ok()) {
            return;
        }
        // A killed worker's processes may still be on their way out.
        std::thread::spawn(move || {
            for _ in 0..50 {
                if dirs
                    .iter()
                    .all(|d| !d.exists() || std::fs::remove_dir(d).is_ok())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            tracing::warn!(dirs = ?dirs, "a worker's cgroup could not be removed");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_manifest() {
        let resources = Resources {
            cpus: 0.25,
            memory_bytes: 64 << 20,
            gpus: 0,
        };
        let v2 = settings(Limits::CgroupV2, &resources);
        assert_eq!(v2[0].file, "memory.max");
        assert_eq!(v2[0].value, (64u64 << 20).to_string());
        assert!(v2
            .iter()
            .any(|s| s.file == "cpu.max" && s.value == "25000 100000"));
        assert!(v2.iter().any(|s| s.file == "memory.swap.max" && s.optional));
        let v1 = settings(Limits::CgroupV1, &resources);
        let quota = v1
            .iter()
            .position(|s| s.file == "cpu.cfs_quota_us")
            .unwrap();
        let period = v1
            .iter()
            .position(|s| s.file == "cpu.cfs_period_us")
            .unwrap();
        assert!(
            period < quota,
            "the period is set before the quota it is read in"
        );
        assert_eq!(v1[quota].value, "25000");
        // memsw may not be below the memory limit, so it comes after it.
        assert_eq!(v1[0].file, "memory.limit_in_bytes");
        let tiny = Resources {
            cpus: 0.001,
            ..resources
        };
        assert!(settings(Limits::CgroupV2, &tiny)
            .iter()
            .any(|s| s.value == "1000 100000"));
        assert!(settings(Limits::Rlimit, &resources).is_empty());
    }

    #[test]
    fn reads_oom_kills_and_own_paths() {
        assert_eq!(
            oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n"),
            2
        );
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"),
            1
        );
        assert_eq!(oom_kills(""), 0);
        let own = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(own_path(own, "memory").as_deref(), Some("/process_api/abc"));
        assert_eq!(own_path(own, "cpu").as_deref(), Some("/x"));
        assert_eq!(own_path(own, "pids"), None);
    }
}
