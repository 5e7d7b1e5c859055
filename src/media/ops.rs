//! On-demand media operations: snapshots, clip export, a one-off stream test, evidence locks.
//! They run beside recording and never touch a recording pipeline's flow.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use serde::{Deserialize, Serialize};

use super::clip::{self, ClipReport};
use super::gst_job::GstJobError;
use super::index::{self, Segment};
use super::pipeline::{StreamPipeline, StreamSpec};
use super::snapshot::{decoder_for, frame_at, keyframe_to_jpeg};
use super::url::stream_url;
use super::{Media, MediaContext, pipeline};
use crate::config::model::StreamProfile;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// Longest clip one request may export.
const MAX_CLIP: Duration = Duration::from_secs(6 * 3600);

/// Why an operation could not be done; each kind maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The camera, the footage or the frame does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// GStreamer or the disk failed (500).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GstJobError> for MediaError {
    fn from(e: GstJobError) -> Self {
        match e {
            GstJobError::Empty(what) => MediaError::NotFound(what.into()),
            other => MediaError::Failed(other.to_string()),
        }
    }
}

impl From<RegistryError> for MediaError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => MediaError::NotFound(e.to_string()),
            RegistryError::Store(s) => MediaError::Store(s),
            other => MediaError::Failed(other.to_string()),
        }
    }
}

/// What `heldar cameras test` reports about a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamTest {
    pub camera_id: String,
    pub url: String,
    pub codec: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub fps: Option<f64>,
    pub gop_ms: Option<u64>,
    pub bitrate_kbps: Option<f64>,
    /// From starting the pipeline to the first frame.
    pub connect_ms: u64,
}

impl MediaContext {
    pub(super) fn lock_live(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<pipeline::StreamStats>>>
    {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Media {
    /// A JPEG of the camera: the newest keyframe of its live stream, or with `at_ms` the frame
    /// recorded at that time.
    pub async fn snapshot(
        &self,
        camera_id: &str,
        at_ms: Option<i64>,
    ) -> Result<Vec<u8>, MediaError> {
        let ctx = self.ctx.clone();
        match at_ms {
            None => {
                if self.registry.camera(camera_id).await?.is_none() {
                    return Err(MediaError::NotFound(format!("no camera {camera_id:?}")));
                }
                let stats = ctx.lock_live().get(camera_id).cloned();
                let state = ctx
                    .health
                    .get(camera_id)
                    .map(|h| h.state.as_str())
                    .unwrap_or("unknown");
                let keyframe = stats
                    .as_ref()
                    .and_then(|s| s.latest_keyframe.lock().ok().and_then(|k| k.clone()));
                let Some(keyframe) = keyframe else {
                    return Err(MediaError::NotFound(format!(
                        "no frame yet from camera {camera_id:?} (it is {state})"
                    )));
                };
                let codec = stats
                    .and_then(|s| s.info.lock().ok().and_then(|i| i.clone()))
                    .map(|i| i.codec)
                    .unwrap_or_default();
                blocking(move || {
                    keyframe_to_jpeg(&keyframe, &codec, &decoder_for(&codec, &ctx.media))
                })
                .await
            }
            Some(at) => {
                let id = camera_id.to_string();
                let found = ctx
                    .store
                    .read(move |c| Ok::<_, StoreError>(index::segments(c, &id, at, at + 1, 1)?))
                    .await?;
                let segment = found
                    .into_iter()
                    .find(|s| s.start_ms <= at && at < s.end_ms)
                    .ok_or_else(|| {
                        MediaError::NotFound(format!(
                            "nothing recorded by camera {camera_id:?} at that time"
                        ))
                    })?;
                let guard = ctx.retention.read_locks.acquire(&[segment.id]);
                if guard.ids().is_empty() {
                    return Err(MediaError::NotFound(
                        "that recording is being deleted".into(),
                    ));
                }
                let path = ctx.recordings_dir.join(&segment.path);
                let offset = Duration::from_millis((at - segment.start_ms) as u64);
                let decoder = decoder_for(&segment.codec, &ctx.media);
                let jpeg =
                    blocking(move || frame_at(&path, offset, &segment.codec, &decoder)).await;
                drop(guard);
                jpeg
            }
        }
    }

    /// Exports `[from_ms, to_ms)` into `data_dir/clips/`; returns the report and the file.
    pub async fn clip(
        &self,
        camera_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(ClipReport, PathBuf), MediaError> {
        if to_ms <= from_ms {
            return Err(MediaError::BadRequest("to must be after from".into()));
        }
        if to_ms - from_ms > MAX_CLIP.as_millis() as i64 {
            return Err(MediaError::BadRequest(format!(
                "a clip may span at most {}h",
                MAX_CLIP.as_secs() / 3600
            )));
        }
        let ctx = self.ctx.clone();
        let id = camera_id.to_string();
        let found: Vec<Segment> = ctx
            .store
            .read(move |c| Ok::<_, StoreError>(index::segments(c, &id, from_ms, to_ms, 5000)?))
            .await?;
        let guard = ctx
            .retention
            .read_locks
            .acquire(&found.iter().map(|s| s.id).collect::<Vec<_>>());
        let held: Vec<Segment> = found
            .into_iter()
            .filter(|s| guard.ids().contains(&s.id))
            .collect();
        if held.is_empty() {
            return Err(MediaError::NotFound(format!(
                "no recorded footage of camera {camera_id:?} in that range"
            )));
        }
        let dir = clip::clips_dir(&ctx.data_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| MediaError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        let output = dir.join(format!("{camera_id}-{from_ms}-{to_ms}.mkv"));
        let recordings = ctx.recordings_dir.clone();
        let out = output.clone();
        let report = blocking(move || clip::export(&recordings, &held, from_ms, to_ms, &out)).await;
        drop(guard);
        Ok((report?, output))
    }

    /// Opens the camera's main stream once, beside any recording, and reports what it sends.
    pub async fn test_camera(&self, camera_id: &str) -> Result<StreamTest, MediaError> {
        let camera = self
            .registry
            .camera(camera_id)
            .await?
            .ok_or_else(|| MediaError::NotFound(format!("no camera {camera_id:?}")))?;
        let url = stream_url(&camera.settings, StreamProfile::Main)
            .ok_or_else(|| MediaError::BadRequest("the camera has no stream URL".into()))?;
        let spec = StreamSpec {
            url: url.clone(),
            username: camera.settings.username.clone(),
            password: camera.password().cloned(),
            transport: camera.settings.transport,
            record: None,
            taps: Vec::new(),
        };
        let stream = StreamPipeline::build(spec).map_err(|e| MediaError::Failed(e.to_string()))?;
        let bus = gst::prelude::ElementExt::bus(&stream.pipeline)
            .ok_or_else(|| MediaError::Failed("pipeline without a bus".into()))?;
        gst::prelude::ElementExt::set_state(&stream.pipeline, gst::State::Playing)
            .map_err(|e| MediaError::Failed(format!("cannot start the pipeline: {e}")))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(15);
        let mut first_frame: Option<(Instant, u64)> = None;
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])
                && let Some(pipeline::PipelineEvent::Error(e)) = pipeline::classify(&msg)
            {
                return Err(MediaError::Failed(e));
            }
            let s = &stream.stats;
            if s.has_flowed() && first_frame.is_none() {
                first_frame = Some((Instant::now(), s.bytes.load(Relaxed)));
            }
            // Enough to see two keyframes and a few seconds of rate.
            if let Some((t0, _)) = first_frame
                && s.keyframes.load(Relaxed) >= 3
                && t0.elapsed() >= Duration::from_secs(2)
            {
                break;
            }
            if Instant::now() > deadline {
                if first_frame.is_none() {
                    return Err(MediaError::Failed("no video within 15s".into()));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = &stream.stats;
        let (t0, bytes0) = first_frame.unwrap_or((started, 0));
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        let info = s
            .info
            .lock()
            .ok()
            .and_then(|i| i.clone())
            .unwrap_or_default();
        let gop = s.gop_ms.load(Relaxed);
        Ok(StreamTest {
            camera_id: camera_id.to_string(),
            url: crate::config::secret::redact_url(&url),
            codec: (!info.codec.is_empty()).then_some(info.codec),
            width: info.width,
            height: info.height,
            // The first frame is counted at t0, so the rate is over the frames after it.
            fps: Some(
                ((s.frames.load(Relaxed).saturating_sub(1)) as f64 / secs * 10.0).round() / 10.0,
            ),
            gop_ms: (gop > 0).then_some(gop),
            bitrate_kbps: Some(
                ((s.bytes.load(Relaxed) - bytes0) as f64 * 8.0 / secs / 1000.0).round(),
            ),
            connect_ms: t0.duration_since(started).as_millis() as u64,
        })
    }

    /// Sets or clears the evidence lock of a segment; retention never deletes a locked one.
    pub async fn set_evidence_lock(&self, segment_id: i64, locked: bool) -> Result<(), MediaError> {
        let changed = self
            .ctx
            .store
            .write(move |c| {
                Ok::<_, StoreError>(c.execute(
                    "UPDATE segments SET evidence_locked = ?1 WHERE id = ?2",
                    rusqlite::params![locked, segment_id],
                )?)
            })
            .await?;
        if changed == 0 {
            return Err(MediaError::NotFound(format!("no segment {segment_id}")));
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, GstJobError> + Send + 'static,
) -> Result<T, MediaError> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| MediaError::Failed(e.to_string()))??)
}
