//! Zones, their events and occupancy: `/api/v1/cameras/{id}/zones...`, `/api/v1/zones/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::audit::Named;
use super::{ApiError, AppState, raw_body};
use crate::audit::What;
use crate::auth::{Principal, Role};
use crate::config::model::ZoneConfig;
use crate::registry::{ConfigKind, Registry, RegistryError, StoredZone, requests};
use crate::store::StoreError;
use crate::zones::queries::{self, EventFilter, OccupancyRow, ZoneEventRow};

const VIEW: &[Role] = &[Role::Viewer, Role::Operator];
const ADMIN: &[Role] = &[];

fn parse_zone(value: serde_json::Value, name: Option<&str>) -> Result<ZoneConfig, ApiError> {
    requests::zone(value, name).map_err(|p| ApiError::new(StatusCode::BAD_REQUEST, p.to_string()))
}

fn json_value(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, ApiError> {
    let body = raw_body(body, super::MAX_BODY)?;
    requests::object(&body).map_err(|p| ApiError::new(StatusCode::BAD_REQUEST, p.to_string()))
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
) -> Result<Json<Vec<StoredZone>>, ApiError> {
    who.require(VIEW)?;
    let zones = state.registry.zones().await?;
    Ok(Json(
        zones
            .into_iter()
            .filter(|z| z.settings.camera == camera)
            .collect(),
    ))
}

/// `POST /api/v1/cameras/{id}/zones`: a zone with `heldar.toml`'s keys; the camera comes from
/// the path.
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<StoredZone>>, ApiError> {
    who.require(ADMIN)?;
    let mut value = json_value(body)?;
    match value.get("camera") {
        None => value["camera"] = camera.clone().into(),
        Some(c) if c == &serde_json::Value::String(camera.clone()) => {}
        Some(c) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("camera: {c} is not {camera:?} of the path"),
            ));
        }
    }
    put_named(&state.registry, parse_zone(value, None)?).await
}

/// Puts a zone, naming in the audit row whether it was added or which fields changed.
async fn put_named(
    registry: &Registry,
    zone: ZoneConfig,
) -> Result<Named<Json<StoredZone>>, ApiError> {
    let name = zone.name.clone();
    let (stored, before, after) = registry
        .with_views(ConfigKind::Zone, &name, registry.put_zone(zone))
        .await?;
    Ok(Named(
        What::change("zone", &name, before.as_ref(), after.as_ref()),
        Json(stored),
    ))
}

/// `PATCH /api/v1/zones/{id}`: the given keys replace the zone's.
pub(super) async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<StoredZone>>, ApiError> {
    who.require(ADMIN)?;
    let changes = json_value(body)?;
    let Some(changes) = changes.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object",
        ));
    };
    if changes
        .get("name")
        .is_some_and(|n| n != &serde_json::Value::String(id.clone()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name: a zone cannot be renamed; delete it and add another",
        ));
    }
    let zone = state
        .registry
        .zones()
        .await?
        .into_iter()
        .find(|z| z.settings.name == id)
        .ok_or_else(|| RegistryError::NotFound(format!("zone {id:?}")))?;
    let mut value = serde_json::to_value(&zone.settings)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    for (k, v) in changes {
        value[k] = v.clone();
    }
    put_named(&state.registry, parse_zone(value, Some(&id))?).await
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(ADMIN)?;
    state.registry.delete_zone(&id).await?;
    Ok(Named(
        What::removed("zone", &id),
        Json(serde_json::json!({ "removed": id })),
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct EventQuery {
    zone: Option<String>,
    r#type: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<u32>,
}

pub(super) async fn events(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<ZoneEventRow>>, ApiError> {
    who.require(VIEW)?;
    let filter = EventFilter {
        zone: q.zone,
        r#type: q.r#type,
        from_ms: q.from.map(|t| t.timestamp_millis()),
        to_ms: q.to.map(|t| t.timestamp_millis()),
        limit: q.limit.unwrap_or(200).clamp(1, 5000),
    };
    let rows = state
        .store
        .read(move |c| Ok::<_, StoreError>(queries::events(c, &camera, &filter)?))
        .await?;
    Ok(Json(rows))
}

pub(super) async fn occupancy(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
) -> Result<Json<Vec<OccupancyRow>>, ApiError> {
    who.require(VIEW)?;
    let rows = state
        .store
        .read(move |c| Ok::<_, StoreError>(queries::occupancy(c, Some(&camera))?))
        .await?;
    Ok(Json(rows))
}
