//! Compaction and bounds (invariant O4).
//!
//! Every pass: records every consumer has finished are deleted once they are older than
//! [`KEEP_CONSUMED`] (kept that long for `heldar events tail`); records older than `outbox.max_age`
//! or beyond `outbox.max_bytes` are dropped whether consumed or not. Drops of records some consumer
//! had not finished are added to the `outbox_dropped` counter and announced with a `system` record,
//! so an operator sees them in `heldar outbox status`, the log and over MQTT. A pass deletes at most
//! [`MAX_DELETE`] rows, so it never holds the writer long; producers never wait for compaction.
//!
//! "Every consumer" means every durable cursor in `consumer_cursors`, not only the consumers that
//! have registered in this process: at start-up compaction may run before the uplink has started,
//! and a consumer that is not running (the broker is unreachable, MQTT is switched off for a while)
//! must find its records still there. A cursor that is never going to move again therefore keeps
//! records until the bounds drop them, counted like any other drop.
//!
//! The outbox's size is a running count of payload bytes kept by triggers (migration 0008), so a
//! pass costs what it deletes, not a scan of every payload.

use std::time::Duration;

use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};

use super::{BYTES, Kind, NewRecord, Outbox, Payload, append, count, counter, cursor};
use crate::store::StoreError;

pub(super) const DROPPED: &str = "outbox_dropped";
/// The record type of [`OutboxDropped`].
pub const OUTBOX_DROPPED: &str = "outbox_dropped";

/// The payload of the `system` record that announces records dropped by the bounds (invariant
/// O4): which ones, so a receiver can tell what it missed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxDropped {
    pub count: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub reason: String,
}

impl Payload for OutboxDropped {
    const KIND: Kind = Kind::System;
}
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
                let low = low_water_mark(c, &names)?;
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
                let total = counter(c, BYTES)?;
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
                    let dropped = OutboxDropped {
                        count: unseen.len() as u64,
                        first_seq: *first,
                        last_seq: *last,
                        reason: "outbox bounds (outbox.max_bytes / outbox.max_age) reached before every consumer had them".into(),
                    };
                    append(c, &NewRecord::new(OUTBOX_DROPPED, None, now, &dropped)?)?;
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

/// The highest seq every consumer has finished: the lowest durable cursor, and 0 while a running
/// consumer has no cursor yet. With no consumer at all, everything is finished.
fn low_water_mark(c: &Connection, running: &[String]) -> rusqlite::Result<i64> {
    let (lowest_cursor, newest): (Option<i64>, i64) = c.query_row(
        "SELECT (SELECT MIN(seq) FROM consumer_cursors), (SELECT COALESCE(MAX(seq), 0) FROM outbox)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for name in running {
        if cursor(c, name)?.is_none() {
            return Ok(0);
        }
    }
    Ok(lowest_cursor.map_or(newest, |low| low.min(newest)))
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
    let mut stmt =
        c.prepare("SELECT seq, length(CAST(payload AS BLOB)) FROM outbox ORDER BY seq LIMIT ?1")?;
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
