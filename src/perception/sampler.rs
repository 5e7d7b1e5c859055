//! Samplers: decode a camera stream at the rate its tasks need, within the box's fps budget, and
//! keep the newest frame in memory.
//!
//! ```text
//! camera stream tee probe ─ offer() ─┐  (keyframes only when the granted fps allows it)
//!                                    appsrc (leaky) ─ parse ─ decoder ─ videorate ─ videoscale
//!                                    ─ videoconvert ─ RGB width W ─ appsink ─▶ FrameStore
//! ```
//!
//! One sampler per (camera, profile) with at least one active task; it asks for the largest fps
//! and width of its tasks. The box-wide budget (`sampler.max_total_fps`) is shared by camera
//! priority, then fairly within a priority (see [`allocate`]). When the granted fps is at or below
//! the stream's keyframe rate only keyframes reach the decoder, which costs a fraction of a full
//! decode. The decode pipeline ([`super::decoder`]) is separate from the camera's: a slow or
//! broken decoder drops frames in its own leaky input and never slows recording.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::CameraStream;
use super::decoder::{Decoder, Target};
use super::frames::FrameStore;
use crate::config::model::{MediaConfig, StreamProfile};
use crate::media::{EncodedFrame, FrameTap, Media};
use crate::registry::Registry;

/// A sampler's request to the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    pub priority: u8,
    pub fps: f64,
}

/// Shares `budget` fps: higher priority first; within a priority, an equal split with
/// water-filling (nobody gets more than asked, what one leaves goes to the others). Returns the
/// granted fps per demand, in order.
pub fn allocate(demands: &[Demand], budget: f64) -> Vec<f64> {
    let mut granted = vec![0.0; demands.len()];
    let mut remaining = budget.max(0.0);
    let mut priorities: Vec<u8> = demands.iter().map(|d| d.priority).collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    for p in priorities {
        let mut group: Vec<usize> = (0..demands.len())
            .filter(|i| demands[*i].priority == p)
            .collect();
        group.sort_by(|a, b| demands[*a].fps.total_cmp(&demands[*b].fps));
        let mut left = group.len();
        for i in group {
            let share = remaining / left as f64;
            let give = demands[i].fps.min(share).max(0.0);
            granted[i] = give;
            remaining -= give;
            left -= 1;
        }
    }
    granted
}

/// What `GET /api/v1/ai/samplers` and `heldar status` show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerStatus {
    pub camera_id: String,
    pub stream_profile: StreamProfile,
    /// `sampling`, `connecting` (no frame yet), `budget_exhausted`, or `error`.
    pub state: String,
    /// Granted rate.
    pub fps: f64,
    pub requested_fps: f64,
    pub width: u32,
    pub keyframe_only: bool,
    pub frames: u64,
    pub last_error: Option<String>,
}

/// The sampler service.
#[derive(Clone)]
pub struct Samplers {
    registry: Registry,
    media: Media,
    frames: FrameStore,
    decoders: MediaConfig,
    budget: f64,
    running: Arc<Mutex<HashMap<CameraStream, Arc<Sampler>>>>,
}

impl Samplers {
    pub fn new(
        registry: Registry,
        media: Media,
        frames: FrameStore,
        decoders: MediaConfig,
        budget: f64,
    ) -> Self {
        Samplers {
            registry,
            media,
            frames,
            decoders,
            budget,
            running: Arc::default(),
        }
    }

    /// Follows the registry until `shutdown`; also re-plans every few seconds, since keyframe
    /// rates are only known once streams run.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut changes = self.registry.subscribe();
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "cannot plan samplers; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        let all: Vec<_> = self.lock().drain().collect();
        for ((camera, profile), sampler) in all {
            self.media.tap_slot(&camera, profile).set(None);
            sampler.stop();
        }
        Ok(())
    }

    async fn reconcile(&self) -> Result<(), crate::registry::RegistryError> {
        let tasks = self.registry.active_tasks().await?;
        let cameras = self.registry.cameras().await?;
        let mut wanted: HashMap<CameraStream, (f64, u32)> = HashMap::new();
        for t in &tasks {
            let e = wanted
                .entry((t.camera_id.clone(), t.profile))
                .or_insert((0.0, 0));
            e.0 = e.0.max(t.fps);
            e.1 = e.1.max(t.width);
        }
        let keys: Vec<CameraStream> = wanted.keys().cloned().collect();
        let demands: Vec<Demand> = keys
            .iter()
            .map(|k| Demand {
                priority: cameras
                    .iter()
                    .find(|c| c.id() == k.0)
                    .map_or(0, |c| c.settings.priority),
                fps: wanted[k].0,
            })
            .collect();
        let budget = match self.registry.settings().await {
            Ok(s) => s.sampler.max_total_fps,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read runtime settings; using heldar.toml's fps budget");
                self.budget
            }
        };
        let granted = allocate(&demands, budget);
        let mut running = self.lock();
        let stale: Vec<CameraStream> = running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(s) = running.remove(&key) {
                self.media.tap_slot(&key.0, key.1).set(None);
                s.stop();
                self.frames.remove(&key.0, key.1);
            }
        }
        for (i, key) in keys.iter().enumerate() {
            let (requested, width) = wanted[key];
            let sampler = running
                .entry(key.clone())
                .or_insert_with(|| {
                    let s = Arc::new(Sampler::new(
                        &key.0,
                        key.1,
                        self.frames.clone(),
                        self.decoders.clone(),
                    ));
                    self.media
                        .tap_slot(&key.0, key.1)
                        .set(Some(s.clone() as Arc<dyn FrameTap>));
                    s
                })
                .clone();
            sampler.plan(requested, granted[i], width);
            if granted[i] <= 0.0 {
                self.frames.remove(&key.0, key.1);
            }
        }
        Ok(())
    }

    pub fn status(&self) -> Vec<SamplerStatus> {
        let mut all: Vec<SamplerStatus> = self.lock().values().map(|s| s.status()).collect();
        all.sort_by(|a, b| {
            (&a.camera_id, a.stream_profile as u8).cmp(&(&b.camera_id, b.stream_profile as u8))
        });
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CameraStream, Arc<Sampler>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a sampler was granted.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    requested_fps: f64,
    granted_fps: f64,
    width: u32,
}

/// One (camera, profile) sampler.
pub struct Sampler {
    camera: String,
    profile: StreamProfile,
    frames: FrameStore,
    decoders: MediaConfig,
    plan: Mutex<Plan>,
    decoder: Mutex<Option<Decoder>>,
    /// Capture time of the last frame handed to the decoder, Unix ms.
    last_push_ms: AtomicI64,
    keyframe_only: AtomicBool,
    /// In full-decode mode, decoding starts at a keyframe.
    started: AtomicBool,
    published: Arc<AtomicU64>,
    last_error: Mutex<Option<String>>,
}

impl Sampler {
    fn new(
        camera: &str,
        profile: StreamProfile,
        frames: FrameStore,
        decoders: MediaConfig,
    ) -> Self {
        Sampler {
            camera: camera.to_string(),
            profile,
            frames,
            decoders,
            plan: Mutex::default(),
            decoder: Mutex::new(None),
            last_push_ms: AtomicI64::new(0),
            keyframe_only: AtomicBool::new(false),
            started: AtomicBool::new(false),
            published: Arc::default(),
            last_error: Mutex::new(None),
        }
    }

    fn plan(&self, requested_fps: f64, granted_fps: f64, width: u32) {
        let new = Plan {
            requested_fps,
            granted_fps,
            width,
        };
        let old = std::mem::replace(
            &mut *self.plan.lock().unwrap_or_else(|e| e.into_inner()),
            new,
        );
        if (old.granted_fps - granted_fps).abs() > 1e-9 || old.width != width {
            tracing::info!(camera = %self.camera, profile = ?self.profile, requested_fps, granted_fps, width, "sampler planned");
            if let Some(d) = self
                .decoder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                d.set_output(granted_fps, width);
            }
        }
        if granted_fps <= 0.0 {
            self.stop();
        }
    }

    fn stop(&self) {
        self.decoder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.started.store(false, Ordering::Relaxed);
    }

    fn status(&self) -> SamplerStatus {
        let plan = *self.plan.lock().unwrap_or_else(|e| e.into_inner());
        let frames = self.published.load(Ordering::Relaxed);
        let last_error = self.last_error.lock().ok().and_then(|e| e.clone());
        let state = if plan.granted_fps <= 0.0 {
            "budget_exhausted"
        } else if last_error.is_some() && frames == 0 {
            "error"
        } else if self.frames.latest(&self.camera, self.profile).is_some() {
            "sampling"
        } else {
            "connecting"
        };
        SamplerStatus {
            camera_id: self.camera.clone(),
            stream_profile: self.profile,
            state: state.into(),
            fps: (plan.granted_fps * 100.0).round() / 100.0,
            requested_fps: plan.requested_fps,
            width: plan.width,
            keyframe_only: self.keyframe_only.load(Ordering::Relaxed),
            frames,
            last_error,
        }
    }

    fn fail(&self, error: String) {
        tracing::warn!(camera = %self.camera, profile = ?self.profile, error = %error, "sampler decode pipeline failed");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

impl FrameTap for Sampler {
    fn offer(&self, frame: &EncodedFrame<'_>) {
        let plan = *self.plan.lock().unwrap_or_else(|e| e.into_inner());
        if plan.granted_fps <= 0.0 {
            return;
        }
        // Keyframes alone are enough when no more than one frame per GOP is wanted.
        let keyframe_rate = if frame.gop_ms > 0 {
            1000.0 / frame.gop_ms as f64
        } else {
            0.0
        };
        let keyframe_only = plan.granted_fps <= keyframe_rate + 1e-6;
        if self.keyframe_only.swap(keyframe_only, Ordering::Relaxed) != keyframe_only {
            self.started.store(false, Ordering::Relaxed);
        }
        if keyframe_only {
            if !frame.keyframe {
                return;
            }
            let due =
                self.last_push_ms.load(Ordering::Relaxed) + (1000.0 / plan.granted_fps) as i64;
            // Half a GOP of slack, so a keyframe arriving a little early still counts.
            if frame.captured_ms + ((frame.gop_ms / 2) as i64) < due {
                return;
            }
        } else if !self.started.load(Ordering::Relaxed) && !frame.keyframe {
            return;
        }
        let Ok(mut slot) = self.decoder.try_lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|d| d.codec() != frame.codec) {
            slot.take();
        }
        if slot.is_none() {
            let target = Target {
                frames: self.frames.clone(),
                camera: self.camera.clone(),
                profile: self.profile,
                published: self.published.clone(),
            };
            match Decoder::start(frame, plan.granted_fps, plan.width, &self.decoders, target) {
                Ok(d) => *slot = Some(d),
                Err(e) => {
                    self.fail(e.to_string());
                    return;
                }
            }
        }
        let Some(decoder) = slot.as_mut() else { return };
        if decoder.push(frame) {
            self.started.store(true, Ordering::Relaxed);
            self.last_push_ms
                .store(frame.captured_ms, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(priority: u8, fps: f64) -> Demand {
        Demand { priority, fps }
    }

    #[test]
    fn budget_goes_by_priority_then_fairly_and_nobody_gets_more_than_asked() {
        let cases: Vec<(Vec<Demand>, f64, Vec<f64>)> = vec![
            // Enough for everyone.
            (vec![d(0, 5.0), d(0, 5.0)], 40.0, vec![5.0, 5.0]),
            // Equal split of a short budget.
            (
                vec![d(0, 10.0), d(0, 10.0), d(0, 10.0), d(0, 10.0)],
                20.0,
                vec![5.0, 5.0, 5.0, 5.0],
            ),
            // Water-filling: the small asker gets all it asked; the rest share what is left.
            (
                vec![d(0, 2.0), d(0, 20.0), d(0, 20.0)],
                20.0,
                vec![2.0, 9.0, 9.0],
            ),
            // Priority first: the high-priority camera is served in full, the others share the rest.
            (
                vec![d(0, 10.0), d(5, 15.0), d(0, 10.0)],
                20.0,
                vec![2.5, 15.0, 2.5],
            ),
            // Budget exhausted by higher priorities: the lowest get nothing.
            (vec![d(9, 30.0), d(0, 5.0)], 30.0, vec![30.0, 0.0]),
            // Fractional asks stay fractional.
            (vec![d(0, 0.5), d(0, 0.5)], 40.0, vec![0.5, 0.5]),
        ];
        for (demands, budget, expected) in cases {
            let granted = allocate(&demands, budget);
            for (g, e) in granted.iter().zip(&expected) {
                assert!(
                    (g - e).abs() < 1e-9,
                    "{demands:?} in {budget}: got {granted:?}, expected {expected:?}"
                );
            }
            assert!(granted.iter().sum::<f64>() <= budget + 1e-9);
            for (g, dmd) in granted.iter().zip(&demands) {
                assert!(*g <= dmd.fps + 1e-9, "nobody above request");
            }
        }
    }
}
