//! Dispatchers: one task per consumer, reading after its cursor, in order, in batches.
//!
//! A failing consumer is retried with backoff (1 s → 30 s) by its own task, so it never holds up
//! another. Failure policy for a local consumer, by the kind of [`ConsumeError`]:
//! - a **storage** failure (disk full, I/O error, busy) is retried for as long as it lasts: the
//!   record is fine and its effect must happen once the store works again;
//! - a **malformed** record: the batch is retried one record at a time, and a record that fails
//!   [`POISON_ATTEMPTS`] times in a row is skipped with an error log and a `consumer_skipped`
//!   counter, because one record nobody can read must not stop a consumer for ever.
//!
//! Every failure is counted in `heldar_consumer_failures_total{consumer, cause}` and shown, while
//! it lasts, in the consumer's line of `heldar outbox status`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Outbox, Record, claim_cursor, count, cursor, read_after, set_cursor};
use crate::metrics::INSTRUMENTS;
use crate::store::StoreError;

const BATCH: u32 = 256;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A record failing this many times in a row is skipped.
const POISON_ATTEMPTS: u32 = 10;
/// Even without a wake-up, dispatchers look for records this often.
const POLL: Duration = Duration::from_secs(1);
/// An external consumer's cursor is written at most this often.
const CURSOR_EVERY: Duration = Duration::from_millis(100);

/// A consumer whose effect lives in this database (zone engine, serial rules).
pub trait LocalConsumer: Send + Sync + 'static {
    /// Stable name: the key of its cursor.
    fn name(&self) -> &str;

    /// Applies the effect of `records` (in `seq` order) on the writer's transaction; the same
    /// transaction then advances the cursor (invariant O2). Runs on the writer thread: no I/O
    /// but SQLite, and quick.
    fn apply(&self, c: &Connection, records: &[Record]) -> Result<(), ConsumeError>;

    /// Called after the transaction that applied records committed (e.g. to notify others).
    fn committed(&self) {}
}

/// Why a local consumer could not apply records; decides whether a record may ever be skipped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The consumer cannot understand a record: retrying cannot help, so after
    /// [`POISON_ATTEMPTS`] attempts it is skipped (counted).
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The store failed (disk full, I/O error, busy): retried until it works, never skipped.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ConsumeError {
    fn from(e: rusqlite::Error) -> Self {
        ConsumeError::Store(e.into())
    }
}

impl ConsumeError {
    /// The `cause` label of `heldar_consumer_failures_total`.
    fn cause(&self) -> &'static str {
        match self {
            ConsumeError::Malformed(_) => "malformed",
            ConsumeError::Store(_) => "store",
        }
    }
}

/// The consumer's side of an external dispatcher (MQTT uplink, a test receiver).
pub struct ExternalEnd {
    /// Records to deliver, in order; each comes with the generation it belongs to.
    pub records: mpsc::Receiver<(u64, Record)>,
    pub acker: Acker,
}

/// Acknowledges delivered records and asks for redelivery.
#[derive(Clone)]
pub struct Acker {
    acks: mpsc::UnboundedSender<i64>,
    generation: Arc<watch::Sender<u64>>,
}

impl Acker {
    /// Record `seq` is delivered for good (e.g. PUBACK received).
    pub fn ack(&self, seq: i64) {
        let _ = self.acks.send(seq);
    }

    /// Everything not yet acknowledged must be delivered again (the link was lost with its
    /// session). Returns the new generation: records of older generations still queued are stale
    /// and must be dropped by the consumer, so redelivery stays in order.
    pub fn restart(&self) -> u64 {
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

impl Outbox {
    /// Runs a local consumer until `shutdown`.
    pub async fn run_local(&self, consumer: Arc<dyn LocalConsumer>, shutdown: CancellationToken) {
        let name = consumer.name().to_string();
        self.register(&name);
        if self.claim_cursor(&name, &shutdown).await.is_none() {
            return;
        }
        let mut wake = self.head.subscribe();
        let mut backoff = BACKOFF_MIN;
        let mut failures: HashMap<i64, u32> = HashMap::new();
        // After a failed batch, records go one at a time up to the end of that batch, so the
        // bad record is found and the good ones around it still apply.
        let mut careful_until: Option<i64> = None;
        loop {
            let start = match self.load_cursor(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "cannot read consumer cursor");
                    if sleep_or_stop(&shutdown, backoff).await {
                        return;
                    }
                    continue;
                }
            };
            let one_at_a_time = careful_until.is_some_and(|until| start < until);
            let limit = if one_at_a_time { 1 } else { BATCH };
            let records = match self
                .store
                .read(move |c| Ok::<_, StoreError>(read_after(c, start, None, limit)?))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "cannot read the outbox");
                    if sleep_or_stop(&shutdown, backoff).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                careful_until = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            };
            let applier = consumer.clone();
            let cursor_name = name.clone();
            let result = self
                .store
                .write(move |c| {
                    applier.apply(c, &records)?;
                    set_cursor(c, &cursor_name, last)?;
                    Ok::<_, ConsumeError>(())
                })
                .await;
            match result {
                Ok(()) => {
                    consumer.committed();
                    backoff = BACKOFF_MIN;
                    failures.remove(&last);
                    self.set_failing(&name, None);
                }
                Err(e) => {
                    INSTRUMENTS.consumer_failed(&name, e.cause());
                    self.set_failing(&name, Some(e.to_string()));
                    if let ConsumeError::Store(e) = &e {
                        tracing::warn!(consumer = %name, seq = last, error = %e, "storage failed under the consumer; retrying until it works");
                        if sleep_or_stop(&shutdown, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    let n = failures.entry(last).or_default();
                    *n += 1;
                    tracing::warn!(consumer = %name, seq = last, attempt = *n, error = %e, "consumer failed; retrying");
                    if one_at_a_time && *n >= POISON_ATTEMPTS {
                        tracing::error!(consumer = %name, seq = last, error = %e, "skipping a record the consumer keeps failing on");
                        let skip_name = name.clone();
                        let skipped = self
                            .store
                            .write(move |c| {
                                set_cursor(c, &skip_name, last)?;
                                count(c, &format!("consumer_skipped:{skip_name}"), 1)?;
                                Ok::<_, StoreError>(())
                            })
                            .await;
                        if skipped.is_ok() {
                            failures.remove(&last);
                            continue;
                        }
                    }
                    if !one_at_a_time {
                        careful_until = Some(last);
                    }
                    if sleep_or_stop(&shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Starts an external consumer's dispatcher with `window` records in flight; the consumer
    /// reads from the returned end and acknowledges through its [`Acker`].
    pub fn external(&self, name: &str, window: usize, shutdown: CancellationToken) -> ExternalEnd {
        self.register(name);
        let (records_tx, records) = mpsc::channel(window.max(1));
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let generation = Arc::new(watch::channel(0).0);
        let acker = Acker {
            acks: acks_tx,
            generation: generation.clone(),
        };
        let outbox = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            outbox
                .run_external(
                    name,
                    window.max(1),
                    records_tx,
                    acks_rx,
                    generation.subscribe(),
                    shutdown,
                )
                .await;
        });
        ExternalEnd { records, acker }
    }

    async fn run_external(
        &self,
        name: String,
        window: usize,
        out: mpsc::Sender<(u64, Record)>,
        mut acks: mpsc::UnboundedReceiver<i64>,
        mut generation: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut wake = self.head.subscribe();
        let Some(mut cursor) = self.claim_cursor(&name, &shutdown).await else {
            return;
        };
        // Sent and not yet part of the acknowledged prefix, in order.
        let mut in_flight: VecDeque<i64> = VecDeque::new();
        let mut acked: HashSet<i64> = HashSet::new();
        let mut next_after = cursor;
        let mut current_generation = *generation.borrow();
        let mut persisted = cursor;
        let mut persisted_at = tokio::time::Instant::now();
        // Refill in batches, not one record per acknowledgement.
        let refill_at = (window / 8).max(1);
        loop {
            let room = window - in_flight.len();
            if room >= refill_at || (room > 0 && in_flight.is_empty()) {
                let after = next_after;
                match self
                    .store
                    .read(move |c| Ok::<_, StoreError>(read_after(c, after, None, room as u32)?))
                    .await
                {
                    Ok(records) => {
                        for r in records {
                            next_after = r.seq;
                            in_flight.push_back(r.seq);
                            tokio::select! {
                                _ = shutdown.cancelled() => {
                                    self.save_cursor(&name, persisted, cursor).await;
                                    return;
                                }
                                sent = out.send((current_generation, r)) => if sent.is_err() { return },
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(consumer = %name, error = %e, "cannot read the outbox")
                    }
                }
            }
            // The cursor is written at most every CURSOR_EVERY: a crash repeats at most that
            // much (at least once), and a fast consumer is not held to one commit per record.
            if persisted != cursor && persisted_at.elapsed() >= CURSOR_EVERY {
                persisted = self.save_cursor(&name, persisted, cursor).await;
                persisted_at = tokio::time::Instant::now();
            }
            let full = in_flight.len() >= window;
            let save_due = persisted != cursor;
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.save_cursor(&name, persisted, cursor).await;
                    return;
                }
                ack = acks.recv() => {
                    let Some(seq) = ack else { return };
                    acked.insert(seq);
                    while let Ok(seq) = acks.try_recv() {
                        acked.insert(seq);
                    }
                    while let Some(front) = in_flight.front().copied() {
                        if !acked.remove(&front) {
                            break;
                        }
                        in_flight.pop_front();
                        cursor = front;
                    }
                }
                changed = generation.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current_generation = *generation.borrow();
                    in_flight.clear();
                    acked.clear();
                    next_after = cursor;
                }
                _ = tokio::time::sleep_until(persisted_at + CURSOR_EVERY), if save_due => {}
                _ = wake.changed(), if !full => {}
                _ = tokio::time::sleep(POLL), if !full => {}
            }
        }
    }

    /// Writes an external consumer's cursor if it moved; returns what is now persisted.
    async fn save_cursor(&self, name: &str, persisted: i64, cursor: i64) -> i64 {
        if persisted == cursor {
            return persisted;
        }
        let n = name.to_string();
        match self
            .store
            .write(move |conn| Ok::<_, StoreError>(set_cursor(conn, &n, cursor)?))
            .await
        {
            Ok(()) => cursor,
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "cannot save the consumer cursor");
                persisted
            }
        }
    }

    /// Makes the consumer's cursor durable (compaction keeps what it has not finished from now on,
    /// across restarts) and returns it; retries until the store answers or `shutdown`.
    async fn claim_cursor(&self, name: &str, shutdown: &CancellationToken) -> Option<i64> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let n = name.to_string();
            match self
                .store
                .write(move |c| Ok::<_, StoreError>(claim_cursor(c, &n)?))
                .await
            {
                Ok(cursor) => return Some(cursor),
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "cannot record the consumer cursor; retrying");
                    if sleep_or_stop(shutdown, backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn load_cursor(&self, name: &str) -> Result<i64, StoreError> {
        let name = name.to_string();
        self.store
            .read(move |c| Ok::<_, StoreError>(cursor(c, &name)?.unwrap_or(0)))
            .await
    }
}

/// Sleeps unless `shutdown` comes first; returns whether to stop.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
