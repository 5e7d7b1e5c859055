//! What the database costs the flash: bytes appended to the WAL and bytes checkpointed into the
//! database file, counted on the writer connection, and the checkpoints themselves.
//!
//! SQLite's own auto-checkpoint runs from the same WAL hook this module installs, so the module
//! takes its place: after every commit it counts the frames the commit appended (a page plus its
//! 24-byte header each), and once the WAL holds [`CHECKPOINT_WAL_BYTES`] of pages it runs a passive
//! checkpoint. A checkpoint writes each distinct page once, however many frames hold it, and
//! SQLite reports only frames, so the bytes it wrote are read from the kernel's count for the
//! writer thread (`/proc/thread-self/io`) around the call. These are the bytes handed to the
//! kernel, the layer `/proc/PID/io` counts at; the filesystem's own journal comes on top.

use std::ffi::c_int;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use crate::metrics::{INSTRUMENTS, kernel_write_bytes};

/// Pages in the WAL (16 MiB of them) that trigger a checkpoint: 4 000 frames at 4 KiB pages,
/// 16 000 at the 1 KiB of a new database. SQLite's default (1 000 frames) rewrites the hot pages
/// of the outbox and detection indexes into the database file many times as often; the WAL stays
/// well under `journal_size_limit` (64 MiB) either way.
const CHECKPOINT_WAL_BYTES: u64 = 16 << 20;

/// Bytes of one WAL frame header.
const FRAME_HEADER: u64 = 24;

/// The writer connection's WAL position, shared by its commit hook and its final checkpoint.
#[derive(Clone)]
pub(super) struct WalMeter(Arc<Mutex<Position>>);

struct Position {
    page_size: u64,
    /// Frames in the WAL after the last commit.
    frames: u64,
    /// Frames of the current WAL already copied into the database file.
    checkpointed: u64,
}

impl WalMeter {
    /// Installs the meter as `conn`'s WAL hook, replacing SQLite's auto-checkpoint.
    pub(super) fn install(conn: &mut Connection) -> rusqlite::Result<WalMeter> {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let meter = WalMeter(Arc::new(Mutex::new(Position {
            page_size: page_size.max(512) as u64,
            frames: 0,
            checkpointed: 0,
        })));
        let hooked = meter.clone();
        conn.wal_hook(Some(move |wal: &mut Wal, frames: c_int| {
            hooked.committed(wal, frames.max(0) as u64);
            // Never an error: SQLite would report the commit as failed although it happened.
            Ok(())
        }))?;
        Ok(meter)
    }

    fn committed(&self, wal: &mut Wal, frames: u64) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let appended = if frames < p.frames {
            // The WAL was restarted from its beginning after a complete checkpoint.
            p.checkpointed = 0;
            frames
        } else {
            frames - p.frames
        };
        p.frames = frames;
        INSTRUMENTS.disk_written("wal", appended * (p.page_size + FRAME_HEADER));
        if frames * p.page_size >= CHECKPOINT_WAL_BYTES {
            let before = thread_write_bytes();
            match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Ok((_, copied)) => p.copied(copied, before),
                Err(e) => {
                    tracing::debug!(error = %e, "passive checkpoint failed; retried after the next commit")
                }
            }
        }
    }

    /// Checkpoints everything and empties the WAL (at stop), counting the pages copied.
    pub(super) fn truncate(&self, conn: &Connection) -> rusqlite::Result<()> {
        // A truncating checkpoint answers 0 frames once it emptied the WAL, so the copy is
        // counted by a passive one first; the truncating one then has nothing left to copy.
        let before = thread_write_bytes();
        let (_, copied) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)?;
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        p.copied(copied, before);
        conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::TRUNCATE)?;
        p.frames = 0;
        p.checkpointed = 0;
        Ok(())
    }
}

impl Position {
    /// Counts a checkpoint that reached frame `checkpointed` of the WAL; `before` is the writer
    /// thread's write count when it began.
    fn copied(&mut self, checkpointed: c_int, before: Option<u64>) {
        let checkpointed = checkpointed.max(0) as u64;
        let written = match (before, thread_write_bytes()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            // Without the kernel's count: every frame copied as a page, an upper bound.
            _ => checkpointed.saturating_sub(self.checkpointed) * self.page_size,
        };
        INSTRUMENTS.disk_written("db", written);
        self.checkpointed = self.checkpointed.max(checkpointed);
    }
}

/// `write_bytes` of the calling thread.
fn thread_write_bytes() -> Option<u64> {
    kernel_write_bytes("/proc/thread-self/io")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(kind: &'static str) -> u64 {
        INSTRUMENTS.disk_writes_of(kind)
    }

    #[test]
    fn counts_the_frames_each_commit_appends_and_the_pages_a_checkpoint_copies() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x BLOB)")
            .unwrap();
        let meter = WalMeter::install(&mut conn).unwrap();
        let (wal0, db0) = (written("wal"), written("db"));
        for _ in 0..20 {
            conn.execute("INSERT INTO t VALUES (zeroblob(10000))", [])
                .unwrap();
        }
        let wal_file = std::fs::metadata(dir.path().join("m.db-wal"))
            .unwrap()
            .len();
        // Other tests in this process may write too, so compare with at least what this one did.
        assert!(written("wal") - wal0 >= wal_file - 32, "{wal_file}");
        meter.truncate(&conn).unwrap();
        let db_file = std::fs::metadata(dir.path().join("m.db")).unwrap().len();
        assert!(written("db") - db0 >= db_file / 2, "{db_file}");
        assert_eq!(
            std::fs::metadata(dir.path().join("m.db-wal"))
                .unwrap()
                .len(),
            0
        );
    }
}
