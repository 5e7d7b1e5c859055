//! Log output through `tracing`: plain lines without colour when stderr is not a terminal (under
//! systemd, journald adds its own timestamps and colours), level from `RUST_LOG` or the config.
//!
//! Warnings and errors are also kept in a small in-memory ring ([`recent`]) so the maintenance
//! page and `GET /api/v1/logs` can show what went wrong lately without reading the journal
//! (which the daemon's user may not be allowed to read).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Warnings kept in memory; older ones are in the journal.
const RECENT_CAPACITY: usize = 200;

/// A warning or error as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The message followed by its fields (`key=value`).
    pub message: String,
}

static RECENT: LazyLock<Mutex<VecDeque<LogLine>>> = LazyLock::new(Mutex::default);

/// The recent warnings and errors, oldest first.
pub fn recent() -> Vec<LogLine> {
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

struct RecentWarnings;

struct Line(String);

/// Collects an event as `message key=value ...`, the message first whatever order the fields
/// arrive in.
impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentWarnings {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut line = Line(String::new());
        event.record(&mut line);
        let mut ring = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= RECENT_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(LogLine {
            at: Utc::now(),
            level: level.to_string(),
            message: line.0,
        });
    }
}

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
        .with(RecentWarnings)
        .try_init();
}
