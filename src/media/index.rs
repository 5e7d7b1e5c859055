//! The recording index: `segments` and `gaps` rows, and the queries over them.
//!
//! Invariant S3 is kept by the callers of [`insert_segment`]: they fsync the file and its
//! directories first. Gaps are derived here, in the same transaction as the segment that ends
//! them, so a gap row exists exactly when its closing segment does.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A hole shorter than this is jitter between segments, not a gap.
pub const GAP_THRESHOLD_MS: i64 = 2000;

/// A segment about to be indexed.
#[derive(Clone, Debug)]
pub struct NewSegment {
    pub camera_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Relative to `data_dir/recordings`.
    pub path: String,
    pub bytes: u64,
    pub codec: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub recovered: bool,
}

/// A recorded segment as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: i64,
    pub camera_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub path: String,
    pub bytes: u64,
    pub codec: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub recovered: bool,
    pub evidence_locked: bool,
}

/// A hole in a camera's recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub camera_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub reason: String,
}

/// Inserts a segment, and the gap before it when there is one. `boot_started_ms` tells a hole
/// caused by the daemon being down from one caused by the camera.
pub fn insert_segment(
    c: &Connection,
    seg: &NewSegment,
    boot_started_ms: i64,
) -> rusqlite::Result<Option<Gap>> {
    let previous_end: Option<i64> = c
        .query_row(
            "SELECT MAX(end_ms) FROM segments WHERE camera_id = ?1 AND start_ms < ?2",
            params![seg.camera_id, seg.start_ms],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let gap = previous_end
        .filter(|end| seg.start_ms - end > GAP_THRESHOLD_MS)
        .map(|end| Gap {
            camera_id: seg.camera_id.clone(),
            start_ms: end,
            end_ms: seg.start_ms,
            reason: if end < boot_started_ms {
                "daemon_down"
            } else {
                "camera_offline"
            }
            .into(),
        });
    if let Some(g) = &gap {
        insert_gap(c, g)?;
    }
    c.execute(
        "INSERT INTO segments (camera_id, start_ms, end_ms, path, bytes, codec, width, height, recovered)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            seg.camera_id,
            seg.start_ms,
            seg.end_ms,
            seg.path,
            seg.bytes as i64,
            seg.codec,
            seg.width,
            seg.height,
            seg.recovered
        ],
    )?;
    Ok(gap)
}

pub fn insert_gap(c: &Connection, g: &Gap) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO gaps (camera_id, start_ms, end_ms, reason) VALUES (?1, ?2, ?3, ?4)",
        params![g.camera_id, g.start_ms, g.end_ms, g.reason],
    )?;
    Ok(())
}

const SEGMENT_COLUMNS: &str = "id, camera_id, start_ms, end_ms, path, bytes, codec, width, height, recovered, evidence_locked";

fn segment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Segment> {
    Ok(Segment {
        id: r.get(0)?,
        camera_id: r.get(1)?,
        start_ms: r.get(2)?,
        end_ms: r.get(3)?,
        path: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        codec: r.get(6)?,
        width: r.get(7)?,
        height: r.get(8)?,
        recovered: r.get(9)?,
        evidence_locked: r.get(10)?,
    })
}

/// Segments of a camera overlapping `[from_ms, to_ms)`, oldest first, at most `limit`.
pub fn segments(
    c: &Connection,
    camera_id: &str,
    from_ms: i64,
    to_ms: i64,
    limit: u32,
) -> rusqlite::Result<Vec<Segment>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments
         WHERE camera_id = ?1 AND end_ms > ?2 AND start_ms < ?3 ORDER BY start_ms LIMIT ?4"
    ))?;
    stmt.query_map(params![camera_id, from_ms, to_ms, limit], segment_from_row)?
        .collect()
}

/// Gaps of a camera overlapping `[from_ms, to_ms)`, oldest first.
pub fn gaps(
    c: &Connection,
    camera_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<Vec<Gap>> {
    let mut stmt = c.prepare_cached(
        "SELECT camera_id, start_ms, end_ms, reason FROM gaps
         WHERE camera_id = ?1 AND end_ms > ?2 AND start_ms < ?3 ORDER BY start_ms",
    )?;
    stmt.query_map(params![camera_id, from_ms, to_ms], |r| {
        Ok(Gap {
            camera_id: r.get(0)?,
            start_ms: r.get(1)?,
            end_ms: r.get(2)?,
            reason: r.get(3)?,
        })
    })?
    .collect()
}

/// A contiguous stretch of recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Merges segments into ranges, bridging holes up to [`GAP_THRESHOLD_MS`].
pub fn merge_ranges(segments: &[Segment]) -> Vec<Range> {
    let mut ranges: Vec<Range> = Vec::new();
    for s in segments {
        match ranges.last_mut() {
            Some(last) if s.start_ms - last.end_ms <= GAP_THRESHOLD_MS => {
                last.end_ms = last.end_ms.max(s.end_ms)
            }
            _ => ranges.push(Range {
                start_ms: s.start_ms,
                end_ms: s.end_ms,
            }),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_ms: i64, end_ms: i64) -> Segment {
        Segment {
            id: 0,
            camera_id: "c".into(),
            start_ms,
            end_ms,
            path: String::new(),
            bytes: 0,
            codec: "h264".into(),
            width: None,
            height: None,
            recovered: false,
            evidence_locked: false,
        }
    }

    #[test]
    fn ranges_bridge_jitter_but_not_gaps() {
        let ranges = merge_ranges(&[
            seg(0, 1000),
            seg(1000, 2000),
            seg(3500, 4000),
            seg(7000, 8000),
        ]);
        assert_eq!(
            ranges,
            vec![
                Range {
                    start_ms: 0,
                    end_ms: 4000
                },
                Range {
                    start_ms: 7000,
                    end_ms: 8000
                }
            ]
        );
    }
}
