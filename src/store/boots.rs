//! The `boots` table: one row per daemon start, so an unclean end (power cut, SIGKILL, watchdog)
//! is visible afterwards as data, not guessed from logs.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError};

/// Rows kept; older boots are forgotten.
const KEEP_BOOTS: i64 = 1000;

/// This run's row.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub id: i64,
    pub started_at_ms: i64,
}

/// What the boot log says about earlier runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BootHistory {
    /// Starts recorded, this one included.
    pub total: u64,
    /// Earlier runs that never recorded a clean stop.
    pub unclean: u64,
    /// Whether the run before this one stopped cleanly; `None` on the first start.
    pub previous_clean: Option<bool>,
}

impl Store {
    /// Records this start and reports on the earlier ones.
    pub async fn record_boot(&self) -> Result<(Boot, BootHistory), StoreError> {
        self.write(|c| {
            let now = chrono::Utc::now().timestamp_millis();
            c.execute(
                "INSERT INTO boots (started_at_ms, binary_version) VALUES (?1, ?2)",
                params![now, env!("CARGO_PKG_VERSION")],
            )?;
            let id = c.last_insert_rowid();
            c.execute("DELETE FROM boots WHERE id <= ?1", [id - KEEP_BOOTS])?;
            Ok((
                Boot {
                    id,
                    started_at_ms: now,
                },
                history(c, id)?,
            ))
        })
        .await
    }

    /// Marks this run as stopped cleanly; the last write of a graceful shutdown.
    pub async fn record_clean_stop(&self, boot: Boot) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE boots SET stopped_at_ms = ?1 WHERE id = ?2",
                params![chrono::Utc::now().timestamp_millis(), boot.id],
            )?;
            Ok(())
        })
        .await
    }

    /// The database's random id (migration 0009), which the recordings directory's marker
    /// carries so the media service can tell its own disk from an empty mount point or a swapped
    /// disk.
    pub async fn database_id(&self) -> Result<String, StoreError> {
        self.read(|c| Ok(c.query_row("SELECT id FROM database_identity", [], |r| r.get(0))?))
            .await
    }

    pub async fn boot_history(&self, boot: Boot) -> Result<BootHistory, StoreError> {
        self.read(move |c| Ok(history(c, boot.id)?)).await
    }
}

fn history(c: &Connection, current: i64) -> rusqlite::Result<BootHistory> {
    let (total, unclean): (i64, i64) = c.query_row(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE stopped_at_ms IS NULL AND id != ?1) FROM boots",
        [current],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let previous_clean = c
        .query_row(
            "SELECT stopped_at_ms IS NOT NULL FROM boots WHERE id < ?1 ORDER BY id DESC LIMIT 1",
            [current],
            |r| r.get(0),
        )
        .optional()?;
    Ok(BootHistory {
        total: total as u64,
        unclean: unclean as u64,
        previous_clean,
    })
}
