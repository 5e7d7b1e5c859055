//! The audit trail: one append-only row per change asked of the box, whoever asked and however
//! it ended (invariant X1's "who did what").
//!
//! Writers are the API's audit middleware (HTTP and control socket) and the MQTT config
//! handler. The table refuses UPDATE and DELETE (migration 0006) except the deletes of
//! [`prune`], which may remove only rows older than the cutoff it declares in the same
//! transaction (migration 0010): history is rewritten by nobody, and kept for
//! `retention.audit_max_age` with the newest `retention.audit_keep` rows always there.

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

/// Deletes up to `limit` rows older than `before_ms`, keeping the newest `keep` rows whatever
/// their age. The cutoff goes into `audit_retention` for the append-only trigger to check, and
/// out again, within the caller's transaction.
pub fn prune(c: &Connection, before_ms: i64, keep: u64, limit: u64) -> Result<u64, StoreError> {
    c.execute(
        "INSERT INTO audit_retention (before_ms) VALUES (?1)",
        [before_ms],
    )?;
    let deleted = c.execute(
        "DELETE FROM audit WHERE id IN (
           SELECT id FROM audit
            WHERE at_ms < ?1
              AND id < (SELECT COALESCE(MIN(id), 9223372036854775807)
                          FROM (SELECT id FROM audit ORDER BY id DESC LIMIT ?2))
            ORDER BY at_ms LIMIT ?3)",
        params![before_ms, keep as i64, limit as i64],
    )? as u64;
    c.execute("DELETE FROM audit_retention", [])?;
    Ok(deleted)
}
