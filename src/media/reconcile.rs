//! Start-up reconcile of recording files and the index (invariant S3).
//!
//! A power cut or SIGKILL leaves the segment that was being written without a row. Before any
//! camera records, every file without a row is probed: a playable one is made durable and indexed
//! (marked `recovered`), an unplayable one is moved to `recordings/.unplayable/`. Rows whose file
//! is gone are removed and the hole becomes a gap (`file_lost`). `heldar db check` runs the same
//! scan read-only and reports what it would do.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::index::{self, Gap, NewSegment};
use super::probe::probe_segment;
use crate::store::{Store, StoreError};

/// Where unplayable leftovers go, inside the recordings directory.
const UNPLAYABLE: &str = ".unplayable";

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
pub fn scan(c: &Connection, recordings_dir: &Path) -> rusqlite::Result<Scan> {
    let mut stmt = c.prepare("SELECT path FROM segments")?;
    let rows: HashSet<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let files = list_recordings(recordings_dir);
    let file_set: HashSet<&String> = files.iter().collect();
    let mut rows_without_files: Vec<String> = rows
        .iter()
        .filter(|p| !file_set.contains(p) && !recordings_dir.join(p).exists())
        .cloned()
        .collect();
    rows_without_files.sort();
    let files_without_rows = files.into_iter().filter(|f| !rows.contains(f)).collect();
    Ok(Scan {
        files_without_rows,
        rows_without_files,
    })
}

/// Relative paths of every `<camera>/<day>/<file>.mkv`, sorted (oldest first within a camera).
fn list_recordings(recordings_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        v.sort();
        v
    };
    for camera in dirs(recordings_dir).into_iter().filter(|p| p.is_dir()) {
        for day in dirs(&camera).into_iter().filter(|p| p.is_dir()) {
            for file in dirs(&day)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "mkv"))
            {
                if let Ok(rel) = file.strip_prefix(recordings_dir) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

/// Start time encoded in a segment's file name (`20261128T061530.123Z.mkv`, maybe with `-N`).
pub fn start_from_name(path: &str) -> Option<i64> {
    let name = Path::new(path).file_stem()?.to_string_lossy().into_owned();
    let stamp = name.split('-').next()?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Makes files and rows agree; runs before any camera records.
pub async fn reconcile(
    store: &Store,
    recordings_dir: &Path,
    boot_started_ms: i64,
) -> Result<ReconcileReport, StoreError> {
    let dir = recordings_dir.to_path_buf();
    let found = store
        .read(move |c| Ok::<_, StoreError>(scan(c, &dir)?))
        .await?;
    let mut report = ReconcileReport::default();

    for rel in found.files_without_rows {
        let path = recordings_dir.join(&rel);
        let probed = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let result = probe_segment(&path)?;
                let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                file.sync_all().map_err(|e| e.to_string())?;
                let bytes = file.metadata().map_err(|e| e.to_string())?.len();
                Ok::<_, String>((result, bytes))
            })
            .await
            .map_err(|e| StoreError::Panicked(e.to_string()))?
        };
        let camera_id = rel.split('/').next().unwrap_or_default().to_string();
        match (probed, start_from_name(&rel)) {
            (Ok((p, bytes)), Some(start_ms)) if p.playable() => {
                let segment = NewSegment {
                    camera_id,
                    start_ms,
                    end_ms: start_ms + p.duration.as_millis() as i64,
                    path: rel.clone(),
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
                tracing::warn!(path = %rel, frames = p.frames, seconds = p.duration.as_secs_f64(), "indexed a segment left open by an unclean stop");
                report.indexed.push(rel);
            }
            (outcome, _) => {
                let why = match outcome {
                    Err(e) => e,
                    Ok(_) => "not playable or unnamed".into(),
                };
                let target = recordings_dir.join(UNPLAYABLE).join(&rel);
                let moved = target
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::rename(&path, &target));
                match moved {
                    Ok(()) => {
                        tracing::warn!(path = %rel, reason = %why, moved_to = %target.display(), "moved aside an unplayable recording")
                    }
                    Err(e) => {
                        tracing::error!(path = %rel, error = %e, "cannot move aside an unplayable recording")
                    }
                }
                report.moved_aside.push(rel);
            }
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
