//! Human-readable output of CLI commands: short aligned tables, units spelled out.

use std::fmt::Write as _;

use crate::api::SystemStatus;
use crate::media::reconcile::Scan;
use crate::store::CheckReport;

pub fn status(s: &SystemStatus) -> String {
    let mut out = String::new();
    let board = s.board.as_deref().unwrap_or("none");
    let _ = writeln!(
        out,
        "heldar {} on {} (board {board})",
        s.version, s.device_id
    );
    let _ = writeln!(
        out,
        "{:<10} {} since {}",
        "uptime",
        duration(s.uptime_s),
        s.started_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let previous = match s.boots.previous_clean {
        None => "first start",
        Some(true) => "previous run stopped cleanly",
        Some(false) => "previous run did NOT stop cleanly",
    };
    let _ = writeln!(
        out,
        "{:<10} {} starts, {} unclean; {previous}",
        "boots", s.boots.total, s.boots.unclean
    );
    let st = &s.store;
    let _ = writeln!(
        out,
        "{:<10} {} ({}, WAL {}), schema {}",
        "database",
        st.path.display(),
        bytes(st.db_bytes),
        bytes(st.wal_bytes),
        st.schema_version
    );
    let _ = writeln!(
        out,
        "{:<10} queue {}, {} commits, {} writes ({} failed), largest group {}, last commit {:.1} ms",
        "writer",
        st.queue_depth,
        st.commits,
        st.writes_committed,
        st.writes_failed,
        st.largest_group,
        st.last_commit_us as f64 / 1000.0
    );
    if let Some(w) = &s.disk_writes {
        let per_day = |b: u64| bytes(b * 86_400 / s.uptime_s.max(1));
        let process = w
            .process
            .map(|p| format!(", process {}", bytes(p)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<10} WAL {}, database {}, segments {}{process} since start (at this rate: metadata {}/day, segments {}/day)",
            "written",
            bytes(w.wal),
            bytes(w.db),
            bytes(w.segments),
            per_day(w.wal + w.db),
            per_day(w.segments)
        );
    }
    if let Some(f) = &st.last_fault {
        let ongoing = st.last_commit_at_ms.is_none_or(|c| c < f.at_ms);
        let _ = writeln!(
            out,
            "{:<10} {} at {}{}: {}",
            "storage",
            f.kind,
            time(f.at_ms),
            if ongoing { ", no commit since" } else { "" },
            f.error
        );
    }
    let _ = writeln!(out, "{:<10} http://{}/", "http", s.http_listen);
    let _ = writeln!(out, "{:<10} {}", "gstreamer", s.gstreamer);
    for h in &s.cameras {
        let fps = h.fps.map(|f| format!(", {f:.1} fps")).unwrap_or_default();
        let last = h
            .last_segment_at
            .map(|t| format!(", last segment {}", t.format("%H:%M:%S")))
            .unwrap_or_default();
        let error = match (&h.last_error, h.state) {
            (Some(e), state) if state != crate::media::CameraState::Recording => format!(" ({e})"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<10} {} {}{fps}{last}, {} reconnects{error}",
            "camera",
            h.camera_id,
            h.state.as_str(),
            h.reconnects
        );
    }
    for sm in &s.samplers {
        let mode = if sm.keyframe_only {
            ", keyframes only"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<10} {}/{:?} {} at {:.2} of {:.2} fps, {} px{mode}, {} frames",
            "sampler",
            sm.camera_id,
            sm.stream_profile,
            sm.state,
            sm.fps,
            sm.requested_fps,
            sm.width,
            sm.frames
        );
    }
    let o = &s.outbox;
    let _ = writeln!(
        out,
        "{:<10} {} records ({}), {} dropped",
        "outbox",
        o.records,
        bytes(o.bytes),
        o.dropped
    );
    for c in &o.consumers {
        let _ = writeln!(
            out,
            "{:<10} {} behind by {} records",
            "consumer", c.consumer, c.backlog
        );
    }
    match &s.mqtt {
        None => {
            let _ = writeln!(out, "{:<10} not configured", "mqtt");
        }
        Some(m) => {
            let since = m
                .connected_since
                .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default();
            let puback = m
                .last_puback_at
                .map(|t| format!(", last PUBACK {}", t.format("%H:%M:%S")))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<10} {} {}{since}{}, {} events published, {} acknowledged{puback}",
                "mqtt",
                m.state,
                m.broker,
                if m.tls { " (TLS)" } else { "" },
                m.events_published,
                m.events_acked
            );
            if let Some(e) = &m.last_error {
                out.push_str(&last_error("mqtt", e, m.last_error_at));
            }
        }
    }
    for p in &s.serial {
        let error = match (&p.last_error, p.state.as_str()) {
            (Some(e), "open") => format!(", last error: {e}"),
            (Some(e), _) => format!(" ({e})"),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<10} {} {} {}: {} ok, {} timeouts, {} bad frames, {} exceptions{error}",
            "serial",
            p.name,
            p.device,
            p.state,
            p.requests_ok,
            p.timeouts,
            p.bad_frames,
            p.exceptions
        );
    }
    match &s.disk {
        Some(d) => {
            let _ = writeln!(
                out,
                "{:<10} {} free of {} ({:.0} % used)",
                "disk",
                bytes(d.free_bytes),
                bytes(d.total_bytes),
                d.used_percent()
            );
        }
        None => {
            let _ = writeln!(out, "{:<10} cannot read the recordings file system", "disk");
        }
    }
    if let Some(r) = &s.recordings {
        let dir = r.dir.display();
        let _ = match r.state {
            crate::media::RecordingsState::Ok => writeln!(out, "{:<10} {dir} ok", "recordings"),
            crate::media::RecordingsState::Checking => {
                writeln!(out, "{:<10} {dir} not checked yet", "recordings")
            }
            crate::media::RecordingsState::Unavailable => writeln!(
                out,
                "{:<10} {dir} UNAVAILABLE since {}: {}; not recording, index left alone",
                "recordings",
                r.since.format("%Y-%m-%d %H:%M:%S UTC"),
                r.error.as_deref().unwrap_or("unknown")
            ),
        };
    }
    out
}

/// `heldar audit`: newest first, one change per line.
pub fn audit(entries: &[crate::audit::AuditEntry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no changes recorded yet\n");
        return out;
    }
    for e in entries {
        let result = if e.ok() { "ok" } else { "refused" };
        let what = e
            .what
            .as_deref()
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        let detail = e
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}  {:<10} {:<24} {} -> {} {result}{what}{detail}",
            time(e.at_ms),
            e.actor,
            e.source,
            e.action,
            e.status
        );
    }
    out
}

pub fn db_check(r: &CheckReport, scan: Option<&Scan>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "database   {} ({})", r.path, bytes(r.db_bytes));
    let schema_note = if r.schema_version > r.binary_schema_version {
        "  NEWER THAN THIS BINARY"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "schema     {} (this binary: {}){schema_note}",
        r.schema_version, r.binary_schema_version
    );
    let _ = writeln!(out, "integrity  {}", r.integrity.join("; "));
    if r.foreign_key_violations.is_empty() {
        let _ = writeln!(out, "references ok");
    } else {
        let _ = writeln!(
            out,
            "references {} broken: {}",
            r.foreign_key_violations.len(),
            r.foreign_key_violations.join("; ")
        );
    }
    let Some(scan) = scan else {
        let _ = writeln!(
            out,
            "recordings not checked: the schema is not this binary's"
        );
        let _ = writeln!(out, "result     PROBLEMS FOUND");
        return out;
    };
    let _ = writeln!(
        out,
        "recordings {} files without a row (indexed at next start; a running daemon's open segments are among them)",
        scan.files_without_rows.len()
    );
    for f in &scan.files_without_rows {
        let _ = writeln!(out, "           - {f}");
    }
    let _ = writeln!(
        out,
        "           {} rows whose file is missing",
        scan.rows_without_files.len()
    );
    for f in &scan.rows_without_files {
        let _ = writeln!(out, "           - {f}");
    }
    let ok = r.ok() && scan.rows_without_files.is_empty();
    let _ = writeln!(
        out,
        "result     {}",
        if ok { "ok" } else { "PROBLEMS FOUND" }
    );
    out
}

/// `<label> last error at HH:MM:SS: <error>`, the line status views print under a component.
pub fn last_error(label: &str, error: &str, at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let at = at
        .map(|t| format!(" at {}", t.format("%H:%M:%S")))
        .unwrap_or_default();
    format!("{label:<10} last error{at}: {error}\n")
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

pub fn cameras(cameras: &[crate::api::CameraView]) -> String {
    let mut out = format!(
        "{:<16} {:<11} {:>6} {:>7} {:<20} {:>5}  {:<8} {}\n",
        "ID", "STATE", "FPS", "KBIT/S", "LAST SEGMENT", "RECON", "SOURCE", "URL"
    );
    for c in cameras {
        let h = c.health.as_ref();
        // As `cameras/<cam>/state` says it: a camera recording nothing may still stream for
        // detection, so only `enabled` makes it disabled.
        let state = match h {
            _ if !c.enabled => "disabled",
            Some(h) => h.state.as_str(),
            None if !c.record && !c.detect => "idle",
            None => "starting",
        };
        let number = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        let last = h
            .and_then(|h| h.last_segment_at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<16} {:<11} {:>6} {:>7} {:<20} {:>5}  {:<8} {}",
            c.id,
            state,
            number(h.and_then(|h| h.fps)),
            number(h.and_then(|h| h.bitrate_kbps)),
            last,
            h.map(|h| h.reconnects).unwrap_or(0),
            c.source,
            c.main_url.as_deref().unwrap_or("-"),
        );
        if let Some(err) = h
            .and_then(|h| h.last_error.as_deref())
            .filter(|_| h.is_some_and(|h| h.state != crate::media::CameraState::Recording))
        {
            let _ = writeln!(out, "{:<16} last error: {err}", "");
        }
    }
    out
}

pub fn clip(answer: &crate::api::ClipAnswer, output: &std::path::Path) -> String {
    let r = &answer.report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wrote {} ({}): {:.1} s from {} segments, first frame at {}",
        output.display(),
        bytes(r.bytes),
        r.duration_ms as f64 / 1000.0,
        r.segments,
        time(r.first_frame_ms)
    );
    for (from, to) in &r.gaps {
        let _ = writeln!(
            out,
            "gap: nothing recorded from {} to {} ({:.1} s)",
            time(*from),
            time(*to),
            (to - from) as f64 / 1000.0
        );
    }
    out
}

pub fn segments(
    segments: &[crate::media::index::Segment],
    gaps: &[crate::media::index::Gap],
) -> String {
    let mut out = format!(
        "{:>8}  {:<23} {:>8} {:>9}  {}\n",
        "ID", "START", "SECONDS", "SIZE", "FLAGS"
    );
    for s in segments {
        let mut flags = Vec::new();
        if s.evidence_locked {
            flags.push("evidence");
        }
        if s.recovered {
            flags.push("recovered");
        }
        let _ = writeln!(
            out,
            "{:>8}  {:<23} {:>8.1} {:>9}  {}",
            s.id,
            time(s.start_ms),
            (s.end_ms - s.start_ms) as f64 / 1000.0,
            bytes(s.bytes),
            flags.join(",")
        );
    }
    for g in gaps {
        let _ = writeln!(
            out,
            "gap {} → {} ({:.1} s, {})",
            time(g.start_ms),
            time(g.end_ms),
            (g.end_ms - g.start_ms) as f64 / 1000.0,
            g.reason
        );
    }
    out
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

pub fn stream_test(t: &crate::media::StreamTest) -> String {
    let size = match (t.width, t.height) {
        (Some(w), Some(h)) => format!("{w}x{h}"),
        _ => "unknown size".into(),
    };
    let number = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{v:.1} {unit}"))
            .unwrap_or_else(|| format!("? {unit}"))
    };
    format!(
        "camera {} answers on {}\n  {} {size}, {}, GOP {}, {}; first frame after {} ms\n",
        t.camera_id,
        t.url,
        t.codec.as_deref().unwrap_or("unknown codec"),
        number(t.fps, "fps"),
        t.gop_ms
            .map(|g| format!("{:.1} s", g as f64 / 1000.0))
            .unwrap_or_else(|| "?".into()),
        number(t.bitrate_kbps, "kbit/s"),
        t.connect_ms
    )
}

pub fn tokens(tokens: &[crate::auth::TokenInfo]) -> String {
    let mut out = format!(
        "{:<10} {:<9} {:<24} {:<20} {}\n",
        "ID", "ROLE", "NAME", "CREATED", "STATE"
    );
    for t in tokens {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:<24} {:<20} {}",
            t.id,
            t.role.as_str(),
            t.name,
            time(t.created_at_ms).chars().take(19).collect::<String>(),
            if t.revoked { "revoked" } else { "active" }
        );
    }
    out
}

pub fn outbox(s: &crate::outbox::OutboxStatus) -> String {
    let mut out = String::new();
    let age = |a: Option<f64>| a.map(|a| duration(a as u64)).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "outbox     {} records, {}, newest seq {}, oldest {} old, {} dropped",
        s.records,
        bytes(s.bytes),
        s.newest_seq,
        age(s.oldest_age_s),
        s.dropped
    );
    for c in &s.consumers {
        let _ = writeln!(
            out,
            "consumer   {:<16} cursor {:<8} backlog {:<8} oldest unfinished {}",
            c.consumer,
            c.cursor,
            c.backlog,
            age(c.oldest_age_s)
        );
        if let Some(error) = &c.failing {
            let _ = writeln!(out, "           failing: {error}");
        }
    }
    out
}

pub fn record(r: &crate::outbox::Record) -> String {
    let camera = r.camera_id.as_deref().unwrap_or("-");
    let detail = record_detail(r).unwrap_or_else(|| r.payload.to_string());
    format!(
        "{:>8} {} {:<9} {:<14} {:<12} {detail}",
        r.seq,
        time(r.ts_ms),
        r.kind,
        r.r#type,
        camera
    )
}

/// One line about a record's payload, read typed; `None` for a payload this binary cannot
/// read, which is then shown raw.
fn record_detail(r: &crate::outbox::Record) -> Option<String> {
    use crate::outbox::Kind;
    use crate::perception::record::DetectionBatch;
    use crate::serial::record::AlarmInput;
    use crate::zones::record::{OCCUPANCY, ZoneEvent, ZoneOccupancy};
    Some(match r.kind {
        Kind::Detection => {
            let batch: DetectionBatch = r.payload().ok()?;
            format!(
                "{} detections ({})",
                batch.detections.len(),
                batch.task_type
            )
        }
        Kind::Zone if r.r#type == OCCUPANCY => {
            let change: ZoneOccupancy = r.payload().ok()?;
            format!("{}: {} inside", change.zone, change.total)
        }
        Kind::Zone => {
            let e: ZoneEvent = r.payload().ok()?;
            let mut d = format!(
                "{} {} track {}",
                e.zone,
                e.label.as_deref().unwrap_or("-"),
                e.track_id
            );
            if let Some(s) = e.dwell_s {
                d.push_str(&format!(" after {s:.1} s"));
            }
            if let Some(reason) = e.reason {
                d.push_str(&format!(" ({reason})"));
            }
            d
        }
        Kind::Alarm => {
            let change: AlarmInput = r.payload().ok()?;
            format!(
                "input {} {} {}",
                change.input,
                change.name.as_deref().unwrap_or(""),
                change.state
            )
        }
        Kind::Camera | Kind::System => return None,
    })
}

pub fn zones(
    zones: &[crate::registry::StoredZone],
    occupancy: &[crate::zones::queries::OccupancyRow],
) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<7} {:>6} {:<8} {}\n",
        "ZONE", "CAMERA", "KIND", "INSIDE", "SOURCE", "LABELS"
    );
    for z in zones {
        let s = &z.settings;
        let inside = occupancy
            .iter()
            .find(|o| o.zone == s.name)
            .map_or(0, |o| o.total);
        let kind = match s.kind {
            crate::config::model::ZoneKind::Region => "region",
            crate::config::model::ZoneKind::Line => "line",
        };
        let source = match z.source {
            crate::registry::Source::File => "file",
            crate::registry::Source::Runtime => "runtime",
        };
        let labels = if s.labels.is_empty() {
            "all".to_string()
        } else {
            s.labels.join(",")
        };
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<7} {:>6} {:<8} {labels}",
            s.name, s.camera, kind, inside, source
        );
    }
    out
}
