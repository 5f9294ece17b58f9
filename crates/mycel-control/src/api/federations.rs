//! `/v1/federations` and the agents' side of them: start, watch and stop federations;
//! agents take their tasks by long-poll and post each task's result.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use mycel_core::federation::{
    Federation, FederationRequest, FederationState, FederationWatch, NodeTasks, TaskResult,
};
use mycel_core::manifest::validate_name;
use mycel_core::ErrorCode;
use serde::Deserialize;

use super::nodes::{WatchQuery, MAX_WAIT};
use super::{ApiError, ApiJson, Caller, Principal, Scope};
use crate::federation::Completion;
use crate::fleet::now_ms;
use crate::registry::{self, blocking};
use crate::AppState;

/// The most rounds one federation may run.
const MAX_ROUNDS: u32 = 10_000;

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Scope(grant): Scope,
    ApiJson(request): ApiJson<FederationRequest>,
) -> Result<Json<Federation>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    validate_name(&request.component).map_err(|m| invalid(format!("component {m}")))?;
    grant
        .check_component(&request.component)
        .map_err(|denied| ApiError::new(ErrorCode::Forbidden, denied.0))?;
    validate_name(&request.dataset).map_err(|m| invalid(format!("dataset {m}")))?;
    if !(1..=MAX_ROUNDS).contains(&request.rounds) {
        return Err(invalid(format!(
            "{} rounds is out of range; expected 1 to {MAX_ROUNDS}",
            request.rounds
        )));
    }
    if !(request.fraction > 0.0 && request.fraction <= 1.0) {
        return Err(invalid(format!(
            "fraction {} is out of range; expected a share of the available nodes above 0 and at most 1",
            request.fraction
        )));
    }
    if request.local_epochs == 0 {
        return Err(invalid(
            "local epochs must be at least 1 (it is config[\"local_epochs\"] for train)".into(),
        ));
    }
    if request.round_timeout_s == Some(0) {
        return Err(invalid(
            "a round timeout of 0 s leaves no time to train; expected at least 1 second".into(),
        ));
    }
    crate::federation::aggregator_config(&request).map_err(|e| invalid(e.to_string()))?;

    let version =
        registry::find_version(&state.store, &request.component, &request.version).await?;
    let manifest = registry::manifest_of(&state.blobs, &version).await?;
    let weights_path = weights_file(&manifest, request.weights.as_deref(), &version.label())
        .map_err(|m| ApiError::new(ErrorCode::InvalidManifest, m))?;
    let global = version
        .files
        .iter()
        .find(|f| f.path.as_str() == weights_path)
        .map(|f| f.hash)
        .ok_or_else(|| invalid(format!("{} has no file {weights_path}", version.label())))?;
    let global_path = state.blobs.path(&global);
    tokio::task::spawn_blocking(move || mycel_federate::GlobalModel::open(&global_path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidManifest,
                format!(
                    "{weights_path} of {} cannot be trained: {e}",
                    version.label()
                ),
            )
        })?;

    let available = state
        .federations
        .candidates(&request.dataset, &request.nodes)
        .await?;
    let min_clients = request.min_clients.unwrap_or(1);
    if min_clients == 0 {
        return Err(invalid("min-clients must be at least 1".into()));
    }
    if available.len() < min_clients as usize {
        let selector = if request.nodes.is_empty() {
            String::new()
        } else {
            format!(" matching {:?}", request.nodes.to_string())
        };
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{} live node(s) hold dataset {:?}{selector}, fewer than min-clients {min_clients}; start agents with --dataset {}=PATH",
                available.len(),
                request.dataset,
                request.dataset
            ),
        ));
    }
    if let Some(name) = &request.deploy {
        let owned = name.clone();
        let deployment = blocking(&state.store, move |s| {
            Ok(s.deployments()?.into_iter().find(|d| d.name == owned))
        })
        .await?;
        match deployment {
            None => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "deployment {name:?} not found; deploy {} first or leave out --deploy",
                        request.component
                    ),
                ))
            }
            Some(d) if d.component != request.component => {
                return Err(invalid(format!(
                    "deployment {name:?} serves component {:?}, not {:?}",
                    d.component, request.component
                )))
            }
            Some(_) => {}
        }
    }

    let federation = Federation {
        id: 0,
        version: version.id,
        seq: version.seq,
        weights_path,
        min_clients,
        by: caller,
        started_ms: now_ms(),
        ended_ms: None,
        state: FederationState::Running,
        global,
        rounds: Vec::new(),
        published: None,
        request,
    };
    Ok(Json(state.federations.start(federation).await?))
}

/// The weights file a federation trains: the one asked for, or the component's only
/// safetensors weights file.
fn weights_file(
    manifest: &mycel_core::Manifest,
    asked: Option<&str>,
    label: &str,
) -> Result<String, String> {
    let listed: Vec<&str> = manifest.weights.iter().map(|w| w.as_str()).collect();
    if let Some(asked) = asked {
        return if listed.contains(&asked) {
            Ok(asked.to_owned())
        } else {
            Err(format!(
                "{label} lists no weights file {asked:?}; its weights are {listed:?}"
            ))
        };
    }
    let safetensors: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|w| w.ends_with(".safetensors"))
        .collect();
    match safetensors.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(format!(
            "{label} lists no safetensors weights file to train; add one to mycel.toml, e.g. weights = [\"weights/model.safetensors\"]"
        )),
        many => Err(format!(
            "{label} lists {} safetensors weights files ({}); say which one to train with --weights",
            many.len(),
            many.join(", ")
        )),
    }
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<Federation>>, ApiError> {
    Ok(Json(blocking(&state.store, |s| s.federations()).await?))
}

pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(id): Path<u64>,
    Query(query): Query<WatchQuery>,
) -> Result<Json<FederationWatch>, ApiError> {
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    match state
        .federations
        .watch(id, query.after, wait, &state.stop)
        .await?
    {
        Some((generation, federation)) => Ok(Json(FederationWatch {
            generation,
            federation,
        })),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("federation {id} not found"),
        )),
    }
}

pub(super) async fn stop(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Scope(grant): Scope,
    Path(id): Path<u64>,
) -> Result<Json<Federation>, ApiError> {
    let federation = blocking(&state.store, move |s| s.federation(id))
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("federation {id} not found")))?;
    grant
        .check_component(&federation.request.component)
        .map_err(|denied| ApiError::new(ErrorCode::Forbidden, denied.0))?;
    if federation.state.is_done() || !state.federations.cancel(id) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("federation {id} is not running ({})", federation.state),
        ));
    }
    tracing::info!(federation = id, by = %caller, "federation stop requested");
    Ok(Json(federation))
}

#[derive(Deserialize)]
pub(super) struct TasksQuery {
    #[serde(default = "default_wait")]
    wait_ms: u64,
}

fn default_wait() -> u64 {
    30_000
}

pub(super) async fn tasks(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(node): Path<String>,
    Query(query): Query<TasksQuery>,
) -> Result<Json<NodeTasks>, ApiError> {
    principal.may_act_for(&node)?;
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    Ok(Json(
        state.federations.tasks_for(&node, wait, &state.stop).await,
    ))
}

pub(super) async fn result(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(task): Path<String>,
    ApiJson(result): ApiJson<TaskResult>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.federations.complete(&task, principal.node(), result) {
        Completion::Accepted => Ok(Json(serde_json::json!({}))),
        Completion::NotAwaited => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("task {task:?} is not awaited: its round went on without it, or there is no such task"),
        )),
        Completion::NotYours { owner } => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("task {task:?} was given to node {owner:?}; only its result counts"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(weights: &[&str]) -> mycel_core::Manifest {
        let list: Vec<String> = weights.iter().map(|w| format!("{w:?}")).collect();
        let text = format!(
            "[component]\nname = \"m\"\nentrypoint = \"model:M\"\n[weights]\nfiles = [{}]\n",
            list.join(", ")
        );
        mycel_core::Manifest::parse(&text).unwrap()
    }

    #[test]
    fn the_trained_weights_file_is_the_only_safetensors_one_or_the_one_named() {
        let one = manifest(&["w/model.safetensors", "w/vocab.txt"]);
        assert_eq!(
            weights_file(&one, None, "m@1").unwrap(),
            "w/model.safetensors"
        );
        let none = manifest(&["w/model.pt"]);
        assert!(weights_file(&none, None, "m@1")
            .unwrap_err()
            .contains("no safetensors weights file"));
        let two = manifest(&["a.safetensors", "b.safetensors"]);
        assert!(weights_file(&two, None, "m@1")
            .unwrap_err()
            .contains("--weights"));
        assert_eq!(
            weights_file(&two, Some("b.safetensors"), "m@1").unwrap(),
            "b.safetensors"
        );
        assert!(weights_file(&two, Some("c.safetensors"), "m@1")
            .unwrap_err()
            .contains("no weights file \"c.safetensors\""));
    }
}
