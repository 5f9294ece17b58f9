//! Worker processes: start one for a prepared version, stop it, and say why it ended.

use std::ffi::OsString;

use super::*;

/// How a worker process starts beyond its code: where its output goes, the data it
/// may read, and the command it runs under to keep it off the network.
#[derive(Default)]
pub(crate) struct Launch<'a> {
    /// Its log file.
    pub log: PathBuf,
    /// `ctx.data_dir`.
    pub data_dir: Option<&'a std::path::Path>,
    /// A program and arguments the worker's command is appended to (`unshare --net`).
    pub sandbox: &'a [String],
    /// Its `CUDA_VISIBLE_DEVICES`: the GPUs it holds; `None` leaves the variable as
    /// the agent has it (a node without GPUs).
    pub cuda_visible: Option<String>,
    /// The confinement a serving worker starts in (see [`crate::sandbox`]).
    pub jail: Option<&'a crate::sandbox::Jail>,
}

impl Launch<'_> {
    /// Whether the worker runs in bubblewrap's view.
    fn in_bubblewrap(&self) -> bool {
        self.jail.is_some_and(|j| j.viewed)
    }
}

/// The arguments after `python -m mycel_worker`.
fn worker_args(
    prepared: &Prepared,
    socket: &std::path::Path,
    launch: &Launch<'_>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--socket".into(), socket.into(), "--path".into()];
    args.push(prepared.version_dir.clone().into());
    args.push("--entrypoint".into());
    args.push(prepared.manifest.component.entrypoint.to_string().into());
    for weights in &prepared.manifest.weights {
        args.push("--weights".into());
        args.push(weights.as_str().into());
    }
    if let Some(data_dir) = launch.data_dir {
        args.push("--data-dir".into());
        args.push(data_dir.into());
    }
    for (name, dir) in &prepared.dependencies {
        let mut argument = OsString::from(format!("{name}="));
        argument.push(dir);
        args.push("--dependency".into());
        args.push(argument);
    }
    args
}

/// What a worker's environment adds to the agent's.
fn worker_env(prepared: &Prepared, launch: &Launch<'_>) -> Vec<(String, String)> {
    // Math libraries otherwise start a thread per core in every worker; many workers on
    // one node would then fight over the cores their replicas did not reserve.
    let threads = prepared.manifest.resources.cpus.ceil().max(1.0).to_string();
    let mut env: Vec<(String, String)> =
        ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"]
            .iter()
            .map(|var| ((*var).to_owned(), threads.clone()))
            .collect();
    if let Some(visible) = &launch.cuda_visible {
        // CUDA numbers GPUs fastest first unless told otherwise; NVML, which handed
        // these out, numbers them in PCI bus order.
        env.push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
        env.push(("CUDA_VISIBLE_DEVICES".into(), visible.clone()));
    }
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    if launch.in_bubblewrap() {
        // The agent's home is hidden; the private /tmp is the worker's to write.
        let tmp = crate::sandbox::view::PRIVATE_TMP.to_owned();
        env.push(("HOME".into(), tmp.clone()));
        env.push(("TMPDIR".into(), tmp));
    }
    env
}

/// The agent's own settings (`MYCEL_*`: its token among them), which no worker gets.
fn agent_variables() -> impl Iterator<Item = OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.as_encoded_bytes().starts_with(b"MYCEL_"))
}

/// What of the agent's environment a confined worker keeps: the locale, the search
/// path and the math libraries' and GPU runtime's settings, nothing that may hold a
/// credential or lead out of the sandbox (cloud keys, tokens, agent and bus sockets).
fn confined_variables() -> impl Iterator<Item = (OsString, OsString)> {
    const NAMES: [&str; 5] = ["PATH", "LANG", "LANGUAGE", "TZ", "TERM"];
    const PREFIXES: [&str; 6] = ["LC_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_"];
    std::env::vars_os().filter(|(name, _)| {
        name.to_str().is_some_and(|name| {
            NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
        })
    })
}

/// Starts a worker as a process of its own.
pub(crate) fn spawn_worker(
    prepared: &Prepared,
    socket: &std::path::Path,
    launch: &Launch<'_>,
) -> Result<Child, String> {
    let log_path = &launch.log;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let jail = launch.jail.map(|j| j.prefix.as_slice()).unwrap_or_default();
    let sandbox: Vec<OsString> = launch.sandbox.iter().map(OsString::from).collect();
    let prefix = if jail.is_empty() { &sandbox[..] } else { jail };
    let mut command = match prefix.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&prepared.python);
            command
        }
        None => Command::new(&prepared.python),
    };
    if launch.in_bubblewrap() {
        command.env_clear().envs(confined_variables());
    }
    for name in agent_variables() {
        command.env_remove(name);
    }
    command
        .args(["-u", "-m", "mycel_worker"])
        .args(worker_args(prepared, socket, launch))
        .envs(worker_env(prepared, launch))
        .current_dir(&prepared.version_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", prepared.python.display()))?;
    if let Some(pid) = child.id() {
        first_for_the_oom_killer(pid);
    }
    Ok(child)
}

/// bubblewrap, between the agent and a jailed worker, exits with `128 + N` when the
/// worker was killed by signal N: give the status back its signal, since whether a
/// worker was killed or ended itself decides what becomes of its call.
fn through_bubblewrap(status: std::process::ExitStatus) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(code @ 129..=192) => std::process::ExitStatus::from_raw(code - 128),
        _ => status,
    }
}

/// A serving worker: forked from its environment's warm template where there is one
/// (it imported the framework already), else a process of its own.
pub(crate) async fn start_worker(
    node: &NodeContext,
    prepared: &Prepared,
    socket: &std::path::Path,
    launch: &Launch<'_>,
) -> Result<Worker, String> {
    if launch.sandbox.is_empty() && launch.jail.is_none() {
        if let Some(template) = node.templates.for_env(prepared).await {
            let args = worker_args(prepared, socket, launch);
            let env = worker_env(prepared, launch);
            match super::template::fork(&template, &args, &env, &prepared.version_dir, &launch.log)
                .await
            {
                Ok(forked) => return Ok(Worker::Forked(forked)),
                Err(e) => {
                    tracing::warn!(error = %e, "the warm template could not start a worker; starting it cold")
                }
            }
        }
    }
    let jailed = launch.in_bubblewrap();
    spawn_worker(prepared, socket, launch).map(|child| Worker::Spawned { child, jailed })
}

/// A serving worker process, however it started.
pub(crate) enum Worker {
    /// The agent's own child: the worker, or the bubblewrap it runs in.
    Spawned {
        /// The process.
        child: Child,
        /// Whether it is bubblewrap, which reports a signal as an exit code.
        jailed: bool,
    },
    /// A fork of a warm template.
    Forked(super::template::Forked),
}

impl Worker {
    /// Its process id, while known.
    pub(crate) fn id(&self) -> Option<u32> {
        match self {
            Worker::Spawned { child, .. } => child.id(),
            Worker::Forked(forked) => Some(forked.pid),
        }
    }

    /// Waits for it to exit; safe to cancel.
    pub(crate) async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Worker::Spawned { child, jailed } => {
                let status = child.wait().await?;
                Ok(if *jailed {
                    through_bubblewrap(status)
                } else {
                    status
                })
            }
            Worker::Forked(forked) => forked.wait().await,
        }
    }

    /// Kills it and waits for the end.
    pub(crate) async fn kill(&mut self) -> std::io::Result<()> {
        match self {
            Worker::Spawned { child, .. } => child.kill().await,
            Worker::Forked(forked) => forked.kill().await,
        }
    }
}

/// Makes a worker the first process the kernel's OOM killer picks, before the agent,
/// the control plane or anything else on the machine: a model that leaks should take
/// down its own replica (which restarts), not mycel. Raising a score needs no
/// privilege; where there is no `/proc` (not Linux) there is nothing to do.
pub(super) fn first_for_the_oom_killer(pid: u32) {
    let path = format!("/proc/{pid}/oom_score_adj");
    if let Err(e) = std::fs::write(&path, "1000") {
        if std::path::Path::new("/proc/self").exists() {
            tracing::warn!(pid, error = %e, "cannot raise a worker's OOM score");
        }
    }
}

/// Asks the worker to exit, then kills it if it does not within a few seconds.
pub(super) async fn stop_worker(child: &mut Worker, conn: Option<&mut WorkerConn>) {
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            conn.call("shutdown", Vec::new(), Default::default()),
        )
        .await;
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Why a worker exited, with the end of its log.
pub(super) fn exit_reason(
    node: &NodeContext,
    replica: &str,
    status: std::io::Result<std::process::ExitStatus>,
) -> String {
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status ({e})"),
    };
    let tail = log_tail(&node.log_path(replica));
    format!("worker exited ({status})\n{tail}")
        .trim_end()
        .to_owned()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The end of a worker's log file (its last 10 lines), or nothing if it cannot be read.
pub(crate) fn log_tail(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .map(|log| tail(&log, 10))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confined_worker_keeps_no_credential_of_the_agents() {
        let kept: Vec<String> = confined_variables()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(kept.iter().any(|n| n == "PATH"), "{kept:?}");
        for secret in [
            "HOME",
            "AWS_SECRET_ACCESS_KEY",
            "HF_TOKEN",
            "SSH_AUTH_SOCK",
            "MYCEL_TOKEN",
        ] {
            assert!(!kept.iter().any(|n| n == secret), "{secret} kept");
        }
    }

    #[test]
    fn a_signal_comes_back_through_bubblewrap() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert_eq!(through_bubblewrap(exited(137)).signal(), Some(9));
        assert_eq!(through_bubblewrap(exited(143)).signal(), Some(15));
        assert_eq!(through_bubblewrap(exited(3)).code(), Some(3));
        assert_eq!(through_bubblewrap(exited(0)).code(), Some(0));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("only", 5), "only");
        assert_eq!(tail("", 3), "");
    }
}
