//! Log output through `tracing`: plain lines without colour when stderr is not a terminal (under
//! systemd, journald adds its own timestamps and colours), level from `RUST_LOG` or the config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG`, when set, wins over `default_filter`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr_is_tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_tty)
        .with_target(false);
    // journald stamps every line itself; a second timestamp only costs width.
    let result = if stderr_is_tty || std::env::var_os("JOURNAL_STREAM").is_none() {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
    // A subscriber may already be installed (tests that run the daemon in-process); keep it.
    let _ = result;
}
