//! `mycel doctor`: checks what a node or a laptop needs to run mycel and says how to fix
//! each problem. `mycel up` and `mycel agent` run the same checks at start and stop
//! early, with the same words, on anything that would fail later.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use mycel_client::ClientError;
use mycel_core::ErrorCode;
use serde::Serialize;

use crate::cli::DoctorArgs;

/// Below this much free disk in the data directory, a problem: environments and
/// versions will not fit.
const DISK_FAIL_BYTES: u64 = 1 << 30;
/// Below this, a warning: a torch environment alone takes a few GiB.
const DISK_WARN_BYTES: u64 = 5 << 30;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's result: what was found and, for a problem, how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub found: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, found: String) -> Self {
        Self {
            check,
            level: Level::Ok,
            found,
            fix: None,
        }
    }

    fn problem(check: &'static str, level: Level, found: String, fix: String) -> Self {
        Self {
            check,
            level,
            found,
            fix: Some(fix),
        }
    }
}

/// What `uv --version` printed, or why it could not run.
pub fn uv(uv: &Path, version: Result<String, std::io::Error>) -> Finding {
    match version {
        Ok(text) => Finding::ok("uv", text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::problem(
            "uv",
            Level::Fail,
            format!(
                "{} not found: mycel builds every model's environment with uv",
                uv.display()
            ),
            "install it (`pip install uv`, or see docs.astral.sh/uv), or pass --uv PATH (MYCEL_UV)"
                .into(),
        ),
        Err(e) => Finding::problem(
            "uv",
            Level::Fail,
            format!("{} --version failed: {e}", uv.display()),
            "reinstall uv (`pip install --force-reinstall uv`), or pass --uv PATH (MYCEL_UV)"
                .into(),
        ),
    }
}

/// The Python `uv python find` found (its path and version), or why none.
pub fn python(found: Result<String, String>) -> Finding {
    match found {
        Ok(text) => Finding::ok("python", text.trim().to_owned()),
        Err(why) => Finding::problem(
            "python",
            Level::Fail,
            format!("uv finds no Python interpreter: {}", why.trim()),
            "install Python 3 (`apt-get install python3`, or `uv python install`)".into(),
        ),
    }
}

/// Whether training workers can be cut off the network here.
pub fn isolation(isolation: mycel_core::federation::Isolation) -> Finding {
    use mycel_core::federation::Isolation;
    match isolation {
        Isolation::None => Finding::problem(
            "isolation",
            Level::Warn,
            "training workers cannot be cut off the network here (no unshare or bubblewrap works): federations that require isolation will not use this node".into(),
            "install bubblewrap (`apt-get install bubblewrap`), or allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`)".into(),
        ),
        other => Finding::ok(
            "isolation",
            format!("training workers are cut off the network ({other})"),
        ),
    }
}

/// How serving workers would be confined here.
pub fn sandbox(confinement: mycel_core::fleet::Confinement) -> Finding {
    let full = confinement.own_user
        && confinement.private_files
        && confinement.no_network
        && confinement.limits != mycel_core::fleet::Limits::None;
    if full {
        return Finding::ok(
            "sandbox",
            format!("serving workers are confined ({confinement})"),
        );
    }
    Finding::problem(
        "sandbox",
        Level::Warn,
        format!("serving workers are confined only partly here ({confinement}): model code runs with more of the agent's privileges than it needs"),
        "run the agent as root with bubblewrap (`apt-get install bubblewrap`) and util-linux's setpriv and prlimit; cgroups make the limits exact".into(),
    )
}

/// Free disk in the data directory.
pub fn disk(data: &Path, free: Result<u64, std::io::Error>) -> Finding {
    let shown = data.display();
    match free {
        Ok(bytes) if bytes < DISK_FAIL_BYTES => Finding::problem(
            "disk",
            Level::Fail,
            format!(
                "{} free in {shown}: model environments and versions will not fit",
                crate::output::bytes(bytes)
            ),
            "free some space there, or give another directory with --data (MYCEL_DATA)".into(),
        ),
        Ok(bytes) if bytes < DISK_WARN_BYTES => Finding::problem(
            "disk",
            Level::Warn,
            format!(
                "{} free in {shown}: a PyTorch environment alone takes a few GiB",
                crate::output::bytes(bytes)
            ),
            "free some space there, or give another directory with --data (MYCEL_DATA)".into(),
        ),
        Ok(bytes) => Finding::ok(
            "disk",
            format!("{} free in {shown}", crate::output::bytes(bytes)),
        ),
        Err(e) => Finding::problem(
            "disk",
            Level::Fail,
            format!("cannot use {shown}: {e}"),
            "create it and make it writable by this user, or give another with --data (MYCEL_DATA)"
                .into(),
        ),
    }
}

/// Whether `addr`, which `flag` sets, can be listened on.
pub fn port(flag: &'static str, addr: SocketAddr, bound: Result<(), std::io::Error>) -> Finding {
    match bound {
        Ok(()) => Finding::ok("port", format!("{addr} ({flag}) is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::problem(
            "port",
            Level::Fail,
            format!(
                "{addr} ({flag}) is in use, perhaps by a mycel already running (`mycel status`)"
            ),
            format!("stop what listens there, or pass {flag} with another port"),
        ),
        Err(e) => Finding::problem(
            "port",
            Level::Fail,
            format!("cannot listen on {addr} ({flag}): {e}"),
            format!("pass {flag} with an address of this machine"),
        ),
    }
}

/// Whether the server answered a call made with the token.
pub fn server(url: &str, answer: Result<(), ClientError>) -> Finding {
    let fail =
        |found: String, fix: &str| Finding::problem("server", Level::Fail, found, fix.into());
    match answer {
        Ok(()) => Finding::ok("server", format!("{url} answers, and the token is accepted")),
        Err(e) if e.code() == Some(ErrorCode::Unauthorized) => fail(
            format!("{url} refuses the token: {e}"),
            "pass the admin token with --token (MYCEL_TOKEN): it is in the server's data directory, admin.token",
        ),
        Err(e) if e.code() == Some(ErrorCode::Forbidden) => fail(
            format!("{url} accepts the token but it may not read the fleet: {e}"),
            "use an operator's token (admin.token in the server's data directory), not a node's credential",
        ),
        Err(e) => {
            // The innermost cause says it plainest ("Connection refused").
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let cause = cause.to_string();
            if format!("{:#}", anyhow::Error::from(e)).contains("invalid peer certificate") {
                fail(
                    format!("{url} has a certificate this client does not trust"),
                    "pass the fleet's CA with --ca FILE (MYCEL_CA): DATA/tls/ca.pem on the control plane's machine",
                )
            } else {
                fail(
                    format!("{url} does not answer ({cause})"),
                    "start one with `mycel up`, or pass the right --server URL (MYCEL_SERVER)",
                )
            }
        }
    }
}

/// The findings as lines for a terminal; problems last, each with its fix.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let mark = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!("{mark}  {:<9} {}\n", f.check, f.found));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("      {:<9} fix: {fix}\n", ""));
        }
    }
    out
}

/// The problems that stop a start, as one error naming each and its fix.
pub fn refuse(findings: &[Finding], what: &str) -> anyhow::Result<()> {
    let failed: Vec<Finding> = findings
        .iter()
        .filter(|f| f.level == Level::Fail)
        .cloned()
        .collect();
    for warning in findings.iter().filter(|f| f.level == Level::Warn) {
        eprint!("{}", render(std::slice::from_ref(warning)));
    }
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{what} cannot start here ({} problem{}; `mycel doctor` checks again):\n{}",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        render(&failed).trim_end()
    )
}

async fn run_uv(uv: &Path, args: &[&str]) -> Result<String, std::io::Error> {
    let out = tokio::process::Command::new(uv)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// The checks every machine that runs workers needs: uv, a Python, disk, and the
/// addresses it will listen on.
pub async fn node_checks(
    uv_bin: &Path,
    data: &Path,
    ports: &[(&'static str, SocketAddr)],
) -> Vec<Finding> {
    let version = run_uv(uv_bin, &["--version"]).await;
    let uv_found = version.is_ok();
    let mut findings = vec![uv(uv_bin, version)];
    if uv_found {
        let found = match run_uv(uv_bin, &["python", "find"]).await {
            Ok(path) => {
                let path = path.trim().to_owned();
                let version = tokio::process::Command::new(&path)
                    .arg("--version")
                    .output()
                    .await
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default();
                Ok(format!("{version} ({path})"))
            }
            Err(e) => Err(e.to_string()),
        };
        findings.push(python(found));
    }
    findings.push(disk(data, free_bytes(data)));
    for (flag, addr) in ports {
        // Port 0 always finds a free port.
        if addr.port() != 0 {
            let bound = std::net::TcpListener::bind(addr).map(drop);
            findings.push(port(flag, *addr, bound));
        }
    }
    findings
}

/// Free bytes for this user on the filesystem that holds `dir` (or would: the nearest
/// existing ancestor).
fn free_bytes(dir: &Path) -> Result<u64, std::io::Error> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let stat = rustix::fs::statvfs(existing)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let data = crate::connect::data_dir(&args.connect.data)?;
    // A server is checked where one is named (flag, environment or DATA/server.url);
    // the ports a running one holds are its, not a problem.
    let mut running_ports = Vec::new();
    let mut server_finding = None;
    if let Ok((url, _)) = crate::connect::server_and_token(&args.connect) {
        let answer = match crate::connect::client(&args.connect) {
            Ok(client) => client.status().await.map(drop),
            Err(e) => Err(ClientError::Protocol {
                status: 0,
                detail: format!("{e:#}"),
            }),
        };
        if answer.is_ok() {
            running_ports.extend(port_of(&url));
            let gateway = std::fs::read_to_string(data.join(mycel_gateway::URL_FILE));
            running_ports.extend(gateway.ok().and_then(|g| port_of(g.trim())));
        }
        server_finding = Some(server(&url, answer));
    }
    let ports: Vec<(&'static str, SocketAddr)> =
        [("--listen", args.listen), ("--gateway", args.gateway)]
            .into_iter()
            .filter(|(_, addr)| !running_ports.contains(&addr.port()))
            .collect();
    let mut findings = node_checks(&args.runtime.uv, &data, &ports).await;
    findings.push(isolation(mycel_agent::isolation::probe().await.isolation));
    let probe = tempfile::tempdir()?;
    let confined = mycel_agent::sandbox::Sandbox::probe(
        mycel_agent::sandbox::Mode::Auto,
        "doctor",
        vec![probe.path().to_path_buf()],
    )
    .await?;
    findings.push(sandbox(confined.confinement()));
    findings.extend(server_finding);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&findings));
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} problem{} found",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn port_of(url: &str) -> Option<u16> {
    reqwest::Url::parse(url).ok()?.port_or_known_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_missing_uv_says_how_to_get_it() {
        let f = uv(
            Path::new("uv"),
            Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        );
        assert_eq!(f.level, Level::Fail);
        assert!(f.found.contains("uv not found"), "{}", f.found);
        assert!(f.fix.unwrap().contains("pip install uv"));
        assert_eq!(
            uv(Path::new("uv"), Ok("uv 0.9.5\n".into())).found,
            "uv 0.9.5"
        );
    }

    #[test]
    fn disk_thresholds() {
        let data = Path::new("/data");
        assert_eq!(disk(data, Ok(DISK_FAIL_BYTES - 1)).level, Level::Fail);
        assert_eq!(disk(data, Ok(DISK_FAIL_BYTES)).level, Level::Warn);
        assert_eq!(disk(data, Ok(DISK_WARN_BYTES - 1)).level, Level::Warn);
        assert_eq!(disk(data, Ok(DISK_WARN_BYTES)).level, Level::Ok);
        let broken = disk(data, Err(std::io::Error::other("denied")));
        assert_eq!(broken.level, Level::Fail);
        assert!(broken.found.contains("/data"), "{}", broken.found);
    }

    #[test]
    fn a_port_in_use_names_the_flag_that_moves_it() {
        let addr: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        let f = port(
            "--listen",
            addr,
            Err(std::io::Error::from(std::io::ErrorKind::AddrInUse)),
        );
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.found.contains("127.0.0.1:7700 (--listen) is in use"),
            "{}",
            f.found
        );
        assert!(f.fix.unwrap().contains("pass --listen"));
    }

    #[test]
    fn a_refused_token_points_at_the_admin_token() {
        let refused = ClientError::Api {
            status: 401,
            code: ErrorCode::Unauthorized,
            message: "unknown token".into(),
        };
        let f = server("http://127.0.0.1:7700", Err(refused));
        assert_eq!(f.level, Level::Fail);
        assert!(f.fix.unwrap().contains("admin.token"));
    }

    #[test]
    fn problems_stop_a_start_warnings_do_not() {
        let warn = Finding::problem("isolation", Level::Warn, "w".into(), "f".into());
        refuse(std::slice::from_ref(&warn), "mycel up").unwrap();
        let fail = Finding::problem(
            "uv",
            Level::Fail,
            "uv not found".into(),
            "install it".into(),
        );
        let e = refuse(&[warn, fail], "mycel up").unwrap_err().to_string();
        assert!(
            e.starts_with("mycel up cannot start here (1 problem;"),
            "{e}"
        );
        assert!(
            e.contains("uv not found") && e.contains("fix: install it"),
            "{e}"
        );
    }
}
