//! Keeping training workers off the network, so a node's data can leave it only as the
//! weights `train` returns: [`probe`] finds, once at start, which way this platform
//! allows, and the command prefix that applies it.

use mycel_core::federation::Isolation;
use tokio::process::Command;

/// How this node starts training workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// What is in force.
    pub isolation: Isolation,
    /// The program and arguments a worker's command is appended to; empty for none.
    pub prefix: Vec<String>,
}

/// The first way that works here: a new network namespace with `unshare` (as root, or
/// inside a new user namespace otherwise), then bubblewrap; none if neither runs.
pub async fn probe() -> Sandbox {
    let candidates: [(Isolation, &[&str]); 3] = [
        (Isolation::Netns, &["unshare", "--net"]),
        (
            Isolation::Netns,
            &["unshare", "--user", "--map-root-user", "--net"],
        ),
        (
            Isolation::Bubblewrap,
            &[
                "bwrap",
                "--dev-bind",
                "/",
                "/",
                "--unshare-net",
                "--die-with-parent",
            ],
        ),
    ];
    for (isolation, prefix) in candidates {
        let works = Command::new(prefix[0])
            .args(&prefix[1..])
            .arg("true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success());
        if works {
            return Sandbox {
                isolation,
                prefix: prefix.iter().map(|s| s.to_string()).collect(),
            };
        }
    }
    Sandbox::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sandboxed_process_has_no_network() {
        let sandbox = probe().await;
        if sandbox.isolation == Isolation::None {
            eprintln!("no network isolation on this platform; nothing to check");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // bash's /dev/tcp connects like any client would.
        let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        let outside = Command::new("bash").args(["-c", &connect]).status().await;
        assert!(outside.unwrap().success(), "the host can connect");
        let inside = Command::new(&sandbox.prefix[0])
            .args(&sandbox.prefix[1..])
            .args(["bash", "-c", &connect])
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(
            !inside.success(),
            "{sandbox:?} let a worker connect to the host"
        );
    }
}
