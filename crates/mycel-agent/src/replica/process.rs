//! Worker processes: start one for a prepared version, stop it, and say why it ended.

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
}

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
    let mut command = match launch.sandbox.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&prepared.python);
            command
        }
        None => Command::new(&prepared.python),
    };
    command
        .args(["-u", "-m", "mycel_worker", "--socket"])
        .arg(socket)
        .arg("--path")
        .arg(&prepared.version_dir)
        .arg("--entrypoint")
        .arg(prepared.manifest.component.entrypoint.to_string());
    for weights in &prepared.manifest.weights {
        command.arg("--weights").arg(weights.as_str());
    }
    if let Some(data_dir) = launch.data_dir {
        command.arg("--data-dir").arg(data_dir);
    }
    for (name, dir) in &prepared.dependencies {
        let mut argument = std::ffi::OsString::from(format!("{name}="));
        argument.push(dir);
        command.arg("--dependency").arg(argument);
    }
    // Math libraries otherwise start a thread per core in every worker; many workers on
    // one node would then fight over the cores their replicas did not reserve.
    let threads = prepared.manifest.resources.cpus.ceil().max(1.0).to_string();
    for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] {
        command.env(var, &threads);
    }
    if let Some(visible) = &launch.cuda_visible {
        // CUDA numbers GPUs fastest first unless told otherwise; NVML, which handed
        // these out, numbers them in PCI bus order.
        command
            .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            .env("CUDA_VISIBLE_DEVICES", visible);
    }
    command
        .current_dir(&prepared.version_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", prepared.python.display()))?;
    if let Some(pid) = child.id() {
        first_for_the_oom_killer(pid);
    }
    Ok(child)
}

/// Makes a worker the first process the kernel's OOM killer picks, before the agent,
/// the control plane or anything else on the machine: a model that leaks should take
/// down its own replica (which restarts), not mycel. Raising a score needs no
/// privilege; where there is no `/proc` (not Linux) there is nothing to do.
fn first_for_the_oom_killer(pid: u32) {
    let path = format!("/proc/{pid}/oom_score_adj");
    if let Err(e) = std::fs::write(&path, "1000") {
        if std::path::Path::new("/proc/self").exists() {
            tracing::warn!(pid, error = %e, "cannot raise a worker's OOM score");
        }
    }
}

/// Asks the worker to exit, then kills it if it does not within a few seconds.
pub(super) async fn stop_worker(child: &mut Child, conn: Option<&mut WorkerConn>) {
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
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("only", 5), "only");
        assert_eq!(tail("", 3), "");
    }
}
