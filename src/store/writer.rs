//! The single writer thread and its group commit (invariant S1).
//!
//! ```text
//! callers ──job──> bounded queue ──> writer thread: BEGIN IMMEDIATE
//!                                      for each queued job (≤ MAX_GROUP_JOBS, ≤ MAX_GROUP_TIME):
//!                                          SAVEPOINT job; run; RELEASE or ROLLBACK TO
//!                                    COMMIT (one fsync for the whole group)
//!                                    then every caller gets its result
//! ```
//!
//! Natural batching: while one group's COMMIT waits for the disk, new jobs pile up in the queue
//! and form the next group, so throughput grows with the number of callers and a lone caller
//! waits for nothing but its own fsync. `database.commit_linger` adds a wait before each group,
//! for boxes whose flash matters more than the latency of an answer.
//!
//! Failure policy, decided here and nowhere else:
//! - A job that returns an error or panics is rolled back to its savepoint; the others in the
//!   group still commit. The caller gets its own error (or `Panicked`).
//! - If SQLite abandons the whole transaction (disk full, I/O error), every job already run in the
//!   group gets that error; nothing was written for them, so none of them was acknowledged. A
//!   rollback is seen by SQLite's rollback hook, not only by the connection being back in
//!   autocommit, and is looked for both before and after the job's savepoint is settled: a
//!   RELEASE can end the transaction, and a new one may be open by then (a job that ran ROLLBACK).
//! - If COMMIT fails, every job in the group gets the error.
//! - A full queue makes callers wait up to `ENQUEUE_TIMEOUT`, then fail with `Busy` (HTTP 503),
//!   so a stalled disk shows up as refusals, never as a hang.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::wal_meter::WalMeter;
use crate::metrics::INSTRUMENTS;

/// Queue slots; beyond this, callers wait (then get `Busy`) instead of growing memory.
pub(super) const QUEUE_CAPACITY: usize = 8192;
/// Longest a caller waits for a queue slot before the store answers `Busy`.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// A group stops taking jobs at this count...
const MAX_GROUP_JOBS: usize = 512;
/// ...or once it has been open this long, so early callers are not held up by late ones.
const MAX_GROUP_TIME: Duration = Duration::from_millis(5);

/// Counters the writer keeps for `heldar status` and `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub jobs_committed: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub largest_group: AtomicU64,
    /// Duration of the most recent COMMIT, in microseconds (mostly fsync).
    pub last_commit_us: AtomicU64,
    /// When the most recent COMMIT that changed rows returned, Unix ms (0: none yet). A group
    /// whose jobs changed nothing commits without touching the disk, so it says nothing about
    /// whether the disk still takes writes.
    pub last_commit_at_ms: std::sync::atomic::AtomicI64,
}

/// A unit of work for the writer, type-erased so one queue carries every caller's closure.
trait Job: Send {
    /// Runs inside the group transaction under a savepoint; `false` means roll the savepoint back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// The job's write did not (or will not) commit: unless it already failed on its own, it
    /// reports `err`.
    fn fail(&mut self, err: &StoreError);
    /// Sends the outcome to the caller; called only once the outcome is final.
    fn finish(self: Box<Self>);
}

struct TypedJob<F, R, E> {
    work: Option<F>,
    outcome: Option<Result<R, E>>,
    reply: oneshot::Sender<Result<R, E>>,
}

impl<F, R, E> Job for TypedJob<F, R, E>
where
    F: FnOnce(&Connection) -> Result<R, E> + Send,
    R: Send,
    E: From<StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| work(conn))) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "a store write panicked; rolled back alone");
                Err(StoreError::Panicked(what).into())
            }
        };
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn fail(&mut self, err: &StoreError) {
        if !matches!(self.outcome, Some(Err(_))) {
            self.outcome = Some(Err(err.clone().into()));
        }
    }

    fn finish(self: Box<Self>) {
        let outcome = self
            .outcome
            .unwrap_or_else(|| Err(StoreError::Closed.into()));
        // The caller may have given up waiting (a timed-out HTTP request); the write stands anyway.
        let _ = self.reply.send(outcome);
    }
}

enum Message {
    Job(Box<dyn Job>),
    /// Finish what is queued, checkpoint, close the connection, then signal.
    Close(oneshot::Sender<()>),
}

/// The sending half, owned by `Store`.
#[derive(Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<Message>,
    /// `database.commit_linger`, in microseconds; read by the writer before every group.
    linger_us: Arc<AtomicU64>,
}

impl WriterHandle {
    pub(super) fn set_linger(&self, linger: Duration) {
        self.linger_us
            .store(linger.as_micros() as u64, Ordering::Relaxed);
    }

    pub(super) async fn write<F, R, E>(&self, work: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = TypedJob {
            work: Some(work),
            outcome: None,
            reply,
        };
        self.tx
            .send_timeout(Message::Job(Box::new(job)), ENQUEUE_TIMEOUT)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => StoreError::Busy,
                mpsc::error::SendTimeoutError::Closed(_) => StoreError::Closed,
            })?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Message::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// Starts the writer thread on an open, migrated connection.
pub(super) fn spawn(
    mut conn: Connection,
    stats: Arc<WriterStats>,
) -> Result<WriterHandle, StoreError> {
    let rolled_back = Arc::new(AtomicBool::new(false));
    let flag = rolled_back.clone();
    conn.rollback_hook(Some(move || flag.store(true, Ordering::SeqCst)))?;
    let meter = WalMeter::install(&mut conn)?;
    let linger_us = Arc::new(AtomicU64::new(0));
    let linger = linger_us.clone();
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(conn, rx, &stats, &rolled_back, &meter, &linger))
        .map_err(|e| StoreError::io("cannot start the writer thread", e))?;
    Ok(WriterHandle { tx, linger_us })
}

/// `rolled_back` is set by SQLite's rollback hook whenever a whole transaction is rolled back.
fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Message>,
    stats: &WriterStats,
    rolled_back: &AtomicBool,
    meter: &WalMeter,
    linger_us: &AtomicU64,
) {
    let mut on_closed = None;
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Job(first) => {
                let linger = linger_us.load(Ordering::Relaxed);
                if linger > 0 {
                    // The writes arriving meanwhile queue up and join this group's commit.
                    std::thread::sleep(Duration::from_micros(linger));
                }
                rolled_back.store(false, Ordering::SeqCst);
                group(&conn, first, &mut rx, stats, rolled_back, &mut on_closed)
            }
            Message::Close(done) => {
                // Refuse new work; what is already queued is still delivered by this loop.
                rx.close();
                on_closed = Some(done);
            }
        }
    }
    if let Err(e) = meter.truncate(&conn) {
        tracing::warn!(error = %e, "final WAL checkpoint failed; the WAL is replayed at next start");
    }
    drop(conn);
    tracing::debug!("store writer stopped");
    if let Some(done) = on_closed {
        let _ = done.send(());
    }
}

/// Runs a one-statement command through the statement cache: a savepoint per job is parsed once,
/// not once per job.
fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Whether the group's transaction is gone: ended (autocommit again) or rolled back by SQLite,
/// even if a new transaction has been opened since.
fn transaction_lost(conn: &Connection, rolled_back: &AtomicBool) -> bool {
    conn.is_autocommit() || rolled_back.load(Ordering::SeqCst)
}

/// Runs one group transaction starting with `first` and whatever else is queued.
fn group(
    conn: &Connection,
    first: Box<dyn Job>,
    rx: &mut mpsc::Receiver<Message>,
    stats: &WriterStats,
    rolled_back: &AtomicBool,
    on_closed: &mut Option<oneshot::Sender<()>>,
) {
    let started = Instant::now();
    let changes_before = conn.total_changes();
    let mut in_tx: Vec<Box<dyn Job>> = Vec::new();
    let mut total = 0u64;
    let mut next = Some(first);
    while let Some(mut job) = next.take() {
        total += 1;
        if conn.is_autocommit()
            && let Err(e) = conn.execute_batch("BEGIN IMMEDIATE")
        {
            job.fail(&StoreError::from(e));
            stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
            job.finish();
            continue_or_stop(&mut next, rx, started, total, on_closed);
            continue;
        }
        let kept = run_cached(conn, "SAVEPOINT job").is_ok() && job.run(conn);
        let settled = if transaction_lost(conn, rolled_back) {
            Err(StoreError::TransactionLost)
        } else if kept {
            run_cached(conn, "RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
                .map_err(StoreError::from)
        };
        // Looked at again after settling: a RELEASE can end the transaction too.
        if transaction_lost(conn, rolled_back) {
            // SQLite rolled the whole transaction back (disk full, I/O error): every job run so
            // far in this group lost its write. Whatever transaction is open now is not ours.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            rolled_back.store(false, Ordering::SeqCst);
            let err = StoreError::TransactionLost;
            job.fail(&err);
            abort_all(&mut in_tx, &err, stats);
            stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
            job.finish();
        } else if let Err(err) = settled {
            job.fail(&err);
            stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
            job.finish();
        } else if kept {
            in_tx.push(job);
        } else {
            stats.jobs_failed.fetch_add(1, Ordering::Relaxed);
            job.finish();
        }
        continue_or_stop(&mut next, rx, started, total, on_closed);
    }
    if !conn.is_autocommit() {
        let commit_started = Instant::now();
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                let took = commit_started.elapsed();
                stats
                    .last_commit_us
                    .store(took.as_micros() as u64, Ordering::Relaxed);
                INSTRUMENTS.store_commit_seconds.observe(took.as_secs_f64());
                stats.commits.fetch_add(1, Ordering::Relaxed);
                if conn.total_changes() > changes_before {
                    stats
                        .last_commit_at_ms
                        .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                }
                stats
                    .jobs_committed
                    .fetch_add(in_tx.len() as u64, Ordering::Relaxed);
                stats.largest_group.fetch_max(total, Ordering::Relaxed);
                for job in in_tx.drain(..) {
                    job.finish();
                }
            }
            Err(e) => {
                let err = StoreError::from(e);
                tracing::error!(error = %err, jobs = in_tx.len(), "group commit failed; every write in it is refused");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                abort_all(&mut in_tx, &err, stats);
            }
        }
    }
}

/// Takes the next queued job into the group unless a bound is reached or the queue is empty.
fn continue_or_stop(
    next: &mut Option<Box<dyn Job>>,
    rx: &mut mpsc::Receiver<Message>,
    started: Instant,
    total: u64,
    on_closed: &mut Option<oneshot::Sender<()>>,
) {
    if total as usize >= MAX_GROUP_JOBS || started.elapsed() >= MAX_GROUP_TIME {
        return;
    }
    match rx.try_recv() {
        Ok(Message::Job(job)) => *next = Some(job),
        Ok(Message::Close(done)) => {
            rx.close();
            *on_closed = Some(done);
        }
        Err(_) => {}
    }
}

fn abort_all(jobs: &mut Vec<Box<dyn Job>>, err: &StoreError, stats: &WriterStats) {
    stats
        .jobs_failed
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    for mut job in jobs.drain(..) {
        job.fail(err);
        job.finish();
    }
}
