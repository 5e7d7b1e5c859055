//! The last fault of the disk or the database file (full, failed or read-only, corrupt), kept
//! for `heldar status` and counted in `heldar_store_faults_total{kind}`.
//!
//! A writer's error reaches only the caller whose write failed; an operator asking "why is
//! nothing stored?" needs it too. Process-wide like [`crate::metrics::INSTRUMENTS`]: one
//! daemon, one database per process.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::metrics::INSTRUMENTS;

/// One fault, as `heldar status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// `disk_full`, `disk_failed` or `corrupt`.
    pub kind: String,
    pub at_ms: i64,
    pub error: String,
}

static LAST: Mutex<Option<Fault>> = Mutex::new(None);

pub(super) fn record(kind: &'static str, err: &StoreError) {
    INSTRUMENTS.store_fault(kind);
    let fault = Fault {
        kind: kind.to_string(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        error: err.to_string(),
    };
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
}

/// The last fault seen, if any.
pub fn last() -> Option<Fault> {
    LAST.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
