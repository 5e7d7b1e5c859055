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

use crate::config::model::{Parity, Rs485Config, SerialConfig, SerialProtocol};

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
    let stream = tokio_serial::new(config.device.to_string_lossy(), config.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(std::io::Error::from)?;
    if let Some(rs) = config.rs485.as_ref().filter(|rs| rs.kernel_rts) {
        kernel_rts(&stream, rs).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "rs485.kernel_rts: the device refused RS-485 mode ({e}); an adapter that \
                     switches direction by itself needs no kernel_rts"
                ),
            )
        })?;
    }
    Ok(stream)
}

/// `struct serial_rs485` of <linux/serial.h>; libc does not define it.
#[repr(C)]
struct SerialRs485 {
    flags: u32,
    delay_rts_before_send: u32,
    delay_rts_after_send: u32,
    padding: [u32; 5],
}

const SER_RS485_ENABLED: u32 = 1;
const SER_RS485_RTS_ON_SEND: u32 = 1 << 1;

/// Hands RTS to the kernel as the transmitter enable, with the configured delays.
fn kernel_rts(stream: &SerialStream, rs: &Rs485Config) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let settings = SerialRs485 {
        flags: SER_RS485_ENABLED | SER_RS485_RTS_ON_SEND,
        delay_rts_before_send: u32::try_from(rs.rts_before_send.get().as_millis()).unwrap_or(0),
        delay_rts_after_send: u32::try_from(rs.rts_after_send.get().as_millis()).unwrap_or(0),
        padding: [0; 5],
    };
    // SAFETY: TIOCSRS485 reads one `struct serial_rs485` from the pointer, which lives for the
    // call; the descriptor is the open serial device.
    let rc = unsafe {
        nix::libc::ioctl(
            stream.as_raw_fd(),
            nix::libc::TIOCSRS485 as _,
            &settings as *const SerialRs485,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The quiet time the line needs after an exchange (`rs485.turnaround`), if any.
pub fn turnaround(config: &SerialConfig) -> Option<Duration> {
    config
        .rs485
        .as_ref()
        .map(|rs| rs.turnaround.get())
        .filter(|d| !d.is_zero())
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
