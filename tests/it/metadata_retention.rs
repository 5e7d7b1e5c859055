//! Metadata retention (issue 13, item 4): a year of detections, zone events, rule actions and
//! audit rows must not fill the disk. Aged rows are written into the daemon's database file while
//! it is stopped (the box's clock cannot be wound forward), then the real daemon prunes them;
//! the size cap is driven by real worker posts.

use std::collections::BTreeSet;
use std::time::Duration;

use rusqlite::{Connection, params};
use serde_json::json;

use crate::fixtures::{Broker, BrokerSetup, CAMERA, Sub, daemon_with_broker, db};
use crate::fixtures::{Daemon, wait_for};
use crate::fixtures::{Http, token};

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The first column of every row `sql` returns.
fn strings(c: &Connection, sql: &str) -> Vec<String> {
    c.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn insert_batch(c: &Connection, camera: &str, frame: &str, ts_ms: i64, detections: usize) {
    c.execute(
        "INSERT INTO detection_batches (camera_id, frame_id, task_type, credential, ts_ms, ticketed, outbox_seq)
         VALUES (?1, ?2, 'detect', 'tok_1', ?3, 0, 0)",
        params![camera, frame, ts_ms],
    )
    .unwrap();
    let batch = c.last_insert_rowid();
    for _ in 0..detections {
        c.execute(
            "INSERT INTO detections (batch_id, camera_id, ts_ms, label, attributes) VALUES (?1, ?2, ?3, 'person', '{}')",
            params![batch, camera, ts_ms],
        )
        .unwrap();
    }
}

fn insert_zone_event(c: &Connection, camera: &str, ts_ms: i64) {
    c.execute(
        "INSERT INTO zone_events (zone_id, camera_id, task, track_id, type, ts_ms, outbox_seq)
         VALUES ('door', ?1, 'detect', '1', 'enter', ?2, 0)",
        params![camera, ts_ms],
    )
    .unwrap();
}

fn insert_audit(c: &Connection, at_ms: i64, action: &str) {
    c.execute(
        "INSERT INTO audit (at_ms, actor, source, action, status) VALUES (?1, 'tok_1', 'test', ?2, 200)",
        params![at_ms, action],
    )
    .unwrap();
}

/// The `heldar_metadata_deleted_total` sample for `table` and `reason`, 0 when absent.
fn deleted_metric(http: &Http, viewer: &str, table: &str, reason: &str) -> f64 {
    let text = String::from_utf8(http.get("/metrics", Some(viewer)).body).unwrap();
    let wanted = format!("heldar_metadata_deleted_total{{table=\"{table}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn metadata_past_its_age_is_deleted_and_the_newest_audit_rows_stay() {
    let mut d = Daemon::start(&format!(
        "[recording]\nmin_free = \"0\"\n{CAMERA}\n[retention]\naudit_keep = 30\n"
    ))
    .ready();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(15)).is_some());

    let now = now_ms();
    {
        let mut c = db(&d);
        let t = c.transaction().unwrap();
        for camera in ["gate", "yard"] {
            for i in 0..100 {
                insert_batch(&t, camera, &format!("old-{i}"), now - 40 * DAY_MS, 3);
                insert_zone_event(&t, camera, now - 40 * DAY_MS);
            }
            for i in 0..5 {
                insert_batch(&t, camera, &format!("new-{i}"), now - DAY_MS, 3);
                insert_zone_event(&t, camera, now - DAY_MS);
            }
        }
        // A worker whose clock runs a year ahead: its rows are not old, and they hold back no
        // other camera's.
        insert_batch(&t, "aaa-skewed", "future", now + 365 * DAY_MS, 1);
        for i in 0..50 {
            t.execute(
                "INSERT INTO rule_actions (record_seq, rule, action, created_at_ms, done_at_ms, result)
                 VALUES (?1, 0, 'relay:1:pulse:2s', ?2, ?2, 'ok')",
                params![1_000_000 + i, now - 40 * DAY_MS],
            )
            .unwrap();
        }
        t.execute(
            "INSERT INTO rule_actions (record_seq, rule, action, created_at_ms, done_at_ms, result)
             VALUES (2000000, 0, 'relay:1:pulse:2s', ?1, ?1, 'ok')",
            [now - DAY_MS],
        )
        .unwrap();
        for i in 0..50 {
            insert_audit(&t, now - 400 * DAY_MS + i, &format!("old {i}"));
        }
        for i in 0..10 {
            insert_audit(&t, now - DAY_MS + i, &format!("recent {i}"));
        }
        t.commit().unwrap();
    }

    d.respawn();
    let c = db(&d);
    let gone = wait_for(Duration::from_secs(30), || {
        (count(
            &c,
            "SELECT COUNT(*) FROM detection_batches WHERE frame_id LIKE 'old-%'",
        ) == 0
            && count(&c, "SELECT COUNT(*) FROM audit WHERE action LIKE 'old %'") <= 20)
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "old metadata still there; log:\n{}",
        d.log()
    );

    assert_eq!(
        count(
            &c,
            "SELECT COUNT(*) FROM detection_batches WHERE frame_id LIKE 'new-%'"
        ),
        10,
        "recent batches kept"
    );
    assert_eq!(
        count(
            &c,
            "SELECT COUNT(*) FROM detection_batches WHERE frame_id = 'future'"
        ),
        1
    );
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM detections"),
        31,
        "old batches' detections went with them"
    );
    assert_eq!(count(&c, "SELECT COUNT(*) FROM zone_events"), 10);
    assert_eq!(count(&c, "SELECT COUNT(*) FROM rule_actions"), 1);
    // audit_keep = 30: the 10 recent rows and the 20 newest old ones.
    let old_left = strings(
        &c,
        "SELECT action FROM audit WHERE action LIKE 'old %' ORDER BY id",
    );
    let want: Vec<String> = (30..50).map(|i| format!("old {i}")).collect();
    assert_eq!(old_left, want);
    assert_eq!(
        count(
            &c,
            "SELECT COUNT(*) FROM audit WHERE action LIKE 'recent %'"
        ),
        10
    );
    // Still append-only for anyone else.
    let refused = c
        .execute("DELETE FROM audit WHERE action = 'recent 0'", [])
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let refused = c
        .execute("DELETE FROM audit WHERE action = 'old 49'", [])
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    let http = Http::new(&d);
    let viewer = token(&d, "viewer");
    assert_eq!(
        deleted_metric(&http, &viewer, "detection_batches", "age"),
        200.0
    );
    assert_eq!(deleted_metric(&http, &viewer, "zone_events", "age"), 200.0);
    assert_eq!(deleted_metric(&http, &viewer, "rule_actions", "age"), 50.0);
    assert_eq!(deleted_metric(&http, &viewer, "audit", "age"), 30.0);

    d.stop_and_check_db();
}

/// Bytes of the database's pages in use less the outbox's payload, as the daemon counts them.
fn used_bytes(c: &Connection) -> i64 {
    count(
        c,
        "SELECT (SELECT page_count FROM pragma_page_count) - (SELECT freelist_count FROM pragma_freelist_count)",
    ) * count(c, "SELECT page_size FROM pragma_page_size")
        - count(c, "SELECT value FROM counters WHERE name = 'outbox_bytes'")
}

#[test]
fn the_metadata_cap_deletes_the_oldest_detections_first_while_ingest_goes_on() {
    const CAP: i64 = 8 << 20;
    let d = Daemon::start(&format!(
        "[recording]\nmin_free = \"0\"\n{CAMERA}\n[outbox]\nmax_bytes = \"1MiB\"\n[retention]\nmetadata_max_bytes = \"8MiB\"\n"
    ))
    .ready();
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let viewer = token(&d, "viewer");
    let note = "n".repeat(200);
    let posts = 400;
    for i in 0..posts {
        let detections: Vec<_> = (0..100)
            .map(|k| json!({"label": "person", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2], "track_id": k.to_string(), "attributes": {"note": note}}))
            .collect();
        let body = json!({"camera_id": "gate", "task_type": "detect", "frame_id": format!("f{i:04}"), "detections": detections});
        let a = http.post("/api/v1/ai/events", Some(&worker), &body);
        assert_eq!(
            a.status / 100,
            2,
            "post {i}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    let c = db(&d);
    let under = wait_for(Duration::from_secs(60), || {
        (used_bytes(&c) <= CAP).then_some(())
    });
    assert!(
        under.is_some(),
        "database holds {} bytes, over its cap {CAP}; log:\n{}",
        used_bytes(&c),
        d.log()
    );
    let kept = strings(&c, "SELECT frame_id FROM detection_batches ORDER BY id");
    assert!(
        !kept.is_empty() && kept.len() < posts,
        "kept {} of {posts} batches",
        kept.len()
    );
    // The oldest went, the newest stayed, and what stayed is one unbroken run up to the last.
    let first: usize = kept[0][1..].parse().unwrap();
    let want: Vec<String> = (first..posts).map(|i| format!("f{i:04}")).collect();
    assert_eq!(kept, want);
    // Counted as it commits; the test may look in between.
    let counted = wait_for(Duration::from_secs(5), || {
        (deleted_metric(&http, &viewer, "detection_batches", "size") >= first as f64).then_some(())
    });
    assert!(counted.is_some(), "size-cap deletions counted in /metrics");
    assert!(
        wait_for(Duration::from_secs(5), || d
            .log()
            .contains("metadata over retention.metadata_max_bytes")
            .then_some(()))
        .is_some(),
        "the size cap's deletions are announced"
    );
}

/// Retained topics under `prefix` the broker holds now with a non-empty payload, as a fresh
/// subscriber sees them.
fn retained_under(broker: &Broker, filter: &str, name: &str) -> BTreeSet<String> {
    let sub = Sub::start(broker.port, name, &[filter], false);
    std::thread::sleep(Duration::from_secs(1));
    sub.all()
        .into_iter()
        .filter(|g| g.retain && !g.payload.is_empty())
        .map(|g| g.topic)
        .collect()
}

/// A worker with an open vocabulary must not leave a retained topic and a Home Assistant
/// entity per word it ever said: `mqtt.labels_per_camera` bounds them, labels live now first.
#[test]
fn retained_label_topics_are_bounded_per_camera_live_labels_first() {
    let broker = Broker::start(BrokerSetup::default());
    let d = daemon_with_broker(&format!(
        "url = \"{}\"\nlabels_per_camera = 8",
        broker.url()
    ));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let post = |frame: &str, labels: &[String]| {
        let detections: Vec<_> = labels
            .iter()
            .map(|l| json!({"label": l, "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}))
            .collect();
        let body = json!({"camera_id": "gate", "task_type": "detect", "frame_id": frame, "detections": detections});
        assert_eq!(
            http.post("/api/v1/ai/events", Some(&worker), &body).status / 100,
            2
        );
    };
    let label_topics = |name: &str| -> BTreeSet<String> {
        retained_under(&broker, "heldar/test/cameras/gate/+", name)
            .into_iter()
            .filter_map(|t| {
                t.strip_prefix("heldar/test/cameras/gate/")
                    .map(str::to_string)
            })
            .filter(|l| !["state", "snapshot"].contains(&l.as_str()))
            .collect()
    };
    let words: Vec<String> = (0..40).map(|i| format!("word{i:02}")).collect();
    post("f1", &words);
    let first = wait_for(Duration::from_secs(20), || {
        let got = label_topics("first");
        (got.len() == 8).then_some(got)
    });
    assert!(
        first.is_some(),
        "8 label topics of 40 labels; got {:?}",
        label_topics("again")
    );

    let fresh: Vec<String> = ["car", "dog", "person"].map(String::from).to_vec();
    post("f2", &fresh);
    // Looked at until it settles: a snapshot taken mid-round may hold the new topics before
    // the old ones are cleared.
    let mut last = BTreeSet::new();
    let second = wait_for(Duration::from_secs(20), || {
        last = label_topics("second");
        (fresh.iter().all(|l| last.contains(l)) && last.len() == 8).then_some(())
    });
    assert!(
        second.is_some(),
        "the labels live now got a place among 8: {last:?}"
    );
    let mut sensors = Vec::new();
    let settled = wait_for(Duration::from_secs(20), || {
        sensors = retained_under(&broker, "homeassistant/sensor/heldar_test/+/config", "ha")
            .into_iter()
            .filter(|t| t.contains("/gate_") && t.ends_with("_count/config"))
            .collect::<Vec<_>>();
        (sensors.len() == 8).then_some(())
    });
    assert!(
        settled.is_some(),
        "one Home Assistant sensor per kept label: {sensors:?}"
    );
}
