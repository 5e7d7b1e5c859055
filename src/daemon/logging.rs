//! Log output through `tracing`: plain lines without colour when stderr is not a terminal (under
//! systemd, journald adds its own timestamps and colours), level from `RUST_LOG` or the config.
//! Warnings and errors also go to the in-memory ring of [`crate::recent_logs`].

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::recent_logs::RecentLogs;

/// Installs the global subscriber; `RUST_LOG`, when set, wins over `default_filter`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr_is_tty = std::io::stderr().is_terminal();
    // journald stamps every line itself; a second timestamp only costs width.
    let timed = stderr_is_tty || std::env::var_os("JOURNAL_STREAM").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_tty)
        .with_target(false);
    let fmt = if timed {
        fmt.boxed()
    } else {
        fmt.without_time().boxed()
    };
    // A subscriber may already be installed (tests that run the daemon in-process); keep it.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(RecentLogs::process().layer())
        .try_init();
}
