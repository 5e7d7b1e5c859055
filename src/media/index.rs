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

/// Inserts a segment and keeps the gaps around it right.
///
/// Segments may arrive out of order (splitmuxsink finalizes fragments asynchronously; start-up
/// recovery indexes old files late), so a new segment can land inside a gap recorded earlier.
/// Gaps it overlaps are removed and the holes on both sides derived again, keeping the reason
/// the removed gap gave. `boot_started_ms` tells a hole caused by the daemon being down from one
/// caused by the camera.
pub fn insert_segment(
    c: &Connection,
    seg: &NewSegment,
    boot_started_ms: i64,
) -> rusqlite::Result<Inserted> {
    let camera = &seg.camera_id;
    let mut stmt = c.prepare_cached(
        "DELETE FROM gaps WHERE camera_id = ?1 AND start_ms < ?3 AND end_ms > ?2 RETURNING reason",
    )?;
    let overlapped: Vec<String> = stmt
        .query_map(params![camera, seg.start_ms, seg.end_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    c.execute(
        "INSERT INTO segments (camera_id, start_ms, end_ms, path, bytes, codec, width, height, recovered)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            camera,
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
    let id = c.last_insert_rowid();
    let previous_end: Option<i64> = c.query_row(
        "SELECT MAX(end_ms) FROM segments WHERE camera_id = ?1 AND start_ms < ?2",
        params![camera, seg.start_ms],
        |r| r.get(0),
    )?;
    let next_start: Option<i64> = c.query_row(
        "SELECT MIN(start_ms) FROM segments WHERE camera_id = ?1 AND start_ms > ?2",
        params![camera, seg.start_ms],
        |r| r.get(0),
    )?;
    let reason = |start: i64| {
        overlapped.first().cloned().unwrap_or_else(|| {
            if start < boot_started_ms {
                "daemon_down"
            } else {
                "camera_offline"
            }
            .to_string()
        })
    };
    let mut news = None;
    if let Some(end) = previous_end.filter(|end| seg.start_ms - end > GAP_THRESHOLD_MS) {
        let gap = Gap {
            camera_id: camera.clone(),
            start_ms: end,
            end_ms: seg.start_ms,
            reason: reason(end),
        };
        insert_gap_once(c, &gap)?;
        if overlapped.is_empty() {
            news = Some(gap);
        }
    }
    if let Some(next) = next_start.filter(|next| next - seg.end_ms > GAP_THRESHOLD_MS) {
        let gap = Gap {
            camera_id: camera.clone(),
            start_ms: seg.end_ms,
            end_ms: next,
            reason: reason(seg.end_ms),
        };
        insert_gap_once(c, &gap)?;
    }
    Ok(Inserted { id, new_gap: news })
}

/// What [`insert_segment`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Inserted {
    /// The new segment's row id.
    pub id: i64,
    /// A hole just before the segment that no earlier row recorded.
    pub new_gap: Option<Gap>,
}

fn insert_gap_once(c: &Connection, g: &Gap) -> rusqlite::Result<()> {
    let exists: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM gaps WHERE camera_id = ?1 AND start_ms = ?2 AND end_ms = ?3)",
        params![g.camera_id, g.start_ms, g.end_ms],
        |r| r.get(0),
    )?;
    if exists { Ok(()) } else { insert_gap(c, g) }
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

/// Recorded footage of one camera, as the index says.
#[derive(Clone, Debug, PartialEq)]
pub struct Footage {
    pub camera: String,
    pub segments: i64,
    pub bytes: i64,
    pub gaps: i64,
}

/// When the camera's newest segment ends (Unix ms), from the index: known across restarts, unlike
/// the health board's figure. One index probe (`segments_by_camera`), cheap enough for every
/// state round.
pub fn last_segment_end_ms(c: &Connection, camera: &str) -> rusqlite::Result<Option<i64>> {
    let mut stmt = c.prepare_cached(
        "SELECT end_ms FROM segments WHERE camera_id = ?1 ORDER BY start_ms DESC LIMIT 1",
    )?;
    stmt.query_row([camera], |r| r.get(0)).optional()
}

/// Footage kept per camera, by camera id, for the metrics.
pub fn footage(c: &Connection) -> rusqlite::Result<Vec<Footage>> {
    let mut stmt = c.prepare_cached(
        "SELECT camera_id, SUM(n), SUM(bytes), SUM(gaps) FROM (
             SELECT camera_id, COUNT(*) AS n, SUM(bytes) AS bytes, 0 AS gaps
               FROM segments GROUP BY camera_id
             UNION ALL
             SELECT camera_id, 0, 0, COUNT(*) FROM gaps GROUP BY camera_id)
         GROUP BY camera_id ORDER BY camera_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Footage {
            camera: r.get(0)?,
            segments: r.get(1)?,
            bytes: r.get(2)?,
            gaps: r.get(3)?,
        })
    })?;
    rows.collect()
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

#[cfg(test)]
mod order_tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("../../migrations/0002_media.sql"))
            .unwrap();
        c
    }

    fn new(start_ms: i64, end_ms: i64) -> NewSegment {
        NewSegment {
            camera_id: "c".into(),
            start_ms,
            end_ms,
            path: format!("c/{start_ms}.mkv"),
            bytes: 1,
            codec: "h264".into(),
            width: None,
            height: None,
            recovered: false,
        }
    }

    fn all_gaps(c: &Connection) -> Vec<(i64, i64, String)> {
        gaps(c, "c", i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|g| (g.start_ms, g.end_ms, g.reason))
            .collect()
    }

    #[test]
    fn gaps_do_not_depend_on_the_order_segments_arrive_in() {
        let pieces = [(0, 2000), (2000, 4000), (4000, 5000), (15_000, 17_000)];
        for order in [[0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let c = db();
            for i in order {
                insert_segment(&c, &new(pieces[i].0, pieces[i].1), 0).unwrap();
            }
            assert_eq!(
                all_gaps(&c),
                vec![(5000, 15_000, "camera_offline".into())],
                "order {order:?}"
            );
        }
    }

    #[test]
    fn a_new_hole_is_news_and_daemon_downtime_is_named() {
        let c = db();
        assert_eq!(
            insert_segment(&c, &new(0, 2000), 10_000).unwrap().new_gap,
            None
        );
        let g = insert_segment(&c, &new(12_000, 14_000), 10_000)
            .unwrap()
            .new_gap
            .unwrap();
        assert_eq!(
            (g.start_ms, g.end_ms, g.reason.as_str()),
            (2000, 12_000, "daemon_down")
        );
        assert_eq!(
            insert_segment(&c, &new(5000, 7000), 10_000)
                .unwrap()
                .new_gap,
            None,
            "filling part of a known gap"
        );
        assert_eq!(
            all_gaps(&c),
            vec![
                (2000, 5000, "daemon_down".into()),
                (7000, 12_000, "daemon_down".into())
            ]
        );
    }
}
