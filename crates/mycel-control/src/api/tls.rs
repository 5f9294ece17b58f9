//! `/v1/tls`: the fleet's CA and the certificates it issues; and replica logs, read
//! from agents with the fleet's certificate.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mycel_core::api::{CertificateRequest, IssuedCertificate};
use mycel_core::ErrorCode;
use mycel_tls::Kind;
use serde::Deserialize;

use super::{ApiError, ApiJson, Caller, Principal};
use crate::AppState;

/// `GET /v1/tls/ca`: the CA certificate, PEM. Public: it is what a client checks the
/// server against, and a joining node checks it against its join token.
pub(super) async fn ca(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem().to_owned(),
    )
        .into_response()
}

fn issue(
    state: &AppState,
    kind: Kind,
    subject: &str,
    request: &CertificateRequest,
) -> Result<Json<IssuedCertificate>, ApiError> {
    let certificate = state
        .ca
        .sign_request(kind, subject, &request.csr)
        .map_err(|e| match e {
            mycel_tls::TlsError::Request(_) => {
                ApiError::new(ErrorCode::InvalidRequest, e.to_string())
            }
            other => ApiError::internal(other),
        })?;
    Ok(Json(IssuedCertificate {
        certificate,
        ca: state.ca.cert_pem().to_owned(),
    }))
}

/// `POST /v1/nodes/{name}/certificate`: a certificate for the node's data plane, which
/// serves with it and answers only the fleet's gateways.
pub(super) async fn node_certificate(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<CertificateRequest>,
) -> Result<Json<IssuedCertificate>, ApiError> {
    principal.may_act_for(&name)?;
    mycel_core::manifest::validate_name(&name)
        .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, format!("node {m}")))?;
    let issued = issue(&state, Kind::Node, &name, &request)?;
    tracing::info!(node = %name, "node certificate issued");
    Ok(issued)
}

/// `POST /v1/tls/fleet-certificate`: a certificate for a gateway, which agents answer.
pub(super) async fn fleet_certificate(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    ApiJson(request): ApiJson<CertificateRequest>,
) -> Result<Json<IssuedCertificate>, ApiError> {
    let issued = issue(&state, Kind::Fleet, "mycel gateway", &request)?;
    tracing::info!(by = %caller, "fleet certificate issued");
    Ok(issued)
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// `GET /v1/replicas/{replica}/logs?offset=N`: the replica's log from its agent, with
/// `x-log-offset` saying where to continue. Through here because an agent answers
/// only the fleet.
pub(super) async fn replica_logs(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(replica): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let status = state.fleet.status().await?;
    let Some(on) = status
        .replicas
        .iter()
        .find(|r| r.assignment.replica == replica)
        .map(|r| r.assignment.node.clone())
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no replica {replica:?}; see `mycel status`"),
        ));
    };
    let Some(agent) = status
        .nodes
        .iter()
        .find(|n| n.node.spec.name == on)
        .map(|n| n.node.spec.agent_url.clone())
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("replica {replica:?} is on node {on:?}, which is not registered"),
        ));
    };
    let url = format!(
        "{}/v1/replicas/{replica}/logs?offset={}",
        agent.trim_end_matches('/'),
        query.offset
    );
    let unavailable = |e: reqwest::Error| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("node {on:?} did not answer for the logs of replica {replica:?}: {e}"),
        )
    };
    let response = state.agents.get(&url).send().await.map_err(unavailable)?;
    let code = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let offset = response.headers().get("x-log-offset").cloned();
    let body = response.bytes().await.map_err(unavailable)?;
    let mut answer = (code, body).into_response();
    if let Some(offset) = offset {
        answer.headers_mut().insert("x-log-offset", offset);
    }
    Ok(answer)
}
