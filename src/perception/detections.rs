//! Reads of the stored detections for the API and the uplink's retained label counts; the
//! writes are [`super::ingest`]'s. Both live here so the `detections` and `detection_batches`
//! tables have one owner.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::provenance::Provenance;

/// A stored detection, with the batch it came in.
#[derive(Debug, Serialize, Deserialize)]
pub struct DetectionRow {
    pub id: i64,
    pub camera_id: String,
    pub task_type: String,
    pub frame_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub label: Option<String>,
    pub confidence: Option<f64>,
    pub bbox: Option<Value>,
    pub track_id: Option<String>,
    pub attributes: Value,
}

/// Which detections of a camera to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct DetectionFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub label: Option<String>,
    pub limit: u32,
}

/// A camera's detections matching `filter`, newest first.
pub fn list(
    c: &Connection,
    camera: &str,
    filter: &DetectionFilter,
) -> rusqlite::Result<Vec<DetectionRow>> {
    // Through the batches' (camera, time) index: a detection's time is its batch's.
    let mut stmt = c.prepare_cached(
        "SELECT d.id, b.camera_id, b.task_type, b.frame_id, b.ts_ms, d.label, d.confidence, d.bbox, d.track_id, d.attributes,
                b.credential, b.task_id, b.worker_id
         FROM detection_batches b JOIN detections d ON d.batch_id = b.id
         WHERE b.camera_id = ?1 AND b.ts_ms >= ?2 AND b.ts_ms <= ?3 AND (?4 IS NULL OR d.label = ?4)
         ORDER BY b.ts_ms DESC, d.id DESC LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        rusqlite::params![
            camera,
            filter.from_ms.unwrap_or(i64::MIN),
            filter.to_ms.unwrap_or(i64::MAX),
            filter.label,
            filter.limit
        ],
        |r| {
            let bbox: Option<String> = r.get(7)?;
            let attributes: String = r.get(9)?;
            let mut attributes: Map<String, Value> =
                serde_json::from_str(&attributes).unwrap_or_default();
            let provenance = Provenance {
                credential: r.get(10)?,
                task: r.get(11)?,
                worker: r.get(12)?,
            };
            provenance.write_into(&mut attributes);
            Ok(DetectionRow {
                id: r.get(0)?,
                camera_id: r.get(1)?,
                task_type: r.get(2)?,
                frame_id: r.get(3)?,
                timestamp: DateTime::from_timestamp_millis(r.get(4)?).unwrap_or_default(),
                label: r.get(5)?,
                confidence: r.get(6)?,
                bbox: bbox.and_then(|b| serde_json::from_str(&b).ok()),
                track_id: r.get(8)?,
                attributes: Value::Object(attributes),
            })
        },
    )?;
    rows.collect()
}

/// Objects per label in a camera's newest batch of each task since `since_ms`. Two tasks seeing
/// the same people are not twice the people: per label the larger count wins.
pub fn live_label_counts(
    c: &Connection,
    camera: &str,
    since_ms: i64,
) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut stmt = c.prepare_cached(
        "SELECT b.task_type, d.label, COUNT(*) FROM detections d
         JOIN detection_batches b ON b.id = d.batch_id
         WHERE d.batch_id IN (
             SELECT MAX(id) FROM detection_batches
             WHERE camera_id = ?1 AND ts_ms > ?2 GROUP BY task_type)
           AND d.label IS NOT NULL
         GROUP BY b.task_type, d.label",
    )?;
    let rows = stmt.query_map(rusqlite::params![camera, since_ms], |r| {
        Ok((r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
    })?;
    let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
    for row in rows {
        let (label, n) = row?;
        let e = by_label.entry(label).or_default();
        *e = (*e).max(n as u64);
    }
    Ok(by_label)
}
