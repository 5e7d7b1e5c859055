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
use serde_json::Value;

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
    /// What the change did to which object ([`What`]); absent on refusals.
    #[serde(default)]
    pub what: Option<String>,
}

/// What one change did, for a person reading the trail: `camera gate added`, `zone door
/// changed: points`, `token tok_4 revoked`. A route alone (`POST /api/v1/cameras`) does not say
/// which camera; the handler that made the change does.
#[derive(Clone, Debug, PartialEq)]
pub struct What(pub String);

impl What {
    /// An object removed: `zone door removed`.
    pub fn removed(kind: &str, id: &str) -> What {
        What(format!("{kind} {id} removed"))
    }

    /// A relay switched by hand: `relay 2 pulse 500ms`.
    pub fn relay(relay: u16, op: &crate::config::rules::RelayOp) -> What {
        What(format!("relay {relay} {op}"))
    }

    /// Names the change from two views of one object, before and after: added, removed, or
    /// changed with the top-level fields that differ. Only field names are written, so a view
    /// may hold a digest of a secret to show that it changed.
    pub fn change(kind: &str, id: &str, before: Option<&Value>, after: Option<&Value>) -> What {
        What(match (before, after) {
            (None, Some(_)) => format!("{kind} {id} added"),
            (Some(_), None) => return What::removed(kind, id),
            (None, None) => format!("{kind} {id} not there"),
            (Some(b), Some(a)) => {
                let empty = serde_json::Map::new();
                let (b, a) = (
                    b.as_object().unwrap_or(&empty),
                    a.as_object().unwrap_or(&empty),
                );
                let mut fields: Vec<&str> = b
                    .keys()
                    .chain(a.keys())
                    .map(String::as_str)
                    .filter(|k| b.get(*k) != a.get(*k))
                    .collect();
                fields.sort_unstable();
                fields.dedup();
                if fields.is_empty() {
                    format!("{kind} {id} unchanged")
                } else {
                    format!("{kind} {id} changed: {}", fields.join(", "))
                }
            }
        })
    }
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
                "INSERT INTO audit (at_ms, actor, source, action, status, detail, what)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.at_ms,
                    entry.actor,
                    entry.source,
                    entry.action,
                    entry.status,
                    entry.detail,
                    entry.what
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
        "SELECT id, at_ms, actor, source, action, status, detail, what
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
            what: r.get(7)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_change_names_its_object_and_the_fields_that_differ() {
        let before = json!({"url": "rtsp://a/1", "record": true, "password": "d1"});
        let after = json!({"url": "rtsp://b/1", "record": true, "password": "d2", "name": "Gate"});
        let what = |b, a| What::change("camera", "gate", b, a).0;
        assert_eq!(
            what(Some(&before), Some(&after)),
            "camera gate changed: name, password, url"
        );
        assert_eq!(what(None, Some(&after)), "camera gate added");
        assert_eq!(what(Some(&before), None), "camera gate removed");
        assert_eq!(what(Some(&before), Some(&before)), "camera gate unchanged");
        assert!(
            !what(Some(&before), Some(&after)).contains("d2"),
            "values are never written"
        );
    }
}
