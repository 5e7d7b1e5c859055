//! One camera's supervisor: builds its pipeline, watches it, indexes its segments, and rebuilds
//! it after any failure, forever (invariant M2).
//!
//! Failure policy:
//! - An error on the bus, an end of stream, or no buffer for `max(10 s, 3 × GOP)` (a stalled
//!   stream) ends the run: the open segment is indexed as it stands (probed, made durable and
//!   marked `recovered`, since a failed pipeline cannot finalize it), the state becomes
//!   `offline` with the masked reason, and the pipeline is rebuilt after a backoff.
//! - The backoff grows 1 s → 30 s with ±20 % jitter and resets after 30 s of healthy recording. While
//!   waiting, the camera's TCP port is probed once a second; when a refused port starts accepting,
//!   the wait ends at once, so a camera that comes back is recording again within about a second
//!   and a GOP, while one that answers wrongly (bad path, bad password) is not hammered.
//! - A failing camera touches nothing but its own pipeline and rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::MediaContext;
use super::health::CameraState;
use super::index::{self, NewSegment};
use super::pipeline::TapSlot;
use super::pipeline::{PipelineEvent, RecordSpec, StreamPipeline, StreamSpec};
use super::recdir::{create_dirs_durably, sync_segment};
use super::reconcile::{Recovered, recover_file, start_from_name};
use crate::config::model::StreamProfile;
use crate::config::secret::redact_url;
use crate::metrics::INSTRUMENTS;
use crate::registry::Camera;
use crate::store::StoreError;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
const STALL_MIN: Duration = Duration::from_secs(10);
/// How long a stopping pipeline gets to finalize its open segment.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a run ended.
enum RunEnd {
    /// Asked to stop (camera removed or changed, daemon stopping).
    Stopped,
    /// The camera failed; the text is masked.
    Failed(String),
}

/// One stream of one camera, as the media service decided to run it.
pub(super) struct StreamPlan {
    pub camera: Camera,
    /// Which of the camera's streams this pipeline reads.
    pub profile: StreamProfile,
    pub url: String,
    /// Whether this stream is recorded (only the main stream ever is).
    pub record: bool,
    /// Samplers fed by this stream.
    pub taps: Vec<Arc<TapSlot>>,
}

impl StreamPlan {
    /// The camera's health follows its main stream; a sub stream only logs.
    fn reports(&self) -> bool {
        self.profile == StreamProfile::Main
    }

    /// The state of a stream that delivers video.
    fn flowing(&self) -> CameraState {
        if self.record {
            CameraState::Recording
        } else {
            CameraState::Streaming
        }
    }
}

pub(super) async fn supervise(ctx: Arc<MediaContext>, plan: StreamPlan, stop: CancellationToken) {
    let id = plan.camera.id().to_string();
    let probe_addr = tcp_address(&plan.url);
    let mut backoff = BACKOFF_MIN;
    loop {
        if plan.reports() {
            ctx.health
                .record(&id, |h| h.state = CameraState::Connecting)
                .await;
        }
        let started = Instant::now();
        let end = run_once(&ctx, &plan, &stop).await;
        if let RunEnd::Failed(reason) = &end {
            tracing::warn!(camera = %id, stream = ?plan.profile, reason = %reason, "camera stream failed; retrying");
            if plan.reports() {
                ctx.health
                    .record(&id, |h| {
                        h.state = CameraState::Offline;
                        h.reconnects += 1;
                        h.last_error = Some(reason.clone());
                        h.fps = None;
                        h.bitrate_kbps = None;
                    })
                    .await;
            }
        }
        if matches!(end, RunEnd::Stopped) || stop.is_cancelled() {
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = BACKOFF_MIN;
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.8..1.2));
        wait_before_retry(probe_addr.as_deref(), jittered, &stop).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if stop.is_cancelled() {
            return;
        }
    }
}

async fn run_once(ctx: &MediaContext, plan: &StreamPlan, stop: &CancellationToken) -> RunEnd {
    let camera = &plan.camera;
    let url = plan.url.as_str();
    let id = camera.id();
    let settings = &camera.settings;
    let segment = Duration::from_secs(settings.segment_seconds.into());
    let record = if plan.record {
        let camera_dir = ctx.recordings_dir.join(id);
        if let Err(e) = create_dirs_durably(&ctx.recordings_dir, Path::new(id)) {
            return RunEnd::Failed(format!("cannot create {}: {e}", camera_dir.display()));
        }
        Some(RecordSpec {
            dir: camera_dir,
            segment,
        })
    } else {
        None
    };
    let spec = StreamSpec {
        url: url.to_string(),
        username: settings.username.clone(),
        password: camera.password().cloned(),
        transport: settings.transport,
        record,
        taps: plan.taps.clone(),
    };
    let stream = match StreamPipeline::build(spec) {
        Ok(p) => p,
        Err(e) => return RunEnd::Failed(format!("cannot build the pipeline: {e}")),
    };
    let Some(bus) = stream.pipeline.bus() else {
        return RunEnd::Failed("pipeline without a bus".into());
    };
    let mut messages = bus.stream();
    if let Err(e) = stream.pipeline.set_state(gst::State::Playing) {
        return RunEnd::Failed(format!("cannot start the pipeline: {e}"));
    }
    ctx.lock_live().insert(id.to_string(), stream.stats.clone());
    tracing::info!(camera = %id, url = %redact_url(url), "connecting");

    // Open fragments and their start (wall ms). With async finalize the next fragment opens
    // before the previous one is closed.
    let mut open: HashMap<PathBuf, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut rate = RateMeter::default();
    let mut tuned_gop_ms = 0;
    let end = loop {
        tokio::select! {
            _ = stop.cancelled() => break RunEnd::Stopped,
            message = messages.next() => {
                let Some(message) = message else { break RunEnd::Failed("pipeline bus closed".into()) };
                match super::pipeline::classify(&message) {
                    Some(PipelineEvent::FragmentOpened { path, running_time }) => {
                        opened(&stream, &mut open, path, running_time);
                    }
                    Some(PipelineEvent::FragmentClosed { path, running_time }) => {
                        close_fragment(ctx, camera, &stream, &mut open, path, running_time).await;
                    }
                    Some(PipelineEvent::Error(e)) => break RunEnd::Failed(e),
                    Some(PipelineEvent::Eos) => break RunEnd::Failed("the camera ended the stream".into()),
                    None => {}
                }
            }
            _ = tick.tick() => {
                let stats = &stream.stats;
                let gop_ms = stats.gop_ms.load(std::sync::atomic::Ordering::Relaxed);
                let stall = STALL_MIN.max(Duration::from_millis(3 * gop_ms));
                if stats.idle_for() > stall {
                    break RunEnd::Failed(if stats.has_flowed() {
                        format!("stalled: no video for {}s", stall.as_secs())
                    } else {
                        format!("no video within {}s (no answer, or the stream never started)", stall.as_secs())
                    });
                }
                if stats.has_flowed() {
                    if gop_ms > 0 && gop_ms != tuned_gop_ms {
                        stream.tune_segment_length(segment, Duration::from_millis(gop_ms));
                        tuned_gop_ms = gop_ms;
                    }
                    let (fps, kbps) = rate.sample(stats);
                    let info = stats.info.lock().ok().and_then(|i| i.clone());
                    let flowing = ctx.health.get(id).is_some_and(|h| h.state == plan.flowing());
                    if !plan.reports() {
                        // A sub stream feeds samplers only; the camera's health follows its main stream.
                    } else if flowing {
                        ctx.health.observe(id, |h| {
                            h.fps = fps.or(h.fps);
                            h.bitrate_kbps = kbps.or(h.bitrate_kbps);
                            h.gop_ms = (gop_ms > 0).then_some(gop_ms);
                        });
                    } else {
                        tracing::info!(camera = %id, state = plan.flowing().as_str(), "stream up");
                        ctx.health.record(id, |h| {
                            h.state = plan.flowing();
                            if let Some(info) = info {
                                h.codec = Some(info.codec);
                                h.width = info.width;
                                h.height = info.height;
                            }
                        }).await;
                    }
                }
            }
        }
    };

    // On a stop, finalize the open segment: EOS into both branches, then wait for the muxer to
    // close the file (a detect-only stream has nothing to finalize). A failed camera's pipeline
    // cannot be trusted to pass an EOS on, and waiting for it held its reconnect back; what it
    // left open is recovered below, as the start-up reconcile would.
    if matches!(end, RunEnd::Stopped) && stream.finish() {
        let deadline = tokio::time::sleep(FINALIZE_TIMEOUT);
        tokio::pin!(deadline);
        // Fragments the muxer opened after the EOS went in: cut by the stop, so indexed only
        // if they play, as the reconcile would.
        let mut late = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                message = messages.next() => {
                    // Only the bus closing ends the wait: other messages (state changes, stream
                    // status) keep coming meanwhile, and ending on one of them left the last
                    // segment playable but unindexed until the next start's reconcile.
                    let Some(message) = message else { break };
                    match super::pipeline::classify(&message) {
                        // A fragment the muxer opened just before the EOS is closed by it too.
                        Some(PipelineEvent::FragmentOpened { path, running_time }) => {
                            late.insert(path.clone());
                            opened(&stream, &mut open, path, running_time);
                        }
                        Some(PipelineEvent::FragmentClosed { path, running_time }) => {
                            if late.contains(&path) && !plays(&path).await {
                                tracing::debug!(camera = %id, path = %path.display(), "a fragment cut by the stop does not play; start-up reconcile will move it aside");
                                open.remove(&path);
                                continue;
                            }
                            close_fragment(ctx, camera, &stream, &mut open, path, running_time).await;
                        }
                        // The pipeline's EOS can come before the muxer reports its last file closed.
                        Some(PipelineEvent::Eos) if open.is_empty() => break,
                        _ => {}
                    }
                }
            }
        }
    }
    ctx.lock_live().remove(id);
    drop(stream);
    // What the muxer left open: a failed stream's segment, or one a stop could not finalize in
    // time. The pipeline is gone, so the file is complete as it stands: index it now if it
    // plays (the next start's reconcile would, but the timeline would miss it until then).
    for path in open.keys() {
        recover_left_open(ctx, id, path).await;
    }
    end
}

/// Indexes (or moves aside) one fragment the muxer never finalized; an empty one, from a stream
/// that died before sending data, is removed.
async fn recover_left_open(ctx: &MediaContext, id: &str, path: &Path) {
    match std::fs::metadata(path) {
        // Gone, with the disk that held it perhaps: nothing to move aside here, and the next
        // start's reconcile (behind its marker check) decides about the row.
        Err(_) => return,
        Ok(m) if m.len() == 0 => {
            let _ = std::fs::remove_file(path);
            return;
        }
        Ok(_) => {}
    }
    let Ok(relative) = path.strip_prefix(&ctx.recordings_dir) else {
        tracing::error!(camera = %id, path = %path.display(), "segment outside the recordings directory; not indexed");
        return;
    };
    let relative = relative.to_string_lossy();
    match recover_file(
        &ctx.store,
        &ctx.recordings_dir,
        &relative,
        ctx.boot_started_ms,
    )
    .await
    {
        Ok(Recovered::Indexed { end_ms, bytes }) => {
            INSTRUMENTS.disk_written("segments", bytes);
            segment_indexed(ctx, id, end_ms).await;
        }
        Ok(Recovered::MovedAside | Recovered::Left) => {}
        Err(e) => {
            tracing::error!(camera = %id, path = %path.display(), error = %e, "cannot index a segment left open; start-up reconcile will look at it again")
        }
    }
}

/// Whether a closed fragment has frames a player can show.
async fn plays(path: &Path) -> bool {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        super::probe::probe_segment(&path).is_ok_and(|p| p.playable())
    })
    .await
    .unwrap_or(false)
}

/// Notes a fragment the muxer opened, with its start: from its name (its first frame's time),
/// else from the running time.
fn opened(
    stream: &StreamPipeline,
    open: &mut HashMap<PathBuf, i64>,
    path: PathBuf,
    running_time: gst::ClockTime,
) {
    let element = stream.pipeline.upcast_ref::<gst::Element>();
    let start = start_from_name(&path.to_string_lossy())
        .unwrap_or_else(|| stream.stats.wall_ms(element, running_time));
    open.insert(path, start);
}

/// Indexes a closed fragment: fsync the file and its directories, then insert the row.
async fn close_fragment(
    ctx: &MediaContext,
    camera: &Camera,
    stream: &StreamPipeline,
    open: &mut HashMap<PathBuf, i64>,
    path: PathBuf,
    end_rt: gst::ClockTime,
) {
    let id = camera.id();
    let Some(start_ms) = open.remove(&path) else {
        tracing::warn!(camera = %id, path = %path.display(), "closed a fragment that was never opened; start-up reconcile will look at it");
        return;
    };
    // A fragment ends where the next one starts (both named from their first frame, so the
    // index has no seams within a run); only the last fragment of a run takes its end from
    // the close message, whose running time splitmuxsink reports less reliably under load.
    let element = stream.pipeline.upcast_ref::<gst::Element>();
    let end_ms = open
        .values()
        .copied()
        .filter(|next| *next > start_ms)
        .min()
        .unwrap_or_else(|| stream.stats.wall_ms(element, end_rt).max(start_ms));
    let info = stream
        .stats
        .info
        .lock()
        .ok()
        .and_then(|i| i.clone())
        .unwrap_or_default();
    let synced = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || sync_segment(&path)).await
    };
    let bytes = match synced {
        Ok(Ok(0)) => {
            let _ = std::fs::remove_file(&path);
            return;
        }
        Ok(Ok(bytes)) => {
            INSTRUMENTS.disk_written("segments", bytes);
            bytes
        }
        Ok(Err(e)) => {
            tracing::error!(camera = %id, path = %path.display(), error = %e, "cannot make a segment durable; not indexed");
            return;
        }
        Err(e) => {
            tracing::error!(camera = %id, error = %e, "segment sync task failed");
            return;
        }
    };
    let Ok(relative) = path.strip_prefix(&ctx.recordings_dir) else {
        tracing::error!(camera = %id, path = %path.display(), "segment outside the recordings directory; not indexed");
        return;
    };
    let segment = NewSegment {
        camera_id: id.to_string(),
        start_ms,
        end_ms,
        path: relative.to_string_lossy().into_owned(),
        bytes,
        codec: if info.codec.is_empty() {
            "h264".into()
        } else {
            info.codec
        },
        width: info.width,
        height: info.height,
        recovered: false,
    };
    let boot_started_ms = ctx.boot_started_ms;
    let inserted = ctx
        .store
        .write(move |c| {
            Ok::<_, StoreError>(index::insert_segment(c, &segment, boot_started_ms)?.new_gap)
        })
        .await;
    match inserted {
        Ok(gap) => {
            if let Some(g) = gap {
                tracing::warn!(camera = %id, seconds = (g.end_ms - g.start_ms) / 1000, reason = %g.reason, "recording gap");
            }
            segment_indexed(ctx, id, end_ms).await;
        }
        Err(e) => {
            tracing::error!(camera = %id, path = %path.display(), error = %e, "cannot index a segment")
        }
    }
}

/// What follows a segment's row, however it was indexed: the camera's health shows it, and
/// retention counts it against the disk.
async fn segment_indexed(ctx: &MediaContext, id: &str, end_ms: i64) {
    let at = chrono::DateTime::from_timestamp_millis(end_ms);
    ctx.health.record(id, |h| h.last_segment_at = at).await;
    ctx.retention.nudge();
}

/// `host:port` of an RTSP URL, for the reachability probe.
fn tcp_address(url: &str) -> Option<String> {
    let host_port = super::url::host_port(url)?;
    let default_port = if url.starts_with("rtsps://") {
        322
    } else {
        554
    };
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host_port.ends_with(']');
    Some(if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    })
}

/// Waits `delay`, or less when the camera's port goes from refusing to accepting.
async fn wait_before_retry(addr: Option<&str>, delay: Duration, stop: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + delay;
    let reachable = |addr: String| async move {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await,
            Ok(Ok(_))
        )
    };
    let mut was_down = match addr {
        Some(a) => !reachable(a.to_string()).await,
        None => false,
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return;
        }
        let step = (deadline - now).min(Duration::from_secs(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(step) => {}
        }
        if let Some(a) = addr {
            let up = reachable(a.to_string()).await;
            if was_down && up {
                return;
            }
            was_down = !up;
        }
    }
}

/// fps and bitrate over the last few seconds, from the stream's counters.
#[derive(Default)]
struct RateMeter {
    last: Option<(Instant, u64, u64)>,
}

impl RateMeter {
    /// Returns `(fps, kbps)` once at least 2 s have passed since the previous sample.
    fn sample(&mut self, stats: &super::pipeline::StreamStats) -> (Option<f64>, Option<f64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (
            Instant::now(),
            stats.frames.load(Relaxed),
            stats.bytes.load(Relaxed),
        );
        let Some((t0, f0, b0)) = self.last else {
            self.last = Some(now);
            return (None, None);
        };
        let secs = now.0.duration_since(t0).as_secs_f64();
        if secs < 2.0 {
            return (None, None);
        }
        self.last = Some(now);
        let fps = (now.1 - f0) as f64 / secs;
        let kbps = (now.2 - b0) as f64 * 8.0 / secs / 1000.0;
        (Some((fps * 10.0).round() / 10.0), Some(kbps.round()))
    }
}
