//! Human-readable output of CLI commands: short aligned tables, units spelled out.

use std::fmt::Write as _;

use crate::api::SystemStatus;
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
    let _ = writeln!(out, "{:<10} http://{}/", "http", s.http_listen);
    let _ = writeln!(out, "{:<10} {}", "gstreamer", s.gstreamer);
    out
}

pub fn db_check(r: &CheckReport) -> String {
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
    let _ = writeln!(
        out,
        "result     {}",
        if r.ok() { "ok" } else { "PROBLEMS FOUND" }
    );
    out
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
