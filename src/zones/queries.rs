//! Reads of the zone engine's tables for the API and the uplink: the stored zone events and the
//! occupancy per zone. The engine writes them (see [`super`]); both live here so `zone_events`
//! and `zone_occupancy` have one owner.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// A stored zone event.
#[derive(Debug, Serialize, Deserialize)]
pub struct ZoneEventRow {
    pub id: i64,
    pub zone: String,
    pub camera_id: String,
    pub task: String,
    pub track_id: String,
    pub label: Option<String>,
    pub r#type: String,
    pub ts: DateTime<Utc>,
    pub dwell_s: Option<f64>,
    pub reason: Option<String>,
}

/// Which zone events of a camera to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub zone: Option<String>,
    pub r#type: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: u32,
}

/// A camera's zone events matching `filter`, newest first.
pub fn events(
    c: &Connection,
    camera: &str,
    filter: &EventFilter,
) -> rusqlite::Result<Vec<ZoneEventRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, zone_id, camera_id, task, track_id, label, type, ts_ms, dwell_ms, reason FROM zone_events
         WHERE camera_id = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3 AND (?4 IS NULL OR zone_id = ?4)
           AND (?5 IS NULL OR type = ?5)
         ORDER BY ts_ms DESC, id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        rusqlite::params![
            camera,
            filter.from_ms.unwrap_or(i64::MIN),
            filter.to_ms.unwrap_or(i64::MAX),
            filter.zone,
            filter.r#type,
            filter.limit
        ],
        |r| {
            Ok(ZoneEventRow {
                id: r.get(0)?,
                zone: r.get(1)?,
                camera_id: r.get(2)?,
                task: r.get(3)?,
                track_id: r.get(4)?,
                label: r.get(5)?,
                r#type: r.get(6)?,
                ts: DateTime::from_timestamp_millis(r.get(7)?).unwrap_or_default(),
                dwell_s: r.get::<_, Option<i64>>(8)?.map(|ms| ms as f64 / 1000.0),
                reason: r.get(9)?,
            })
        },
    )?;
    rows.collect()
}

/// Occupancy of a zone.
#[derive(Debug, Serialize, Deserialize)]
pub struct OccupancyRow {
    pub zone: String,
    pub total: u32,
    pub by_label: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

/// The occupancy of every zone of `camera`, or of every zone of the box, by zone id.
pub fn occupancy(c: &Connection, camera: Option<&str>) -> rusqlite::Result<Vec<OccupancyRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT zone_id, total, by_label, updated_at_ms FROM zone_occupancy
         WHERE ?1 IS NULL OR camera_id = ?1 ORDER BY zone_id",
    )?;
    let rows = stmt.query_map([camera], |r| {
        let by_label: String = r.get(2)?;
        Ok(OccupancyRow {
            zone: r.get(0)?,
            total: r.get(1)?,
            by_label: serde_json::from_str(&by_label)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
            updated_at: DateTime::from_timestamp_millis(r.get(3)?).unwrap_or_default(),
        })
    })?;
    rows.collect()
}
