//! Reads a recorded file end to end to learn what is playable in it: codec, size, frames and
//! duration. Used for files a crash left without a row, where no muxer ever wrote the totals.
//!
//! ```text
//! filesrc ─ matroskademux ─ fakesink (sync=false)   + probe: caps, first keyframe, PTS span
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::gst_job::{GstJobError, bus, element, static_pad};

/// What a file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeResult {
    pub codec: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub frames: u64,
    pub first_is_keyframe: bool,
    /// From the first frame's start to the last frame's end.
    pub duration: Duration,
    /// The demuxer stopped with an error after the last readable frame (a file cut by a crash).
    pub truncated: bool,
}

impl ProbeResult {
    /// Something a player can show: at least one frame, starting on a keyframe.
    pub fn playable(&self) -> bool {
        self.frames > 0 && self.first_is_keyframe
    }
}

#[derive(Default)]
struct Tally {
    result: ProbeResult,
    first_pts: Option<gst::ClockTime>,
    last_end: Option<gst::ClockTime>,
}

/// Demuxes `path` as fast as the disk allows; blocking (call it from a blocking thread).
pub fn probe_segment(path: &Path) -> Result<ProbeResult, GstJobError> {
    let pipeline = gst::Pipeline::new();
    let src = element("filesrc")?;
    src.set_property("location", path.to_string_lossy().as_ref());
    let demux = element("matroskademux")?;
    let sink = element("fakesink")?;
    sink.set_property("sync", false);
    pipeline
        .add_many([&src, &demux, &sink])
        .map_err(GstJobError::assemble)?;
    src.link(&demux).map_err(GstJobError::assemble)?;
    let sink_pad = static_pad(&sink, "sink")?;
    demux.connect_pad_added(move |_, pad| {
        if !sink_pad.is_linked() {
            let _ = pad.link(&sink_pad);
        }
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counted = tally.clone();
    static_pad(&sink, "sink")?.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let Ok(mut t) = counted.lock() else {
                return gst::PadProbeReturn::Ok;
            };
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => {
                    if t.result.frames == 0 {
                        t.result.first_is_keyframe =
                            !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    }
                    t.result.frames += 1;
                    if let Some(pts) = b.pts() {
                        t.first_pts = Some(t.first_pts.map_or(pts, |f| f.min(pts)));
                        let end = pts + b.duration().unwrap_or(gst::ClockTime::ZERO);
                        t.last_end = Some(t.last_end.map_or(end, |l| l.max(end)));
                    }
                }
                Some(gst::PadProbeData::Event(e)) => {
                    if let gst::EventView::Caps(c) = e.view()
                        && let Some(s) = c.caps().structure(0)
                    {
                        t.result.codec = match s.name().as_str() {
                            "video/x-h264" => Some("h264".into()),
                            "video/x-h265" => Some("h265".into()),
                            other => Some(other.to_string()),
                        };
                        t.result.width = s.get::<i32>("width").ok();
                        t.result.height = s.get::<i32>("height").ok();
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );

    let bus = bus(&pipeline)?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(GstJobError::state(format!("reading {}", path.display())))?;
    let mut truncated = false;
    let mut error = None;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(30)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                truncated = true;
                error = Some(e.error().to_string());
                break;
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    if t.result.frames == 0 {
        return Err(match error {
            Some(message) => GstJobError::failed(format!("reading {}", path.display()), message),
            None => GstJobError::Empty("no video frames"),
        });
    }
    t.result.truncated = truncated;
    if let (Some(first), Some(end)) = (t.first_pts, t.last_end) {
        t.result.duration = Duration::from_nanos(end.saturating_sub(first).nseconds());
    }
    Ok(t.result.clone())
}
