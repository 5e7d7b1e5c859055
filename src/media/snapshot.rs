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

use super::gst_job::{GstJobError, NullOnDrop, bus, bus_error, element, static_pad, wait_for};
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
) -> Result<(gst::Element, gst_app::AppSink), GstJobError> {
    let parse = element(parser_for(codec))?;
    let decode = element(decoder)?;
    let convert = element("videoconvert")?;
    let encode = element("jpegenc")?;
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(1)
        .build();
    pipeline
        .add_many([&parse, &decode, &convert, &encode, sink.upcast_ref()])
        .map_err(GstJobError::assemble)?;
    gst::Element::link_many([&parse, &decode, &convert, &encode, sink.upcast_ref()])
        .map_err(GstJobError::assemble)?;
    Ok((parse, sink))
}

fn jpeg_bytes(sample: &gst::Sample) -> Result<Vec<u8>, GstJobError> {
    let buffer = sample.buffer().ok_or(GstJobError::Empty("no image"))?;
    let map = buffer
        .map_readable()
        .map_err(|e| GstJobError::failed("reading the image", e))?;
    Ok(map.as_slice().to_vec())
}

/// Decodes one keyframe (a sample from the live stream, with its caps) into a JPEG.
pub fn keyframe_to_jpeg(
    keyframe: &gst::Sample,
    codec: &str,
    decoder: &str,
) -> Result<Vec<u8>, GstJobError> {
    let pipeline = gst::Pipeline::new();
    let caps = keyframe
        .caps()
        .ok_or(GstJobError::Empty("keyframe without caps"))?
        .to_owned();
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .build();
    pipeline.add(&src).map_err(GstJobError::assemble)?;
    let (head, sink) = jpeg_tail(&pipeline, codec, decoder)?;
    src.link(&head).map_err(GstJobError::assemble)?;
    let _guard = NullOnDrop(&pipeline);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(GstJobError::state("starting the decoder"))?;
    let buffer = keyframe
        .buffer_owned()
        .ok_or(GstJobError::Empty("keyframe without data"))?;
    src.push_buffer(buffer)
        .map_err(|e| GstJobError::failed("the decoder refused the keyframe", format!("{e:?}")))?;
    src.end_of_stream()
        .map_err(|e| GstJobError::failed("ending the keyframe", format!("{e:?}")))?;
    let sample = sink.try_pull_sample(TIMEOUT).ok_or_else(|| {
        bus_error(
            &pipeline,
            "decoding the keyframe",
            GstJobError::Empty("the decoder produced no image"),
        )
    })?;
    jpeg_bytes(&sample)
}

/// The frame at `offset` into a recorded file, as a JPEG.
pub fn frame_at(
    path: &Path,
    offset: Duration,
    codec: &str,
    decoder: &str,
) -> Result<Vec<u8>, GstJobError> {
    let pipeline = gst::Pipeline::new();
    let src = element("filesrc")?;
    src.set_property("location", path.to_string_lossy().as_ref());
    let demux = element("matroskademux")?;
    pipeline
        .add_many([&src, &demux])
        .map_err(GstJobError::assemble)?;
    src.link(&demux).map_err(GstJobError::assemble)?;
    let (head, sink) = jpeg_tail(&pipeline, codec, decoder)?;
    let head_pad = static_pad(&head, "sink")?;
    demux.connect_pad_added(move |_, pad| {
        if !head_pad.is_linked() {
            let _ = pad.link(&head_pad);
        }
    });
    let _guard = NullOnDrop(&pipeline);
    pipeline
        .set_state(gst::State::Paused)
        .map_err(GstJobError::state("opening the recording"))?;
    let bus = bus(&pipeline)?;
    let done = |m: &gst::Message| matches!(m.view(), gst::MessageView::AsyncDone(_));
    wait_for(&bus, TIMEOUT, "opening the recording", done)?;
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::ClockTime::from_nseconds(offset.as_nanos() as u64),
        )
        .map_err(|e| GstJobError::failed("seeking in the recording", e))?;
    wait_for(&bus, TIMEOUT, "seeking in the recording", done)?;
    let sample = sink.try_pull_preroll(TIMEOUT).ok_or_else(|| {
        bus_error(
            &pipeline,
            "decoding the recording",
            GstJobError::Empty("no frame at that time"),
        )
    })?;
    jpeg_bytes(&sample)
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
