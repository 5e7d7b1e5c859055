//! The worker contract over HTTP (`docs/worker-api.md`): leases, the legacy task
//! list, frames with tickets, ingest, and the 404s that tell upstream workers a feature is absent.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::{ApiError, AppState, json_body};
use crate::auth::{Principal, Role};
use crate::config::model::StreamProfile;
use crate::metrics::INSTRUMENTS;
use crate::perception::detections::{self, DetectionFilter, DetectionRow};
use crate::perception::{
    FrameBody, FrameFormat, IngestAnswer, IngestBody, LeaseAnswer, LeaseBody, WorkerTask,
};
use crate::store::StoreError;

/// Largest ingest body.
pub const MAX_INGEST_BODY: usize = 8 << 20;

const WORKER: &[Role] = &[Role::Worker];

pub(super) async fn lease(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LeaseAnswer>, ApiError> {
    who.require(WORKER)?;
    let body: LeaseBody = json_body(body, super::MAX_BODY)?;
    Ok(Json(state.perception.lease(&who, body).await?))
}

pub(super) async fn release(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(lease_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(WORKER)?;
    let released = state.perception.release(&who, &lease_id).await?;
    Ok(Json(serde_json::json!({ "released": released })))
}

pub(super) async fn tasks(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<WorkerTask>>, ApiError> {
    who.require(WORKER)?;
    Ok(Json(state.perception.tasks().await?))
}

#[derive(Debug, Deserialize)]
pub(super) struct FrameQuery {
    profile: Option<String>,
    task: Option<String>,
    format: Option<String>,
}

/// Raw frame bodies being sent at most. Each holds its frame (2.7 MB at 720p, 25 MB at 4K) until
/// its reader has taken all of it, so a reader that stops reading must not pin frames without
/// bound; a worker reads a frame in about a millisecond, so 16 is far above real use.
const MAX_RAW_IN_FLIGHT: usize = 16;
static RAW_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A raw body counted in [`RAW_IN_FLIGHT`] until the response lets go of it.
struct CountedRaw(FrameBody);

impl CountedRaw {
    fn admit(body: FrameBody) -> Result<CountedRaw, ApiError> {
        RAW_IN_FLIGHT
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_RAW_IN_FLIGHT).then_some(n + 1)
            })
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{MAX_RAW_IN_FLIGHT} raw frames are being sent already; ask again"),
                )
            })?;
        Ok(CountedRaw(body))
    }
}

impl AsRef<[u8]> for CountedRaw {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl Drop for CountedRaw {
    fn drop(&mut self) {
        RAW_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn frame(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
    Query(q): Query<FrameQuery>,
) -> Result<Response, ApiError> {
    who.require(&[Role::Worker, Role::Viewer, Role::Operator])?;
    if camera.is_empty() || camera.contains(['/', '\\']) || camera.contains("..") {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid camera id"));
    }
    let profile = match q.profile.as_deref() {
        None | Some("sub") => StreamProfile::Sub,
        Some("main") => StreamProfile::Main,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("profile {other:?} must be sub or main"),
            ));
        }
    };
    let format = match q.format.as_deref() {
        None => FrameFormat::Jpeg,
        Some(f) => FrameFormat::parse(f).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("format {f:?} must be jpeg, rgb or gray"),
            )
        })?,
    };
    let served = state
        .perception
        .frame(&who, &camera, profile, q.task.as_deref(), format)
        .await?;
    let captured = DateTime::<Utc>::from_timestamp_millis(served.captured_ms).unwrap_or_default();
    let age_ms = (Utc::now().timestamp_millis() - served.captured_ms).max(0);
    let stride = served.body.stride(served.width);
    let (width, height) = (served.width, served.height);
    let body = match stride {
        None => Bytes::from_owner(served.body),
        Some(_) => Bytes::from_owner(CountedRaw::admit(served.body)?),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    match stride {
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
        }
        Some(stride) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert("x-frame-stride", HeaderValue::from(stride));
        }
    }
    h.insert("x-frame-format", HeaderValue::from_static(format.as_str()));
    h.insert("x-frame-width", HeaderValue::from(width));
    h.insert("x-frame-height", HeaderValue::from(height));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let stamp = captured.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Ok(v) = HeaderValue::from_str(&stamp) {
        h.insert("x-frame-captured-at", v);
    }
    h.insert("x-frame-age-ms", HeaderValue::from(age_ms));
    if let Some(ticket) = served.ticket.and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert("x-frame-ticket", ticket);
    }
    Ok(response)
}

pub(super) async fn ingest(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestAnswer>, ApiError> {
    who.require(WORKER)?;
    let started = Instant::now();
    let answer = match json_body::<IngestBody>(body, MAX_INGEST_BODY) {
        Ok(body) => state
            .perception
            .ingest(&who, body)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let (outcome, stored) = match &answer {
        Ok(a) if a.duplicate == Some(true) => ("duplicate", 0),
        Ok(a) => ("stored", a.detections_ingested),
        Err(_) => ("refused", 0),
    };
    INSTRUMENTS.observe_ingest(outcome, stored, started.elapsed());
    Ok(Json(answer?))
}

/// Embeddings are not offered: a 404 tells upstream workers to stop asking.
pub(super) async fn not_offered() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not offered by this box")
}

#[derive(Debug, Deserialize)]
pub(super) struct DetectionQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    label: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn detections(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
    Query(q): Query<DetectionQuery>,
) -> Result<Json<Vec<DetectionRow>>, ApiError> {
    who.require(&[Role::Viewer, Role::Operator])?;
    let filter = DetectionFilter {
        from_ms: q.from.map(|t| t.timestamp_millis()),
        to_ms: q.to.map(|t| t.timestamp_millis()),
        label: q.label,
        limit: q.limit.unwrap_or(200).clamp(1, 5000),
    };
    let rows = state
        .store
        .read(move |c| Ok::<_, StoreError>(detections::list(c, &camera, &filter)?))
        .await?;
    Ok(Json(rows))
}

pub(super) async fn samplers(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<crate::perception::sampler::SamplerStatus>>, ApiError> {
    who.require(&[Role::Worker, Role::Viewer, Role::Operator])?;
    Ok(Json(state.perception.samplers.status()))
}
