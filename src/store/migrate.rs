//! Forward-only schema migrations, embedded in the binary.
//!
//! `migrations/NNNN_what.sql` are applied in order, each in its own transaction together with its
//! `schema_migrations` row and `PRAGMA user_version = NNNN`, so a power cut leaves the database at
//! the previous or the next version, never in between. A database newer than the binary is
//! refused untouched. Before upgrading an existing database, a copy is made with `VACUUM INTO`
//! (`backups/heldar-schema-<old>.db` next to it): on a box nobody makes that backup by hand.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// One migration file.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// All migrations, in order; `version` equals the position + 1 (checked by a test).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_media",
        sql: include_str!("../../migrations/0002_media.sql"),
    },
    Migration {
        version: 3,
        name: "0003_perception",
        sql: include_str!("../../migrations/0003_perception.sql"),
    },
    Migration {
        version: 4,
        name: "0004_zones",
        sql: include_str!("../../migrations/0004_zones.sql"),
    },
    Migration {
        version: 5,
        name: "0005_uplink",
        sql: include_str!("../../migrations/0005_uplink.sql"),
    },
    Migration {
        version: 6,
        name: "0006_audit",
        sql: include_str!("../../migrations/0006_audit.sql"),
    },
    Migration {
        version: 7,
        name: "0007_serial",
        sql: include_str!("../../migrations/0007_serial.sql"),
    },
    Migration {
        version: 8,
        name: "0008_outbox_bytes",
        sql: include_str!("../../migrations/0008_outbox_bytes.sql"),
    },
    Migration {
        version: 9,
        name: "0009_recordings_marker",
        sql: include_str!("../../migrations/0009_recordings_marker.sql"),
    },
    Migration {
        version: 10,
        name: "0010_audit_retention",
        sql: include_str!("../../migrations/0010_audit_retention.sql"),
    },
    Migration {
        version: 11,
        name: "0011_owner_cascades",
        sql: include_str!("../../migrations/0011_owner_cascades.sql"),
    },
    Migration {
        version: 12,
        name: "0012_command_counters",
        sql: include_str!("../../migrations/0012_command_counters.sql"),
    },
    Migration {
        version: 13,
        name: "0013_audit_what",
        sql: include_str!("../../migrations/0013_audit_what.sql"),
    },
    Migration {
        version: 14,
        name: "0014_worker_lease",
        sql: include_str!("../../migrations/0014_worker_lease.sql"),
    },
    Migration {
        version: 15,
        name: "0015_detections_lean",
        sql: include_str!("../../migrations/0015_detections_lean.sql"),
    },
    Migration {
        version: 16,
        name: "0016_ticketed_frame_key",
        sql: include_str!("../../migrations/0016_ticketed_frame_key.sql"),
    },
];

/// The schema version this binary writes.
pub const LATEST_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Refuses a database written by a newer binary; call it before anything writes to the file.
pub(super) fn refuse_newer(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found = user_version(conn)?;
    if found > LATEST_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: LATEST_VERSION,
        });
    }
    Ok(found)
}

/// Brings the database to [`LATEST_VERSION`]; a newer one is refused untouched.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found = refuse_newer(conn, path)?;
    if found == LATEST_VERSION {
        return Ok(());
    }
    if found > 0 {
        backup_before_upgrade(conn, path, found);
    }
    for m in &MIGRATIONS[found as usize..] {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms, binary_version) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![m.version, m.name, chrono::Utc::now().timestamp_millis(), env!("CARGO_PKG_VERSION")],
        )?;
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
    }
    Ok(())
}

/// Failure policy: a failed backup is logged and the upgrade goes on. Each migration is atomic,
/// so the backup guards only against a faulty migration, while refusing to start would stop
/// recording on a box whose disk is merely full.
fn backup_before_upgrade(conn: &Connection, path: &Path, from: i64) {
    let dir = path.parent().unwrap_or(Path::new(".")).join("backups");
    let target = dir.join(format!("heldar-schema-{from}.db"));
    let result = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let _ = std::fs::remove_file(&target);
            conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(_) => {
            tracing::info!(backup = %target.display(), from, to = LATEST_VERSION, "backed up the database before upgrading it")
        }
        Err(e) => {
            tracing::warn!(error = %e, from, to = LATEST_VERSION, "could not back up the database before upgrading; upgrading anyway")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_and_list_agree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }
}
