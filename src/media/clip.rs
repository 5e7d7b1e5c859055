//! Clip export: a time range of one camera's recordings as one Matroska file, by stream copy
//! across segment boundaries.
//!
//! ```text
//! read:  splitmuxsrc (the segments, as one stream) ─ parse ─ appsink      seek [from, to], key-unit
//! write: appsrc (timestamps rebased to zero) ─ matroskamux ─ filesink
//! ```
//!
//! Two pipelines so the writer never sees the buffers the reader prerolled before the seek. The
//! clip starts on the keyframe at or before `from` and ends at `to`, so it is at most one GOP
//! longer than asked. Holes between segments are collapsed in the file and listed in the report.

use std::path::{Path, PathBuf};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use super::gst_job::{GstJobError, NullOnDrop, bus, bus_error, element, static_pad, wait_for};
use super::index::{GAP_THRESHOLD_MS, Segment};

/// Longest the reader or the writer may stay silent before the export is abandoned.
const TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(10);

/// What an export produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipReport {
    pub camera_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Wall clock of the clip's first frame (the keyframe at or before `from_ms`).
    pub first_frame_ms: i64,
    pub duration_ms: i64,
    pub frames: u64,
    pub bytes: u64,
    pub segments: usize,
    /// Parts of the requested range with no recording, in wall-clock milliseconds.
    pub gaps: Vec<(i64, i64)>,
}

/// Holes in `[from_ms, to_ms)` not covered by `segments` (sorted by start), longer than the gap
/// threshold.
pub fn holes(segments: &[Segment], from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
    let mut holes = Vec::new();
    let mut covered_to = from_ms;
    for s in segments.iter().take_while(|s| s.start_ms < to_ms) {
        if s.start_ms - covered_to > GAP_THRESHOLD_MS {
            holes.push((covered_to, s.start_ms));
        }
        covered_to = covered_to.max(s.end_ms);
    }
    if to_ms - covered_to > GAP_THRESHOLD_MS {
        holes.push((covered_to, to_ms));
    }
    holes
}

/// Exports `[from_ms, to_ms)` from `segments` (sorted, overlapping the range, files under
/// `recordings_dir`) into `output`. Blocking.
pub fn export(
    recordings_dir: &Path,
    segments: &[Segment],
    from_ms: i64,
    to_ms: i64,
    output: &Path,
) -> Result<ClipReport, GstJobError> {
    let first = segments
        .first()
        .ok_or(GstJobError::Empty("no recorded footage in that range"))?;
    let codec = first.codec.clone();
    let files: Vec<String> = segments
        .iter()
        .map(|s| recordings_dir.join(&s.path).to_string_lossy().into_owned())
        .collect();
    // Positions in the concatenated stream: each segment contributes its own duration.
    let offset_ms = (from_ms - first.start_ms).max(0);
    let total_ms: i64 = segments.iter().map(|s| s.end_ms - s.start_ms).sum();
    let last = segments.last().unwrap_or(first);
    let stop_ms = (total_ms - (last.end_ms - to_ms).max(0)).max(offset_ms);

    let reader = gst::Pipeline::new();
    let src = element("splitmuxsrc")?;
    src.connect("format-location", false, move |_| Some(files.to_value()));
    let parse = element(if codec == "h265" {
        "h265parse"
    } else {
        "h264parse"
    })?;
    let sink = gst_app::AppSink::builder().sync(false).build();
    reader
        .add_many([&src, &parse, sink.upcast_ref()])
        .map_err(GstJobError::assemble)?;
    parse.link(&sink).map_err(GstJobError::assemble)?;
    let parse_sink = static_pad(&parse, "sink")?;
    src.connect_pad_added(move |_, pad| {
        if !parse_sink.is_linked() {
            let _ = pad.link(&parse_sink);
        }
    });
    let _reader_guard = NullOnDrop(&reader);
    reader
        .set_state(gst::State::Paused)
        .map_err(GstJobError::state("opening the recordings"))?;
    let reader_bus = bus(&reader)?;
    let done = |m: &gst::Message| matches!(m.view(), gst::MessageView::AsyncDone(_));
    wait_for(&reader_bus, TIMEOUT, "opening the recordings", done)?;
    reader
        .seek(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE,
            gst::SeekType::Set,
            gst::ClockTime::from_mseconds(offset_ms as u64),
            gst::SeekType::Set,
            gst::ClockTime::from_mseconds(stop_ms as u64),
        )
        .map_err(|e| GstJobError::failed("seeking in the recordings", e))?;
    wait_for(&reader_bus, TIMEOUT, "seeking in the recordings", done)?;
    reader
        .set_state(gst::State::Playing)
        .map_err(GstJobError::state("reading the recordings"))?;

    let writer = gst::Pipeline::new();
    let appsrc = gst_app::AppSrc::builder().format(gst::Format::Time).build();
    let mux = element("matroskamux")?;
    let file = element("filesink")?;
    file.set_property("location", output.to_string_lossy().as_ref());
    writer
        .add_many([appsrc.upcast_ref(), &mux, &file])
        .map_err(GstJobError::assemble)?;
    gst::Element::link_many([appsrc.upcast_ref(), &mux, &file]).map_err(GstJobError::assemble)?;
    let _writer_guard = NullOnDrop(&writer);

    let mut base: Option<gst::ClockTime> = None;
    // Position of the first frame in the concatenated segments (stream time), for its wall clock.
    let mut first_position: Option<gst::ClockTime> = None;
    let mut last_end = gst::ClockTime::ZERO;
    let mut frames = 0u64;
    let mut started = false;
    while let Some(sample) = sink.try_pull_sample(TIMEOUT) {
        let Some(buffer) = sample.buffer() else {
            continue;
        };
        if !started {
            appsrc.set_caps(sample.caps_owned().as_ref());
            writer
                .set_state(gst::State::Playing)
                .map_err(GstJobError::state(format!("writing {}", output.display())))?;
            started = true;
        }
        let pts = buffer.pts();
        if first_position.is_none() {
            first_position = pts
                .zip(sample.segment())
                .and_then(|(p, seg)| seg.downcast_ref::<gst::ClockTime>()?.to_stream_time(p));
        }
        let zero = *base.get_or_insert_with(|| {
            buffer
                .dts()
                .into_iter()
                .chain(pts)
                .min()
                .unwrap_or_default()
        });
        let mut out = buffer.copy();
        {
            let b = out.make_mut();
            b.set_pts(pts.map(|t| t.saturating_sub(zero)));
            b.set_dts(buffer.dts().map(|t| t.saturating_sub(zero)));
        }
        if let Some(p) = pts {
            last_end = last_end.max(p.saturating_sub(zero) + buffer.duration().unwrap_or_default());
        }
        appsrc
            .push_buffer(out)
            .map_err(|e| GstJobError::failed("writing the clip", format!("{e:?}")))?;
        frames += 1;
    }
    if !sink.is_eos() {
        return Err(bus_error(
            &reader,
            "reading the recordings",
            GstJobError::Timeout {
                doing: "reading the recordings".into(),
                seconds: TIMEOUT.seconds(),
            },
        ));
    }
    if !started {
        return Err(GstJobError::Empty("no frames in that range"));
    }
    appsrc
        .end_of_stream()
        .map_err(|e| GstJobError::failed("finishing the clip", format!("{e:?}")))?;
    wait_for(&bus(&writer)?, TIMEOUT, "finishing the clip", |m| {
        matches!(m.view(), gst::MessageView::Eos(_))
    })?;
    drop(_writer_guard);
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    let first_offset_ms = first_position.map_or(offset_ms, |p| p.mseconds() as i64);
    Ok(ClipReport {
        camera_id: first.camera_id.clone(),
        from_ms,
        to_ms,
        first_frame_ms: first.start_ms + first_offset_ms,
        duration_ms: last_end.mseconds() as i64,
        frames,
        bytes,
        segments: segments.len(),
        gaps: holes(segments, from_ms, to_ms),
    })
}

/// Where the daemon keeps exported clips until they are fetched or expire.
pub fn clips_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("clips")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_ms: i64, end_ms: i64) -> Segment {
        Segment {
            id: 0,
            camera_id: "c".into(),
            start_ms,
            end_ms,
            path: String::new(),
            bytes: 0,
            codec: "h264".into(),
            width: None,
            height: None,
            recovered: false,
            evidence_locked: false,
        }
    }

    #[test]
    fn holes_in_a_range() {
        let segs = [
            seg(10_000, 20_000),
            seg(20_000, 30_000),
            seg(40_000, 50_000),
        ];
        assert_eq!(
            holes(&segs, 0, 60_000),
            vec![(0, 10_000), (30_000, 40_000), (50_000, 60_000)]
        );
        assert_eq!(holes(&segs, 12_000, 28_000), vec![]);
        assert_eq!(holes(&segs, 15_000, 45_000), vec![(30_000, 40_000)]);
    }
}
