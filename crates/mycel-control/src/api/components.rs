//! `/v1/components`: list components and their versions, push a version, show one,
//! rebuild one against its dependencies' newest versions, and find the deployments that
//! import a component.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mycel_core::api::{
    ComponentSummary, CreateVersionRequest, CreateVersionResponse, Dependents, RebuildResponse,
    VersionSummary,
};
use mycel_core::Version;

use super::{ApiError, ApiJson, Caller, Principal};
use crate::registry::{self, blocking, RegistryError};
use crate::AppState;

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<ComponentSummary>>, ApiError> {
    let components = blocking(&state.store, |s| s.components()).await?;
    Ok(Json(
        components
            .into_iter()
            .map(|(name, versions, latest)| ComponentSummary {
                name,
                versions,
                latest: VersionSummary::from(&latest),
            })
            .collect(),
    ))
}

pub(super) async fn versions(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionSummary>>, ApiError> {
    let owned = name.clone();
    let versions = blocking(&state.store, move |s| s.versions(&owned)).await?;
    if versions.is_empty() {
        return Err(RegistryError::NotFound(format!("component {name:?}")).into());
    }
    Ok(Json(versions.iter().map(VersionSummary::from).collect()))
}

pub(super) async fn create_version(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<CreateVersionRequest>,
) -> Result<(StatusCode, Json<CreateVersionResponse>), ApiError> {
    let (version, created) = registry::create_version(
        &state.store,
        &state.blobs,
        &name,
        request.files,
        &caller,
        now_ms(),
    )
    .await?;
    if created {
        tracing::info!(version = %version.label(), id = %version.id.short(), by = %caller, "version created");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(CreateVersionResponse { created, version })))
}

pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path((name, reference)): Path<(String, String)>,
) -> Result<Json<Version>, ApiError> {
    let version = registry::find_version(&state.store, &name, &reference).await?;
    super::access::check_version(&state, &principal, version.id, &version.label()).await?;
    Ok(Json(version))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `POST /v1/components/{name}/versions/{reference}/rebuild`.
pub(super) async fn rebuild(
    State(state): State<Arc<AppState>>,
    Caller(caller): Caller,
    Path((name, reference)): Path<(String, String)>,
) -> Result<(StatusCode, Json<RebuildResponse>), ApiError> {
    let response = registry::rebuild_version(
        &state.store,
        &state.blobs,
        &name,
        &reference,
        &caller,
        now_ms(),
    )
    .await?;
    let status = if response.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(response)))
}

/// `GET /v1/components/{name}/dependents`.
pub(super) async fn dependents(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Dependents>, ApiError> {
    let owned = name.clone();
    if blocking(&state.store, move |s| s.newest_version(&owned))
        .await?
        .is_none()
    {
        return Err(RegistryError::NotFound(format!("component {name:?}")).into());
    }
    let deployments = registry::dependents(&state.store, &name).await?;
    Ok(Json(Dependents {
        component: name,
        deployments,
    }))
}
