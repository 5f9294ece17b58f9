//! The one gate every API route passes: its rule (policy.rs) decides who may call it,
//! before any handler runs, and every state change is written to the audit log after.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use mycel_core::access::{AuditEntry, Grant};
use mycel_core::ErrorCode;

use super::{ApiError, Principal};
use crate::policy::{self, Need};
use crate::AppState;

pub(super) async fn guard(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let from = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let Some(need) = policy::need(method.as_str(), &route) else {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!("{method} {route} has no access rule, so no one may call it"),
        )
        .into_response();
    };
    let mut who = None;
    if need != Need::Public {
        let principal = match admit(&state, request.headers(), need, &route, &path).await {
            Ok(admitted) => admitted,
            Err((refusal, caller)) => {
                let response = refusal.into_response();
                // A refused change is worth knowing about too: who tried.
                if method != Method::GET {
                    let who = caller.unwrap_or_else(|| "(no valid token)".into());
                    audit(
                        &state,
                        who,
                        &method,
                        &path,
                        response.status().as_u16(),
                        from,
                    )
                    .await;
                }
                return response;
            }
        };
        let (principal, grant) = principal;
        if let (Principal::Operator(name), Some(grant)) = (&principal, grant) {
            who = Some(name.clone());
            request.extensions_mut().insert(grant);
        }
        request.extensions_mut().insert(principal);
    } else if route == "/v1/nodes/{name}/join" {
        who = segment(&route, &path, "{name}").map(|node| format!("node {node} (joining)"));
    }
    let response = next.run(request).await;
    // Operators' changes and joins; a node's own heartbeats and reports are its work,
    // not decisions, and would drown them.
    if method != Method::GET {
        if let Some(who) = who {
            audit(
                &state,
                who,
                &method,
                &path,
                response.status().as_u16(),
                from,
            )
            .await;
        }
    }
    response
}

async fn audit(
    state: &AppState,
    who: String,
    method: &Method,
    path: &str,
    status: u16,
    from: Option<String>,
) {
    let entry = AuditEntry {
        seq: 0,
        at_ms: state.fleet.now_ms(),
        who,
        what: format!("{method} {path}"),
        status,
        from,
    };
    let written = crate::registry::blocking(&state.store, move |s| s.append_audit(entry));
    if let Err(e) = written.await {
        tracing::error!(error = %e, "cannot write the audit log");
    }
}

/// Authenticates the caller and applies the route's rule; the principal, with the
/// grant of an operator's token. A refusal says who was refused, where known.
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    need: Need,
    route: &str,
    path: &str,
) -> Result<(Principal, Option<Grant>), (ApiError, Option<String>)> {
    let principal = super::authenticate(state, headers)
        .await
        .map_err(|e| (e, None))?;
    let caller = match &principal {
        Principal::Node(node) => format!("node {node}"),
        Principal::Operator(name) => name.clone(),
    };
    admit_principal(state, principal, need, route, path)
        .await
        .map_err(|e| (e, Some(caller)))
}

async fn admit_principal(
    state: &AppState,
    principal: Principal,
    need: Need,
    route: &str,
    path: &str,
) -> Result<(Principal, Option<Grant>), ApiError> {
    let name = match &principal {
        Principal::Node(node) => {
            return match need {
                Need::NodeOr(_) => Ok((principal, None)),
                _ => Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "node {node:?}'s credential may only register and heartbeat the node, read its own assignments and tasks, fetch what is assigned to it and post its own results; this needs an operator's token"
                    ),
                )),
            };
        }
        Principal::Operator(name) => name.clone(),
    };
    let owned = name.clone();
    let grant = crate::registry::blocking(&state.store, move |s| s.grant(&owned)).await?;
    let grant = match grant {
        Some(grant) => grant,
        // The admin token has no record: it is the data directory's, and all-powerful.
        None if name == crate::auth::ADMIN => Grant::admin(&name),
        None => {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!("token {name:?} has no grant; it may have been revoked"),
            ))
        }
    };
    let component = policy::names_component(route)
        .then(|| segment(route, path, "{name}"))
        .flatten();
    policy::decide(&grant, need, component, state.fleet.now_ms())
        .map_err(|denied| ApiError::new(ErrorCode::Forbidden, denied.0))?;
    Ok((principal, Some(grant)))
}

/// The segment of `path` where `route` has `placeholder`. Raw, not percent-decoded: a
/// name written encoded matches no scope, so it is refused rather than let through.
fn segment<'p>(route: &str, path: &'p str, placeholder: &str) -> Option<&'p str> {
    let at = route.split('/').position(|s| s == placeholder)?;
    path.split('/').nth(at)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_placeholder_is_found_in_the_path() {
        let route = "/v1/deployments/{name}/rollback";
        assert_eq!(
            super::segment(route, "/v1/deployments/echo/rollback", "{name}"),
            Some("echo")
        );
        assert_eq!(super::segment(route, "/v1/deployments", "{name}"), None);
        assert_eq!(super::segment(route, "/v1/x", "{id}"), None);
    }
}
