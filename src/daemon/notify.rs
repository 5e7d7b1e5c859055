//! systemd's notify protocol: `READY=1` once serving, `WATCHDOG=1` while healthy, `STOPPING=1`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the systemd watchdog at half its interval, but only after a write through the store
/// committed: the ping proves the runtime, the writer thread and the disk all still move.
///
/// Failure policy: when the probe write does not commit within the interval, no ping is sent and a
/// warning is logged; if that lasts, systemd kills and restarts the daemon, which is the intent.
pub async fn watchdog(store: Store, timeout: Duration, shutdown: CancellationToken) {
    let period = timeout / 2;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let probe = store.write(|_| Ok::<_, StoreError>(()));
        match tokio::time::timeout(period, probe).await {
            Ok(Ok(())) => send(&[NotifyState::Watchdog]),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "watchdog probe write failed; not pinging systemd")
            }
            Err(_) => {
                tracing::warn!(waited = ?period, "watchdog probe write did not commit; not pinging systemd")
            }
        }
    }
}
