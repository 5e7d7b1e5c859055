//! Opening a serial port from its config, counting what arrives on it, and the status every
//! port reports (`heldar io status`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::config::model::{Parity, SerialConfig, SerialProtocol};

pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What `heldar io status` shows per port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortStatus {
    pub name: String,
    pub device: String,
    /// `modbus-rtu` or `pelco-d`.
    pub protocol: String,
    /// `open`, `opening` or `unavailable` (retrying).
    pub state: String,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub opens: u64,
    pub requests_ok: u64,
    /// The slave did not answer in time.
    pub timeouts: u64,
    /// Bytes came back but made no valid frame (CRC error, garbage, truncated, wrong header).
    pub bad_frames: u64,
    /// The slave answered with a Modbus exception.
    pub exceptions: u64,
    /// The device failed (unplugged, I/O error) and was reopened.
    pub port_errors: u64,
}

/// A port's shared status.
#[derive(Clone, Default)]
pub struct StatusCell(Arc<Mutex<PortStatus>>);

impl StatusCell {
    pub fn new(config: &SerialConfig) -> StatusCell {
        StatusCell(Arc::new(Mutex::new(PortStatus {
            name: config.name.clone(),
            device: config.device.display().to_string(),
            protocol: match config.protocol {
                SerialProtocol::ModbusRtu => "modbus-rtu",
                SerialProtocol::PelcoD => "pelco-d",
            }
            .into(),
            state: "opening".into(),
            ..PortStatus::default()
        })))
    }

    pub fn update(&self, f: impl FnOnce(&mut PortStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn get(&self) -> PortStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records an error with its time; `counter` picks the tally it belongs to.
    pub fn error(&self, counter: fn(&mut PortStatus) -> &mut u64, message: String) {
        self.update(|s| {
            *counter(s) += 1;
            s.last_error = Some(message);
            s.last_error_at = Some(Utc::now());
        });
    }
}

/// Opens the device as configured (8 data bits).
pub fn open(config: &SerialConfig) -> std::io::Result<SerialStream> {
    let parity = match config.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if config.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(config.device.to_string_lossy(), config.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(std::io::Error::from)
}

/// The next wait of a capped exponential backoff, with up to 20 % jitter so ports that failed
/// together do not retry together.
pub fn next_backoff(current: Duration) -> (Duration, Duration) {
    let jitter = current.mul_f64(rand::rng().random_range(0.0..0.2));
    (current + jitter, (current * 2).min(BACKOFF_MAX))
}

/// A serial stream that counts the bytes it receives, so a request that timed out can be told
/// apart: silence (no bytes) or a frame the codec threw away (CRC error, garbage).
#[derive(Debug)]
pub struct Counted {
    inner: SerialStream,
    received: Arc<AtomicU64>,
}

impl Counted {
    pub fn new(inner: SerialStream) -> (Counted, Arc<AtomicU64>) {
        let received = Arc::new(AtomicU64::new(0));
        (
            Counted {
                inner,
                received: received.clone(),
            },
            received,
        )
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        self.received.fetch_add(got as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
