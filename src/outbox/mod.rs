//! The outbox: an append-only log of everything consumers must see, with a durable cursor per
//! consumer.
//!
//! Owns: the `outbox`, `consumer_cursors` and `counters` tables, the dispatchers that feed
//! consumers, and compaction.
//!
//! Invariants (DESIGN §4):
//! - **O1** records are read in `seq` order; each consumer has a durable cursor (the last `seq`
//!   it finished) and sees every record after it, in order, until it succeeds.
//! - **O2** a [`LocalConsumer`] applies its effect and advances its cursor in the same
//!   transaction: a crash neither loses nor repeats an effect.
//! - **O3** an external consumer acknowledges asynchronously; its cursor advances only over the
//!   contiguous acknowledged prefix (at-least-once; records carry `seq` and a stable `id`).
//! - **O4** compaction deletes below the lowest cursor; past the bounds the oldest records are
//!   dropped, counted, and announced by a `system` record — never silently, never by blocking
//!   the producers.
//!
//! Rule for producers: append with [`append`] inside the store transaction that holds the fact
//! the record reports (a detection batch, a zone event), then call [`Outbox::appended`] after the
//! commit so dispatchers wake. A record is therefore durable exactly when its fact is.

mod compaction;
mod dispatch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use compaction::{OUTBOX_DROPPED, OutboxDropped};
pub use dispatch::{Acker, ConsumeError, ExternalEnd, LocalConsumer};

use crate::config::model::OutboxConfig;
use crate::store::{Store, StoreError};

/// The kinds of record, as MQTT topics name them (`<dev>/events/<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Detection,
    Zone,
    Alarm,
    Camera,
    System,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored record of a kind this binary does not know (a database written by a newer one).
#[derive(Debug, thiserror::Error)]
#[error("unknown record kind {0:?}")]
pub struct UnknownKind(String);

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Kind, UnknownKind> {
        [
            Kind::Detection,
            Kind::Zone,
            Kind::Alarm,
            Kind::Camera,
            Kind::System,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

impl rusqlite::types::FromSql for Kind {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Kind> {
        value
            .as_str()?
            .parse()
            .map_err(|e: UnknownKind| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

impl Kind {
    /// Turns a payload as stored into the form every reader sees. Only detection batches are
    /// stored in a form of their own (`perception::record::StoredBatch`).
    fn restore(self, payload: &mut serde_json::Value) {
        if self == Kind::Detection {
            crate::provenance::restore_into_batch(payload);
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Detection => "detection",
            Kind::Zone => "zone",
            Kind::Alarm => "alarm",
            Kind::Camera => "camera",
            Kind::System => "system",
        }
    }
}

/// The payload of one kind of record: a serde struct owned by the module that produces it, so
/// a renamed field is a compile error in every consumer rather than a consumer that silently
/// stops matching.
pub trait Payload: Serialize + DeserializeOwned {
    /// The kind of every record carrying this payload.
    const KIND: Kind;
}

/// A record to append; built from a typed [`Payload`], or from the leaner stored form of one
/// ([`NewRecord::stored_as`]) that [`Kind::restore`] maps back.
#[derive(Clone, Debug)]
pub struct NewRecord {
    kind: Kind,
    r#type: String,
    camera_id: Option<String>,
    ts_ms: i64,
    /// Serialized once, straight to the text stored (no intermediate `Value`).
    payload: String,
}

impl NewRecord {
    /// A record of `payload`'s kind; `type` says what happened within the kind (`detections`,
    /// `enter`, `occupancy`, `alarm_in`, `outbox_dropped`, ...), `ts_ms` when (Unix ms).
    pub fn new<P: Payload>(
        r#type: impl Into<String>,
        camera_id: Option<String>,
        ts_ms: i64,
        payload: &P,
    ) -> Result<NewRecord, StoreError> {
        Self::stored_as::<P>(r#type, camera_id, ts_ms, payload)
    }

    /// A record of `P`'s kind whose payload is stored in a leaner form of its own, which
    /// [`Kind::restore`] turns back into `P`'s shape for every reader.
    pub fn stored_as<P: Payload>(
        r#type: impl Into<String>,
        camera_id: Option<String>,
        ts_ms: i64,
        stored: &impl Serialize,
    ) -> Result<NewRecord, StoreError> {
        Ok(NewRecord {
            kind: P::KIND,
            r#type: r#type.into(),
            camera_id,
            ts_ms,
            payload: serde_json::to_string(stored).map_err(|e| StoreError::Encode(Arc::new(e)))?,
        })
    }
}

/// A record as stored and delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: i64,
    /// Stable across redelivery: receivers deduplicate on it.
    pub id: String,
    pub kind: Kind,
    pub r#type: String,
    pub camera_id: Option<String>,
    pub ts_ms: i64,
    /// The payload as read (a kind stored in a leaner form is restored first, [`Kind::restore`]):
    /// the uplink forwards it whole; local consumers read it typed through [`Record::payload`].
    pub payload: serde_json::Value,
}

/// A record's payload is not the type its reader expects.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("record {seq} is a {found} record, not {wanted}")]
    Kind { seq: i64, found: Kind, wanted: Kind },
    #[error("record {seq} ({kind}/{record_type}): {source}")]
    Shape {
        seq: i64,
        kind: Kind,
        record_type: String,
        source: serde_json::Error,
    },
}

impl Record {
    /// The payload as `P`, checked against `P`'s kind.
    pub fn payload<P: Payload>(&self) -> Result<P, PayloadError> {
        if self.kind != P::KIND {
            return Err(PayloadError::Kind {
                seq: self.seq,
                found: self.kind,
                wanted: P::KIND,
            });
        }
        P::deserialize(&self.payload).map_err(|source| PayloadError::Shape {
            seq: self.seq,
            kind: self.kind,
            record_type: self.r#type.clone(),
            source,
        })
    }
}

/// Appends a record inside the caller's transaction and returns its `seq`.
pub fn append(c: &Connection, rec: &NewRecord) -> rusqlite::Result<i64> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let id = event_id(now_ms);
    c.prepare_cached(
        "INSERT INTO outbox (event_id, kind, type, camera_id, ts_ms, payload, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        rec.kind.as_str(),
        rec.r#type,
        rec.camera_id,
        rec.ts_ms,
        rec.payload,
        now_ms
    ])?;
    Ok(c.last_insert_rowid())
}

/// A record's stable id: 32 hex digits, the creation time in ms first and 80 random bits after.
/// Time first keeps the unique index on it appending at its right edge: a random id lands on a
/// random leaf page, which every commit then writes to the WAL and every checkpoint to the file.
fn event_id(now_ms: i64) -> String {
    let random = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!(
        "{:012x}{random:020x}",
        now_ms.max(0) as u64 & 0xffff_ffff_ffff
    )
}

/// The `seq` of the newest record, 0 for an empty log (a consumer at the head is caught up).
pub fn head(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM outbox", [], |r| r.get(0))
}

const COLUMNS: &str = "seq, event_id, kind, type, camera_id, ts_ms, payload";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let kind: Kind = r.get(2)?;
    let payload: String = r.get(6)?;
    let mut payload = serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null);
    kind.restore(&mut payload);
    Ok(Record {
        seq: r.get(0)?,
        id: r.get(1)?,
        kind,
        r#type: r.get(3)?,
        camera_id: r.get(4)?,
        ts_ms: r.get(5)?,
        payload,
    })
}

/// Records after `after_seq`, oldest first, optionally of one kind.
pub fn read_after(
    c: &Connection,
    after_seq: i64,
    kind: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM outbox WHERE seq > ?1 AND (?2 IS NULL OR kind = ?2) ORDER BY seq LIMIT ?3"
    ))?;
    stmt.query_map(params![after_seq, kind, limit], record_from_row)?
        .collect()
}

/// The newest `limit` records, oldest of them first (for `heldar events tail`).
pub fn latest(c: &Connection, kind: Option<&str>, limit: u32) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM outbox WHERE (?1 IS NULL OR kind = ?1) ORDER BY seq DESC LIMIT ?2"
    ))?;
    let mut records: Vec<Record> = stmt
        .query_map(params![kind, limit], record_from_row)?
        .collect::<Result<_, _>>()?;
    records.reverse();
    Ok(records)
}

pub(crate) fn cursor(c: &Connection, consumer: &str) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT seq FROM consumer_cursors WHERE consumer = ?1",
        [consumer],
        |r| r.get(0),
    )
    .optional()
}

pub(crate) fn set_cursor(c: &Connection, consumer: &str, seq: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO consumer_cursors (consumer, seq, updated_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (consumer) DO UPDATE SET seq = MAX(seq, ?2), updated_at_ms = ?3",
        params![consumer, seq, chrono::Utc::now().timestamp_millis()],
    )?;
    Ok(())
}

/// The counter holding the outbox's payload size in bytes, kept by triggers (migration 0008).
const BYTES: &str = "outbox_bytes";

/// The outbox's payload bytes (the running count of migration 0008): what of the database the
/// outbox's own bounds answer for.
pub fn payload_bytes(c: &Connection) -> rusqlite::Result<u64> {
    Ok(counter(c, BYTES)?.max(0) as u64)
}

/// Gives `consumer` a durable cursor at 0 if it has none, so compaction keeps its records from
/// the moment it first exists, even while it is not running; returns its cursor.
pub(crate) fn claim_cursor(c: &Connection, consumer: &str) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT OR IGNORE INTO consumer_cursors (consumer, seq, updated_at_ms) VALUES (?1, 0, ?2)",
        params![consumer, chrono::Utc::now().timestamp_millis()],
    )?;
    Ok(cursor(c, consumer)?.unwrap_or(0))
}

/// Adds to a persistent counter.
pub(crate) fn count(c: &Connection, name: &str, by: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + ?2",
        params![name, by],
    )?;
    Ok(())
}

pub(crate) fn counter(c: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(
        c.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0),
    )
}

/// How far one consumer is behind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumerLag {
    pub consumer: String,
    pub cursor: i64,
    pub backlog: u64,
    /// Age of the oldest record this consumer has not finished, in seconds.
    pub oldest_age_s: Option<f64>,
    /// Why its last attempt failed, while it keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
}

/// What `heldar outbox status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub records: u64,
    pub bytes: u64,
    pub newest_seq: i64,
    pub oldest_age_s: Option<f64>,
    /// Records dropped by the bounds before every consumer had them, since the box was set up.
    pub dropped: u64,
    pub consumers: Vec<ConsumerLag>,
}

/// The outbox service; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    config: OutboxConfig,
    /// Bumped after every commit that appended; dispatchers wait on it.
    head: Arc<watch::Sender<u64>>,
    /// Names of the consumers running in this daemon; until one has a durable cursor, it holds
    /// compaction back from the start.
    consumers: Arc<Mutex<Vec<String>>>,
    /// The last error of each local consumer that is failing now.
    failing: Arc<Mutex<HashMap<String, String>>>,
}

impl Outbox {
    pub fn new(store: Store, config: OutboxConfig) -> Outbox {
        Outbox {
            store,
            config,
            head: Arc::new(watch::channel(0).0),
            consumers: Arc::default(),
            failing: Arc::default(),
        }
    }

    /// Wakes the dispatchers; call after a commit that appended records.
    pub fn appended(&self) {
        self.head.send_modify(|v| *v += 1);
    }

    /// Gives `consumer` a cursor at the newest record if it has none yet, so it starts with
    /// what happens from now on (for consumers whose effects should not replay history).
    pub async fn start_at_head(&self, consumer: &str) -> Result<(), StoreError> {
        let consumer = consumer.to_string();
        self.store
            .write(move |c| {
                if cursor(c, &consumer)?.is_none() {
                    set_cursor(c, &consumer, head(c)?)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// Appends one record in a transaction of its own.
    pub async fn publish(&self, rec: NewRecord) -> Result<i64, StoreError> {
        let seq = self
            .store
            .write(move |c| Ok::<_, StoreError>(append(c, &rec)?))
            .await?;
        self.appended();
        Ok(seq)
    }

    fn register(&self, name: &str) {
        let mut names = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }

    fn set_failing(&self, name: &str, error: Option<String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(e) => failing.insert(name.to_string(), e),
            None => failing.remove(name),
        };
    }

    fn registered(&self) -> Vec<String> {
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn status(&self) -> Result<OutboxStatus, StoreError> {
        let names = self.registered();
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.store
            .read(move |c| {
                let now = chrono::Utc::now().timestamp_millis();
                let (records, newest, oldest): (i64, Option<i64>, Option<i64>) = c.query_row(
                    "SELECT COUNT(*), MAX(seq), MIN(created_at_ms) FROM outbox",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let bytes = counter(c, BYTES)?;
                let mut consumers = Vec::new();
                for name in names {
                    let cursor = cursor(c, &name)?.unwrap_or(0);
                    let (backlog, oldest_unfinished): (i64, Option<i64>) = c.query_row(
                        "SELECT COUNT(*), MIN(created_at_ms) FROM outbox WHERE seq > ?1",
                        [cursor],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    consumers.push(ConsumerLag {
                        cursor,
                        backlog: backlog as u64,
                        oldest_age_s: oldest_unfinished.map(|t| (now - t) as f64 / 1000.0),
                        failing: failing.get(&name).cloned(),
                        consumer: name,
                    });
                }
                Ok::<_, StoreError>(OutboxStatus {
                    records: records as u64,
                    bytes: bytes as u64,
                    newest_seq: newest.unwrap_or(0),
                    oldest_age_s: oldest.map(|t| (now - t) as f64 / 1000.0),
                    dropped: counter(c, compaction::DROPPED)? as u64,
                    consumers,
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::event_id;

    #[test]
    fn event_ids_are_32_hex_digits_that_sort_by_time_and_differ_within_a_millisecond() {
        let (a, b, later) = (
            event_id(1_795_857_160_118),
            event_id(1_795_857_160_118),
            event_id(1_795_857_160_119),
        );
        for id in [&a, &b, &later] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
        assert_ne!(a, b);
        assert!(a < later && b < later, "{a} {b} {later}");
    }
}
