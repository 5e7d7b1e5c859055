//! Still frames as JPEG: the newest keyframe of a live stream, or the frame at a recorded time.
//!
//! ```text
//! live:      appsrc (newest keyframe + its caps) ─ parse ─ decoder ─ videoconvert ─ jpegenc ─ appsink
//! recorded:  filesrc ─ matroskademux ─ parse ─ decoder ─ videoconvert ─ jpegenc ─ appsink (accurate seek)
//! ```
//!
//! Decoding happens here, on demand, never on the recording path. The decoder is the board's
//! (`media.h264_decoder`/`h265_decoder`); when that element is missing the software decoder is used
//! and a warning says so. Everything here blocks: call it from a blocking thread.

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::config::model::MediaConfig;

/// Longest a snapshot may take before it is abandoned.
const TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(10);

/// The decoder element to use for `codec`: the board's choice, or libav's when it is missing.
pub fn decoder_for(codec: &str, media: &MediaConfig) -> String {
    let (wanted, fallback) = match codec {
        "h265" => (&media.h265_decoder, "avdec_h265"),
        _ => (&media.h264_decoder, "avdec_h264"),
    };
    if gst::ElementFactory::find(wanted).is_some() {
        return wanted.clone();
    }
    tracing::warn!(element = %wanted, fallback, "board decoder missing; decoding in software");
    fallback.to_string()
}

fn parser_for(codec: &str) -> &'static str {
    if codec == "h265" {
        "h265parse"
    } else {
        "h264parse"
    }
}

fn jpeg_tail(
    pipeline: &gst::Pipeline,
    codec: &str,
    decoder: &str,
) -> Result<(gst::Element, gst_app::AppSink), String> {
    let make = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|e| format!("{name}: {e}"))
    };
    let parse = make(parser_for(codec))?;
    let decode = make(decoder)?;
    let convert = make("videoconvert")?;
    let encode = make("jpegenc")?;
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(1)
        .build();
    pipeline
        .add_many([&parse, &decode, &convert, &encode, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([&parse, &decode, &convert, &encode, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    Ok((parse, sink))
}

fn jpeg_bytes(sample: &gst::Sample) -> Result<Vec<u8>, String> {
    let buffer = sample.buffer().ok_or("no image")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    Ok(map.as_slice().to_vec())
}

/// Decodes one keyframe (a sample from the live stream, with its caps) into a JPEG.
pub fn keyframe_to_jpeg(
    keyframe: &gst::Sample,
    codec: &str,
    decoder: &str,
) -> Result<Vec<u8>, String> {
    let pipeline = gst::Pipeline::new();
    let caps = keyframe.caps().ok_or("keyframe without caps")?.to_owned();
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .build();
    pipeline.add(&src).map_err(|e| e.to_string())?;
    let (head, sink) = jpeg_tail(&pipeline, codec, decoder)?;
    src.link(&head).map_err(|e| e.to_string())?;
    let _guard = NullOnDrop(&pipeline);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let buffer = keyframe.buffer_owned().ok_or("keyframe without data")?;
    src.push_buffer(buffer)
        .map_err(|e| format!("decoder refused the keyframe: {e:?}"))?;
    src.end_of_stream().map_err(|e| format!("{e:?}"))?;
    let sample = sink
        .try_pull_sample(TIMEOUT)
        .ok_or_else(|| bus_error(&pipeline, "the decoder produced no image"))?;
    jpeg_bytes(&sample)
}

/// The frame at `offset` into a recorded file, as a JPEG.
pub fn frame_at(
    path: &Path,
    offset: Duration,
    codec: &str,
    decoder: &str,
) -> Result<Vec<u8>, String> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|e| e.to_string())?;
    let demux = gst::ElementFactory::make("matroskademux")
        .build()
        .map_err(|e| e.to_string())?;
    pipeline
        .add_many([&src, &demux])
        .map_err(|e| e.to_string())?;
    src.link(&demux).map_err(|e| e.to_string())?;
    let (head, sink) = jpeg_tail(&pipeline, codec, decoder)?;
    let head_pad = head.static_pad("sink").ok_or("parser without sink pad")?;
    demux.connect_pad_added(move |_, pad| {
        if !head_pad.is_linked() {
            let _ = pad.link(&head_pad);
        }
    });
    let _guard = NullOnDrop(&pipeline);
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| e.to_string())?;
    let bus = pipeline.bus().ok_or("no bus")?;
    wait_for(&bus, |m| matches!(m.view(), gst::MessageView::AsyncDone(_)))
        .map_err(|e| format!("the recording did not open: {e}"))?;
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::ClockTime::from_nseconds(offset.as_nanos() as u64),
        )
        .map_err(|e| format!("cannot seek in the recording: {e}"))?;
    wait_for(&bus, |m| matches!(m.view(), gst::MessageView::AsyncDone(_)))
        .map_err(|e| format!("seek did not complete: {e}"))?;
    let sample = sink
        .try_pull_preroll(TIMEOUT)
        .ok_or_else(|| bus_error(&pipeline, "no frame at that time"))?;
    jpeg_bytes(&sample)
}

/// Waits for a message matching `want`; an error message or the timeout ends the wait.
pub(super) fn wait_for(bus: &gst::Bus, want: impl Fn(&gst::Message) -> bool) -> Result<(), String> {
    for msg in bus.iter_timed(TIMEOUT) {
        if want(&msg) {
            return Ok(());
        }
        if let gst::MessageView::Error(e) = msg.view() {
            return Err(e.error().to_string());
        }
    }
    Err(format!("no answer within {}s", TIMEOUT.seconds()))
}

/// The first error on the pipeline's bus, or `fallback`.
fn bus_error(pipeline: &gst::Pipeline, fallback: &str) -> String {
    pipeline
        .bus()
        .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(format!("{fallback}: {}", e.error())),
            _ => None,
        })
        .unwrap_or_else(|| fallback.to_string())
}

/// Sets a pipeline to `Null` on every exit path.
pub(super) struct NullOnDrop<'a>(pub &'a gst::Pipeline);

impl Drop for NullOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_board_decoder_falls_back_to_software() {
        gst::init().unwrap();
        let board = MediaConfig {
            h264_decoder: "mppvideodec".into(),
            h265_decoder: "avdec_h265".into(),
        };
        assert_eq!(
            decoder_for("h264", &board),
            "avdec_h264",
            "no Rockchip MPP on this machine"
        );
        assert_eq!(decoder_for("h265", &board), "avdec_h265");
    }
}
