//! A bus of Pelco-D cameras: one task owns the port and writes frames in request order.
//! Pelco-D is write-only (cameras do not answer), so a request succeeds when its bytes left.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

use super::SerialError;
use super::port::{self, BACKOFF_MIN, StatusCell};
use crate::config::model::SerialConfig;

/// A frame to send, and where to say how it went.
pub struct Frame {
    pub bytes: [u8; 7],
    pub reply: oneshot::Sender<Result<(), SerialError>>,
}

pub struct PtzBus {
    pub config: SerialConfig,
    pub status: StatusCell,
    pub frames: mpsc::Receiver<Frame>,
}

/// A frame must leave within this time; a stuck adapter fails the request instead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

impl PtzBus {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut port: Option<SerialStream> = None;
        let mut backoff = BACKOFF_MIN;
        let mut next_open = tokio::time::Instant::now();
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return,
                f = self.frames.recv() => match f {
                    Some(f) => f,
                    None => return,
                },
            };
            if port.is_none() {
                // Opened on demand, at most once per backoff period, so a missing adapter
                // costs a failed request, not a retry loop.
                if tokio::time::Instant::now() < next_open {
                    let _ = frame.reply.send(Err(self.unavailable()));
                    continue;
                }
                match port::open(&self.config) {
                    Ok(p) => {
                        backoff = BACKOFF_MIN;
                        self.status.update(|s| {
                            s.state = "open".into();
                            s.opens += 1;
                        });
                        port = Some(p);
                    }
                    Err(e) => {
                        self.failed(format!("cannot open {}: {e}", self.config.device.display()));
                        let (wait, next) = port::next_backoff(backoff);
                        backoff = next;
                        next_open = tokio::time::Instant::now() + wait;
                        let _ = frame.reply.send(Err(self.unavailable()));
                        continue;
                    }
                }
            }
            let Some(p) = port.as_mut() else { continue };
            let written = async {
                p.write_all(&frame.bytes).await?;
                p.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, written).await {
                Ok(Ok(())) => {
                    self.status.update(|s| s.requests_ok += 1);
                    let _ = frame.reply.send(Ok(()));
                    if let Some(quiet) = port::turnaround(&self.config) {
                        tokio::time::sleep(quiet).await;
                    }
                }
                Ok(Err(e)) => {
                    self.failed(format!("writing to {}: {e}", self.config.device.display()));
                    port = None;
                    let _ = frame.reply.send(Err(self.unavailable()));
                }
                Err(_) => {
                    self.failed(format!(
                        "writing to {} took over {WRITE_TIMEOUT:?}",
                        self.config.device.display()
                    ));
                    port = None;
                    let _ = frame.reply.send(Err(self.unavailable()));
                }
            }
        }
    }

    fn failed(&self, message: String) {
        tracing::warn!(port = %self.config.name, error = %message, "PTZ port failed");
        self.status.error(|s| &mut s.port_errors, message);
        self.status.update(|s| s.state = "unavailable".into());
    }

    fn unavailable(&self) -> SerialError {
        let last = self.status.get().last_error.unwrap_or_default();
        SerialError::Unavailable(format!("port {} is unavailable: {last}", self.config.name))
    }
}
