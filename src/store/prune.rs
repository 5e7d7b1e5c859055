//! Statements the metadata retention pass runs on tables owned elsewhere: the owner names its
//! table and columns, this module knows how to delete from them without scanning.

use rusqlite::{Connection, params};

use super::StoreError;

/// Deletes up to `limit` rows of `table` whose `time` is before `before_ms`, one `group` value
/// at a time through the owner's `(group, time)` index: the pass costs what it deletes, and one
/// producer's wrong clock (a worker stamping batches years ahead) holds back nobody else's rows.
pub fn older_per_group(
    c: &Connection,
    table: &str,
    group: &str,
    time: &str,
    before_ms: i64,
    limit: u64,
) -> Result<u64, StoreError> {
    let sql = format!(
        "DELETE FROM {table} WHERE rowid IN (
           WITH RECURSIVE groups(g) AS (
             SELECT MIN({group}) FROM {table}
             UNION ALL
             SELECT (SELECT MIN({group}) FROM {table} WHERE {group} > groups.g)
               FROM groups WHERE groups.g IS NOT NULL)
           SELECT t.rowid FROM groups JOIN {table} t ON t.{group} = groups.g AND t.{time} < ?1
           LIMIT ?2)"
    );
    Ok(c.prepare_cached(&sql)?
        .execute(params![before_ms, limit as i64])? as u64)
}

/// Deletes the `limit` rows of `table` stored first (lowest rowid) that match `filter` (an SQL
/// condition on the table's own columns, `1` for any): the size cap's "oldest first".
pub fn first_stored(
    c: &Connection,
    table: &str,
    filter: &str,
    limit: u64,
) -> Result<u64, StoreError> {
    let sql = format!(
        "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {filter} ORDER BY rowid LIMIT ?1)"
    );
    Ok(c.prepare_cached(&sql)?.execute([limit as i64])? as u64)
}

/// Bytes of the database's pages in use (free pages left by deletes are not counted: SQLite
/// reuses them before it grows the file).
pub fn used_bytes(c: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}
