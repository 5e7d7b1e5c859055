//! Cameras and their recordings: `/api/v1/cameras...` and `/api/v1/health/cameras`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::audit::Named;
use super::{ApiError, AppState, json_body, raw_body};
use crate::audit::What;
use crate::auth::{Principal, Role};
use crate::config::model::{CameraConfig, StreamProfile};

const VIEW: &[Role] = &[Role::Viewer, Role::Operator];
const OPERATE: &[Role] = &[Role::Operator];
const ADMIN: &[Role] = &[];
use crate::media::clip::ClipReport;
use crate::media::index::{self, Gap, Range, Segment};
use crate::media::{CameraHealth, StreamTest, url};
use crate::registry::{Camera, ConfigKind, RegistryError, Source, requests};
use crate::store::StoreError;

/// A camera as the API shows it: settings without secrets, toggles, and health.
#[derive(Debug, Serialize, Deserialize)]
pub struct CameraView {
    pub id: String,
    pub name: Option<String>,
    pub source: String,
    pub enabled: bool,
    pub record: bool,
    pub detect: bool,
    /// Stream URLs as used (templates expanded), credentials in their query masked.
    pub main_url: Option<String>,
    pub sub_url: Option<String>,
    pub username: Option<String>,
    pub has_password: bool,
    pub segment_seconds: u32,
    pub health: Option<CameraHealth>,
}

impl CameraView {
    fn new(c: &Camera, health: Option<CameraHealth>) -> Self {
        let s = &c.settings;
        CameraView {
            id: s.id.clone(),
            name: s.name.clone(),
            source: match c.source {
                Source::File => "file".into(),
                Source::Runtime => "runtime".into(),
            },
            enabled: c.enabled,
            record: c.record,
            detect: c.detect,
            main_url: shown_url(s, StreamProfile::Main),
            sub_url: shown_url(s, StreamProfile::Sub),
            username: s.username.clone(),
            has_password: c.password().is_some(),
            segment_seconds: s.segment_seconds,
            health,
        }
    }
}

fn shown_url(c: &CameraConfig, profile: StreamProfile) -> Option<String> {
    url::stream_url(&c.shown(), profile)
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<CameraView>>, ApiError> {
    who.require(VIEW)?;
    let cameras = state.registry.cameras().await?;
    Ok(Json(
        cameras
            .iter()
            .map(|c| CameraView::new(c, state.media.health().get(c.id())))
            .collect(),
    ))
}

pub(super) async fn get(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CameraView>, ApiError> {
    who.require(VIEW)?;
    check_id(&id)?;
    let camera = state
        .registry
        .camera(&id)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("camera {id:?}")))?;
    Ok(Json(CameraView::new(
        &camera,
        state.media.health().get(camera.id()),
    )))
}

/// `POST /api/v1/cameras`: the camera's `heldar.toml` keys as JSON, plus an optional `password`
/// (`"***"` keeps the stored one while the streams stay the same, as over MQTT).
pub(super) async fn put(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<CameraView>>, ApiError> {
    who.require(ADMIN)?;
    let body = raw_body(body, super::MAX_BODY)?;
    let (settings, password) = requests::object(&body)
        .and_then(|v| requests::camera(v, None))
        .map_err(|p| ApiError::new(StatusCode::BAD_REQUEST, p.to_string()))?;
    let id = settings.id.clone();
    let registry = &state.registry;
    let (camera, before, after) = registry
        .with_views(
            ConfigKind::Camera,
            &id,
            registry.change_camera(settings, password),
        )
        .await?;
    Ok(Named(
        What::change("camera", &id, before.as_ref(), after.as_ref()),
        Json(CameraView::new(&camera, None)),
    ))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(ADMIN)?;
    check_id(&id)?;
    state.registry.delete_camera(&id).await?;
    Ok(Named(
        What::removed("camera", &id),
        Json(serde_json::json!({ "removed": id })),
    ))
}

pub(super) async fn health(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<CameraHealth>>, ApiError> {
    who.require(VIEW)?;
    Ok(Json(state.media.health().all()))
}

/// `from`/`to` as RFC 3339; the default window is the last 24 hours.
#[derive(Debug, Deserialize)]
pub(super) struct Window {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<u32>,
}

impl Window {
    fn bounds(&self) -> Result<(i64, i64), ApiError> {
        let to = self.to.unwrap_or_else(Utc::now).timestamp_millis();
        let from = self
            .from
            .map(|f| f.timestamp_millis())
            .unwrap_or(to - 86_400_000);
        if from > to {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "from must not be after to",
            ));
        }
        Ok((from, to))
    }
}

pub(super) async fn segments(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(w): Query<Window>,
) -> Result<Json<Vec<Segment>>, ApiError> {
    who.require(VIEW)?;
    check_id(&id)?;
    let (from, to) = w.bounds()?;
    let limit = w.limit.unwrap_or(500).clamp(1, 5000);
    let rows = state
        .store
        .read(move |c| Ok::<_, StoreError>(index::segments(c, &id, from, to, limit)?))
        .await?;
    Ok(Json(rows))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Timeline {
    pub camera_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub ranges: Vec<Range>,
    pub recorded_ms: i64,
    pub segment_count: usize,
}

pub(super) async fn timeline(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(w): Query<Window>,
) -> Result<Json<Timeline>, ApiError> {
    who.require(VIEW)?;
    check_id(&id)?;
    let (from, to) = w.bounds()?;
    let camera_id = id.clone();
    let rows = state
        .store
        .read(move |c| Ok::<_, StoreError>(index::segments(c, &id, from, to, u32::MAX)?))
        .await?;
    let ranges = index::merge_ranges(&rows);
    let recorded_ms = ranges
        .iter()
        .map(|r| r.end_ms.min(to) - r.start_ms.max(from))
        .sum();
    Ok(Json(Timeline {
        camera_id,
        from_ms: from,
        to_ms: to,
        ranges,
        recorded_ms,
        segment_count: rows.len(),
    }))
}

pub(super) async fn gaps(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(w): Query<Window>,
) -> Result<Json<Vec<Gap>>, ApiError> {
    who.require(VIEW)?;
    check_id(&id)?;
    let (from, to) = w.bounds()?;
    let rows = state
        .store
        .read(move |c| Ok::<_, StoreError>(index::gaps(c, &id, from, to)?))
        .await?;
    Ok(Json(rows))
}

/// Ids reach file paths and SQL parameters; refuse anything that is not an id before using it.
fn check_id(id: &str) -> Result<(), ApiError> {
    if crate::config::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a valid camera id"),
        ))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct At {
    at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/cameras/{id}/snapshot[?at=T]`: a JPEG.
pub(super) async fn snapshot(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<At>,
) -> Result<Response, ApiError> {
    who.require(OPERATE)?;
    check_id(&id)?;
    let jpeg = state
        .media
        .snapshot(&id, q.at.map(|t| t.timestamp_millis()))
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        jpeg,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ClipRequest {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// The answer of `POST /api/v1/cameras/{id}/clip`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClipAnswer {
    #[serde(flatten)]
    pub report: ClipReport,
    /// Where to fetch the file: `GET /api/v1/clips/{clip}`.
    pub clip: String,
}

pub(super) async fn clip(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<ClipAnswer>>, ApiError> {
    who.require(OPERATE)?;
    let req: ClipRequest = json_body(body, super::MAX_BODY)?;
    check_id(&id)?;
    let (report, path) = state
        .media
        .clip(&id, req.from.timestamp_millis(), req.to.timestamp_millis())
        .await?;
    let clip = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Named(
        What(format!("camera {id} clip {clip} exported")),
        Json(ClipAnswer { report, clip }),
    ))
}

/// `GET /api/v1/clips/{name}`: an exported clip, streamed.
pub(super) async fn clip_file(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.require(OPERATE)?;
    let valid = name.ends_with(".mkv") && !name.contains(['/', '\\']) && !name.starts_with('.');
    if !valid {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is not a clip name"),
        ));
    }
    let path = crate::media::clip::clips_dir(&state.system.data_dir).join(&name);
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no clip {name:?} (clips expire after a day)"),
        )
    })?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "video/x-matroska")], body).into_response())
}

pub(super) async fn test(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Named<Json<StreamTest>>, ApiError> {
    who.require(OPERATE)?;
    check_id(&id)?;
    let test = state.media.test_camera(&id).await?;
    Ok(Named(
        What(format!("camera {id} stream tested")),
        Json(test),
    ))
}

pub(super) async fn lock(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(OPERATE)?;
    state.media.set_evidence_lock(id, true).await?;
    Ok(Named(
        What(format!("segment {id} evidence-locked")),
        Json(serde_json::json!({ "segment": id, "evidence_locked": true })),
    ))
}

pub(super) async fn unlock(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(OPERATE)?;
    state.media.set_evidence_lock(id, false).await?;
    Ok(Named(
        What(format!("segment {id} evidence lock removed")),
        Json(serde_json::json!({ "segment": id, "evidence_locked": false })),
    ))
}
