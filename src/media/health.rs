//! Camera health as data (invariant M2): the state machine's current state per camera, kept in
//! memory for status answers and written to `camera_health` when it changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// `connecting → recording → offline/error`, and `disabled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    Connecting,
    Recording,
    /// Delivers video for detection while recording is off for this camera.
    Streaming,
    /// Was connected or tried to connect, and is not now; retries continue.
    Offline,
    /// Cannot work as configured (no URL, a pipeline that cannot be built); retries continue.
    Error,
    Disabled,
}

impl CameraState {
    /// Every state, for exporters that report each one (0 or 1) so alerts can match on absence.
    pub const ALL: [CameraState; 6] = [
        CameraState::Connecting,
        CameraState::Recording,
        CameraState::Streaming,
        CameraState::Offline,
        CameraState::Error,
        CameraState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Connecting => "connecting",
            CameraState::Recording => "recording",
            CameraState::Streaming => "streaming",
            CameraState::Offline => "offline",
            CameraState::Error => "error",
            CameraState::Disabled => "disabled",
        }
    }
}

/// What `heldar status`, `heldar cameras list` and the API show per camera.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraHealth {
    pub camera_id: String,
    pub state: CameraState,
    pub since: DateTime<Utc>,
    pub reconnects: u64,
    /// Masked: never contains credentials.
    pub last_error: Option<String>,
    pub fps: Option<f64>,
    pub bitrate_kbps: Option<f64>,
    pub codec: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub gop_ms: Option<u64>,
    pub last_segment_at: Option<DateTime<Utc>>,
}

impl CameraHealth {
    fn new(camera_id: &str) -> Self {
        CameraHealth {
            camera_id: camera_id.to_string(),
            state: CameraState::Connecting,
            since: Utc::now(),
            reconnects: 0,
            last_error: None,
            fps: None,
            bitrate_kbps: None,
            codec: None,
            width: None,
            height: None,
            gop_ms: None,
            last_segment_at: None,
        }
    }
}

/// Health of every camera; cheap to clone.
#[derive(Clone)]
pub struct HealthBoard {
    store: Store,
    cameras: Arc<Mutex<HashMap<String, CameraHealth>>>,
}

impl HealthBoard {
    pub fn new(store: Store) -> Self {
        HealthBoard {
            store,
            cameras: Arc::default(),
        }
    }

    pub fn get(&self, camera_id: &str) -> Option<CameraHealth> {
        self.lock().get(camera_id).cloned()
    }

    pub fn all(&self) -> Vec<CameraHealth> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.camera_id.cmp(&b.camera_id));
        all
    }

    /// Changes figures that are not worth a write on their own (fps, bitrate, codec).
    pub fn observe(&self, camera_id: &str, change: impl FnOnce(&mut CameraHealth)) {
        change(
            self.lock()
                .entry(camera_id.to_string())
                .or_insert_with(|| CameraHealth::new(camera_id)),
        );
    }

    /// Applies `change` and writes the result: state changes and segment closes go through here.
    pub async fn record(&self, camera_id: &str, change: impl FnOnce(&mut CameraHealth)) {
        let snapshot = {
            let mut map = self.lock();
            let h = map
                .entry(camera_id.to_string())
                .or_insert_with(|| CameraHealth::new(camera_id));
            let before = h.state;
            change(h);
            if h.state != before {
                h.since = Utc::now();
            }
            h.clone()
        };
        if let Err(e) = self.persist(snapshot).await {
            // Health is rewritten on the next change; a failed write costs only history.
            tracing::warn!(camera = camera_id, error = %e, "could not store camera health");
        }
    }

    pub fn forget(&self, camera_id: &str) {
        self.lock().remove(camera_id);
    }

    async fn persist(&self, h: CameraHealth) -> Result<(), StoreError> {
        self.store
            .write(move |c| {
                c.execute(
                    "INSERT INTO camera_health (camera_id, state, since_ms, reconnects, last_error, fps, bitrate_kbps,
                         codec, width, height, gop_ms, last_segment_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (camera_id) DO UPDATE SET state = ?2, since_ms = ?3, reconnects = ?4,
                         last_error = ?5, fps = ?6, bitrate_kbps = ?7, codec = ?8, width = ?9, height = ?10,
                         gop_ms = ?11, last_segment_at_ms = ?12",
                    rusqlite::params![
                        h.camera_id,
                        h.state.as_str(),
                        h.since.timestamp_millis(),
                        h.reconnects as i64,
                        h.last_error,
                        h.fps,
                        h.bitrate_kbps,
                        h.codec,
                        h.width,
                        h.height,
                        h.gop_ms.map(|g| g as i64),
                        h.last_segment_at.map(|t| t.timestamp_millis()),
                    ],
                )?;
                Ok(())
            })
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CameraHealth>> {
        self.cameras.lock().unwrap_or_else(|e| e.into_inner())
    }
}
