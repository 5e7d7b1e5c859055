//! `heldar db check`: the offline checks of the database, safe to run beside a live daemon (it
//! opens a read-only connection and never migrates).

use std::path::Path;

use super::StoreError;
use super::migrate::{LATEST_VERSION, user_version};
use super::read::open_read_only;

/// What the check found; `ok()` decides the exit code.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub path: String,
    pub db_bytes: u64,
    pub schema_version: i64,
    pub binary_schema_version: i64,
    /// Lines from `PRAGMA integrity_check`; exactly `["ok"]` when healthy.
    pub integrity: Vec<String>,
    /// Rows from `PRAGMA foreign_key_check`, as `table rowid -> parent`.
    pub foreign_key_violations: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.integrity == ["ok"]
            && self.foreign_key_violations.is_empty()
            && self.schema_version <= self.binary_schema_version
    }
}

/// Checks the database at `path`; a missing file is an error, not an empty database.
pub fn check(path: &Path) -> Result<CheckReport, StoreError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| StoreError::io(format!("cannot open {}", path.display()), e))?;
    let conn = open_read_only(path)?;
    let schema_version = user_version(&conn)?;
    let integrity = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let foreign_key_violations = conn
        .prepare("PRAGMA foreign_key_check")?
        .query_map([], |r| {
            Ok(format!(
                "{} row {} -> {}",
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?.unwrap_or(-1),
                r.get::<_, String>(2)?
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CheckReport {
        path: path.display().to_string(),
        db_bytes: meta.len(),
        schema_version,
        binary_schema_version: LATEST_VERSION,
        integrity,
        foreign_key_violations,
    })
}
