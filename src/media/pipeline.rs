//! One camera stream's GStreamer pipeline.
//!
//! ```text
//! rtspsrc ─(video only)─ depay ─ parse ─ tee ─┬─ queue ─ splitmuxsink (matroskamux → unbuffered filesink)
//!                                   │         └─ (the sampler attaches its leaky branch here)
//!                                   └─ probe: frames, bytes, keyframes, caps, newest keyframe
//! ```
//!
//! Invariant M1: one RTSP session per stream, and recording is stream copy: nothing on the
//! recording path decodes or encodes. The frames branch is leaky, so a slow consumer of frames
//! (snapshot, sampler) can never stall recording. Invariant S4: Matroska through an unbuffered
//! `filesink` stays playable up to the last written cluster when power is cut mid-file.
//!
//! Streaming-thread callbacks here only copy references, update atomics and return; they never
//! block on the store or hold a strong reference to the pipeline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::config::model::RtspTransport;
use crate::config::secret::{Secret, redact_url};

/// What to build.
pub struct StreamSpec {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub transport: RtspTransport,
    /// `None`: no recording branch (a stream used only for frames).
    pub record: Option<RecordSpec>,
    /// Consumers of this stream's encoded frames (samplers); empty for none.
    pub taps: Vec<Arc<TapSlot>>,
}

/// One encoded frame as a [`FrameTap`] sees it.
pub struct EncodedFrame<'a> {
    pub buffer: &'a gst::Buffer,
    pub caps: &'a gst::Caps,
    /// `h264` or `h265`.
    pub codec: &'a str,
    /// Wall clock of the frame (its RTP time on our clock), Unix ms.
    pub captured_ms: i64,
    pub keyframe: bool,
    /// The stream's keyframe interval observed so far (0: not yet known).
    pub gop_ms: u64,
}

/// Something that wants a camera stream's encoded frames: a sampler.
///
/// `offer` runs on the camera's streaming thread for every frame, so it must only copy
/// references, decide, and return: never block, never wait for a lock held elsewhere for long.
pub trait FrameTap: Send + Sync {
    fn offer(&self, frame: &EncodedFrame<'_>);
}

/// Where a sampler plugs into a stream; the stream pipeline reads it on every frame, so taps come
/// and go without rebuilding the pipeline.
#[derive(Default)]
pub struct TapSlot {
    tap: Mutex<Option<Arc<dyn FrameTap>>>,
}

impl TapSlot {
    pub fn set(&self, tap: Option<Arc<dyn FrameTap>>) {
        *self.tap.lock().unwrap_or_else(|e| e.into_inner()) = tap;
    }

    fn get(&self) -> Option<Arc<dyn FrameTap>> {
        self.tap.lock().ok().and_then(|t| t.clone())
    }
}

pub struct RecordSpec {
    /// `recordings/<camera>`; files go to `<dir>/<YYYY-MM-DD>/<start>.mkv`.
    pub dir: PathBuf,
    /// Target segment length; the GOP decides the real one (cuts happen on keyframes).
    pub segment: Duration,
}

/// Codec and size of the stream, from the negotiated caps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamInfo {
    pub codec: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

/// Figures the streaming thread keeps for the supervisor; all lock-free except `info`.
pub struct StreamStats {
    created: Instant,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub keyframes: AtomicU64,
    /// Milliseconds since `created` at the last buffer (0: none yet).
    last_buffer_ms: AtomicU64,
    /// Running time of the last keyframe, in ms, and the interval before it.
    last_keyframe_rt_ms: AtomicU64,
    pub gop_ms: AtomicU64,
    pub info: Mutex<Option<StreamInfo>>,
    /// The newest keyframe with its caps: what a snapshot decodes when nobody samples frames.
    pub latest_keyframe: Mutex<Option<gst::Sample>>,
    /// The stream's current caps, which a keyframe needs to be decoded on its own.
    caps: Mutex<Option<gst::Caps>>,
    /// The current segment, to turn buffer timestamps into running time.
    segment: Mutex<Option<gst::FormattedSegment<gst::ClockTime>>>,
    /// Wall clock (Unix ms) at running time zero, fixed on first use so that file names and
    /// segment rows use the same mapping.
    wall_at_zero_ms: OnceLock<i64>,
}

impl StreamStats {
    fn new() -> Self {
        StreamStats {
            created: Instant::now(),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            keyframes: AtomicU64::new(0),
            last_buffer_ms: AtomicU64::new(0),
            last_keyframe_rt_ms: AtomicU64::new(0),
            gop_ms: AtomicU64::new(0),
            info: Mutex::new(None),
            latest_keyframe: Mutex::new(None),
            caps: Mutex::new(None),
            segment: Mutex::new(None),
            wall_at_zero_ms: OnceLock::new(),
        }
    }

    /// Time since the last buffer, or since the pipeline was built if none came yet.
    pub fn idle_for(&self) -> Duration {
        let now = self.created.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_buffer_ms.load(Ordering::Relaxed)))
    }

    pub fn has_flowed(&self) -> bool {
        self.last_buffer_ms.load(Ordering::Relaxed) > 0
    }

    /// Wall clock (Unix ms) of a running time, using the pipeline's clock and base time.
    pub fn wall_ms(&self, element: &gst::Element, running_time: gst::ClockTime) -> i64 {
        let zero = *self.wall_at_zero_ms.get_or_init(|| {
            let now_wall = chrono::Utc::now().timestamp_millis();
            let running_now = match (element.clock(), element.base_time()) {
                (Some(clock), Some(base)) => clock.time().saturating_sub(base).mseconds() as i64,
                _ => 0,
            };
            now_wall - running_now
        });
        zero + running_time.mseconds() as i64
    }

    fn on_buffer(&self, buffer: &gst::Buffer) {
        let now = (self.created.elapsed().as_millis() as u64).max(1);
        self.last_buffer_ms.store(now, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(buffer.size() as u64, Ordering::Relaxed);
        if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
            self.keyframes.fetch_add(1, Ordering::Relaxed);
            // A reference, not a copy: the newest keyframe stays in memory for snapshots.
            let caps = self.caps.lock().ok().and_then(|c| c.clone());
            if let (Some(caps), Ok(mut slot)) = (caps, self.latest_keyframe.lock()) {
                *slot = Some(gst::Sample::builder().buffer(buffer).caps(&caps).build());
            }
            if let Some(pts) = buffer.pts() {
                let rt = pts.mseconds();
                let previous = self.last_keyframe_rt_ms.swap(rt, Ordering::Relaxed);
                if previous > 0 && rt > previous {
                    self.gop_ms.store(rt - previous, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A built pipeline; set to `Null` when dropped, on every exit path.
pub struct StreamPipeline {
    pub pipeline: gst::Pipeline,
    pub stats: Arc<StreamStats>,
    record_queue: Option<gst::Element>,
    smux: Option<gst::Element>,
}

/// A bus message the supervisor acts on.
#[derive(Debug)]
pub enum PipelineEvent {
    FragmentOpened {
        path: PathBuf,
        running_time: gst::ClockTime,
    },
    FragmentClosed {
        path: PathBuf,
        running_time: gst::ClockTime,
    },
    /// Masked text: an element's error and its debug detail.
    Error(String),
    Eos,
}

/// Turns a bus message into an event, or `None` for messages nobody needs.
pub fn classify(msg: &gst::Message) -> Option<PipelineEvent> {
    use gst::MessageView;
    match msg.view() {
        MessageView::Error(e) => {
            // GStreamer's debug text ends with the useful detail ("Not Found", "Unauthorized")
            // after source-file locations nobody on a box can use.
            let detail = e
                .debug()
                .and_then(|d| {
                    d.lines()
                        .last()
                        .map(|l| l.trim().trim_end_matches(':').to_string())
                })
                .filter(|d| !d.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            let text = format!("{}{detail}", e.error().to_string().trim_end_matches('.'));
            Some(PipelineEvent::Error(redact_url(&text)))
        }
        MessageView::Eos(_) => Some(PipelineEvent::Eos),
        MessageView::Element(e) => {
            let s = e.structure()?;
            let path = PathBuf::from(s.get::<String>("location").ok()?);
            let running_time = s
                .get::<u64>("running-time")
                .ok()
                .map(gst::ClockTime::from_nseconds)?;
            match s.name().as_str() {
                "splitmuxsink-fragment-opened" => {
                    Some(PipelineEvent::FragmentOpened { path, running_time })
                }
                "splitmuxsink-fragment-closed" => {
                    Some(PipelineEvent::FragmentClosed { path, running_time })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

impl From<gst::glib::BoolError> for BuildError {
    fn from(e: gst::glib::BoolError) -> Self {
        BuildError(format!("{e} (is the GStreamer plugin package installed?)"))
    }
}

impl StreamPipeline {
    pub fn build(spec: StreamSpec) -> Result<StreamPipeline, BuildError> {
        let pipeline = gst::Pipeline::new();
        let stats = Arc::new(StreamStats::new());
        // Over TCP packets arrive in order, so the jitterbuffer only needs to turn RTP time into
        // buffer time: no latency and no clock slaving (timestamps follow the camera's RTP
        // clock, which keeps them monotonic for the muxer, and saves a timer thread's wakeups).
        // Over UDP it reorders, which needs its latency.
        let (latency_ms, buffer_mode) = match spec.transport {
            RtspTransport::Tcp => (0u32, "none"),
            RtspTransport::Udp => (200u32, "auto"),
        };
        let src = gst::ElementFactory::make("rtspsrc")
            .property("location", &spec.url)
            .property("latency", latency_ms)
            .property_from_str("buffer-mode", buffer_mode)
            // A camera that accepts the connection but never answers fails within this time.
            .property("tcp-timeout", 10_000_000u64)
            .property_from_str(
                "protocols",
                match spec.transport {
                    RtspTransport::Tcp => "tcp",
                    RtspTransport::Udp => "udp",
                },
            )
            .build()?;
        if let Some(user) = &spec.username {
            src.set_property("user-id", user);
        }
        if let Some(pw) = &spec.password {
            src.set_property("user-pw", pw.expose());
        }
        // Branches come and go (recording now; the sampler attaches its own); a tee with none
        // must not fail the stream.
        let tee = gst::ElementFactory::make("tee")
            .name("tee")
            .property("allow-not-linked", true)
            .build()?;
        pipeline.add_many([&src, &tee])?;

        let (record_queue, smux) = match spec.record {
            Some(record) => {
                let (queue, smux) = add_recording_branch(&pipeline, &tee, record, stats.clone())?;
                (Some(queue), Some(smux))
            }
            None => (None, None),
        };

        // Only the first video stream is set up: audio and metadata would cost bandwidth and
        // leave pads nobody links.
        let chosen = Arc::new(Mutex::new(false));
        src.connect("select-stream", false, move |args| {
            let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok());
            let is_video = caps
                .as_ref()
                .and_then(|c| c.structure(0))
                .and_then(|s| s.get::<&str>("media").ok())
                .is_some_and(|m| m == "video");
            let mut taken = chosen.lock().unwrap_or_else(|e| e.into_inner());
            let select = is_video && !*taken;
            *taken |= select;
            Some(select.to_value())
        });
        let weak_pipeline = pipeline.downgrade();
        let link_stats = stats.clone();
        let taps = spec.taps;
        src.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak_pipeline.upgrade() else {
                return;
            };
            if let Err(e) = link_video_pad(&pipeline, pad, &link_stats, taps.clone()) {
                let element = pipeline.upcast_ref::<gst::Element>();
                gst::element_error!(element, gst::StreamError::CodecNotFound, ("{}", e.0));
            }
        });

        Ok(StreamPipeline {
            pipeline,
            stats,
            record_queue,
            smux,
        })
    }

    /// Sets the target segment length from the GOP observed: splitmuxsink cuts at the first
    /// keyframe past `max-size-time` minus the GOP in flight, so the target gets half a GOP added.
    pub fn tune_segment_length(&self, segment: Duration, gop: Duration) {
        if let Some(smux) = &self.smux {
            let target = segment + gop / 2;
            smux.set_property("max-size-time", target.as_nanos() as u64);
        }
    }

    /// Ends the recording branch with EOS so the open segment is finalized; the bus then
    /// reports the closed fragment. The EOS enters at the branch's queue, so it works whatever
    /// state the source is in and never waits for the receive thread. Returns whether there was
    /// a recording branch to finish (a detect-only stream has none).
    pub fn finish(&self) -> bool {
        match self
            .record_queue
            .as_ref()
            .and_then(|q| q.static_pad("sink"))
        {
            Some(pad) => {
                pad.send_event(gst::event::Eos::new());
                true
            }
            None => false,
        }
    }
}

impl Drop for StreamPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn add_recording_branch(
    pipeline: &gst::Pipeline,
    tee: &gst::Element,
    record: RecordSpec,
    stats: Arc<StreamStats>,
) -> Result<(gst::Element, gst::Element), BuildError> {
    // splitmuxsink blocks its input while it finishes a GOP on the output side; without a queue
    // of its own that would block the RTSP receive thread and the tee (a deadlock seen under
    // load). Bounded: a disk that stalls longer than this backs up into the RTSP session, which
    // the stall watchdog notices, instead of silently growing memory.
    let queue = gst::ElementFactory::make("queue")
        .property("max-size-buffers", 0u32)
        .property("max-size-bytes", 64u32 << 20)
        .property("max-size-time", 10_000_000_000u64)
        .build()?;
    let unbuffered = gst::Structure::builder("properties")
        .field("buffer-mode", 2i32)
        .field("sync", false)
        .build();
    let smux = gst::ElementFactory::make("splitmuxsink")
        .property("async-finalize", true)
        .property("muxer-factory", "matroskamux")
        .property("sink-factory", "filesink")
        .property("sink-properties", unbuffered)
        // Until the GOP is known, assume one of up to 2 s (see `tune_segment_length`).
        .property(
            "max-size-time",
            (record.segment + Duration::from_secs(1)).as_nanos() as u64,
        )
        .build()?;
    let dir = record.dir;
    smux.connect("format-location-full", false, move |args| {
        let element = args[0].get::<gst::Element>().ok()?;
        let sample = args[2].get::<gst::Sample>().ok()?;
        let running_time = sample
            .buffer()
            .and_then(|b| b.pts())
            .zip(sample.segment())
            .and_then(|(pts, seg)| seg.downcast_ref::<gst::ClockTime>()?.to_running_time(pts))
            .unwrap_or(gst::ClockTime::ZERO);
        let start_ms = stats.wall_ms(&element, running_time);
        match segment_path(&dir, start_ms) {
            Ok(path) => Some(path.to_string_lossy().to_value()),
            Err(e) => {
                gst::element_error!(
                    element,
                    gst::ResourceError::OpenWrite,
                    ("cannot create {}: {e}", dir.display())
                );
                None
            }
        }
    });
    pipeline.add_many([&queue, &smux])?;
    gst::Element::link_many([tee, &queue, &smux])?;
    Ok((queue, smux))
}

/// `<dir>/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.mmmZ>.mkv` for a segment starting at `start_ms`; the
/// date directory is created (never `dir` itself: a camera directory that vanished means the
/// recordings disk went away, and footage must not land on the disk below), and a name already
/// taken gets a suffix.
pub fn segment_path(dir: &Path, start_ms: i64) -> std::io::Result<PathBuf> {
    let t = chrono::DateTime::from_timestamp_millis(start_ms).unwrap_or_default();
    let day = dir.join(t.format("%Y-%m-%d").to_string());
    match std::fs::create_dir(&day) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let stem = t.format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let mut path = day.join(format!("{stem}.mkv"));
    let mut n = 1;
    while path.exists() {
        path = day.join(format!("{stem}-{n}.mkv"));
        n += 1;
    }
    Ok(path)
}

/// Hands one frame to every attached tap, with its capture time.
fn offer_to_taps(
    taps: &[Arc<TapSlot>],
    stats: &StreamStats,
    pad: &gst::Pad,
    buffer: &gst::Buffer,
    codec: &str,
) {
    let attached: Vec<Arc<dyn FrameTap>> = taps.iter().filter_map(|t| t.get()).collect();
    if attached.is_empty() {
        return;
    }
    let Some(caps) = stats.caps.lock().ok().and_then(|c| c.clone()) else {
        return;
    };
    let running = buffer
        .pts()
        .zip(stats.segment.lock().ok().and_then(|s| s.clone()))
        .and_then(|(pts, seg)| seg.to_running_time(pts));
    let (Some(running), Some(element)) = (running, pad.parent_element()) else {
        return;
    };
    let frame = EncodedFrame {
        buffer,
        caps: &caps,
        codec,
        captured_ms: stats.wall_ms(&element, running),
        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
        gop_ms: stats.gop_ms.load(Ordering::Relaxed),
    };
    for tap in attached {
        tap.offer(&frame);
    }
}

/// Links a new rtspsrc pad: depayloader and parser for its codec, then the tee.
fn link_video_pad(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    stats: &Arc<StreamStats>,
    taps: Vec<Arc<TapSlot>>,
) -> Result<(), BuildError> {
    let caps = pad
        .current_caps()
        .ok_or_else(|| BuildError("stream pad without caps".into()))?;
    let s = caps
        .structure(0)
        .ok_or_else(|| BuildError("empty caps".into()))?;
    let encoding = s
        .get::<&str>("encoding-name")
        .unwrap_or("")
        .to_ascii_uppercase();
    let (depay, parse, codec) = match encoding.as_str() {
        "H264" => ("rtph264depay", "h264parse", "h264"),
        "H265" => ("rtph265depay", "h265parse", "h265"),
        other => {
            return Err(BuildError(format!(
                "unsupported video codec {other:?}: cameras must send H.264 or H.265"
            )));
        }
    };
    let depay = gst::ElementFactory::make(depay).build()?;
    // SPS/PPS before every keyframe, so every segment and every keyframe decodes on its own.
    let parse = gst::ElementFactory::make(parse)
        .property("config-interval", -1i32)
        .build()?;
    let tee = pipeline
        .by_name("tee")
        .ok_or_else(|| BuildError("tee missing".into()))?;
    pipeline.add_many([&depay, &parse])?;
    gst::Element::link_many([&depay, &parse, &tee])?;
    for e in [&depay, &parse] {
        e.sync_state_with_parent()?;
    }
    let sink = depay
        .static_pad("sink")
        .ok_or_else(|| BuildError("depayloader without sink pad".into()))?;
    pad.link(&sink)
        .map_err(|e| BuildError(format!("cannot link the camera's stream: {e:?}")))?;

    let tee_sink = tee
        .static_pad("sink")
        .ok_or_else(|| BuildError("tee without sink pad".into()))?;
    let probe_stats = stats.clone();
    let codec = codec.to_string();
    tee_sink.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(buffer)) => {
                    probe_stats.on_buffer(buffer);
                    if !taps.is_empty() {
                        offer_to_taps(&taps, &probe_stats, pad, buffer, &codec);
                    }
                }
                Some(gst::PadProbeData::Event(event)) => {
                    if let gst::EventView::Segment(seg) = event.view()
                        && let Ok(mut slot) = probe_stats.segment.lock()
                    {
                        *slot = seg.segment().downcast_ref::<gst::ClockTime>().cloned();
                    }
                    if let gst::EventView::Caps(c) = event.view() {
                        if let Ok(mut slot) = probe_stats.caps.lock() {
                            *slot = Some(c.caps_owned());
                        }
                        let s = c.caps().structure(0);
                        let info = StreamInfo {
                            codec: codec.clone(),
                            width: s.and_then(|s| s.get::<i32>("width").ok()),
                            height: s.and_then(|s| s.get::<i32>("height").ok()),
                        };
                        if let Ok(mut slot) = probe_stats.info.lock() {
                            *slot = Some(info);
                        }
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    Ok(())
}
