//! `heldar worker motion`: the reference inference worker. It speaks only the public worker
//! contract (leases, frames, tickets, events), exactly as a third-party worker would, so it
//! doubles as a living test of that contract.
//!
//! The contract's rules (leases, frame skipping, tickets, retries) live in [`client`], which any
//! Rust worker can use; this module adds only what is motion's own: take the frame's grey plane
//! (raw, so neither side spends time on a JPEG), find moving regions, and report them with
//! stable track ids.

pub mod client;
pub mod motion;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use client::{Client, Detection, Frame, FrameFormat, RunOptions};
use motion::{Grey, MotionDetector, MotionSettings};

/// What the worker needs to run.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Base URL of the daemon's HTTP listener, such as `http://127.0.0.1:8000`.
    pub api: String,
    pub token: Option<String>,
    pub worker_id: String,
    /// How often the lease is renewed.
    pub poll: Duration,
}

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGINT, &action)?;
        sigaction(Signal::SIGTERM, &action)?;
    }
    Ok(())
}

/// Runs the motion worker until SIGINT/SIGTERM.
pub fn run(settings: WorkerSettings) -> anyhow::Result<()> {
    install_signal_handlers()?;
    let client = Client::new(&settings.api, settings.token.clone());
    let mut options = RunOptions::new(&settings.worker_id, &["motion"]);
    options.renew_every = settings.poll;
    options.format = FrameFormat::Gray;
    tracing::info!(api = %settings.api, worker_id = %settings.worker_id, "motion worker started");
    client::run(&client, &options, &STOP, |_task| {
        let mut detector = MotionDetector::new(MotionSettings::default());
        move |frame: &Frame| match grey_of(frame) {
            Some(grey) => detector
                .detect(grey)
                .iter()
                .map(|r| {
                    let confidence = (r.fill * 100.0).round() / 100.0;
                    Detection::new("motion", confidence, r.bbox).track(r.track_id.clone())
                })
                .collect(),
            None => Vec::new(),
        }
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// The frame at about 160 pixels wide, in grey: all motion needs.
fn grey_of(frame: &Frame) -> Option<Grey> {
    let (w, h, stride) = (
        frame.width as usize,
        frame.height as usize,
        frame.stride as usize,
    );
    (frame.format == FrameFormat::Gray && w > 0 && h > 0 && stride >= w)
        .then(|| Grey::from_gray(&frame.data, w, h, stride, 160))
}
