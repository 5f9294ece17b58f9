//! docs/quickstart.md, run as written: every `sh` block in order, `sh background` blocks
//! left running (as in a terminal of their own), `sh skip` blocks (installing) not
//! run. The only change is to `mycel up`, which gets ports the system picks so that
//! tests can run side by side; the data directory is the test's own (`MYCEL_DATA`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{eventually, mycel_bin, repo_root, READY_PATIENCE};

/// A fenced block of the page: its info string after `sh`, and its lines.
struct Block {
    mode: String,
    lines: Vec<String>,
}

fn blocks(page: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for line in page.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) if info == "sh" || info.starts_with("sh ") => {
                open = Some(Block {
                    mode: info.trim_start_matches("sh").trim().to_owned(),
                    lines: Vec::new(),
                });
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(block), None) if !line.trim().is_empty() => block.lines.push(line.to_owned()),
            _ => {}
        }
    }
    assert!(open.is_none(), "an unclosed block");
    out
}

/// `bash -c LINE` in `dir`, with the built `mycel` first on PATH.
fn shell(line: &str, dir: &Path, data: &Path) -> Command {
    let bin = Path::new(mycel_bin()).parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env("MYCEL_DATA", data)
        .env("MYCEL_LOG", "warn")
        .env_remove("MYCEL_SERVER")
        .env_remove("MYCEL_TOKEN")
        .env_remove("MYCEL_GATEWAY");
    command
}

/// Processes left running, stopped (and their children with them) when the test ends.
struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SIGINT, as Ctrl-C in their terminal: `mycel up` stops its agents and workers.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn json(line: &str, dir: &Path, data: &Path) -> Value {
    let out = shell(line, dir, data).output().unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_quickstart_runs_as_written() {
    let page = std::fs::read_to_string(repo_root().join("docs/quickstart.md")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let dir = work.path().join("home");
    std::fs::create_dir_all(&dir).unwrap();
    let mut background = Background(Vec::new());
    let mut answers = Vec::new();
    let mut ran = 0;

    for block in blocks(&page) {
        match block.mode.as_str() {
            "skip" => continue,
            "background" => {
                let [line] = &block.lines[..] else {
                    panic!("a background block holds one command: {:?}", block.lines)
                };
                let line = if line.starts_with("mycel up") {
                    line.replacen(
                        "mycel up",
                        "exec mycel up --listen 127.0.0.1:0 --gateway 127.0.0.1:0",
                        1,
                    )
                } else {
                    format!("exec {line}")
                };
                let child = shell(&line, &dir, &data)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                background.0.push(child);
                if line.contains("mycel up") {
                    eventually("mycel up to listen", Duration::from_secs(60), || {
                        data.join("gateway.url").exists().then_some(())
                    });
                }
            }
            "" => {
                for line in &block.lines {
                    let out = shell(line, &dir, &data).output().unwrap();
                    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    assert!(
                        out.status.success(),
                        "`{line}` failed:\n{stdout}\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if line.starts_with("mycel predict") {
                        assert!(stdout.contains("probabilities FP32 [1, 3]"), "{stdout}");
                        answers.push(stdout);
                    }
                    ran += 1;
                }
            }
            other => panic!("unknown block kind {other:?}"),
        }
    }
    assert!(ran >= 10, "only {ran} commands ran");
    // The pushed change changed the answer.
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_ne!(answers[0], answers[1]);

    // The last save reached the deployment through `mycel dev`: a third version,
    // answering at the gateway.
    let predict = "mycel predict hello --input 'input=[[1, 2, 3, 4]]'";
    eventually("mycel dev to roll out the save", READY_PATIENCE, || {
        let model = std::fs::read_to_string(dir.join("hello/model.py")).ok()?;
        let versions = json("mycel versions hello --json", &dir, &data);
        let newest = versions
            .as_array()?
            .iter()
            .filter_map(|v| v["seq"].as_u64())
            .max()?;
        let out = shell(predict, &dir, &data).output().ok()?;
        let answer = String::from_utf8_lossy(&out.stdout);
        (model.contains("default_rng(2)")
            && newest >= 3
            && answer.starts_with(&format!("hello version {newest}\n")))
        .then_some(())
    });
}
