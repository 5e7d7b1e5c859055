//! Compaction and bounds (invariant O4).
//!
//! Every pass: records every running consumer has finished are deleted once they are older than
//! [`KEEP_CONSUMED`] (kept that long for `heldar events tail`); records older than `outbox.max_age`
//! or beyond `outbox.max_bytes` are dropped whether consumed or not. Drops of records some consumer
//! had not finished are added to the `outbox_dropped` counter and announced with a `system` record,
//! so an operator sees them in `heldar outbox status`, the log and over MQTT. A pass deletes at most
//! [`MAX_DELETE`] rows, so it never holds the writer long; producers never wait for compaction.

use std::time::Duration;

use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use super::{Kind, NewRecord, Outbox, append, count, cursor};
use crate::store::StoreError;

pub(super) const DROPPED: &str = "outbox_dropped";
/// Consumed records stay this long so the recent history can be read.
const KEEP_CONSUMED: Duration = Duration::from_secs(3600);
const PERIOD: Duration = Duration::from_secs(10);
const MAX_DELETE: i64 = 10_000;

/// What one pass deleted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compacted {
    pub consumed: u64,
    /// Records dropped by the bounds before every consumer had them.
    pub dropped: u64,
}

impl Outbox {
    pub async fn run_compaction(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            if let Err(e) = self.compact().await {
                tracing::warn!(error = %e, "outbox compaction failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    pub async fn compact(&self) -> Result<Compacted, StoreError> {
        let names = self.registered();
        let max_bytes = self.config.max_bytes.bytes() as i64;
        let max_age_ms = self.config.max_age.get().as_millis() as i64;
        let result = self
            .store
            .write(move |c| {
                let now = chrono::Utc::now().timestamp_millis();
                let newest: i64 = c.query_row("SELECT COALESCE(MAX(seq), 0) FROM outbox", [], |r| r.get(0))?;
                let mut low = newest;
                for name in &names {
                    low = low.min(cursor(c, name)?.unwrap_or(0));
                }
                let consumed = c.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ?1 AND created_at_ms < ?2
                     ORDER BY seq LIMIT ?3)",
                    params![low, now - KEEP_CONSUMED.as_millis() as i64, MAX_DELETE],
                )? as u64;
                let mut dropped = Vec::new();
                dropped.extend(delete_returning(
                    c,
                    "SELECT seq FROM outbox WHERE created_at_ms < ?1 ORDER BY seq LIMIT ?2",
                    now - max_age_ms,
                )?);
                let total: i64 = c.query_row("SELECT COALESCE(SUM(length(payload)), 0) FROM outbox", [], |r| r.get(0))?;
                if total > max_bytes {
                    // Down to 90 % of the bound, so a busy box does not drop a few records every pass.
                    let excess = total - max_bytes * 9 / 10;
                    let cutoff = byte_cutoff(c, excess)?;
                    dropped.extend(delete_returning(
                        c,
                        "SELECT seq FROM outbox WHERE seq <= ?1 ORDER BY seq LIMIT ?2",
                        cutoff,
                    )?);
                }
                let unseen: Vec<i64> = dropped.into_iter().filter(|s| *s > low).collect();
                if let (Some(first), Some(last)) = (unseen.iter().min(), unseen.iter().max()) {
                    count(c, DROPPED, unseen.len() as i64)?;
                    append(
                        c,
                        &NewRecord {
                            kind: Kind::System,
                            r#type: "outbox_dropped".into(),
                            camera_id: None,
                            ts_ms: now,
                            payload: serde_json::json!({
                                "count": unseen.len(),
                                "first_seq": first,
                                "last_seq": last,
                                "reason": "outbox bounds (outbox.max_bytes / outbox.max_age) reached before every consumer had them",
                            }),
                        },
                    )?;
                }
                Ok::<_, StoreError>(Compacted { consumed, dropped: unseen.len() as u64 })
            })
            .await?;
        if result.dropped > 0 {
            tracing::warn!(
                dropped = result.dropped,
                "outbox bounds reached: oldest records dropped before every consumer had them"
            );
            self.appended();
        }
        Ok(result)
    }
}

/// Deletes the rows `select` (bound to `?1` and a row limit `?2`) names; returns their seqs.
fn delete_returning(c: &Connection, select: &str, bound: i64) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = c.prepare(&format!(
        "DELETE FROM outbox WHERE seq IN ({select}) RETURNING seq"
    ))?;
    stmt.query_map(params![bound, MAX_DELETE], |r| r.get(0))?
        .collect()
}

/// The seq up to which the oldest records add up to `excess` payload bytes.
fn byte_cutoff(c: &Connection, excess: i64) -> rusqlite::Result<i64> {
    let mut stmt = c.prepare("SELECT seq, length(payload) FROM outbox ORDER BY seq LIMIT ?1")?;
    let mut rows = stmt.query([MAX_DELETE])?;
    let (mut acc, mut cutoff) = (0i64, 0i64);
    while let Some(r) = rows.next()? {
        cutoff = r.get(0)?;
        acc += r.get::<_, i64>(1)?;
        if acc >= excess {
            break;
        }
    }
    Ok(cutoff)
}
