//! Metadata retention: the bounds on what the box keeps besides footage (`media::retention`)
//! and the outbox (`outbox::compaction`), so a year on a box never fills its disk with
//! detections, zone events, rule actions or audit rows.
//!
//! Every [`PERIOD`], one pass:
//! - by age: detection batches (their detections go with them), zone events and finished rule
//!   actions older than `retention.metadata_max_age`; audit rows older than
//!   `retention.audit_max_age` except the newest `retention.audit_keep`;
//! - by size: while the database's pages in use, less the outbox's payload (the outbox has its
//!   own bounds), pass `retention.metadata_max_bytes`, the oldest
//!   detections go first, then zone events, then finished rule actions, whatever their age,
//!   down to 90 % of the cap so a busy box does not delete a little every pass. Each such
//!   deletion is logged as a warning: it is data the user asked to keep for longer.
//!
//! Deletes run in chunks of [`CHUNK`] rows, each in its own write, so the writer is never held
//! long and ingest never waits for retention. The SQL of each table stays with its owner; this
//! module only decides what goes and when. Deleted counts are in
//! `heldar_metadata_deleted_total{table,reason}`.

use std::time::Duration;

use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use crate::config::model::RetentionConfig;
use crate::metrics::INSTRUMENTS;
use crate::store::{Store, StoreError, prune};
use crate::{audit, outbox, perception, serial, zones};

/// Time between passes: short enough that the size cap keeps up with eight cameras' detections.
const PERIOD: Duration = Duration::from_secs(10);
/// Rows one write deletes at most, by age.
const CHUNK: u64 = 2_000;
/// Rows one write deletes for the size cap, which measures again after each: small, as one
/// batch may hold a thousand detections, yet at the pass's [`MAX_WRITES`] still many times
/// what eight cameras at 5 fps add in a [`PERIOD`].
const SIZE_CHUNK: u64 = 100;
/// Writes one pass issues at most, so a large backlog (a first start after an upgrade) is worked
/// off over several passes instead of in one long burst.
const MAX_WRITES: u32 = 50;

/// A metadata table, its name in metrics and how its owner deletes from it.
struct Table {
    name: &'static str,
    older: fn(&Connection, i64, u64) -> Result<u64, StoreError>,
    oldest: fn(&Connection, u64) -> Result<u64, StoreError>,
}

/// In the order the size cap takes from them: the bulkiest and least precious first.
const TABLES: [Table; 3] = [
    Table {
        name: "detection_batches",
        older: perception::ingest::prune_older,
        oldest: perception::ingest::prune_oldest,
    },
    Table {
        name: "zone_events",
        older: zones::prune_events_older,
        oldest: zones::prune_oldest_events,
    },
    Table {
        name: "rule_actions",
        older: serial::rules::prune_older,
        oldest: serial::rules::prune_oldest,
    },
];

/// What one pass deleted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pruned {
    /// Rows past their age, per table name.
    pub by_age: Vec<(&'static str, u64)>,
    /// Rows deleted for the size cap, per table name.
    pub by_size: Vec<(&'static str, u64)>,
    /// The database's pages in use less the outbox's payload after the pass, in bytes.
    pub used_bytes: u64,
}

/// The retention pass over the metadata tables.
pub struct MetadataRetention {
    store: Store,
    config: RetentionConfig,
}

impl MetadataRetention {
    pub fn new(store: Store, config: RetentionConfig) -> MetadataRetention {
        MetadataRetention { store, config }
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            match self.pass().await {
                Ok(p) => report(&p),
                Err(e) => tracing::warn!(error = %e, "metadata retention failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    /// One pass: ages first, then the size cap.
    pub async fn pass(&self) -> Result<Pruned, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let metadata_before = now - self.config.metadata_max_age.get().as_millis() as i64;
        let audit_before = now - self.config.audit_max_age.get().as_millis() as i64;
        let keep = self.config.audit_keep;
        let mut writes = 0;
        let mut pruned = Pruned::default();
        for table in &TABLES {
            let older = table.older;
            let n = self
                .chunks(&mut writes, table.name, move |c| {
                    older(c, metadata_before, CHUNK)
                })
                .await?;
            pruned.by_age.push((table.name, n));
        }
        let n = self
            .chunks(&mut writes, "audit", move |c| {
                audit::prune(c, audit_before, keep, CHUNK)
            })
            .await?;
        pruned.by_age.push(("audit", n));

        let cap = self.config.metadata_max_bytes.bytes();
        let mut used = self.used().await?;
        if used > cap {
            let target = cap / 10 * 9;
            for table in &TABLES {
                let oldest = table.oldest;
                let mut n = 0;
                while used > target && writes < MAX_WRITES {
                    writes += 1;
                    let (deleted, now_used) = self
                        .store
                        .write(move |c| {
                            Ok::<_, StoreError>((oldest(c, SIZE_CHUNK)?, metadata_bytes(c)?))
                        })
                        .await?;
                    INSTRUMENTS.metadata_deleted(table.name, "size", deleted);
                    n += deleted;
                    used = now_used;
                    if deleted < SIZE_CHUNK {
                        break;
                    }
                }
                pruned.by_size.push((table.name, n));
            }
        }
        pruned.used_bytes = used;
        Ok(pruned)
    }

    /// Runs `delete` in writes of one chunk each until it deletes less than a chunk or the pass
    /// has used its writes; returns the rows deleted from `table`, counted as they commit.
    async fn chunks(
        &self,
        writes: &mut u32,
        table: &'static str,
        delete: impl Fn(&Connection) -> Result<u64, StoreError> + Clone + Send + 'static,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        while *writes < MAX_WRITES {
            *writes += 1;
            let delete = delete.clone();
            let n = self.store.write(move |c| delete(c)).await?;
            INSTRUMENTS.metadata_deleted(table, "age", n);
            total += n;
            if n < CHUNK {
                break;
            }
        }
        Ok(total)
    }

    async fn used(&self) -> Result<u64, StoreError> {
        self.store.read(metadata_bytes).await
    }
}

/// What the size cap bounds: the database's pages in use less the outbox's payload.
fn metadata_bytes(c: &Connection) -> Result<u64, StoreError> {
    Ok(prune::used_bytes(c)?.saturating_sub(outbox::payload_bytes(c)?))
}

/// A log line when something went, a warning for the size cap.
fn report(p: &Pruned) {
    let aged: u64 = p.by_age.iter().map(|(_, n)| n).sum();
    if aged > 0 {
        tracing::info!(deleted = ?p.by_age, "metadata past its retention deleted");
    }
    if p.by_size.iter().any(|(_, n)| *n > 0) {
        tracing::warn!(
            deleted = ?p.by_size,
            used_bytes = p.used_bytes,
            "metadata over retention.metadata_max_bytes: oldest deleted before its age"
        );
    }
}
