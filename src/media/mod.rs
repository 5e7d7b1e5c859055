//! Media: the DVR half of the box. Each recording camera gets a GStreamer pipeline and a
//! supervisor that keeps it running; closed segments are made durable and indexed.
//!
//! Owns: `data_dir/recordings/`, the `segments`, `gaps` and `camera_health` tables, and every
//! GStreamer pipeline that talks to a camera.
//! Does not own: which cameras exist (the [`crate::registry`]); media follows the registry.
//!
//! Entry point: [`Media::run`] reconciles running supervisors with the registry at start and after
//! every registry change, touching only the cameras whose stream settings changed, so adding or
//! removing one camera never interrupts another.

pub mod clip;
mod health;
pub mod index;
mod ops;
mod pipeline;
pub mod probe;
pub mod reconcile;
pub mod retention;
pub mod snapshot;
mod supervisor;
pub mod synthetic;
pub mod url;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use health::{CameraHealth, CameraState, HealthBoard};
pub use ops::{MediaError, StreamTest};
pub use pipeline::{EncodedFrame, FrameTap, TapSlot};
use supervisor::StreamPlan;

use crate::config::Config;
use crate::config::model::{CameraConfig, MediaConfig, RtspTransport, StreamProfile, Vendor};
use crate::config::secret::Secret;
use crate::registry::{Camera, Registry};
use crate::store::Store;

/// What the supervisors share.
pub(crate) struct MediaContext {
    pub store: Store,
    pub health: HealthBoard,
    pub data_dir: PathBuf,
    pub recordings_dir: PathBuf,
    pub media: MediaConfig,
    pub retention: retention::Retention,
    /// The running stream of each recording camera, for snapshots of its newest keyframe.
    pub live: Mutex<HashMap<String, Arc<pipeline::StreamStats>>>,
    /// Where samplers plug in, per (camera, profile).
    pub taps: Mutex<HashMap<(String, StreamProfile), Arc<TapSlot>>>,
    /// Start of this daemon run, to tell daemon downtime from camera downtime in gaps.
    pub boot_started_ms: i64,
}

/// The settings whose change needs a new pipeline; anything else (name, retention, priority)
/// applies without touching a running stream.
#[derive(Clone, PartialEq)]
struct StreamKey {
    url: Option<String>,
    sub_url: Option<String>,
    vendor: Option<Vendor>,
    address: Option<String>,
    port: Option<u16>,
    channel: Option<u32>,
    username: Option<String>,
    password: Option<Secret>,
    transport: RtspTransport,
    segment_seconds: u32,
}

impl StreamKey {
    fn of(c: &CameraConfig) -> Self {
        StreamKey {
            url: c.url.clone(),
            sub_url: c.sub_url.clone(),
            vendor: c.vendor,
            address: c.address.clone(),
            port: c.port,
            channel: c.channel,
            username: c.username.clone(),
            password: c.password.clone(),
            transport: c.transport,
            segment_seconds: c.segment_seconds,
        }
    }
}

/// One of a camera's streams.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StreamId {
    camera: String,
    profile: StreamProfile,
}

struct Running {
    key: StreamKey,
    record: bool,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The media service; cheap to clone.
#[derive(Clone)]
pub struct Media {
    ctx: Arc<MediaContext>,
    registry: Registry,
    running: Arc<Mutex<HashMap<StreamId, Running>>>,
}

impl Media {
    pub fn new(store: Store, registry: Registry, config: &Config, boot_started_ms: i64) -> Media {
        let recordings_dir = config.data_dir.join("recordings");
        let retention = retention::Retention::new(
            store.clone(),
            registry.clone(),
            &config.data_dir,
            config.recording.clone(),
        );
        let ctx = MediaContext {
            health: HealthBoard::new(store.clone()),
            store,
            data_dir: config.data_dir.clone(),
            recordings_dir,
            media: config.media.clone(),
            retention,
            live: Mutex::default(),
            taps: Mutex::default(),
            boot_started_ms,
        };
        Media {
            ctx: Arc::new(ctx),
            registry,
            running: Arc::default(),
        }
    }

    /// The filesystem the recordings are on.
    pub fn disk(&self) -> Option<retention::DiskUsage> {
        retention::disk_usage(&self.ctx.recordings_dir)
    }

    /// The retention service that keeps these recordings within their limits.
    pub fn retention(&self) -> retention::Retention {
        self.ctx.retention.clone()
    }

    pub fn health(&self) -> &HealthBoard {
        &self.ctx.health
    }

    /// Reconciles files and index, then runs until `shutdown`, then stops every camera
    /// (finalizing open segments).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let report = reconcile::reconcile(
            &self.ctx.store,
            &self.ctx.recordings_dir,
            self.ctx.boot_started_ms,
        )
        .await?;
        if report != reconcile::ReconcileReport::default() {
            tracing::warn!(
                indexed = report.indexed.len(),
                moved_aside = report.moved_aside.len(),
                rows_removed = report.rows_removed.len(),
                "start-up reconcile repaired the recording index"
            );
        }
        let mut changes = self.registry.subscribe();
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::error!(error = %e, "cannot read the camera registry; retrying in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        stop_all(all).await;
        Ok(())
    }

    /// The slot where a sampler for a camera's `profile` plugs in; the stream serving that
    /// profile reads it on every frame.
    pub fn tap_slot(&self, camera: &str, profile: StreamProfile) -> Arc<TapSlot> {
        let mut taps = self.ctx.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.entry((camera.to_string(), profile))
            .or_default()
            .clone()
    }

    /// Streams to run: the main stream when recording or sampled (or sampled as `sub` by a camera
    /// without a sub stream), the sub stream when sampled and distinct. One RTSP session per
    /// stream (invariant M1).
    async fn wanted(
        &self,
    ) -> Result<HashMap<StreamId, StreamPlan>, crate::registry::RegistryError> {
        let cameras = self.registry.cameras().await?;
        let tasks = self.registry.active_tasks().await?;
        let mut wanted = HashMap::new();
        for camera in cameras.iter().filter(|c| c.enabled) {
            let sampled = |p: StreamProfile| {
                tasks
                    .iter()
                    .any(|t| t.camera_id == camera.id() && t.profile == p)
            };
            let (Some(main_url), Some(sub_url)) = (
                url::stream_url(&camera.settings, StreamProfile::Main),
                url::stream_url(&camera.settings, StreamProfile::Sub),
            ) else {
                continue;
            };
            let shared_sub = sub_url == main_url;
            if camera.record
                || sampled(StreamProfile::Main)
                || (sampled(StreamProfile::Sub) && shared_sub)
            {
                let mut taps = vec![self.tap_slot(camera.id(), StreamProfile::Main)];
                if shared_sub {
                    taps.push(self.tap_slot(camera.id(), StreamProfile::Sub));
                }
                let id = StreamId {
                    camera: camera.id().to_string(),
                    profile: StreamProfile::Main,
                };
                let plan = StreamPlan {
                    camera: camera.clone(),
                    profile: StreamProfile::Main,
                    url: main_url,
                    record: camera.record,
                    taps,
                };
                wanted.insert(id, plan);
            }
            if sampled(StreamProfile::Sub) && !shared_sub {
                let id = StreamId {
                    camera: camera.id().to_string(),
                    profile: StreamProfile::Sub,
                };
                let taps = vec![self.tap_slot(camera.id(), StreamProfile::Sub)];
                let plan = StreamPlan {
                    camera: camera.clone(),
                    profile: StreamProfile::Sub,
                    url: sub_url,
                    record: false,
                    taps,
                };
                wanted.insert(id, plan);
            }
        }
        Ok(wanted)
    }

    async fn reconcile(&self) -> Result<(), crate::registry::RegistryError> {
        let cameras = self.registry.cameras().await?;
        let mut wanted = self.wanted().await?;
        let to_stop: Vec<(StreamId, Running)> = {
            let mut running = self.lock();
            let stale: Vec<StreamId> = running
                .iter()
                .filter(|(id, r)| {
                    wanted.get(*id).is_none_or(|p| {
                        StreamKey::of(&p.camera.settings) != r.key || p.record != r.record
                    })
                })
                .map(|(id, _)| id.clone())
                .collect();
            stale
                .into_iter()
                .filter_map(|id| running.remove(&id).map(|r| (id, r)))
                .collect()
        };
        for (id, _) in &to_stop {
            tracing::info!(camera = %id.camera, stream = ?id.profile, "stopping camera pipeline");
        }
        stop_all(to_stop.into_iter().map(|(_, r)| r).collect()).await;

        for camera in &cameras {
            let main = StreamId {
                camera: camera.id().to_string(),
                profile: StreamProfile::Main,
            };
            if !wanted.contains_key(&main) {
                self.ctx
                    .health
                    .record(camera.id(), |h| h.state = CameraState::Disabled)
                    .await;
            }
        }
        let known: Vec<&str> = cameras.iter().map(Camera::id).collect();
        for h in self.ctx.health.all() {
            if !known.contains(&h.camera_id.as_str()) {
                self.ctx.health.forget(&h.camera_id);
            }
        }
        let mut running = self.lock();
        for (id, plan) in wanted.drain() {
            if running.contains_key(&id) {
                continue;
            }
            let stop = CancellationToken::new();
            let (key, record) = (StreamKey::of(&plan.camera.settings), plan.record);
            let task = tokio::spawn(supervisor::supervise(self.ctx.clone(), plan, stop.clone()));
            running.insert(
                id,
                Running {
                    key,
                    record,
                    stop,
                    task,
                },
            );
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops supervisors in parallel and waits for each to finalize its segment.
async fn stop_all(all: Vec<Running>) {
    for r in &all {
        r.stop.cancel();
    }
    for r in all {
        if let Err(e) = r.task.await {
            tracing::error!(error = %e, "camera supervisor panicked");
        }
    }
}
