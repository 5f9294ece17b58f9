//! Python environments: one virtual environment per distinct requirement set, built
//! with `uv` and shared by every version (and every replica) that needs the same set.
//!
//! An environment lives at `ENVS/<key>/`, where the key hashes the interpreter
//! specifier, the normalized requirements and the worker runtime's content (so a new
//! runtime rebuilds). It is built in place, because a venv hard-codes its own path in
//! its scripts, and `ENVS/<key>/.complete` is written last: a directory without it is
//! a leftover of a failed or interrupted build and is removed before the next try.
//!
//! Builds of one key are serialized twice: by an in-process mutex (two replicas in one
//! agent build once) and by an exclusive lock on `ENVS/<key>.lock` (two agents sharing
//! a root on one machine build once).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mycel_core::manifest::{validate_requirement, Requirements};
use mycel_core::Manifest;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Name of the marker file that makes an environment directory complete.
pub const COMPLETE_MARKER: &str = ".complete";

/// How many lines of uv's output a build error keeps.
const TAIL_LINES: usize = 30;

/// Why an environment could not be described or built.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A requirement in the manifest or the requirements file is refused.
    #[error("{file}: {message}")]
    Requirement {
        /// Where the requirement came from (`mycel.toml` or the requirements file,
        /// with its line number).
        file: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A dependency's manifest or requirements cannot be read.
    #[error("dependency {name}: {message}")]
    Dependency {
        /// The dependency's component name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The uv binary could not be started.
    #[error(
        "cannot run uv at {}: {source}; install uv (`pip install uv`) or pass the path to the uv binary",
        path.display()
    )]
    UvMissing {
        /// The path tried.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// uv ran and failed; `tail` holds the end of its output, uv's own error included.
    #[error("building environment {key} failed:\n{tail}")]
    Build {
        /// The environment's key.
        key: String,
        /// The last lines of uv's combined stdout and stderr.
        tail: String,
    },
    /// The local disk failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> EnvError + '_ {
    move |source| EnvError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an environment must contain: an interpreter and a list of requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvSpec {
    /// A Python version specifier as uv takes it, such as `>=3.10` or `3.11`.
    pub python: String,
    /// PEP 508 requirement strings.
    pub requirements: Vec<String>,
}

impl EnvSpec {
    /// The spec of a version: `[python].version` and either `[python].requirements` or
    /// the lines of `[python].requirements-file`, read from the materialized version in
    /// `version_dir` (a small file, read synchronously).
    ///
    /// A requirements file keeps non-empty lines that are not comments; a line starting
    /// with `-` (`--index-url`, `-r`, `-e` …) is refused: a component must not point
    /// the builder at another package index or at files outside itself.
    pub fn from_manifest(manifest: &Manifest, version_dir: &Path) -> Result<EnvSpec, EnvError> {
        let requirements = match &manifest.python.requirements {
            Requirements::List(list) => {
                for req in list {
                    validate_requirement(req).map_err(|message| EnvError::Requirement {
                        file: "mycel.toml: [python].requirements".into(),
                        message,
                    })?;
                }
                list.clone()
            }
            Requirements::File(file) => {
                let mut path = version_dir.to_path_buf();
                path.extend(file.parts());
                let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
                parse_requirements_file(file.as_str(), &text)?
            }
        };
        Ok(EnvSpec {
            python: manifest.python.version.clone(),
            requirements,
        })
    }

    /// The spec of a version together with the versions it depends on: the version's
    /// own spec, plus every requirement of each dependency (`dependencies` as
    /// (name, materialized directory)). The interpreter is the dependent's
    /// `[python].version`; a dependency's is not consulted. Without dependencies this is
    /// [`EnvSpec::from_manifest`], so the key of a version without dependencies does
    /// not change.
    pub fn from_tree(
        manifest: &Manifest,
        version_dir: &Path,
        dependencies: &[(String, PathBuf)],
    ) -> Result<EnvSpec, EnvError> {
        let mut spec = Self::from_manifest(manifest, version_dir)?;
        for (name, dir) in dependencies {
            let path = dir.join(mycel_core::manifest::MANIFEST_FILE);
            let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
            let dependency = Manifest::parse(&text).map_err(|e| EnvError::Dependency {
                name: name.clone(),
                message: e.to_string(),
            })?;
            let theirs =
                Self::from_manifest(&dependency, dir).map_err(|e| EnvError::Dependency {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
            spec.requirements.extend(theirs.requirements);
        }
        Ok(spec)
    }

    /// The environment's key: 32 hex digits of BLAKE3 over a canonical text of the
    /// interpreter specifier, the requirements (trimmed, deduplicated, sorted) and
    /// `runtime_hash`. Specs that differ only in requirement order share a key.
    pub fn key(&self, runtime_hash: &str) -> String {
        let mut hex = blake3::hash(self.canonical(runtime_hash).as_bytes())
            .to_hex()
            .to_string();
        hex.truncate(32);
        hex
    }

    /// The text the key hashes; also written into `.complete` for whoever inspects an
    /// environment. Requirements cannot hold control characters, so one per line is
    /// unambiguous.
    fn canonical(&self, runtime_hash: &str) -> String {
        let mut text = format!("mycel-env-v1\npython {}\n", self.python.trim());
        for req in self.normalized_requirements() {
            text.push_str("requirement ");
            text.push_str(req);
            text.push('\n');
        }
        text.push_str("runtime ");
        text.push_str(runtime_hash);
        text.push('\n');
        text
    }

    fn normalized_requirements(&self) -> BTreeSet<&str> {
        self.requirements
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// Reads a requirements file: one requirement per line, `#` starting a comment at the
/// line's start or after whitespace (as pip reads it, so `pkg @ url#sha256=…` keeps
/// its fragment).
fn parse_requirements_file(name: &str, text: &str) -> Result<Vec<String>, EnvError> {
    let mut requirements = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        let file = format!("{name}:{}", index + 1);
        if line.starts_with('-') {
            return Err(EnvError::Requirement {
                file,
                message: format!(
                    "{line:?} is an installer option, which is not allowed; expected one PEP 508 requirement per line such as \"numpy>=1.26\""
                ),
            });
        }
        validate_requirement(line).map_err(|message| EnvError::Requirement { file, message })?;
        requirements.push(line.to_owned());
    }
    Ok(requirements)
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

/// A ready environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// Its key.
    pub key: String,
    /// Its directory, `ENVS/<key>`.
    pub dir: PathBuf,
    /// Its interpreter, `ENVS/<key>/bin/python`.
    pub python: PathBuf,
    /// True when it was already built (by an earlier call, a concurrent one, or
    /// another agent sharing the root).
    pub reused: bool,
}

/// Builds and reuses environments under one root directory.
#[derive(Debug)]
pub struct EnvBuilder {
    root: PathBuf,
    uv: PathBuf,
    runtime_dir: PathBuf,
    /// One mutex per key, so concurrent `ensure`s of one key in this process wait for
    /// a single build. Keys are few (one per distinct requirement set), so entries are
    /// never removed.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    builds: AtomicU64,
    /// uv's latest line for each build under way, by key: what `mycel status` and a
    /// rollout's progress show while an environment builds.
    latest: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl EnvBuilder {
    /// A builder that keeps environments under `root` (`DATA/envs`), runs the `uv`
    /// binary at `uv`, and installs the worker runtime package from `runtime_dir` (the
    /// repository's `python/` directory) into every environment.
    ///
    /// Relative paths are made absolute against the current directory now, because uv
    /// runs in `root`.
    pub fn new(root: PathBuf, uv: PathBuf, runtime_dir: PathBuf) -> Self {
        // A bare program name ("uv") is looked up on PATH and must stay bare.
        let uv = if uv.components().count() > 1 {
            absolute(uv)
        } else {
            uv
        };
        Self {
            root: absolute(root),
            uv,
            runtime_dir: absolute(runtime_dir),
            locks: std::sync::Mutex::new(HashMap::new()),
            builds: AtomicU64::new(0),
            latest: Arc::default(),
        }
    }

    /// uv's latest line while the environment `key` builds; `None` when no build of it
    /// is under way.
    pub fn progress(&self, key: &str) -> Option<String> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.get(key).cloned()
    }

    /// The directory environments live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many environments this builder has built (not reused) since it was made.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// The worker runtime's content hash: BLAKE3 over `pyproject.toml` and every `*.py`
    /// under the runtime directory, sorted by path, skipping `__pycache__`, hidden
    /// directories and build outputs. Read afresh on each call, so editing the runtime
    /// under a running agent rebuilds its environments.
    pub async fn runtime_hash(&self) -> Result<String, EnvError> {
        let dir = self.runtime_dir.clone();
        tokio::task::spawn_blocking(move || runtime_hash_blocking(&dir))
            .await
            .map_err(|e| EnvError::Io {
                path: self.runtime_dir.clone(),
                source: io::Error::other(e),
            })?
    }

    /// Returns the environment for `spec`, building it first unless it exists.
    pub async fn ensure(&self, spec: &EnvSpec) -> Result<Env, EnvError> {
        self.ensure_with(spec, &self.runtime_hash().await?).await
    }

    /// [`EnvBuilder::ensure`] with the runtime hash already read, for a caller that
    /// needs the key (`spec.key(runtime_hash)`) before the build.
    pub async fn ensure_with(&self, spec: &EnvSpec, runtime_hash: &str) -> Result<Env, EnvError> {
        // The fields are public, so a spec may not have come through `from_manifest`:
        // check again that no requirement is an installer option.
        for req in &spec.requirements {
            validate_requirement(req).map_err(|message| EnvError::Requirement {
                file: "environment spec".into(),
                message,
            })?;
        }
        let key = spec.key(runtime_hash);
        let dir = self.root.join(&key);
        let env = |reused| Env {
            key: key.clone(),
            python: dir.join("bin").join("python"),
            dir: dir.clone(),
            reused,
        };
        if is_complete(&dir).await? {
            tracing::info!(%key, "reused environment");
            return Ok(env(true));
        }

        let key_lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let _in_process = key_lock.lock().await;
        // Held until the end of this function; closing the file releases it.
        let _across_processes = self.lock_file(&key).await?;
        if is_complete(&dir).await? {
            tracing::info!(%key, "reused environment built meanwhile");
            return Ok(env(true));
        }

        tracing::info!(
            %key,
            python = %spec.python,
            requirements = spec.requirements.len(),
            "building environment"
        );
        let started = std::time::Instant::now();
        let built = self
            .build(&key, spec, &spec.canonical(runtime_hash), &dir)
            .await;
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        built?;
        self.builds.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%key, seconds = started.elapsed().as_secs_f64(), "built environment");
        Ok(env(false))
    }

    /// Takes the cross-process lock for `key`, waiting in a blocking thread.
    // `File::lock` is stable since Rust 1.89, above the workspace's declared
    // rust-version; the workspace's rust-version should be raised to 1.89.
    #[allow(clippy::incompatible_msrv)]
    async fn lock_file(&self, key: &str) -> Result<std::fs::File, EnvError> {
        let root = self.root.clone();
        let path = self.root.join(format!("{key}.lock"));
        let path_for_error = path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root).map_err(io_at(&root))?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_at(&path))?;
            file.lock().map_err(io_at(&path))?;
            Ok(file)
        })
        .await
        .map_err(|e| EnvError::Io {
            path: path_for_error,
            source: io::Error::other(e),
        })?
    }

    /// Builds in place and writes `.complete`, holding `canonical` (the text the key
    /// hashes), last.
    async fn build(
        &self,
        key: &str,
        spec: &EnvSpec,
        canonical: &str,
        dir: &Path,
    ) -> Result<(), EnvError> {
        // A directory without the marker is a failed or interrupted build.
        match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_at(dir)(e)),
            _ => {}
        }
        let python = dir.join("bin").join("python");
        let mut venv = Command::new(&self.uv);
        venv.arg("venv")
            .arg("--no-project")
            // One argument, so a specifier can never be read as another option.
            .arg(format!("--python={}", spec.python.trim()))
            .arg(dir);
        self.run_uv(key, "uv venv", venv).await?;

        let mut install = Command::new(&self.uv);
        install
            .arg("pip")
            .arg("install")
            // Workers run with PYTHONDONTWRITEBYTECODE (version directories are
            // read-only), so compile once here rather than on every worker start.
            .arg("--compile-bytecode")
            .arg("--python")
            .arg(&python)
            .args(spec.normalized_requirements())
            .arg(&self.runtime_dir);
        self.run_uv(key, "uv pip install", install).await?;

        let marker = dir.join(COMPLETE_MARKER);
        let text = canonical.to_owned();
        tokio::task::spawn_blocking(move || {
            // Durable before anyone trusts it: a marker must never outlive a lost build.
            let file = std::fs::File::create(&marker).map_err(io_at(&marker))?;
            io::Write::write_all(&mut &file, text.as_bytes()).map_err(io_at(&marker))?;
            file.sync_all().map_err(io_at(&marker))
        })
        .await
        .map_err(|e| EnvError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other(e),
        })?
    }

    /// Runs one uv command, keeping the tail of its interleaved output for the error (and
    /// the fix, where [`build_fix`] knows it).
    async fn run_uv(&self, key: &str, step: &str, mut command: Command) -> Result<(), EnvError> {
        command
            .current_dir(&self.root)
            .env("UV_NO_PROGRESS", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // An abandoned build (the agent stopping) must not leave uv running.
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                EnvError::UvMissing {
                    path: self.uv.clone(),
                    source,
                }
            } else {
                io_at(&self.uv)(source)
            }
        })?;
        let tail = Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let lines = Lines {
            tail: Arc::clone(&tail),
            latest: Arc::clone(&self.latest),
            key: key.to_owned(),
        };
        let stdout = child.stdout.take().map(|out| collect(out, lines.clone()));
        let stderr = child.stderr.take().map(|err| collect(err, lines.clone()));
        let (status, _, _) = tokio::join!(child.wait(), opt(stdout), opt(stderr));
        let status = status.map_err(io_at(&self.uv))?;
        if status.success() {
            return Ok(());
        }
        let lines = tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = format!("{step} failed ({status}):");
        for line in lines.iter() {
            text.push('\n');
            text.push_str(line);
        }
        if let Some(fix) = build_fix(step, &text) {
            text.push_str("\nfix: ");
            text.push_str(fix);
        }
        Err(EnvError::Build {
            key: key.to_owned(),
            tail: text,
        })
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

async fn opt(future: Option<impl std::future::Future<Output = ()>>) {
    if let Some(future) = future {
        future.await;
    }
}

/// Reads lines from one of uv's pipes into the shared tail, logging each.
/// Where a build's output lines go: the tail kept for its error, and its latest line
/// for progress.
#[derive(Clone)]
struct Lines {
    tail: Arc<std::sync::Mutex<VecDeque<String>>>,
    latest: Arc<std::sync::Mutex<HashMap<String, String>>>,
    key: String,
}

async fn collect(pipe: impl AsyncRead + Unpin, to: Lines) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "mycel_agent::env::uv", "{line}");
        if !line.trim().is_empty() {
            let mut latest = to.latest.lock().unwrap_or_else(|e| e.into_inner());
            latest.insert(to.key.clone(), line.trim().to_owned());
        }
        let mut tail = to.tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

async fn is_complete(dir: &Path) -> Result<bool, EnvError> {
    let marker = dir.join(COMPLETE_MARKER);
    tokio::fs::try_exists(&marker).await.map_err(io_at(&marker))
}

fn runtime_hash_blocking(dir: &Path) -> Result<String, EnvError> {
    let mut files = Vec::new();
    let pyproject = dir.join("pyproject.toml");
    if pyproject.is_file() {
        files.push(("pyproject.toml".to_owned(), pyproject));
    }
    walk_python(dir, "", &mut files)?;
    if files.is_empty() {
        return Err(io_at(dir)(io::Error::new(
            io::ErrorKind::NotFound,
            "no pyproject.toml or *.py here; expected the worker runtime package (the repository's python/ directory)",
        )));
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"mycel-runtime-v1\0");
    for (name, path) in files {
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Collects `*.py` files under `dir`, named by their `/`-separated relative path.
fn walk_python(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<(String, PathBuf)>,
) -> Result<(), EnvError> {
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let kind = entry.file_type().map_err(io_at(&path))?;
        let relative = format!("{prefix}{name}");
        if kind.is_dir() {
            // Caches, virtual environments and build outputs are not the runtime.
            let skip = name == "__pycache__"
                || name.starts_with('.')
                || name == "build"
                || name == "dist"
                || name.ends_with(".egg-info");
            if !skip {
                walk_python(&path, &format!("{relative}/"), files)?;
            }
        } else if kind.is_file() && name.ends_with(".py") {
            files.push((relative, path));
        }
    }
    Ok(())
}

/// The uv binary to use when none is configured: `$MYCEL_UV`, else `uv` on `PATH`.
pub fn find_uv() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MYCEL_UV").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("uv"))
        .find(|candidate| candidate.is_file())
}

/// What the component's author does about a failed build step, where uv's output says
/// which mistake it was: the environment comes from the manifest, so the fix is there.
fn build_fix(step: &str, output: &str) -> Option<&'static str> {
    let unresolvable = [
        "No solution found",
        "not found in the package registry",
        "no version of",
        "Failed to parse",
    ];
    if step == "uv pip install" && unresolvable.iter().any(|s| output.contains(s)) {
        return Some(
            "a requirement in mycel.toml's [python] requirements (or its requirements file) cannot be installed as written: correct its name or version and push again",
        );
    }
    if step == "uv venv" && output.contains("No interpreter found") {
        return Some(
            "no Python here satisfies mycel.toml's [python] version: loosen it and push again, or install one on the node (`uv python install 3.12`)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requirements: &[&str]) -> EnvSpec {
        EnvSpec {
            python: ">=3.9".into(),
            requirements: requirements.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn key_ignores_order_whitespace_and_duplicates() {
        let a = spec(&["numpy>=1.26", "torch"]).key("r1");
        assert_eq!(a.len(), 32);
        assert_eq!(a, spec(&[" torch", "numpy>=1.26 ", "torch"]).key("r1"));
        assert_ne!(a, spec(&["numpy>=1.26"]).key("r1"));
        assert_ne!(a, spec(&["numpy>=1.27", "torch"]).key("r1"));
        assert_ne!(a, spec(&["numpy>=1.26", "torch"]).key("r2"));
        let mut other_python = spec(&["numpy>=1.26", "torch"]);
        other_python.python = "3.11".into();
        assert_ne!(a, other_python.key("r1"));
    }

    fn manifest(python: &str) -> Manifest {
        Manifest::parse(&format!(
            "[component]\nname = \"x\"\nentrypoint = \"model:M\"\n{python}"
        ))
        .unwrap()
    }

    #[test]
    fn spec_from_manifest_list_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let listed = EnvSpec::from_manifest(
            &manifest("[python]\nversion = \"3.11\"\nrequirements = [\"numpy\"]\n"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            listed,
            EnvSpec {
                python: "3.11".into(),
                requirements: vec!["numpy".into()],
            }
        );

        std::fs::create_dir(dir.path().join("deps")).unwrap();
        std::fs::write(
            dir.path().join("deps/requirements.txt"),
            "# pinned\nnumpy>=1.26  # fast arrays\n\n  torch\npkg @ https://example.com/p.whl#sha256=ab\n",
        )
        .unwrap();
        let from_file = EnvSpec::from_manifest(
            &manifest("[python]\nrequirements-file = \"deps/requirements.txt\"\n"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(from_file.python, mycel_core::manifest::DEFAULT_PYTHON);
        assert_eq!(
            from_file.requirements,
            vec![
                "numpy>=1.26",
                "torch",
                "pkg @ https://example.com/p.whl#sha256=ab"
            ]
        );

        std::fs::write(
            dir.path().join("deps/requirements.txt"),
            "numpy\n--index-url https://evil.example/simple\n",
        )
        .unwrap();
        let err = EnvSpec::from_manifest(
            &manifest("[python]\nrequirements-file = \"deps/requirements.txt\"\n"),
            dir.path(),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("deps/requirements.txt:2"), "{message}");
        assert!(message.contains("--index-url"), "{message}");
    }

    #[test]
    fn dependencies_add_their_requirements_and_leave_a_lone_spec_alone() {
        let dir = tempfile::tempdir().unwrap();
        let own = manifest("[python]\nversion = \"3.11\"\nrequirements = [\"numpy\"]\n");
        let alone = EnvSpec::from_tree(&own, dir.path(), &[]).unwrap();
        assert_eq!(alone, EnvSpec::from_manifest(&own, dir.path()).unwrap());
        assert_eq!(
            alone.key("r"),
            EnvSpec::from_manifest(&own, dir.path()).unwrap().key("r")
        );

        let listed = dir.path().join("listed");
        std::fs::create_dir(&listed).unwrap();
        std::fs::write(
            listed.join("mycel.toml"),
            "[component]\nname = \"listed\"\nentrypoint = \"m:C\"\n[python]\nversion = \">=3.12\"\nrequirements = [\"numpy\", \"scipy\"]\n",
        )
        .unwrap();
        let from_file = dir.path().join("from-file");
        std::fs::create_dir(&from_file).unwrap();
        std::fs::write(
            from_file.join("mycel.toml"),
            "[component]\nname = \"from-file\"\nentrypoint = \"m:C\"\n[python]\nrequirements-file = \"req.txt\"\n",
        )
        .unwrap();
        std::fs::write(from_file.join("req.txt"), "pillow\n").unwrap();
        let deps = [
            ("listed".to_owned(), listed.clone()),
            ("from-file".to_owned(), from_file.clone()),
        ];
        let merged = EnvSpec::from_tree(&own, dir.path(), &deps).unwrap();
        // The dependent's interpreter; everyone's requirements, the same once.
        assert_eq!(merged.python, "3.11");
        assert_eq!(
            merged
                .normalized_requirements()
                .into_iter()
                .collect::<Vec<_>>(),
            ["numpy", "pillow", "scipy"]
        );
        assert_ne!(merged.key("r"), alone.key("r"));

        std::fs::write(
            from_file.join("req.txt"),
            "--index-url https://evil.example\n",
        )
        .unwrap();
        let err = EnvSpec::from_tree(&own, dir.path(), &deps).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("dependency from-file: req.txt:1"),
            "{err}"
        );
    }

    /// A throwaway runtime package, so these tests do not depend on the real one.
    fn runtime(dir: &Path, marker: &str) -> PathBuf {
        let runtime = dir.join("runtime");
        std::fs::create_dir_all(runtime.join("mycel_worker_test/__pycache__")).unwrap();
        std::fs::write(
            runtime.join("pyproject.toml"),
            "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
             [project]\nname = \"mycel-worker-test\"\nversion = \"0.0.1\"\n\n\
             [tool.setuptools]\npackages = [\"mycel_worker_test\"]\n",
        )
        .unwrap();
        std::fs::write(
            runtime.join("mycel_worker_test/__init__.py"),
            format!("MARKER = {marker:?}\n"),
        )
        .unwrap();
        runtime
    }

    #[tokio::test]
    async fn runtime_hash_follows_sources_only() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), "one");
        let builder = EnvBuilder::new(dir.path().join("envs"), "uv".into(), rt.clone());
        let first = builder.runtime_hash().await.unwrap();
        std::fs::write(rt.join("mycel_worker_test/__pycache__/x.py"), "junk").unwrap();
        std::fs::write(rt.join("README.md"), "docs").unwrap();
        assert_eq!(builder.runtime_hash().await.unwrap(), first);
        std::fs::write(rt.join("mycel_worker_test/__init__.py"), "MARKER = 2\n").unwrap();
        assert_ne!(builder.runtime_hash().await.unwrap(), first);

        let missing = EnvBuilder::new(
            dir.path().join("envs"),
            "uv".into(),
            dir.path().join("nowhere"),
        );
        assert!(missing.runtime_hash().await.is_err());
    }

    /// uv is required: CI installs it, and a silently skipped test proves nothing.
    fn uv() -> PathBuf {
        find_uv().expect(
            "uv not found: install it with `python3 -m pip install uv` or set MYCEL_UV to its path",
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn builds_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), "build-once");
        let root = dir.path().join("envs");
        // Two builders over one root stand for two agents on one machine: only the
        // file lock keeps them from building the same key twice.
        let a = EnvBuilder::new(root.clone(), uv(), rt.clone());
        let b = EnvBuilder::new(root.clone(), uv(), rt.clone());
        let spec = spec(&[]);
        let (one, two, three) = tokio::join!(a.ensure(&spec), a.ensure(&spec), b.ensure(&spec));
        let (one, two, three) = (one.unwrap(), two.unwrap(), three.unwrap());
        assert_eq!(a.builds() + b.builds(), 1);
        assert_eq!(one.dir, two.dir);
        assert_eq!(one.dir, three.dir);
        assert_eq!(
            [one.reused, two.reused, three.reused]
                .iter()
                .filter(|r| !**r)
                .count(),
            1
        );
        assert!(one.dir.join(COMPLETE_MARKER).is_file());
        assert_eq!(one.python, one.dir.join("bin/python"));

        let output = std::process::Command::new(&one.python)
            .args([
                "-c",
                "import sys, mycel_worker_test; print(mycel_worker_test.MARKER)",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "build-once");

        let again = a.ensure(&spec).await.unwrap();
        assert!(again.reused);
        assert_eq!(a.builds() + b.builds(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_build_reports_uv_error_and_stays_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), "fails");
        let builder = EnvBuilder::new(dir.path().join("envs"), uv(), rt);
        let spec = spec(&["mycel-no-such-package-xyz==99.0"]);
        let err = builder.ensure(&spec).await.unwrap_err();
        let EnvError::Build { key, tail } = &err else {
            panic!("expected a build error, got {err}");
        };
        assert!(tail.contains("mycel-no-such-package-xyz"), "{tail}");
        assert!(tail.starts_with("uv pip install failed"), "{tail}");
        assert!(
            tail.contains("\nfix: a requirement in mycel.toml"),
            "{tail}"
        );
        let env_dir = builder.root().join(key);
        assert!(!env_dir.join(COMPLETE_MARKER).exists());
        // Still not complete: a retry builds (and fails) again instead of reusing.
        assert!(builder.ensure(&spec).await.is_err());
        assert_eq!(builder.builds(), 0);
    }

    #[tokio::test]
    async fn missing_uv_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), "no-uv");
        let builder = EnvBuilder::new(dir.path().join("envs"), dir.path().join("no-such-uv"), rt);
        let err = builder.ensure(&spec(&[])).await.unwrap_err();
        assert!(matches!(err, EnvError::UvMissing { .. }), "{err}");
        assert!(err.to_string().contains("pip install uv"), "{err}");

        // Checked before uv would run: options never reach its command line.
        let err = builder
            .ensure(&spec(&["--index-url=https://evil.example/simple"]))
            .await
            .unwrap_err();
        assert!(matches!(err, EnvError::Requirement { .. }), "{err}");
    }
}
