//! What to do about a failed command, where the error says which mistake it was: the
//! lines printed after `error:`. Mistakes a server can name (a model that is not
//! deployed, a class that does not exist) carry their fix in the server's own message,
//! for every client; these are the ones only the CLI can see.

use mycel_client::ClientError;
use mycel_core::ErrorCode;

/// The error and its causes on one line, each cause once: a cause whose text its
/// parent already quotes is not repeated.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The fix for `error`, if it is a mistake this knows.
pub fn for_error(error: &anyhow::Error) -> Option<&'static str> {
    if describe(error).contains("invalid peer certificate") {
        return Some(
            "the server's certificate is not from a CA this client trusts; pass --ca FILE (or MYCEL_CA) with the fleet's CA, DATA/tls/ca.pem on the control plane's machine",
        );
    }
    let client = error
        .chain()
        .find_map(|e| e.downcast_ref::<ClientError>())?;
    match client {
        ClientError::Transport { .. } => Some(
            "is the server running? `mycel up` runs one on this machine (control plane, gateway and a node); for a server elsewhere pass --server URL or set MYCEL_SERVER",
        ),
        ClientError::Api { code, .. } if *code == ErrorCode::Unauthorized => Some(
            "the admin token is in admin.token in the control plane's data directory; on its machine `--data DIR` (or MYCEL_DATA) finds it, elsewhere pass it with --token or MYCEL_TOKEN",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: ErrorCode) -> anyhow::Error {
        anyhow::Error::new(ClientError::Api {
            status: code.http_status(),
            code,
            message: "unknown token".into(),
        })
        .context("listing components")
    }

    #[test]
    fn each_known_mistake_gets_its_fix_and_others_none() {
        assert!(for_error(&api(ErrorCode::Unauthorized))
            .is_some_and(|h| h.contains("admin.token") && h.contains("MYCEL_TOKEN")));
        assert_eq!(for_error(&api(ErrorCode::NotFound)), None);
        assert_eq!(for_error(&anyhow::anyhow!("something else")), None);
        let tls = anyhow::anyhow!("invalid peer certificate: UnknownIssuer");
        assert!(for_error(&tls).is_some_and(|h| h.contains("--ca")));
    }

    #[test]
    fn a_cause_its_parent_quotes_is_said_once() {
        let root = std::io::Error::other("connection refused");
        let error = anyhow::Error::new(root)
            .context("sending request: connection refused")
            .context("cannot reach the server");
        assert_eq!(
            describe(&error),
            "cannot reach the server: sending request: connection refused"
        );
    }
}
