//! The audit trail: one append-only row per change asked of the box, whoever asked and however
//! it ended (invariant X1's "who did what").
//!
//! Writers are the API's audit middleware (HTTP and control socket) and the MQTT config
//! handler. The table refuses UPDATE and DELETE (migration 0006), so rows only accumulate; at a
//! few hundred bytes a row, years of technician activity fit in a few megabytes.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// One change, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub id: i64,
    pub at_ms: i64,
    /// `tok_<n>`, `uid:<n>` (control socket), `local` (auth off), `mqtt` or `anonymous`.
    pub actor: String,
    /// Client address, `control socket`, or the MQTT topic.
    pub source: String,
    /// `POST /api/v1/cameras`, or `mqtt config/camera/gate/set`.
    pub action: String,
    /// HTTP status; MQTT changes use 200 (applied) and 400 (refused).
    pub status: u16,
    /// The error message when the change was refused or failed.
    pub detail: Option<String>,
}

impl AuditEntry {
    pub fn ok(&self) -> bool {
        self.status < 400
    }
}

/// Appends `entry` in its own write. A failure is logged and swallowed: the change itself has
/// already happened (or been refused), and hiding its answer would not undo it.
pub async fn append(store: &Store, entry: AuditEntry) {
    let action = entry.action.clone();
    let result = store
        .write(move |c| {
            c.execute(
                "INSERT INTO audit (at_ms, actor, source, action, status, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    entry.at_ms,
                    entry.actor,
                    entry.source,
                    entry.action,
                    entry.status,
                    entry.detail
                ],
            )?;
            Ok::<_, StoreError>(())
        })
        .await;
    if let Err(e) = result {
        tracing::error!(action, error = %e, "cannot write the audit row of a change");
    }
}

/// The newest `limit` entries, newest first.
pub fn latest(c: &Connection, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, at_ms, actor, source, action, status, detail
           FROM audit ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            source: r.get(3)?,
            action: r.get(4)?,
            status: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
