//! The Modbus calls on the wire: reads and writes with their answers checked, one timeout per
//! request, and how a failure is filed (an exception, no answer, out of step, a dead device).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response};

use super::IoBoard;
use crate::serial::port::{self, PortStatus};

/// How a request failed.
pub(super) enum Failure {
    /// The slave answered with an exception: it is alive, the request was wrong.
    Exception(String),
    /// No answer in time; the port stays open.
    Failed(String),
    /// An answer that made no valid frame: tokio-modbus's framing is out of step after it, so
    /// the port is reopened at once (no backoff: the device is fine).
    Resync(String),
    /// The device itself failed: reopen after a backoff.
    PortFailed(String),
}

/// How one request (or a step made of requests) ended.
pub(super) type Outcome<T> = Result<T, Failure>;

/// An answer of the wrong shape, filed with the unreadable ones.
pub(super) fn wrong_shape(what: &str) -> tokio_modbus::Error {
    tokio_modbus::Error::Transport(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("answer to {what} does not match the request"),
    ))
}

/// Reads `count` discrete inputs or coils from address 0, checking the answer's shape here
/// (tokio-modbus only debug-asserts it, which would panic the board task on a bad slave).
pub(super) async fn read_bits(
    ctx: &mut Context,
    discrete: bool,
    count: u16,
) -> Result<Result<Vec<bool>, ExceptionCode>, tokio_modbus::Error> {
    let request = if discrete {
        Request::ReadDiscreteInputs(0, count)
    } else {
        Request::ReadCoils(0, count)
    };
    match ctx.call(request).await? {
        Ok(Response::ReadDiscreteInputs(mut bits) | Response::ReadCoils(mut bits))
            if bits.len() >= usize::from(count) =>
        {
            bits.truncate(usize::from(count));
            Ok(Ok(bits))
        }
        Ok(_) => Err(wrong_shape("a read")),
        Err(exception) => Ok(Err(exception)),
    }
}

/// Writes one coil and checks the echo.
pub(super) async fn write_bit(
    ctx: &mut Context,
    address: u16,
    on: bool,
) -> Result<Result<(), ExceptionCode>, tokio_modbus::Error> {
    match ctx.call(Request::WriteSingleCoil(address, on)).await? {
        Ok(Response::WriteSingleCoil(a, v)) if a == address && v == on => Ok(Ok(())),
        Ok(_) => Err(wrong_shape("a coil write")),
        Err(exception) => Ok(Err(exception)),
    }
}

impl IoBoard {
    /// Runs one request with the configured answer timeout and files its outcome.
    pub(super) async fn call<T>(
        &self,
        received: &AtomicU64,
        what: &str,
        request: impl Future<Output = tokio_modbus::Result<T>>,
    ) -> Outcome<T> {
        if let Some(quiet) = port::turnaround(&self.config) {
            tokio::time::sleep(quiet).await;
        }
        let before = received.load(Ordering::Relaxed);
        let timeout = self.config.response_timeout.get();
        let bad_frame: fn(&mut PortStatus) -> &mut u64 = |s| &mut s.bad_frames;
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(Ok(v))) => {
                self.status.update(|s| s.requests_ok += 1);
                Ok(v)
            }
            Ok(Ok(Err(exception))) => {
                let m = format!("{what}: the board answered with exception {exception:?}");
                self.status.error(|s| &mut s.exceptions, m.clone());
                Err(Failure::Exception(m))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                let m = format!("{what}: answer does not match the request ({e})");
                self.status.error(bad_frame, m.clone());
                Err(Failure::Resync(m))
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                let m = format!("{what}: unreadable answer ({e})");
                self.status.error(bad_frame, m.clone());
                Err(Failure::Resync(m))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                let m = format!("{what}: device error: {e}");
                self.status.error(|s| &mut s.port_errors, m.clone());
                Err(Failure::PortFailed(m))
            }
            Err(_) if received.load(Ordering::Relaxed) > before => {
                let m = format!(
                    "{what}: no valid answer within {} (bytes came back: CRC error, garbage or a truncated frame)",
                    self.config.response_timeout
                );
                self.status.error(bad_frame, m.clone());
                Err(Failure::Failed(m))
            }
            Err(_) => {
                let m = format!(
                    "{what}: unit {} did not answer within {}",
                    self.unit(),
                    self.config.response_timeout
                );
                self.status.error(|s| &mut s.timeouts, m.clone());
                Err(Failure::Failed(m))
            }
        }
    }

    pub(super) async fn write_coil(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        relay: u16,
        on: bool,
    ) -> Outcome<()> {
        let what = format!("relay {relay} {}", if on { "on" } else { "off" });
        let outcome = self
            .call(received, &what, write_bit(ctx, relay - 1, on))
            .await;
        if let Ok(()) = outcome {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = state.relays.get_mut(usize::from(relay) - 1) {
                r.on = Some(on);
            }
        }
        outcome
    }
}
