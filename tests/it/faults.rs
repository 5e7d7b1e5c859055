//! Fault tests: each one reproduces a way the box could lose, repeat or wrongly drop data, or
//! wedge, with the real components (a real mosquitto, real SQLite files, the real daemon), and
//! checks the invariants once the fault clears. Each test is named after the behaviour that failed
//! before its fix (issue 13).

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::fixtures::{Daemon, wait_for};
use crate::mqtt::{
    Broker, BrokerSetup, Sub, daemon_with_broker, db, events, outbox, post_batches,
    wait_all_delivered,
};
use crate::perception::{Http, token};

fn outbox_status(d: &Daemon) -> Value {
    let out = d.cli(&["--json", "outbox", "status"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn restart(d: &mut Daemon) {
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "stops");
    d.notifications.clear();
    d.spawn(&[]);
    assert!(
        d.wait_notify("READY=1", Duration::from_secs(20)),
        "{}",
        d.log()
    );
}

/// Item 1: the broker is down for more than an hour, then the daemon restarts. Compaction used to
/// run before the uplink had registered, took the newest record as everybody's low-water mark and
/// deleted every record older than an hour, uncounted.
#[test]
fn compaction_at_start_keeps_records_the_uplink_has_not_acknowledged() {
    let mut broker = Broker::start(BrokerSetup {
        persistence: true,
        ..Default::default()
    });
    let sub = Sub::start(broker.port, "faults", &["heldar/test/events/#"], true);
    broker.kill();
    let mut d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    assert_eq!(post_batches(&http, &worker, "old", 50, 2, None).len(), 50);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    // Two hours without a broker.
    db(&d)
        .execute(
            "UPDATE outbox SET created_at_ms = created_at_ms - 7200000",
            [],
        )
        .unwrap();
    let want = outbox(&d);
    assert!(want.len() >= 50);
    d.notifications.clear();
    d.spawn(&[]);
    assert!(d.wait_notify("READY=1", Duration::from_secs(20)));
    // Compaction's first pass runs at start; give it time to do its worst.
    std::thread::sleep(Duration::from_secs(3));
    broker.spawn();
    let missing = wait_all_delivered(&d, &sub, Duration::from_secs(60));
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    let got = events(&sub);
    let lost: Vec<&i64> = want.keys().filter(|s| !got.contains_key(s)).collect();
    assert!(
        lost.is_empty(),
        "records compacted away before the uplink had them: {lost:?}"
    );
    assert_eq!(outbox_status(&d)["dropped"], 0, "nothing dropped by bounds");
}

/// Item 10: the outbox's size is kept as a running count of payload bytes (not characters, and
/// not summed over every payload by each compaction pass inside the writer).
#[test]
fn outbox_size_counts_payload_bytes_not_characters() {
    let mut d = Daemon::start(
        "[recording]\nmin_free = \"0\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n",
    )
    .ready();
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    for i in 0..20 {
        let body = json!({
            "camera_id": "gate",
            "task_type": "detect",
            "frame_id": format!("f{i}"),
            "detections": [{"label": "vélo ☂ 自転車", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}],
        });
        assert_eq!(
            http.post("/api/v1/ai/events", Some(&worker), &body).status / 100,
            2
        );
    }
    let stored = |d: &Daemon| -> i64 {
        db(d)
            .query_row(
                "SELECT SUM(length(CAST(payload AS BLOB))) FROM outbox",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(5), || (outbox_status(&d)["bytes"]
            == stored(&d))
        .then_some(()))
        .is_some(),
        "outbox status says {} bytes, the payloads hold {}",
        outbox_status(&d)["bytes"],
        stored(&d)
    );
    // The count survives a restart and stays exact when records are deleted.
    db(&d)
        .execute("DELETE FROM outbox WHERE seq % 2 = 0", [])
        .unwrap();
    restart(&mut d);
    assert_eq!(outbox_status(&d)["bytes"], stored(&d));
}
