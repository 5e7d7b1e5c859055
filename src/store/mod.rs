//! The SQLite store: connection policy, migrations, the single writer and the read connections.
//!
//! Owns: the database file `<data_dir>/heldar.db`, its pragmas, its schema and the only write
//! connection. Typed repositories per table family live in submodules (`boots`, ...) or with
//! the module that owns the tables, always writing through [`Store::write`].
//!
//! Invariant S1: WAL, `synchronous=FULL`, `foreign_keys=ON`; one writer thread owns the write
//! connection and commits many requests per transaction; a caller's future resolves only after
//! the COMMIT holding its write returned. Readers use separate read-only connections.
//!
//! Rules for callers:
//! - A write closure runs on the writer thread inside a shared transaction: it must not block on
//!   anything but SQLite, must not COMMIT or ROLLBACK, and should be short (it delays the group).
//! - Returning an error from a write closure rolls back only that closure's changes.
//! - No lock is held across `.await` here; the read pool's mutex guards only a `Vec` push/pop.

mod boots;
mod check;
pub mod fault;
mod migrate;
pub mod prune;
mod read;
mod wal_meter;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

pub use boots::{Boot, BootHistory};
pub use check::{CheckReport, check};
pub use migrate::{LATEST_VERSION, MIGRATIONS, Migration};
pub use read::open_read_only;
pub use writer::WriterStats;

/// How long a connection waits on a lock held by another process (the `sqlite3` shell, a backup)
/// before reporting busy. Inside the daemon only the writer writes, so this is rarely reached.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the store, classified for the operator: each kind has its own advice.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path} has schema version {found}, newer than this binary's {supported}: \
         run the heldar version that wrote it, or restore a backup from data_dir/backups"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "database {path}: WAL mode could not be enabled (journal mode stayed {mode}); keep it on a local filesystem"
    )]
    NoWal { path: PathBuf, mode: String },
    #[error("storage busy: too many writes queued; retry shortly")]
    Busy,
    #[error("storage is shut down")]
    Closed,
    #[error("disk full: the database cannot grow (free space or lower retention)")]
    DiskFull,
    #[error(
        "the data disk failed or turned read-only ({0}): nothing was written; see `dmesg`, repair the filesystem (e2fsck) and restart heldar"
    )]
    DiskFailed(Arc<rusqlite::Error>),
    #[error("database is corrupt ({0}): stop heldar and run `heldar db check`")]
    Corrupt(Arc<rusqlite::Error>),
    #[error("the transaction was lost (disk or I/O error); nothing in it was written")]
    TransactionLost,
    #[error("a store write panicked: {0}")]
    Panicked(String),
    #[error("could not encode what was to be stored: {0}")]
    Encode(Arc<serde_json::Error>),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: Arc<std::io::Error>,
    },
    #[error("database error: {0}")]
    Sqlite(Arc<rusqlite::Error>),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let err = match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::DiskFull,
            // EIO or EROFS from the kernel: ext4 `errors=remount-ro` after a media error.
            Some(ErrorCode::SystemIoFailure | ErrorCode::ReadOnly) => {
                StoreError::DiskFailed(Arc::new(e))
            }
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(Arc::new(e))
            }
            // Another process holds the write lock past the busy timeout.
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
            _ => StoreError::Sqlite(Arc::new(e)),
        };
        if let Some(kind) = err.fault_kind() {
            fault::record(kind, &err);
        }
        err
    }
}

impl StoreError {
    /// The fault of the disk or the file behind the error, if it is one (`heldar status`, and
    /// `heldar_store_faults_total{kind}`).
    pub fn fault_kind(&self) -> Option<&'static str> {
        match self {
            StoreError::DiskFull => Some("disk_full"),
            StoreError::DiskFailed(_) => Some("disk_failed"),
            StoreError::Corrupt(_) => Some("corrupt"),
            _ => None,
        }
    }

    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// The database handle every service shares (cheap to clone).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::WriterHandle,
    readers: read::ReadPool,
    stats: Arc<WriterStats>,
}

/// Point-in-time figures for `heldar status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub db_bytes: u64,
    pub wal_bytes: u64,
    pub schema_version: i64,
    pub queue_depth: usize,
    pub commits: u64,
    pub writes_committed: u64,
    pub writes_failed: u64,
    pub largest_group: u64,
    pub last_commit_us: u64,
    /// When the last group commit that changed rows succeeded: a fault after it is still going
    /// on.
    #[serde(default)]
    pub last_commit_at_ms: Option<i64>,
    /// The last fault of the disk or the database file this process saw.
    #[serde(default)]
    pub last_fault: Option<fault::Fault>,
}

/// Page size of a new database. Every page a commit touches is appended whole to the WAL, and a
/// detection batch touches about a dozen pages (rows, indexes, counters), most holding a few
/// dozen new bytes: 1 KiB pages halve what the WAL writes to the flash against SQLite's 4 KiB
/// default (the soak's figures are in the README), for slightly deeper B-trees.
const PAGE_SIZE: u32 = 1024;

/// The database file inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("heldar.db")
}

impl Store {
    /// Opens (creating if needed) and migrates the database, then starts the writer thread.
    ///
    /// Blocking: run it before the services start, or on a blocking thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Only a database without tables takes it; an existing one keeps its page size.
        conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE}"))?;
        // Before any pragma: switching to WAL rewrites the header of a database we must refuse.
        migrate::refuse_newer(&conn, path)?;
        apply_write_pragmas(&conn, path)?;
        migrate::migrate(&mut conn, path)?;
        let stats = Arc::new(WriterStats::default());
        let writer = writer::spawn(conn, stats.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer,
                readers: read::ReadPool::new(path),
                stats,
            }),
        })
    }

    /// Runs `work` in the next group transaction; resolves after that transaction committed.
    pub async fn write<F, R, E>(&self, work: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.inner.writer.write(work).await
    }

    /// Makes the writer wait `linger` after a write arrives before committing, so the writes
    /// of that span share one commit (`database.commit_linger`).
    pub fn set_commit_linger(&self, linger: Duration) {
        self.inner.writer.set_linger(linger);
    }

    /// Runs `work` on a read-only connection on a blocking thread.
    pub async fn read<F, R, E>(&self, work: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.get()?;
            work(&conn)
        })
        .await
        .map_err(|e| StoreError::Panicked(e.to_string()))?
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    pub async fn status(&self) -> Result<StoreStatus, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let schema_version = self
            .read(|c| Ok::<_, StoreError>(migrate::user_version(c)?))
            .await?;
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let s = &self.inner.stats;
        Ok(StoreStatus {
            path: self.inner.path.clone(),
            db_bytes: size(self.inner.path.clone()),
            wal_bytes: size(sidecar(&self.inner.path, "-wal")),
            schema_version,
            queue_depth: self.inner.writer.queue_depth(),
            commits: s.commits.load(Relaxed),
            writes_committed: s.jobs_committed.load(Relaxed),
            writes_failed: s.jobs_failed.load(Relaxed),
            largest_group: s.largest_group.load(Relaxed),
            last_commit_us: s.last_commit_us.load(Relaxed),
            last_commit_at_ms: Some(s.last_commit_at_ms.load(Relaxed)).filter(|t| *t > 0),
            last_fault: fault::last(),
        })
    }

    /// Lets the writer finish everything queued, checkpoints the WAL and stops the writer thread.
    /// Later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.writer.close().await;
    }
}

/// `heldar.db-wal`, `heldar.db-shm` next to the database.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn apply_write_pragmas(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    // FULL: a COMMIT that returned is on disk, WAL included (the NORMAL default may lose the last
    // transactions on power loss, which would break invariant S2).
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=ON;
         PRAGMA journal_size_limit=67108864;",
    )?;
    Ok(())
}
