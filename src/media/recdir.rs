//! The recordings directory's identity and whether it may be used (issue 13 item 8).
//!
//! The index describes the files of one directory; taking another directory for it is worse
//! than not recording: the start-up reconcile would turn every row into a `file_lost` gap (evidence
//! locks included) and new footage would land on the wrong disk. So the directory carries a
//! marker, [`MARKER`], holding the database's id, and nothing reconciles, records into or deletes
//! from a directory until its marker matched. A directory that is missing, unreadable, unmarked
//! while the index has rows none of which it holds (a disk that did not mount: the empty mount
//! point shows through), or marked by another database (a swapped disk) is refused and reported;
//! the media service checks again every few seconds, so recording resumes once the disk is back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The marker file at the top of the recordings directory: the database id and a newline.
pub const MARKER: &str = ".heldar-database-id";

/// How many of the newest indexed files an unmarked directory is searched for before it is
/// adopted (a directory recorded into before markers existed) or refused.
const ADOPT_SAMPLE: i64 = 100;

/// Why the recordings directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum RecdirError {
    #[error(
        "recordings directory {dir} does not exist while the index holds {rows} segments (disk not mounted?)"
    )]
    Missing { dir: PathBuf, rows: u64 },
    #[error(
        "recordings directory {dir} has no marker and none of the index's {rows} segments (an empty mount point: disk not mounted?)"
    )]
    Unmarked { dir: PathBuf, rows: u64 },
    #[error(
        "recordings directory {dir} belongs to another database (marker {found}, this database {expected}): a swapped disk? Only to give this disk to this database, remove {dir}/{MARKER}"
    )]
    Foreign {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("recordings directory {dir} cannot be read: {source}")]
    Unreadable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the marker of recordings directory {dir}: {source}")]
    Mark {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the recordings directory check task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A directory that was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Its marker carries this database's id.
    Verified,
    /// It was new or empty of indexed footage while the index was empty, and is marked now.
    Claimed,
    /// It had no marker but holds the index's files (recorded before markers); marked now.
    Adopted,
}

/// Checks `dir` against the database's id, marking it when it is new (see the module doc).
pub async fn verify(store: &Store, dir: &Path) -> Result<Accepted, RecdirError> {
    let expected = store.database_id().await?;
    let found = blocking({
        let dir = dir.to_path_buf();
        move || read_marker(&dir)
    })
    .await?;
    match found {
        Some(found) if found == expected => Ok(Accepted::Verified),
        Some(found) => Err(RecdirError::Foreign {
            dir: dir.to_path_buf(),
            found,
            expected,
        }),
        None => {
            let (rows, newest) = store
                .read(|c| {
                    let rows: i64 =
                        c.query_row("SELECT COUNT(*) FROM segments", [], |r| r.get(0))?;
                    let mut stmt =
                        c.prepare("SELECT path FROM segments ORDER BY start_ms DESC LIMIT ?1")?;
                    let newest = stmt
                        .query_map([ADOPT_SAMPLE], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok::<_, StoreError>((rows as u64, newest))
                })
                .await?;
            let dir = dir.to_path_buf();
            blocking(move || claim(&dir, &expected, rows, &newest)).await
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RecdirError> + Send + 'static,
) -> Result<T, RecdirError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RecdirError::Task(e.to_string()))?
}

/// The id in `dir`'s marker; `None` when there is no marker (or no directory).
fn read_marker(dir: &Path) -> Result<Option<String>, RecdirError> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecdirError::Unreadable {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Marks an unmarked directory when that is safe: the index is empty (a new box; a missing
/// directory is created), or the directory holds some of the newest indexed files.
fn claim(dir: &Path, id: &str, rows: u64, newest: &[String]) -> Result<Accepted, RecdirError> {
    let unreadable = |source| RecdirError::Unreadable {
        dir: dir.to_path_buf(),
        source,
    };
    let accepted = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rows == 0 => {
            let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
                return Err(unreadable(e));
            };
            create_dirs_durably(parent, Path::new(name)).map_err(|source| RecdirError::Mark {
                dir: dir.to_path_buf(),
                source,
            })?;
            Accepted::Claimed
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RecdirError::Missing {
                dir: dir.to_path_buf(),
                rows,
            });
        }
        Err(e) => return Err(unreadable(e)),
        Ok(_) if rows == 0 => Accepted::Claimed,
        Ok(_) => {
            let mut holds = false;
            for rel in newest {
                if dir.join(rel).try_exists().map_err(unreadable)? {
                    holds = true;
                    break;
                }
            }
            if !holds {
                return Err(RecdirError::Unmarked {
                    dir: dir.to_path_buf(),
                    rows,
                });
            }
            Accepted::Adopted
        }
    };
    write_marker(dir, id).map_err(|source| RecdirError::Mark {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(accepted)
}

/// Writes the marker durably: a temporary file, fsynced, renamed over, then the directory fsynced.
fn write_marker(dir: &Path, id: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(MARKER))?;
    sync_dir(dir)
}

/// fsyncs a directory, making the entries created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// fsyncs a segment file, then its day directory and the camera directory, and returns its size.
/// Invariant S3: only after this may a row point at the file (a finished or a recovered one).
pub fn sync_segment(path: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    for dir in path.ancestors().skip(1).take(2) {
        sync_dir(dir)?;
    }
    Ok(bytes)
}

/// Creates `base/rel` one component at a time, fsyncing each parent after an entry was added.
/// `base` itself is never created: a missing base means the disk is gone, not a directory to make.
pub fn create_dirs_durably(base: &Path, rel: &Path) -> std::io::Result<()> {
    let mut at = base.to_path_buf();
    for part in rel.components() {
        let parent = at.clone();
        at.push(part);
        match std::fs::create_dir(&at) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && at.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the recordings directory may be used, as `heldar status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingsState {
    /// Not checked yet (the daemon is starting).
    Checking,
    Ok,
    /// Refused: nothing records into it and the index is left alone; checked again periodically.
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingsStatus {
    pub dir: PathBuf,
    pub state: RecordingsState,
    /// Why it is unavailable.
    pub error: Option<String>,
    /// When it entered this state.
    pub since: DateTime<Utc>,
}

/// The shared verdict on the recordings directory; cheap to clone. Recording, reconcile and
/// retention use the directory only while it is [`RecordingsState::Ok`].
#[derive(Clone)]
pub struct RecordingsGate {
    status: Arc<Mutex<RecordingsStatus>>,
}

impl RecordingsGate {
    pub fn new(dir: &Path) -> Self {
        RecordingsGate {
            status: Arc::new(Mutex::new(RecordingsStatus {
                dir: dir.to_path_buf(),
                state: RecordingsState::Checking,
                error: None,
                since: Utc::now(),
            })),
        }
    }

    pub fn status(&self) -> RecordingsStatus {
        self.lock().clone()
    }

    pub fn is_usable(&self) -> bool {
        self.lock().state == RecordingsState::Ok
    }

    /// Sets the verdict; returns whether it changed (state or reason).
    pub fn set(&self, state: RecordingsState, error: Option<String>) -> bool {
        let mut s = self.lock();
        if s.state == state && s.error == error {
            return false;
        }
        if s.state != state {
            s.since = Utc::now();
        }
        s.state = state;
        s.error = error;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingsStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmarked_directory_is_claimed_only_when_safe() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("recordings");
        let rows = vec!["gate/day/a.mkv".to_string()];

        assert!(matches!(
            claim(&dir, "id", 1, &rows),
            Err(RecdirError::Missing { rows: 1, .. })
        ));
        assert!(
            !dir.exists(),
            "a missing directory is not created while rows exist"
        );

        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            claim(&dir, "id", 1, &rows),
            Err(RecdirError::Unmarked { .. })
        ));
        assert_eq!(read_marker(&dir).unwrap(), None);

        std::fs::create_dir_all(dir.join("gate/day")).unwrap();
        std::fs::write(dir.join("gate/day/a.mkv"), b"x").unwrap();
        assert_eq!(claim(&dir, "id", 1, &rows).unwrap(), Accepted::Adopted);
        assert_eq!(read_marker(&dir).unwrap().as_deref(), Some("id"));

        let fresh = tmp.path().join("fresh");
        assert_eq!(claim(&fresh, "new", 0, &[]).unwrap(), Accepted::Claimed);
        assert_eq!(read_marker(&fresh).unwrap().as_deref(), Some("new"));
    }

    #[test]
    fn directories_are_created_inside_the_base_only() {
        let tmp = tempfile::tempdir().unwrap();
        create_dirs_durably(tmp.path(), Path::new("a/b/c")).unwrap();
        assert!(tmp.path().join("a/b/c").is_dir());
        create_dirs_durably(tmp.path(), Path::new("a/b/c")).unwrap();
        let gone = tmp.path().join("gone");
        assert!(create_dirs_durably(&gone, Path::new("cam")).is_err());
        assert!(!gone.exists());
    }
}
