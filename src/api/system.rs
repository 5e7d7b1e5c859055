//! `GET /api/v1/system` (what `heldar status` prints) and the liveness/readiness probes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::auth::{Principal, Role};

const VIEW: &[Role] = &[Role::Viewer, Role::Operator];
use crate::media::retention::DiskUsage;
use crate::media::{CameraHealth, CameraState, RecordingsStatus};
use crate::metrics::{DiskWrites, INSTRUMENTS};
use crate::outbox::OutboxStatus;
use crate::perception::sampler::SamplerStatus;
use crate::recent_logs::LogLine;
use crate::serial::PortStatus;
use crate::store::{Boot, BootHistory, StoreError, StoreStatus};
use crate::uplink::UplinkStatus;

/// Facts about this run, fixed at start-up.
#[derive(Debug)]
pub struct SystemInfo {
    pub device_id: String,
    pub data_dir: std::path::PathBuf,
    pub board: Option<String>,
    pub started_at: DateTime<Utc>,
    pub started: Instant,
    pub boot: Boot,
    pub http_listen: SocketAddr,
    pub gstreamer: String,
}

/// The answer of `GET /api/v1/system`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SystemStatus {
    pub version: String,
    pub device_id: String,
    pub board: Option<String>,
    pub started_at: DateTime<Utc>,
    pub uptime_s: u64,
    pub http_listen: SocketAddr,
    pub gstreamer: String,
    pub boots: BootHistory,
    pub store: StoreStatus,
    pub cameras: Vec<CameraHealth>,
    pub samplers: Vec<SamplerStatus>,
    pub outbox: OutboxStatus,
    /// Absent when `[mqtt]` is not configured.
    #[serde(default)]
    pub mqtt: Option<UplinkStatus>,
    /// The file system that holds the recordings; absent when it cannot be read.
    #[serde(default)]
    pub disk: Option<DiskUsage>,
    /// Serial ports with their state and error counts (`heldar io status` has the details).
    #[serde(default)]
    pub serial: Vec<PortStatus>,
    /// Whether the recordings directory is in use; absent from a daemon older than the marker.
    #[serde(default)]
    pub recordings: Option<RecordingsStatus>,
    /// Bytes written since start; absent from a daemon older than the meter.
    #[serde(default)]
    pub disk_writes: Option<DiskWrites>,
}

pub(super) async fn status(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<SystemStatus>, ApiError> {
    who.require(VIEW)?;
    let info = &state.system;
    Ok(Json(SystemStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        device_id: info.device_id.clone(),
        board: info.board.clone(),
        started_at: info.started_at,
        uptime_s: info.started.elapsed().as_secs(),
        http_listen: info.http_listen,
        gstreamer: info.gstreamer.clone(),
        boots: state.store.boot_history(info.boot).await?,
        store: state.store.status().await?,
        cameras: state.media.health().all(),
        samplers: state.perception.samplers.status(),
        outbox: state.outbox.status().await?,
        mqtt: state.uplink.as_ref().map(|u| u.status()),
        disk: state.media.disk(),
        serial: state.serial.status().ports,
        recordings: Some(state.media.recordings()),
        disk_writes: Some(INSTRUMENTS.disk_writes()),
    }))
}

/// `GET /api/v1/logs`: the daemon's recent warnings and errors, oldest first.
pub(super) async fn logs(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    who.require(VIEW)?;
    Ok(Json(state.recent_logs.lines()))
}

/// Alive: the runtime answers.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the store accepts a write within a second, and when cameras are enabled at least one
/// of them delivers video (recording, or streaming for detection only).
pub(super) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let probe = state.store.write(|_| Ok::<_, StoreError>(()));
    match tokio::time::timeout(Duration::from_secs(1), probe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store not writable: {e}"),
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store not writable: no commit within 1s",
            ));
        }
    }
    let enabled: Vec<CameraHealth> = state
        .media
        .health()
        .all()
        .into_iter()
        .filter(|c| c.state != CameraState::Disabled)
        .collect();
    let delivering = enabled
        .iter()
        .any(|c| matches!(c.state, CameraState::Recording | CameraState::Streaming));
    if !enabled.is_empty() && !delivering {
        let states: Vec<String> = enabled
            .iter()
            .map(|c| format!("{} {}", c.camera_id, c.state.as_str()))
            .collect();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no camera is recording ({})", states.join(", ")),
        ));
    }
    Ok("ready\n")
}
