//! What the short GStreamer jobs share (a snapshot, a clip export, the probe of a file): building
//! their pipelines, waiting on the bus, stopping them on every path, and one typed error.

use gstreamer as gst;
use gstreamer::prelude::*;

/// Why a short GStreamer job failed.
#[derive(Debug, thiserror::Error)]
pub enum GstJobError {
    /// An element could not be made: its plugin is not installed.
    #[error("{name}: {source}")]
    Element {
        name: String,
        source: gst::glib::BoolError,
    },
    /// The pipeline could not be put together (add, link, a pad that should exist).
    #[error("cannot assemble the pipeline: {0}")]
    Assemble(String),
    /// The pipeline refused to change state.
    #[error("{doing}: {source}")]
    State {
        doing: String,
        source: gst::StateChangeError,
    },
    /// GStreamer reported an error while running, in its own words.
    #[error("{doing}: {message}")]
    Failed { doing: String, message: String },
    /// No answer from the pipeline in time.
    #[error("{doing}: no answer within {seconds}s")]
    Timeout { doing: String, seconds: u64 },
    /// The input holds nothing to give: no footage, no frame, no video.
    #[error("{0}")]
    Empty(&'static str),
}

impl GstJobError {
    pub(super) fn failed(doing: impl Into<String>, message: impl ToString) -> GstJobError {
        GstJobError::Failed {
            doing: doing.into(),
            message: message.to_string(),
        }
    }

    pub(super) fn state(doing: impl Into<String>) -> impl FnOnce(gst::StateChangeError) -> Self {
        let doing = doing.into();
        move |source| GstJobError::State { doing, source }
    }

    pub(super) fn assemble(e: impl ToString) -> GstJobError {
        GstJobError::Assemble(e.to_string())
    }
}

/// An element of the factory `name`.
pub(super) fn element(name: &str) -> Result<gst::Element, GstJobError> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|source| GstJobError::Element {
            name: name.to_string(),
            source,
        })
}

/// The pipeline's bus (every pipeline has one).
pub(super) fn bus(pipeline: &gst::Pipeline) -> Result<gst::Bus, GstJobError> {
    pipeline
        .bus()
        .ok_or_else(|| GstJobError::assemble("pipeline without a bus"))
}

/// A pad the element is known to have.
pub(super) fn static_pad(element: &gst::Element, name: &str) -> Result<gst::Pad, GstJobError> {
    element
        .static_pad(name)
        .ok_or_else(|| GstJobError::assemble(format!("{} without a {name} pad", element.name())))
}

/// Waits up to `timeout` for a message matching `want`; an error message ends the wait.
pub(super) fn wait_for(
    bus: &gst::Bus,
    timeout: gst::ClockTime,
    doing: &str,
    want: impl Fn(&gst::Message) -> bool,
) -> Result<(), GstJobError> {
    for msg in bus.iter_timed(timeout) {
        if want(&msg) {
            return Ok(());
        }
        if let gst::MessageView::Error(e) = msg.view() {
            return Err(GstJobError::failed(doing, e.error()));
        }
    }
    Err(GstJobError::Timeout {
        doing: doing.to_string(),
        seconds: timeout.seconds(),
    })
}

/// The first error on the pipeline's bus as the failure of `doing`, or `otherwise` when GStreamer
/// said nothing.
pub(super) fn bus_error(
    pipeline: &gst::Pipeline,
    doing: &str,
    otherwise: GstJobError,
) -> GstJobError {
    pipeline
        .bus()
        .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(GstJobError::failed(doing, e.error())),
            _ => None,
        })
        .unwrap_or(otherwise)
}

/// Sets a pipeline to `Null` on every exit path.
pub(super) struct NullOnDrop<'a>(pub &'a gst::Pipeline);

impl Drop for NullOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}
