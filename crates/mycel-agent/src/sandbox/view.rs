//! What a sandboxed worker sees, as bubblewrap arguments: a pure function of the
//! paths involved, so the order that makes it safe (bubblewrap mounts in argument
//! order: what is hidden stays hidden under whatever is shown back) is tested without
//! starting anything.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file system and network a worker gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Directories replaced by an empty one: the agent's data, its user's home.
    pub hidden: Vec<PathBuf>,
    /// Paths shown read-only even where hidden: the version, its dependencies, the
    /// environment and the interpreter it links to.
    pub read_only: Vec<PathBuf>,
    /// Paths shown writable: the worker's socket.
    pub writable: Vec<PathBuf>,
    /// Devices passed through (a GPU's `/dev/nvidia*`).
    pub devices: Vec<PathBuf>,
    /// Whether the worker keeps the host's network.
    pub network: bool,
}

/// Where every worker gets a writable directory of its own, empty at start.
pub const PRIVATE_TMP: &str = "/tmp";
/// Emptied for every worker: the host's Unix sockets live there.
const RUN: &str = "/run";

/// bubblewrap's arguments, up to the command: the whole file system read-only, a new
/// `/dev`, `/proc` and PID namespace, a private `/tmp`, `hidden` emptied, and what the
/// worker needs shown again, shallowest first.
pub fn bwrap_args(view: &View) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if !view.network {
        args.push("--unshare-net".into());
    }
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        args.extend(items.iter().map(|i| i.as_ref().to_os_string()));
    };
    push(&[
        &"--ro-bind",
        &"/",
        &"/",
        &"--dev",
        &"/dev",
        &"--proc",
        &"/proc",
    ]);
    push(&[&"--perms", &"1777", &"--tmpfs", &PRIVATE_TMP]);
    // The host's Unix sockets (D-Bus, journald, a user's session and its agents) are
    // reachable without a network; only a worker that has the network keeps the
    // resolver's, where /etc/resolv.conf points into /run.
    push(&[&"--perms", &"0755", &"--tmpfs", &RUN]);
    let (tmp, run) = (Path::new(PRIVATE_TMP), Path::new(RUN));
    // A hidden directory under /tmp or /run is gone with it.
    let hidden: Vec<&PathBuf> = view
        .hidden
        .iter()
        .filter(|h| !h.starts_with(tmp) && !h.starts_with(run))
        .collect();
    let covers: Vec<&Path> = [tmp, run]
        .into_iter()
        .chain(hidden.iter().map(|h| h.as_path()))
        .collect();
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    // Mount points under a cover do not exist there: make each parent first, readable
    // by the worker's user (bubblewrap would make them 0700, root's).
    let mut parents = |target: &Path, out: &mut Vec<OsString>| {
        let mut missing: Vec<&Path> = target
            .ancestors()
            .skip(1)
            .take_while(|a| covers.iter().any(|c| a.starts_with(c) && a != c))
            .collect();
        missing.reverse();
        for dir in missing {
            if made.insert(dir.to_path_buf()) {
                out.extend(["--perms".into(), "0755".into(), "--dir".into()]);
                out.push(dir.into());
            }
        }
    };
    let covered = |p: &Path| covers.iter().any(|c| p.starts_with(c));
    let mut mounts: Vec<(&Path, &str)> = hidden.iter().map(|h| (h.as_path(), "--tmpfs")).collect();
    for (flag, paths) in [
        ("--ro-bind", &view.read_only),
        ("--bind", &view.writable),
        ("--dev-bind", &view.devices),
    ] {
        // Outside every cover a path is there already, read-only. What must be
        // writable, and devices (/dev is new), are always bound.
        mounts.extend(
            paths
                .iter()
                .filter(|p| flag != "--ro-bind" || covered(p))
                .map(|p| (p.as_path(), flag)),
        );
    }
    let resolver = Path::new("/run/systemd/resolve");
    if view.network && resolver.is_dir() {
        mounts.push((resolver, "--ro-bind"));
    }
    // Shallower first: a mount hides what an earlier one put below it, so a directory
    // shown again (an interpreter's prefix, say) never uncovers a hidden one inside it.
    mounts.sort_by_key(|(path, _)| path.components().count());
    let mut tail: Vec<OsString> = Vec::new();
    for (path, flag) in mounts {
        parents(path, &mut tail);
        if flag == "--tmpfs" {
            tail.extend([
                "--perms".into(),
                "0755".into(),
                "--tmpfs".into(),
                path.into(),
            ]);
        } else {
            tail.extend([flag.into(), path.into(), path.into()]);
        }
    }
    args.extend(tail);
    args
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Arguments as text, to compare.
    pub(in crate::sandbox) fn text(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn position(args: &[String], window: &[&str]) -> usize {
        args.windows(window.len())
            .position(|w| w == window)
            .unwrap_or_else(|| panic!("{window:?} not in {args:?}"))
    }

    #[test]
    fn hides_first_then_shows_back_what_the_worker_needs() {
        let view = View {
            hidden: vec!["/var/lib/mycel".into(), "/root".into()],
            read_only: vec![
                "/var/lib/mycel/versions/abc".into(),
                "/root/.pyenv/versions/3.11".into(),
                "/usr/lib/python3".into(),
            ],
            writable: vec!["/var/lib/mycel/run/r1.sock".into()],
            devices: vec![],
            network: false,
        };
        let args = text(&bwrap_args(&view));
        assert!(args.contains(&"--unshare-net".to_owned()));
        let root = position(&args, &["--ro-bind", "/", "/"]);
        let tmp = position(&args, &["--tmpfs", "/tmp"]);
        let hide = position(&args, &["--tmpfs", "/var/lib/mycel"]);
        let parent = position(&args, &["--dir", "/var/lib/mycel/versions"]);
        let version = position(
            &args,
            &[
                "--ro-bind",
                "/var/lib/mycel/versions/abc",
                "/var/lib/mycel/versions/abc",
            ],
        );
        let socket = position(
            &args,
            &[
                "--bind",
                "/var/lib/mycel/run/r1.sock",
                "/var/lib/mycel/run/r1.sock",
            ],
        );
        assert!(root < tmp && tmp < hide && hide < parent && parent < version);
        assert!(hide < socket);
        position(&args, &["--dir", "/root/.pyenv/versions"]);
        // Visible already, read-only: no bind of its own.
        assert!(!args.contains(&"/usr/lib/python3".to_owned()), "{args:?}");
        // Each parent once, readable by the worker's user.
        assert_eq!(
            args.iter()
                .filter(|a| *a == "/var/lib/mycel/versions")
                .count(),
            1
        );
        assert_eq!(args[parent - 2..parent], ["--perms", "0755"]);
    }

    #[test]
    fn a_directory_shown_again_never_uncovers_a_hidden_one_inside_it() {
        let view = View {
            hidden: vec!["/root/mycel".into(), "/root".into()],
            read_only: vec!["/root".into(), "/root/mycel/versions/abc".into()],
            ..View::default()
        };
        let args = text(&bwrap_args(&view));
        let shown = position(&args, &["--ro-bind", "/root", "/root"]);
        let hidden = position(&args, &["--tmpfs", "/root/mycel"]);
        let version = position(&args, &["--ro-bind", "/root/mycel/versions/abc"]);
        assert!(shown < hidden && hidden < version, "{args:?}");
    }

    #[test]
    fn a_worker_that_asks_keeps_the_network_and_tmp_covers_what_is_under_it() {
        let view = View {
            hidden: vec!["/tmp/test-data".into()],
            read_only: vec!["/tmp/test-data/versions/abc".into()],
            writable: vec![],
            devices: vec!["/dev/nvidia0".into()],
            network: true,
        };
        let args = text(&bwrap_args(&view));
        assert!(!args.contains(&"--unshare-net".to_owned()));
        // Under the private /tmp it is hidden already.
        assert!(!args.windows(2).any(|w| w == ["--tmpfs", "/tmp/test-data"]));
        position(&args, &["--dir", "/tmp/test-data"]);
        position(&args, &["--dir", "/tmp/test-data/versions"]);
        position(&args, &["--dev-bind", "/dev/nvidia0", "/dev/nvidia0"]);
        // The host's sockets are gone, network or not.
        position(&args, &["--tmpfs", "/run"]);
    }
}
