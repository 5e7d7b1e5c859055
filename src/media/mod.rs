//! Media: the DVR half of the box. Each recording camera gets a GStreamer pipeline and a
//! supervisor that keeps it running; closed segments are made durable and indexed.
//!
//! Owns: `data_dir/recordings/`, the `segments`, `gaps` and `camera_health` tables, and every
//! GStreamer pipeline that talks to a camera.
//! Does not own: which cameras exist (the [`crate::registry`]); media follows the registry.
//!
//! Entry point: [`Media::run`] reconciles running supervisors with the registry at start and after
//! every registry change, touching only the cameras whose stream settings changed, so adding or
//! removing one camera never interrupts another. Nothing records, reconciles or deletes files
//! until the recordings directory's marker matched this database ([`recdir`]); the check is
//! repeated every [`RECHECK`], so a disk that comes back is used again without a restart.

pub mod clip;
pub mod gst_job;
mod health;
pub mod index;
mod ops;
mod pipeline;
pub mod probe;
pub mod recdir;
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
pub use recdir::{RecordingsState, RecordingsStatus};
use supervisor::StreamPlan;

use crate::config::Config;
use crate::config::model::{CameraConfig, MediaConfig, RtspTransport, StreamProfile, Vendor};
use crate::config::secret::Secret;
use crate::registry::{Camera, Registry};
use crate::store::Store;

/// How often the recordings directory is checked again (its marker is a small file).
pub const RECHECK: Duration = Duration::from_secs(5);

/// What the supervisors share.
pub(crate) struct MediaContext {
    pub store: Store,
    pub health: HealthBoard,
    pub data_dir: PathBuf,
    pub recordings_dir: PathBuf,
    /// Whether `recordings_dir` may be used; recording follows it.
    pub recordings: recdir::RecordingsGate,
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
        let recordings = recdir::RecordingsGate::new(&recordings_dir);
        let retention = retention::Retention::new(
            store.clone(),
            registry.clone(),
            &config.data_dir,
            config.recording.clone(),
        )
        .guarded_by(recordings.clone());
        let ctx = MediaContext {
            health: HealthBoard::new(store.clone()),
            store,
            data_dir: config.data_dir.clone(),
            recordings_dir,
            recordings,
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

    /// Whether the recordings directory is in use, and why not.
    pub fn recordings(&self) -> RecordingsStatus {
        self.ctx.recordings.status()
    }

    /// Checks the recordings directory (reconciling files and index when it becomes usable), then
    /// runs until `shutdown`, then stops every camera (finalizing open segments).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut changes = self.registry.subscribe();
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.check_recordings().await;
        let mut pending = true;
        loop {
            if pending {
                match self.reconcile().await {
                    Ok(()) => pending = false,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?RECHECK, "cannot read the camera registry")
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break } else { pending = true },
                _ = recheck.tick() => pending |= self.check_recordings().await,
            }
        }
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        stop_all(all).await;
        Ok(())
    }

    /// Verifies the recordings directory; when it becomes usable (at start, or a disk that came
    /// back) the files and the index are reconciled first, since either may have changed while
    /// it was away. Returns whether the verdict changed, so the streams follow it.
    async fn check_recordings(&self) -> bool {
        let ctx = &self.ctx;
        let usable_before = ctx.recordings.is_usable();
        let checked = async {
            let accepted = recdir::verify(&ctx.store, &ctx.recordings_dir)
                .await
                .map_err(|e| e.to_string())?;
            if !usable_before {
                let report =
                    reconcile::reconcile(&ctx.store, &ctx.recordings_dir, ctx.boot_started_ms)
                        .await
                        .map_err(|e| format!("start-up reconcile stopped: {e}"))?;
                if report != reconcile::ReconcileReport::default() {
                    tracing::warn!(
                        indexed = report.indexed.len(),
                        moved_aside = report.moved_aside.len(),
                        rows_removed = report.rows_removed.len(),
                        "start-up reconcile repaired the recording index"
                    );
                }
            }
            Ok::<_, String>(accepted)
        }
        .await;
        let dir = ctx.recordings_dir.display();
        match checked {
            Ok(accepted) => {
                match accepted {
                    recdir::Accepted::Verified => {}
                    recdir::Accepted::Claimed => {
                        tracing::info!(dir = %dir, "marked a new recordings directory as this database's")
                    }
                    recdir::Accepted::Adopted => {
                        tracing::info!(dir = %dir, "marked the recordings directory, which holds this database's footage, as this database's")
                    }
                }
                let was = ctx.recordings.status().state;
                let changed = ctx.recordings.set(RecordingsState::Ok, None);
                if was == RecordingsState::Unavailable {
                    tracing::info!(dir = %dir, "recordings directory usable again: recording resumes");
                }
                changed
            }
            Err(error) => {
                let changed = ctx
                    .recordings
                    .set(RecordingsState::Unavailable, Some(error.clone()));
                if changed {
                    tracing::error!(dir = %dir, error = %error, recheck = ?RECHECK, "recordings directory unavailable: not recording, and the index is left alone");
                }
                changed
            }
        }
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
    /// stream (invariant M1). Nothing records while the recordings directory is unusable.
    async fn wanted(
        &self,
    ) -> Result<HashMap<StreamId, StreamPlan>, crate::registry::RegistryError> {
        let cameras = self.registry.cameras().await?;
        let tasks = self.registry.active_tasks().await?;
        let recordings_usable = self.ctx.recordings.is_usable();
        let mut wanted = HashMap::new();
        for camera in cameras.iter().filter(|c| c.enabled) {
            let record = camera.record && recordings_usable;
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
            if record || sampled(StreamProfile::Main) || (sampled(StreamProfile::Sub) && shared_sub)
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
                    record,
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
                // A camera kept from recording by the recordings directory says so, in its own
                // state, rather than looking switched off.
                let blocked = (camera.enabled && camera.record)
                    .then(|| self.ctx.recordings.status())
                    .filter(|r| r.state != RecordingsState::Ok);
                self.ctx
                    .health
                    .record(camera.id(), |h| match blocked {
                        Some(r) => {
                            h.state = CameraState::Error;
                            h.last_error = Some(format!(
                                "not recording: {}",
                                r.error
                                    .as_deref()
                                    .unwrap_or("recordings directory not checked yet")
                            ));
                        }
                        None => h.state = CameraState::Disabled,
                    })
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
