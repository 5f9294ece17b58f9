//! Warm starts: one `python -m mycel_worker.template` per environment, which imports
//! what the component's modules import at top level once (torch, torchvision, ...) and
//! then forks each new serving worker, so a replica of a torch model starts without
//! importing torch again. A worker forked so is not the agent's child: its exit status
//! comes back on the connection that asked for it (python/src/mycel_worker/template.py
//! has the protocol), and the agent kills it by pid.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{watch, OnceCell};

use super::prepare::Prepared;

/// How long a template may take to import what it preloads (torch takes seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The node's templates, one per environment, started when a replica first needs one.
pub struct Templates {
    run_dir: PathBuf,
    logs_dir: PathBuf,
    enabled: bool,
    started: Mutex<HashMap<PathBuf, Arc<Slot>>>,
}

/// An environment's template once its start was tried: `None` if it failed.
type Slot = OnceCell<Option<Arc<Template>>>;

/// A running template.
pub struct Template {
    socket: PathBuf,
    /// `None` once stopped.
    process: Mutex<Option<Child>>,
    /// The template's stdin: it exits when this closes, so it never outlives the agent.
    _lifeline: tokio::process::ChildStdin,
}

impl Template {
    fn running(&self) -> bool {
        let mut process = self.process.lock().unwrap_or_else(|p| p.into_inner());
        process
            .as_mut()
            .is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }
}

#[derive(Deserialize)]
struct Started {
    pid: Option<u32>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Ended {
    status: i32,
}

impl Templates {
    /// Templates whose sockets live in `run_dir` and logs in `logs_dir`; none at all
    /// unless `enabled`.
    pub fn new(run_dir: PathBuf, logs_dir: PathBuf, enabled: bool) -> Self {
        Self {
            run_dir,
            logs_dir,
            enabled,
            started: Mutex::new(HashMap::new()),
        }
    }

    /// The template for `prepared`'s environment, started if need be; `None` when warm
    /// starts are off or it could not start (workers then start as processes of their
    /// own, as they would without it).
    pub(crate) async fn for_env(&self, prepared: &Prepared) -> Option<Arc<Template>> {
        if !self.enabled {
            return None;
        }
        let cell = {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            let cell = started.entry(prepared.python.clone()).or_default();
            // One that exited (killed, or out of memory) is started again.
            if cell
                .get()
                .is_some_and(|t| t.as_ref().is_some_and(|t| !t.running()))
            {
                *cell = Arc::default();
            }
            Arc::clone(cell)
        };
        cell.get_or_init(|| async {
            match self.start(prepared).await {
                Ok(template) => Some(Arc::new(template)),
                Err(e) => {
                    tracing::warn!(env = %prepared.python.display(), error = %e, "no warm template for this environment; workers start cold");
                    None
                }
            }
        })
        .await
        .clone()
    }

    /// Stops every template and waits for each to exit (their workers are already
    /// gone when the agent stops).
    pub async fn stop(&self) {
        let slots: Vec<Arc<Slot>> = {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            started.drain().map(|(_, slot)| slot).collect()
        };
        for template in slots
            .iter()
            .filter_map(|slot| slot.get().cloned().flatten())
        {
            let process = template
                .process
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(mut process) = process {
                let _ = process.kill().await;
            }
        }
    }

    async fn start(&self, prepared: &Prepared) -> Result<Template, String> {
        let key = blake3::hash(prepared.python.as_os_str().as_encoded_bytes()).to_hex();
        let socket = self.run_dir.join(format!("tpl-{}.sock", &key[..12]));
        let log = self.logs_dir.join(format!("template-{}.log", &key[..12]));
        let stderr =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut command = Command::new(&prepared.python);
        command
            .args(["-m", "mycel_worker.template", "--socket"])
            .arg(&socket)
            .arg("--preload")
            .arg(&prepared.version_dir);
        for (_, dir) in &prepared.dependencies {
            command.arg("--preload").arg(dir);
        }
        let mut process = command
            .current_dir(&self.run_dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", prepared.python.display()))?;
        if let Some(pid) = process.id() {
            super::process::first_for_the_oom_killer(pid);
        }
        let stdout = process.stdout.take();
        let lifeline = process
            .stdin
            .take()
            .ok_or("the template's stdin was not kept")?;
        let ready = async {
            let mut line = String::new();
            if let Some(stdout) = stdout {
                BufReader::new(stdout).read_line(&mut line).await.ok();
            }
            line
        };
        let line = tokio::time::timeout(READY_TIMEOUT, ready).await;
        if line.as_deref().map(str::trim) != Ok("ready") {
            let _ = process.kill().await;
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "the template did not start: {}",
                tail.lines().last().unwrap_or("it said nothing")
            ));
        }
        tracing::info!(env = %prepared.python.display(), "warm template ready");
        Ok(Template {
            socket,
            process: Mutex::new(Some(process)),
            _lifeline: lifeline,
        })
    }
}

/// Asks `template` for a worker with `argv` (as for `python -m mycel_worker`), `env`
/// added to its environment, in `cwd`, writing to `log`.
pub(crate) async fn fork(
    template: &Template,
    argv: &[OsString],
    env: &[(String, String)],
    cwd: &Path,
    log: &Path,
) -> Result<Forked, String> {
    let text = |s: &std::ffi::OsStr| {
        s.to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{} is not UTF-8", s.to_string_lossy()))
    };
    let argv = argv
        .iter()
        .map(|a| text(a))
        .collect::<Result<Vec<_>, _>>()?;
    let request = serde_json::json!({
        "argv": argv,
        "env": env.iter().cloned().collect::<HashMap<String, String>>(),
        "cwd": text(cwd.as_os_str())?,
        "log": text(log.as_os_str())?,
    });
    let mut line = request.to_string();
    line.push('\n');
    let mut stream = UnixStream::connect(&template.socket)
        .await
        .map_err(|e| format!("reaching the template: {e}"))?;
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("asking the template: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("hearing from the template: {e}"))?;
    let started: Started = serde_json::from_str(&answer)
        .map_err(|_| format!("the template answered {:?}", answer.trim()))?;
    let pid = match (started.pid, started.error) {
        (Some(pid), _) => pid,
        (None, error) => return Err(error.unwrap_or_else(|| "the template refused".into())),
    };
    let (tell, exit) = watch::channel(None);
    tokio::spawn(async move {
        let mut line = String::new();
        let ended = match reader.read_line(&mut line).await {
            Ok(n) if n > 0 => serde_json::from_str::<Ended>(&line)
                .map(|e| e.status)
                .map_err(|_| format!("the template reported {:?}", line.trim())),
            _ => Err("its template exited, so how it ended is unknown".to_owned()),
        };
        let _ = tell.send(Some(ended));
    });
    Ok(Forked { pid, exit })
}

/// A worker forked from a template.
pub struct Forked {
    /// Its process id.
    pub pid: u32,
    exit: watch::Receiver<Option<Result<i32, String>>>,
}

impl Forked {
    /// Waits for it to exit; safe to cancel.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(ended) = self.exit.borrow().clone() {
                return ended
                    .map(ExitStatus::from_raw)
                    .map_err(std::io::Error::other);
            }
            if self.exit.changed().await.is_err() {
                return Err(std::io::Error::other("lost track of the worker"));
            }
        }
    }

    /// Kills it (SIGKILL) and waits for the end.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.signal_kill();
        self.wait().await.map(|_| ())
    }

    fn signal_kill(&self) {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Forked {
    /// As a spawned worker is killed when dropped, so is a forked one still running.
    fn drop(&mut self) {
        if self.exit.borrow().is_none() {
            self.signal_kill();
        }
    }
}
