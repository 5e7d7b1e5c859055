//! A sampler's decode pipeline: encoded frames in through a leaky `appsrc`, RGB frames of the
//! granted rate and width out into the [`FrameStore`].
//!
//! ```text
//! appsrc (leaky) ─ parse ─ decoder ─ videorate ─ videoscale ─ videoconvert ─ RGB width W ─ appsink
//! ```
//!
//! Separate from the camera's pipeline: a slow or broken decoder drops frames in its own input
//! and never slows recording.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::frames::{Frame, FrameStore};
use crate::config::model::{MediaConfig, StreamProfile};
use crate::media::EncodedFrame;
use crate::media::snapshot::decoder_for;

/// Why a decode pipeline could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error("{element}: {source}")]
    Element {
        element: String,
        source: gst::glib::BoolError,
    },
    #[error("cannot link the decode pipeline: {0}")]
    Link(gst::glib::BoolError),
    #[error("cannot start the decoder: {0}")]
    Start(gst::StateChangeError),
}

/// Where decoded frames go.
pub(super) struct Target {
    pub frames: FrameStore,
    pub camera: String,
    pub profile: StreamProfile,
    /// Counts the frames published.
    pub published: Arc<AtomicU64>,
}

/// The running decode pipeline of a sampler; stopped when dropped.
pub(super) struct Decoder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    filter: gst::Element,
    codec: String,
    caps: gst::Caps,
    /// Capture time (Unix ms) that buffer time zero stands for.
    base_ms: i64,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn element(name: &str) -> Result<gst::Element, DecoderError> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|source| DecoderError::Element {
            element: name.to_string(),
            source,
        })
}

impl Decoder {
    /// Builds and starts the pipeline for `first`'s codec, at `fps` frames of `width` pixels.
    pub(super) fn start(
        first: &EncodedFrame<'_>,
        fps: f64,
        width: u32,
        decoders: &MediaConfig,
        target: Target,
    ) -> Result<Decoder, DecoderError> {
        let pipeline = gst::Pipeline::new();
        let appsrc = gst_app::AppSrc::builder()
            .caps(first.caps)
            .format(gst::Format::Time)
            .is_live(true)
            .block(false)
            .max_buffers(60)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
        let parse = element(if first.codec == "h265" {
            "h265parse"
        } else {
            "h264parse"
        })?;
        let decode = element(&decoder_for(first.codec, decoders))?;
        if decode.find_property("max-threads").is_some() {
            // libav's frame threading holds a picture pool per thread (about 20 MiB per 720p
            // stream on 2 cores); one thread decodes 5 fps of 720p with room to spare.
            decode.set_property("max-threads", 1i32);
        }
        let rate = element("videorate")?;
        rate.set_property("drop-only", true);
        let scale = element("videoscale")?;
        let convert = element("videoconvert")?;
        let filter = element("capsfilter")?;
        filter.set_property("caps", output_caps(fps, width));
        let sink = gst_app::AppSink::builder()
            .sync(false)
            .max_buffers(1)
            .drop(true)
            .build();
        let elements = [
            appsrc.upcast_ref(),
            &parse,
            &decode,
            &rate,
            &scale,
            &convert,
            &filter,
            sink.upcast_ref(),
        ];
        pipeline.add_many(elements).map_err(DecoderError::Link)?;
        gst::Element::link_many(elements).map_err(DecoderError::Link)?;

        let base_ms = first.captured_ms;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(frame) = rgb_frame(&sample, base_ms) {
                        target.frames.publish(&target.camera, target.profile, frame);
                        target.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline
            .set_state(gst::State::Playing)
            .map_err(DecoderError::Start)?;
        Ok(Decoder {
            pipeline,
            appsrc,
            filter,
            codec: first.codec.to_string(),
            caps: first.caps.clone(),
            base_ms,
        })
    }

    /// The codec the pipeline decodes; another codec needs another pipeline.
    pub(super) fn codec(&self) -> &str {
        &self.codec
    }

    /// Changes the rate and width of the frames out, without a rebuild.
    pub(super) fn set_output(&self, fps: f64, width: u32) {
        self.filter.set_property("caps", output_caps(fps, width));
    }

    /// Hands an encoded frame to the decoder, retimed to the pipeline's clock; false when the
    /// pipeline refused it.
    pub(super) fn push(&mut self, frame: &EncodedFrame<'_>) -> bool {
        if self.caps != *frame.caps {
            self.appsrc.set_caps(Some(frame.caps));
            self.caps = frame.caps.clone();
        }
        let offset =
            gst::ClockTime::from_mseconds((frame.captured_ms - self.base_ms).max(0) as u64);
        let mut buffer = frame.buffer.copy();
        {
            let b = buffer.make_mut();
            let reorder = frame
                .buffer
                .pts()
                .zip(frame.buffer.dts())
                .map(|(p, d)| p.saturating_sub(d));
            b.set_pts(offset);
            b.set_dts(reorder.map(|r| offset.saturating_sub(r)));
        }
        self.appsrc.push_buffer(buffer).is_ok()
    }
}

/// The sample as a tight RGB frame with its capture time; `None` for a sample without video.
fn rgb_frame(sample: &gst::Sample, base_ms: i64) -> Option<Frame> {
    let (buffer, caps) = (sample.buffer()?, sample.caps()?);
    let s = caps.structure(0)?;
    let (w, h) = (s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?);
    let map = buffer.map_readable().ok()?;
    let captured_ms = base_ms + buffer.pts().map_or(0, |p| p.mseconds() as i64);
    // Rows may be padded to 4 bytes; the store keeps them tight.
    let stride = map.len() / h.max(1) as usize;
    let row = w as usize * 3;
    let rgb = if stride == row {
        map.as_slice().to_vec()
    } else {
        map.as_slice()
            .chunks(stride)
            .flat_map(|r| &r[..row])
            .copied()
            .collect()
    };
    Some(Frame::new(rgb, w as u32, h as u32, captured_ms))
}

/// `video/x-raw,format=RGB,width=W,pixel-aspect-ratio=1/1,framerate=F` (height follows the
/// stream's aspect ratio).
fn output_caps(fps: f64, width: u32) -> gst::Caps {
    let rate =
        gst::Fraction::approximate_f64(fps.max(0.01)).unwrap_or_else(|| gst::Fraction::new(1, 1));
    gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", width as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .field("framerate", rate)
        .build()
}
