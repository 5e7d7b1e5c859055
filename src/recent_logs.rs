//! The daemon's recent warnings and errors, kept in memory so the maintenance page and
//! `GET /api/v1/logs` can show what went wrong lately without reading the journal (which the
//! daemon's user may not be allowed to read).
//!
//! The ring is filled by a `tracing` layer ([`RecentLogs::layer`]) that `daemon::logging`
//! installs, and read through a [`RecentLogs`] handle the API receives in its state. The
//! subscriber is process-wide, so the ring is too: every handle sees the same lines.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Warnings kept in memory; older ones are in the journal.
const CAPACITY: usize = 200;

/// A warning or error as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The message followed by its fields (`key=value`).
    pub message: String,
}

type Ring = Arc<Mutex<VecDeque<LogLine>>>;

static PROCESS_RING: LazyLock<Ring> = LazyLock::new(Ring::default);

/// A handle on the process's ring of recent warnings and errors.
#[derive(Clone)]
pub struct RecentLogs(Ring);

impl RecentLogs {
    /// The ring the process's log subscriber fills.
    pub fn process() -> RecentLogs {
        RecentLogs(PROCESS_RING.clone())
    }

    /// The recent warnings and errors, oldest first.
    pub fn lines(&self) -> Vec<LogLine> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The `tracing` layer that keeps warnings and errors in this ring.
    pub fn layer(&self) -> RecentWarnings {
        RecentWarnings(self.0.clone())
    }
}

/// Keeps every event at WARN or above in the ring, dropping the oldest past [`CAPACITY`].
pub struct RecentWarnings(Ring);

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
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= CAPACITY {
            ring.pop_front();
        }
        ring.push_back(LogLine {
            at: Utc::now(),
            level: level.to_string(),
            message: line.0,
        });
    }
}
