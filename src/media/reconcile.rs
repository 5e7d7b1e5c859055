//! Start-up reconcile of recording files and the index (invariant S3).
//!
//! A power cut or SIGKILL leaves the segment that was being written without a row. Before any
//! camera records, every file without a row is probed: a playable one is made durable (file, then
//! directories) and indexed (marked `recovered`), an unplayable one is moved to
//! `recordings/.unplayable/` and both directories are fsynced. Rows whose file is gone are removed
//! and the hole becomes a gap (`file_lost`). This runs only on a directory the marker check
//! ([`super::recdir`]) accepted, and any error reading it stops the pass: a directory that cannot
//! be listed says nothing about which files are gone. `heldar db check` runs the same scan
//! read-only and reports what it would do.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::index::{self, Gap, NewSegment};
use super::probe::probe_segment;
use super::recdir::{create_dirs_durably, sync_dir, sync_segment};
use crate::store::{Store, StoreError};

/// Where unplayable leftovers go, inside the recordings directory.
const UNPLAYABLE: &str = ".unplayable";

/// Why a scan or reconcile pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} durable: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the reconcile task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ReconcileError {
    fn from(e: rusqlite::Error) -> Self {
        ReconcileError::Store(e.into())
    }
}

/// Disagreements between files and rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// Recording files (relative paths) that have no row.
    pub files_without_rows: Vec<String>,
    /// Rows (relative paths) whose file is missing.
    pub rows_without_files: Vec<String>,
}

/// What the start-up reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub indexed: Vec<String>,
    pub moved_aside: Vec<String>,
    pub rows_removed: Vec<String>,
}

/// Compares the files under `recordings_dir` with the `segments` rows. Read-only.
pub fn scan(c: &Connection, recordings_dir: &Path) -> Result<Scan, ReconcileError> {
    let mut stmt = c.prepare("SELECT path FROM segments")?;
    let rows: HashSet<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let files = list_recordings(recordings_dir)?;
    let file_set: HashSet<&String> = files.iter().collect();
    let mut rows_without_files = Vec::new();
    for rel in rows.iter().filter(|p| !file_set.contains(p)) {
        let path = recordings_dir.join(rel);
        let exists = path
            .try_exists()
            .map_err(|source| ReconcileError::Read { path, source })?;
        if !exists {
            rows_without_files.push(rel.clone());
        }
    }
    rows_without_files.sort();
    let files_without_rows = files.into_iter().filter(|f| !rows.contains(f)).collect();
    Ok(Scan {
        files_without_rows,
        rows_without_files,
    })
}

/// The entries of a directory that pass `keep` (by file type), dot-names skipped, sorted.
fn entries(
    dir: &Path,
    keep: impl Fn(&std::fs::FileType, &Path) -> bool,
) -> Result<Vec<PathBuf>, ReconcileError> {
    let read = |source| ReconcileError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if keep(&entry.file_type().map_err(read)?, &path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Relative paths of every `<camera>/<day>/<file>.mkv`, sorted (oldest first within a camera).
fn list_recordings(recordings_dir: &Path) -> Result<Vec<String>, ReconcileError> {
    let is_dir = |t: &std::fs::FileType, _: &Path| t.is_dir();
    let is_mkv = |_: &std::fs::FileType, p: &Path| p.extension().is_some_and(|e| e == "mkv");
    let mut out = Vec::new();
    for camera in entries(recordings_dir, is_dir)? {
        for day in entries(&camera, is_dir)? {
            for file in entries(&day, is_mkv)? {
                if let Ok(rel) = file.strip_prefix(recordings_dir) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    Ok(out)
}

/// Start time encoded in a segment's file name (`20261128T061530.123Z.mkv`, maybe with `-N`).
pub fn start_from_name(path: &str) -> Option<i64> {
    let name = Path::new(path).file_stem()?.to_string_lossy().into_owned();
    let stamp = name.split('-').next()?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Makes files and rows agree; runs before any camera records, on a directory whose marker
/// matched.
pub async fn reconcile(
    store: &Store,
    recordings_dir: &Path,
    boot_started_ms: i64,
) -> Result<ReconcileReport, ReconcileError> {
    let dir = recordings_dir.to_path_buf();
    let found = store.read(move |c| scan(c, &dir)).await?;
    let mut report = ReconcileReport::default();

    for rel in found.files_without_rows {
        match recover_file(store, recordings_dir, &rel, boot_started_ms).await? {
            Recovered::Indexed { .. } => report.indexed.push(rel),
            Recovered::MovedAside => report.moved_aside.push(rel),
            Recovered::Left => {}
        }
    }

    if !found.rows_without_files.is_empty() {
        let lost = found.rows_without_files.clone();
        store
            .write(move |c| {
                for rel in &lost {
                    let row: Option<(String, i64, i64)> = c
                        .query_row(
                            "SELECT camera_id, start_ms, end_ms FROM segments WHERE path = ?1",
                            [rel],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .ok();
                    if let Some((camera_id, start_ms, end_ms)) = row {
                        c.execute("DELETE FROM segments WHERE path = ?1", [rel])?;
                        index::insert_gap(
                            c,
                            &Gap {
                                camera_id,
                                start_ms,
                                end_ms,
                                reason: "file_lost".into(),
                            },
                        )?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        for rel in &found.rows_without_files {
            tracing::warn!(path = %rel, "recording file is gone; its row was removed and the hole recorded as a gap");
        }
        report.rows_removed = found.rows_without_files;
    }
    Ok(report)
}

/// What [`recover_file`] did with a recording file that had no row.
#[derive(Debug)]
pub enum Recovered {
    /// It plays: made durable and indexed, marked `recovered`; where it ends and its size.
    Indexed { end_ms: i64, bytes: u64 },
    /// It does not play: moved to `.unplayable/`.
    MovedAside,
    /// It does not play and could not be moved (logged); it stays where it is.
    Left,
}

/// Indexes one recording file (`rel`, under `recordings_dir`) that its muxer never finalized,
/// or moves it aside when it does not play. The start-up pass runs it on every file without a
/// row; a camera's supervisor runs it on the segment its failed stream left open, so the
/// minutes before an outage are on the timeline at once rather than after the next start.
pub async fn recover_file(
    store: &Store,
    recordings_dir: &Path,
    rel: &str,
    boot_started_ms: i64,
) -> Result<Recovered, ReconcileError> {
    let path = recordings_dir.join(rel);
    let probed = blocking({
        let path = path.clone();
        move || Ok(probe_segment(&path))
    })
    .await?;
    let camera_id = rel.split('/').next().unwrap_or_default().to_string();
    let why = match (probed, start_from_name(rel)) {
        (Ok(p), Some(start_ms)) if p.playable() => {
            let bytes = blocking({
                let path = path.clone();
                move || make_durable(&path)
            })
            .await?;
            let end_ms = start_ms + p.duration.as_millis() as i64;
            let segment = NewSegment {
                camera_id,
                start_ms,
                end_ms,
                path: rel.to_string(),
                bytes,
                codec: p.codec.unwrap_or_else(|| "h264".into()),
                width: p.width,
                height: p.height,
                recovered: true,
            };
            store
                .write(move |c| {
                    Ok::<_, StoreError>(index::insert_segment(c, &segment, boot_started_ms)?)
                })
                .await?;
            tracing::warn!(path = %rel, frames = p.frames, seconds = p.duration.as_secs_f64(), "indexed a segment its muxer never finalized");
            return Ok(Recovered::Indexed { end_ms, bytes });
        }
        (Err(e), _) => e.to_string(),
        (Ok(_), _) => "not playable or unnamed".to_string(),
    };
    let moved = blocking({
        let (dir, rel) = (recordings_dir.to_path_buf(), rel.to_string());
        move || Ok(move_aside(&dir, &rel))
    })
    .await?;
    match moved {
        Ok(target) => {
            tracing::warn!(path = %rel, reason = %why, moved_to = %target.display(), "moved aside an unplayable recording");
            Ok(Recovered::MovedAside)
        }
        Err(e) => {
            tracing::error!(path = %rel, error = %e, "cannot move aside an unplayable recording");
            Ok(Recovered::Left)
        }
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReconcileError> + Send + 'static,
) -> Result<T, ReconcileError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ReconcileError::Task(e.to_string()))?
}

/// fsyncs a recovered segment and its directories (invariant S3); returns its size.
fn make_durable(path: &Path) -> Result<u64, ReconcileError> {
    sync_segment(path).map_err(|source| ReconcileError::Sync {
        path: path.to_path_buf(),
        source,
    })
}

/// Moves `rel` to `.unplayable/rel` and fsyncs both directories; returns the new path.
fn move_aside(recordings_dir: &Path, rel: &str) -> std::io::Result<PathBuf> {
    let from = recordings_dir.join(rel);
    let target_rel = Path::new(UNPLAYABLE).join(rel);
    let target = recordings_dir.join(&target_rel);
    if let Some(parent) = target_rel.parent() {
        create_dirs_durably(recordings_dir, parent)?;
    }
    std::fs::rename(&from, &target)?;
    for dir in [from.parent(), target.parent()].into_iter().flatten() {
        sync_dir(dir)?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_start() {
        assert_eq!(
            start_from_name("gate/2026-11-28/20261128T061530.123Z.mkv"),
            Some(1_795_846_530_123)
        );
        assert_eq!(
            start_from_name("gate/2026-11-28/20261128T061530.123Z-2.mkv"),
            Some(1_795_846_530_123)
        );
        assert_eq!(start_from_name("gate/2026-11-28/junk.mkv"), None);
    }
}
