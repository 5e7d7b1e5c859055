//! Perception: frames out to inference workers, detections back in, nothing lost.
//!
//! Owns: the worker contract (`docs/worker-api.md`: tasks, leases, frames,
//! tickets, events), the `leases`, `workers`, `detection_batches` and `detections` tables, the
//! in-memory latest frames ([`frames`]) and the samplers that fill them.
//! Does not own: which tasks exist (the [`crate::registry`]), the outbox (it appends to it).
//!
//! Rule: everything a worker sends is untrusted. The server decides camera, task and frame id
//! when a ticket is presented (invariant X2) and writes provenance itself.

mod decoder;
pub mod detections;
pub mod frames;
pub mod ingest;
pub mod leases;
pub mod record;
pub mod sampler;
pub mod tickets;

use std::sync::Arc;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::config::model::StreamProfile;
use crate::outbox::Outbox;
use crate::registry::{Registry, RegistryError, Task, task_camera};
use crate::store::{Store, StoreError};

pub use frames::{Frame, FrameFormat, FrameStore, JpegError};

/// A camera's stream, as samplers and frames are keyed: (camera id, profile).
pub type CameraStream = (String, StreamProfile);
pub use ingest::{IngestAnswer, IngestBody};

/// Why a worker request was refused; each kind is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum PerceptionError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jpeg(#[from] JpegError),
}

impl From<RegistryError> for PerceptionError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(s) => PerceptionError::Store(s),
            RegistryError::NotFound(m) => PerceptionError::NotFound(m),
            other => PerceptionError::BadRequest(other.to_string()),
        }
    }
}

/// A task as a worker sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerTask {
    pub id: String,
    pub camera_id: String,
    pub task_type: String,
    pub stream_profile: StreamProfile,
    pub fps: f64,
    pub width: u32,
    pub config: serde_json::Value,
    /// Relative: `/api/v1/cameras/{camera_id}/frame?profile={stream_profile}&task={id}`.
    pub frame_url: String,
}

impl From<Task> for WorkerTask {
    fn from(t: Task) -> Self {
        let profile = match t.profile {
            StreamProfile::Main => "main",
            StreamProfile::Sub => "sub",
        };
        WorkerTask {
            frame_url: format!(
                "/api/v1/cameras/{}/frame?profile={profile}&task={}",
                t.camera_id, t.id
            ),
            id: t.id,
            camera_id: t.camera_id,
            task_type: t.task_type,
            stream_profile: t.profile,
            fps: t.fps,
            width: t.width,
            config: t.config,
        }
    }
}

/// `POST /api/v1/ai/leases` body.
#[derive(Debug, Deserialize)]
pub struct LeaseBody {
    #[serde(default)]
    pub worker_id: String,
    pub ttl_secs: Option<f64>,
    pub task_types: Option<Vec<String>>,
    pub max_tasks: Option<usize>,
}

/// `POST /api/v1/ai/leases` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseAnswer {
    pub lease_id: String,
    pub worker_id: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub tasks: Vec<WorkerTask>,
}

/// A frame ready to serve.
pub struct ServedFrame {
    /// In the format asked for.
    pub body: FrameBody,
    /// The frame's pixels, which a raw body's reader needs (a JPEG says it itself).
    pub width: u32,
    pub height: u32,
    pub captured_ms: i64,
    pub ticket: Option<String>,
}

/// The bytes of a served frame, shared with the frame store rather than copied: a 1280x720 RGB
/// frame is 2.7 MB, and several workers may read it.
pub enum FrameBody {
    Jpeg(Arc<Vec<u8>>),
    Rgb(Arc<Frame>),
    Gray(Arc<Vec<u8>>),
}

impl FrameBody {
    /// Bytes per row of a raw frame; `None` for a JPEG.
    pub fn stride(&self, width: u32) -> Option<u32> {
        match self {
            FrameBody::Jpeg(_) => None,
            FrameBody::Rgb(_) => Some(width * 3),
            FrameBody::Gray(_) => Some(width),
        }
    }
}

impl AsRef<[u8]> for FrameBody {
    fn as_ref(&self) -> &[u8] {
        match self {
            FrameBody::Jpeg(b) | FrameBody::Gray(b) => b,
            FrameBody::Rgb(f) => &f.rgb,
        }
    }
}

/// The perception service; cheap to clone.
#[derive(Clone)]
pub struct Perception {
    store: Store,
    registry: Registry,
    outbox: Outbox,
    tickets: Arc<tickets::TicketKey>,
    pub frames: FrameStore,
    pub samplers: sampler::Samplers,
    require_tickets: bool,
}

impl Perception {
    pub fn new(
        store: Store,
        registry: Registry,
        outbox: Outbox,
        frames: FrameStore,
        samplers: sampler::Samplers,
        require_tickets: bool,
    ) -> Self {
        let tickets = Arc::new(tickets::TicketKey::random());
        Perception {
            store,
            registry,
            outbox,
            tickets,
            frames,
            samplers,
            require_tickets,
        }
    }

    /// Acquires or renews the caller's share of the active tasks.
    pub async fn lease(
        &self,
        principal: &Principal,
        body: LeaseBody,
    ) -> Result<LeaseAnswer, PerceptionError> {
        let worker_id = body.worker_id.trim().to_string();
        if worker_id.is_empty() {
            return Err(PerceptionError::BadRequest("worker_id is required".into()));
        }
        let ttl_s = body.ttl_secs.unwrap_or(60.0).clamp(15.0, 300.0);
        let max_tasks = body.max_tasks.unwrap_or(512).clamp(1, 512);
        let mut active = self.registry.active_tasks().await?;
        active.sort_by(|a, b| a.id.cmp(&b.id));
        let split: Vec<leases::ActiveTask> = active
            .iter()
            .map(|t| leases::ActiveTask {
                id: t.id.clone(),
                task_type: t.task_type.clone(),
            })
            .collect();
        let task_types = body.task_types.clone();
        let mut random = [0u8; 12];
        rand::rng().fill_bytes(&mut random);
        let lease_id = format!(
            "lse_{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let now_ms = chrono::Utc::now().timestamp_millis();
        let ttl_ms = (ttl_s * 1000.0) as i64;
        let (credential, worker, id) = (
            principal.credential.clone(),
            worker_id.clone(),
            lease_id.clone(),
        );
        let leased = self
            .store
            .write(move |c| {
                let req = leases::LeaseRequest {
                    credential: &credential,
                    worker_id: &worker,
                    lease_id: &id,
                    ttl_ms,
                    max_tasks,
                    now_ms,
                    task_types: task_types.as_deref(),
                };
                Ok::<_, StoreError>(leases::acquire(c, &req, &split)?)
            })
            .await?;
        let tasks = active
            .into_iter()
            .filter(|t| leased.contains(&t.id))
            .map(WorkerTask::from)
            .collect();
        Ok(LeaseAnswer {
            lease_id,
            worker_id,
            expires_at: chrono::DateTime::from_timestamp_millis(now_ms + ttl_ms)
                .unwrap_or_default(),
            tasks,
        })
    }

    pub async fn release(
        &self,
        principal: &Principal,
        lease_id: &str,
    ) -> Result<usize, PerceptionError> {
        let (credential, id) = (principal.credential.clone(), lease_id.to_string());
        Ok(self
            .store
            .write(move |c| Ok::<_, StoreError>(leases::release(c, &credential, &id)?))
            .await?)
    }

    /// The legacy task list: every active task.
    pub async fn tasks(&self) -> Result<Vec<WorkerTask>, PerceptionError> {
        Ok(self
            .registry
            .active_tasks()
            .await?
            .into_iter()
            .map(WorkerTask::from)
            .collect())
    }

    /// The latest frame of a camera stream, with a ticket when `task` names a task the caller
    /// holds a live lease on for this camera. Leasing trouble never fails the frame itself.
    pub async fn frame(
        &self,
        principal: &Principal,
        camera_id: &str,
        profile: StreamProfile,
        task: Option<&str>,
        format: FrameFormat,
    ) -> Result<ServedFrame, PerceptionError> {
        let frame = self.frames.latest(camera_id, profile).ok_or_else(|| {
            PerceptionError::NotFound(format!(
                "no sampled frame yet for camera {camera_id:?} (is a task enabled for this camera and profile?)"
            ))
        })?;
        let body = match format {
            FrameFormat::Rgb => FrameBody::Rgb(frame.clone()),
            FrameFormat::Gray => {
                let f = frame.clone();
                FrameBody::Gray(
                    tokio::task::spawn_blocking(move || f.gray())
                        .await
                        .map_err(|e| JpegError::Aborted(e.to_string()))?,
                )
            }
            FrameFormat::Jpeg => {
                let (frames, f) = (self.frames.clone(), frame.clone());
                FrameBody::Jpeg(
                    tokio::task::spawn_blocking(move || frames.jpeg(&f))
                        .await
                        .map_err(|e| JpegError::Aborted(e.to_string()))??,
                )
            }
        };
        let mut ticket = None;
        if let Some(task_id) = task.filter(|t| !t.is_empty()) {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let (id, credential) = (task_id.to_string(), principal.credential.clone());
            let leased_camera = self
                .store
                .read(move |c| {
                    let lease = leases::live_lease(c, &id, &credential, now_ms)?;
                    let camera = match lease {
                        Some(_) => task_camera(c, &id)?,
                        None => None,
                    };
                    Ok::<_, StoreError>(camera)
                })
                .await;
            if let Ok(Some(leased)) = leased_camera
                && leased == camera_id
            {
                ticket = self.tickets.mint(
                    &principal.credential,
                    camera_id,
                    task_id,
                    frame.captured_ms,
                    now_ms / 1000,
                );
            }
        }
        Ok(ServedFrame {
            body,
            width: frame.width,
            height: frame.height,
            captured_ms: frame.captured_ms,
            ticket,
        })
    }
}
