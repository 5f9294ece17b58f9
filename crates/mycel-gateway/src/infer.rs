//! What the REST and gRPC front ends share: the model a request names, whether it is
//! ready, and sending a request's inputs to a ready replica within its deadline, on to
//! another replica where that is safe.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use mycel_core::api::{ErrorBody, RouteToken};
use mycel_core::frame::{self, Frame, Timing};
use mycel_core::oip::InferRequest;
use mycel_core::tensor::Tensor;
use mycel_core::ErrorCode;

use crate::metrics::{Metrics, RequestLabels};
use crate::routes::{self, Model};
use crate::stats::{Outcome, Stats};

const FRAME_CONTENT_TYPE: &str = "application/x-mycel-frame";

/// What a 503 asks the client to wait before it tries again, in seconds: long enough
/// for a queue to drain a little or a replica to become ready, short enough to matter.
pub(crate) const RETRY_AFTER_S: u64 = 1;

/// The state every handler shares.
pub(crate) struct Gateway {
    pub(crate) router: Arc<routes::Router>,
    agents: reqwest::Client,
    pub(crate) max_request_bytes: usize,
    request_timeout: Duration,
    require_token: bool,
    pub(crate) metrics: Metrics,
    pub(crate) stats: Stats,
}

impl Gateway {
    /// A gateway routing with `router`; agents are dialled with `agents_tls` where the
    /// fleet speaks TLS.
    pub(crate) fn new(
        router: Arc<routes::Router>,
        max_request_bytes: usize,
        request_timeout: Duration,
        require_token: bool,
        agents_tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        let mut agents = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // Agents close connections idle for 30 s: let go of them first.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true);
        if let Some(tls) = agents_tls {
            agents = agents.use_preconfigured_tls(tls);
        }
        Ok(Self {
            router,
            agents: agents.build()?,
            max_request_bytes,
            request_timeout,
            require_token,
            metrics: Metrics::new(),
            stats: Stats::default(),
        })
    }

    /// Whether the routing table has arrived: before that every model looks absent.
    pub(crate) fn ready(&self) -> bool {
        self.router.table().generation > 0
    }
}

/// The caller's token, where the gateway requires one: `Ok(None)` where it does not,
/// else the token's entry in the routing table, or why the caller is refused.
pub(crate) fn admit(
    gw: &Gateway,
    authorization: Option<&str>,
) -> Result<Option<RouteToken>, Failure> {
    if !gw.require_token {
        return Ok(None);
    }
    let unauthorized = |message: String| Failure(StatusCode::UNAUTHORIZED, message);
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized(
                "this gateway takes requests with a token only: send \"Authorization: Bearer \
                 <token>\" (an admin makes one with `mycel token create --role viewer`)"
                    .into(),
            )
        })?;
    let hash = blake3::hash(token.as_bytes()).to_hex();
    let table = gw.router.table();
    let found = table
        .tokens
        .get(hash.as_str())
        .cloned()
        .ok_or_else(|| unauthorized("unknown token (or revoked)".into()))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if found.expires_ms.is_some_and(|at| now_ms >= at) {
        return Err(unauthorized(format!("token {:?} has expired", found.name)));
    }
    Ok(Some(found))
}

/// Refuses a token scoped to other components than the model's.
pub(crate) fn may_call(token: Option<&RouteToken>, model: &Model) -> Result<(), Failure> {
    match token {
        Some(token)
            if !token.components.is_empty()
                && !token.components.contains(&model.info.component) =>
        {
            Err(Failure(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} may call only models of {}; model {:?} runs {:?}",
                    token.name,
                    token.components.join(", "),
                    model.info.name,
                    model.info.component
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// An error answer, as an HTTP status (the gRPC front end maps it to a gRPC code).
#[derive(Debug)]
pub(crate) struct Failure(pub StatusCode, pub String);

/// The model named in the path, and the version named (if any) as a sequence number.
/// During a rollout a model serves two versions; either may be asked for.
pub(crate) fn find(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<(Arc<Model>, Option<u64>), Failure> {
    let table = gw.router.table();
    let model = table.models.get(name).cloned().ok_or_else(|| {
        let mut known: Vec<&str> = table.models.keys().map(String::as_str).collect();
        known.sort_unstable();
        Failure(StatusCode::NOT_FOUND, not_deployed(name, &known))
    })?;
    let Some(version) = version else {
        return Ok((model, None));
    };
    let seq = version
        .parse::<u64>()
        .ok()
        .filter(|&seq| seq == model.info.seq || model.replicas.iter().any(|r| r.route.seq == seq));
    match seq {
        Some(seq) => Ok((model, Some(seq))),
        None => {
            let mut served: Vec<u64> = model.replicas.iter().map(|r| r.route.seq).collect();
            served.push(model.info.seq);
            served.sort_unstable();
            served.dedup();
            let served: Vec<String> = served.iter().map(u64::to_string).collect();
            Err(Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "model {name:?} has no version {version:?}; it serves version {}",
                    served.join(" and ")
                ),
            ))
        }
    }
}

/// Why `name` is not served, and the fix: which deployed model the caller may have
/// meant, and how to deploy it.
fn not_deployed(name: &str, known: &[&str]) -> String {
    let deploy = format!(
        "`mycel deploy {name} --copies LOCATION=1` serves a pushed component (`mycel status` lists deployments)"
    );
    if known.is_empty() {
        return format!("no model {name:?} is deployed, nor any other yet; {deploy}");
    }
    let meant = mycel_core::manifest::closest_name(name, known)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    format!(
        "no model {name:?} is deployed{meant}; deployed models: {}; {deploy}",
        known.join(", ")
    )
}

/// Whether `model` (at version `seq`, if given) has a ready replica.
pub(crate) fn ready(model: &Model, seq: Option<u64>) -> bool {
    model
        .replicas
        .iter()
        .any(|r| seq.is_none_or(|seq| r.route.seq == seq))
}

/// Runs `request` on a replica of `model` (of version `seq`, if given) within the
/// request's deadline: the gateway's limit, the model's, or less if the client asks
/// (`limit` is the client's own, e.g. gRPC's `grpc-timeout`). Returns the outputs and
/// the version that computed them. The request counts in the model's statistics.
pub(crate) async fn infer(
    gw: &Gateway,
    model: &Model,
    seq: Option<u64>,
    request: &InferRequest,
    client_limit: Option<Duration>,
    labels: &mut RequestLabels,
) -> Result<(Vec<Tensor>, u64), Failure> {
    let started = std::time::Instant::now();
    let answer = run(gw, model, seq, request, client_limit, labels).await;
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    match answer {
        Ok((outputs, answered_by, timing)) => {
            let rows = request
                .inputs
                .first()
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(1);
            let outcome = Outcome::Success { rows, timing };
            gw.stats.record(&model.info.name, answered_by, ns, outcome);
            Ok((outputs, answered_by))
        }
        Err(failure) => {
            let version = seq.unwrap_or(model.info.seq);
            gw.stats
                .record(&model.info.name, version, ns, Outcome::Fail);
            Err(failure)
        }
    }
}

async fn run(
    gw: &Gateway,
    model: &Model,
    seq: Option<u64>,
    request: &InferRequest,
    client_limit: Option<Duration>,
    labels: &mut RequestLabels,
) -> Result<(Vec<Tensor>, u64, Option<Timing>), Failure> {
    let mut model_limit = model.info.timeout_ms.map_or(gw.request_timeout, |ms| {
        gw.request_timeout.min(Duration::from_millis(ms.into()))
    });
    if let Some(limit) = client_limit {
        model_limit = model_limit.min(limit);
    }
    let limit = crate::deadline::of_request(&request.parameters, model_limit)
        .map_err(|message| Failure(StatusCode::BAD_REQUEST, message))?;
    let frame = frame::encode_to_vec(&Frame::new(0, "predict", request.inputs.clone()))
        .map(Bytes::from)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?;
    let deadline = tokio::time::Instant::now() + limit;
    let called = tokio::time::timeout_at(deadline, call(gw, model, seq, frame, labels, deadline));
    match called.await {
        Ok(answer) => answer,
        Err(_) => Err(Failure(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "model {:?} gave no answer within {} ms (the request's deadline)",
                model.info.name,
                limit.as_millis()
            ),
        )),
    }
}

/// How one attempt at a replica ended.
enum Attempt {
    Done(Vec<Tensor>, Option<Timing>),
    /// The replica took no part (unreachable, not ready, draining): nothing ran, so any
    /// other replica may take the request.
    Refused(String),
    /// The replica's queue is full: nothing ran; another replica may have room.
    Busy(String),
    /// The replica broke off mid-call (its worker died): the request may have run, so it
    /// is retried once.
    Broken(String),
    Fail(Failure),
}

/// Sends the frame to a replica of the model (of version `seq`, if given); on to the
/// next replica while replicas refuse it, and once more after one breaks off mid-call.
/// Returns the outputs, the version that computed them, and how they were computed.
async fn call(
    gw: &Gateway,
    model: &Model,
    seq: Option<u64>,
    frame: Bytes,
    labels: &mut RequestLabels,
    deadline: tokio::time::Instant,
) -> Result<(Vec<Tensor>, u64, Option<Timing>), Failure> {
    let mut tried: Vec<String> = Vec::new();
    let mut broken_once = false;
    let mut last: Option<String> = None;
    let mut all_busy = true;
    while let Some(in_flight) = gw.router.pick(model, seq, &tried) {
        let replica = &in_flight.replica().route;
        labels.location.clone_from(&replica.location);
        let elsewhere = model.has_other(seq, &tried, &replica.replica);
        let reason = match attempt(gw, replica, frame.clone(), deadline, elsewhere).await {
            Attempt::Done(outputs, timing) => return Ok((outputs, replica.seq, timing)),
            Attempt::Fail(response) => return Err(response),
            // Expected while replicas drain in a rollout: not worth a warning.
            Attempt::Refused(reason) => {
                tracing::debug!(replica = %replica.replica, %reason, "replica refused; trying another");
                all_busy = false;
                reason
            }
            Attempt::Busy(reason) => reason,
            Attempt::Broken(reason) if !broken_once => {
                broken_once = true;
                all_busy = false;
                tracing::warn!(replica = %replica.replica, %reason, "replica broke off; retrying once elsewhere");
                reason
            }
            Attempt::Broken(reason) => {
                last = Some(format!("{}: {reason}", replica.replica));
                break;
            }
        };
        gw.metrics.retried(labels);
        last = Some(format!("{}: {reason}", replica.replica));
        tried.push(replica.replica.clone());
    }
    let message = match last {
        Some(_) if all_busy => format!(
            "model {:?} is overloaded: all {} of its ready replicas have full queues; \
             retry after {} s",
            model.info.name,
            tried.len(),
            RETRY_AFTER_S
        ),
        Some(last) => format!(
            "no ready replica of model {:?} could serve the request (last: {last})",
            model.info.name
        ),
        None => format!(
            "model {:?} has no ready replica; see `mycel status`",
            model.info.name
        ),
    };
    Err(Failure(StatusCode::SERVICE_UNAVAILABLE, message))
}

async fn attempt(
    gw: &Gateway,
    replica: &mycel_core::api::RouteReplica,
    frame: Bytes,
    deadline: tokio::time::Instant,
    elsewhere: bool,
) -> Attempt {
    let url = format!(
        "{}/v1/replicas/{}/infer",
        replica.agent_url, replica.replica
    );
    let sent = gw
        .agents
        .post(&url)
        .header(axum::http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)
        .header(
            frame::DEADLINE_HEADER,
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis()
                .to_string(),
        )
        .header(frame::ELSEWHERE_HEADER, if elsewhere { "1" } else { "0" })
        .body(frame)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Attempt::Refused(format!("agent unreachable: {e}")),
        Err(e) => return Attempt::Broken(format!("agent answer broke off: {e}")),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Attempt::Broken(format!("agent answer broke off: {e}")),
    };
    if status.is_success() {
        return match frame::decode_from(body) {
            Ok(answer) => {
                let timing = Timing::read(&answer.extra);
                Attempt::Done(answer.tensors, timing)
            }
            Err(e) => Attempt::Fail(Failure(
                StatusCode::BAD_GATEWAY,
                format!("replica {} answered with {e}", replica.replica),
            )),
        };
    }
    refusal(status, &body)
}

/// What an agent's error answer means for the request: another replica may take it
/// (refused, busy, broken off), or it failed.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> Attempt {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => (Some(body.error.code), body.error.message),
        Err(_) => (None, String::from_utf8_lossy(body).into_owned()),
    };
    match status.as_u16() {
        // 404: an agent that no longer knows the replica.
        _ if code == Some(ErrorCode::NotServing) => Attempt::Refused(message),
        _ if code == Some(ErrorCode::Overloaded) => Attempt::Busy(message),
        404 => Attempt::Refused(message),
        503 => Attempt::Broken(message),
        _ => {
            let status =
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Attempt::Fail(Failure(status, message))
        }
    }
}

/// The most a streamed frame may hold: a chunk is a token or a few, so this only
/// guards the gateway against an agent gone wrong.
const MAX_STREAM_FRAME: usize = 256 << 20;

/// A replica's streamed answer to a generate request: its frames, as they come.
pub(crate) struct Stream {
    /// The version generating.
    pub(crate) seq: u64,
    response: reqwest::Response,
    buffer: bytes::BytesMut,
    replica: String,
    /// Keeps the replica counted as busy while the stream lasts.
    _in_flight: routes::InFlight,
}

impl Stream {
    /// The next frame: `chunk`, then `end` or `error`; `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Result<Frame, Failure>> {
        loop {
            match self.take() {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(failure) => return Some(Err(failure)),
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) if self.buffer.is_empty() => return None,
                Ok(None) => return Some(Err(self.broken("its stream ended mid-frame"))),
                Err(e) => return Some(Err(self.broken(&format!("its stream broke off: {e}")))),
            }
        }
    }

    fn broken(&self, why: &str) -> Failure {
        Failure(
            StatusCode::BAD_GATEWAY,
            format!("replica {}: {why}", self.replica),
        )
    }

    /// A whole frame from the front of the buffer, if one is there.
    fn take(&mut self) -> Result<Option<Frame>, Failure> {
        let prefix = self.buffer.get(..frame::PREFIX_LEN);
        let Some(prefix) = prefix.and_then(|p| <&[u8; frame::PREFIX_LEN]>::try_from(p).ok()) else {
            return Ok(None);
        };
        let (header, body) =
            frame::parse_prefix(prefix).map_err(|e| self.broken(&format!("it streamed {e}")))?;
        let len = usize::try_from(u64::from(header).saturating_add(body))
            .unwrap_or(usize::MAX)
            .saturating_add(frame::PREFIX_LEN);
        if len > MAX_STREAM_FRAME {
            return Err(self.broken(&format!("it streamed a frame of {len} bytes")));
        }
        if self.buffer.len() < len {
            return Ok(None);
        }
        let whole = self.buffer.split_to(len).freeze();
        frame::decode_from(whole)
            .map(Some)
            .map_err(|e| self.broken(&format!("it streamed {e}")))
    }
}

/// Starts `request` streaming from a replica of `model` (of version `seq`, if given),
/// on to the next replica while replicas refuse it; the gateway's and the model's
/// limit bound the wait for one to take it. What it streams is the caller's to read.
pub(crate) async fn open_stream(
    gw: &Gateway,
    model: &Model,
    seq: Option<u64>,
    request: &InferRequest,
    labels: &mut RequestLabels,
) -> Result<Stream, Failure> {
    let limit = model.info.timeout_ms.map_or(gw.request_timeout, |ms| {
        gw.request_timeout.min(Duration::from_millis(ms.into()))
    });
    let frame = frame::encode_to_vec(&Frame::new(0, "generate", request.inputs.clone()))
        .map(Bytes::from)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?;
    let opened = tokio::time::timeout(limit, async {
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        while let Some(in_flight) = gw.router.pick(model, seq, &tried) {
            let replica = in_flight.replica().route.clone();
            labels.location.clone_from(&replica.location);
            let url = format!(
                "{}/v1/replicas/{}/generate",
                replica.agent_url, replica.replica
            );
            let sent = gw
                .agents
                .post(&url)
                .header(axum::http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)
                .body(frame.clone())
                .send()
                .await;
            let reason = match sent {
                Ok(response) if response.status().is_success() => {
                    return Ok(Stream {
                        seq: replica.seq,
                        response,
                        buffer: bytes::BytesMut::new(),
                        replica: replica.replica,
                        _in_flight: in_flight,
                    })
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    match refusal(status, &body) {
                        Attempt::Fail(failure) => return Err(failure),
                        Attempt::Refused(why) | Attempt::Busy(why) | Attempt::Broken(why) => why,
                        Attempt::Done(..) => String::new(),
                    }
                }
                Err(e) => format!("agent unreachable: {e}"),
            };
            last = Some(format!("{}: {reason}", replica.replica));
            tried.push(replica.replica);
        }
        Err(Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            match last {
                Some(last) => format!(
                    "no ready replica of model {:?} could take the request (last: {last})",
                    model.info.name
                ),
                None => format!(
                    "model {:?} has no ready replica; see `mycel status`",
                    model.info.name
                ),
            },
        ))
    });
    opened.await.unwrap_or_else(|_| {
        Err(Failure(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no replica of model {:?} took the request within {} ms",
                model.info.name,
                limit.as_millis()
            ),
        ))
    })
}
