//! Fault tests: each one reproduces a way the box could lose, repeat or wrongly drop data, or
//! wedge, with the real components (a real mosquitto, real SQLite files, the real daemon), and
//! checks the invariants once the fault clears. Each test is named after the behaviour that failed
//! before its fix (issue 13).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use heldar_edge::config::model::OutboxConfig;
use heldar_edge::outbox::{ConsumeError, Kind, LocalConsumer, NewRecord, Outbox, Payload, Record};
use heldar_edge::store::{self, Store, StoreError};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fixtures::{
    Broker, BrokerSetup, Sub, daemon_with_broker, db, events, outbox, post_batches,
    wait_all_delivered,
};
use crate::fixtures::{Daemon, Tmpfs, stdout, wait_for};
use crate::fixtures::{Http, token};

fn outbox_status(d: &Daemon) -> Value {
    let out = d.cli(&["--json", "outbox", "status"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn restart(d: &mut Daemon) {
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "stops");
    d.respawn();
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
    d.respawn();
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
    d.stop_and_check_db();
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

/// A consumer whose effect needs room on disk: a 256 KiB row per record.
struct RoomyEffect {
    attempts: Arc<AtomicU32>,
}

impl LocalConsumer for RoomyEffect {
    fn name(&self) -> &str {
        "test-roomy"
    }

    fn apply(&self, c: &rusqlite::Connection, records: &[Record]) -> Result<(), ConsumeError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        for r in records {
            c.execute(
                "INSERT INTO test_effects (seq, body) VALUES (?1, zeroblob(262144))",
                [r.seq],
            )?;
        }
        Ok(())
    }
}

/// Item 5: a local consumer failing because the disk is full used to be treated like a record it
/// cannot parse: after 10 attempts the record was skipped and its effect lost for good.
/// An empty `system` record for consumers that only count what they are given.
#[derive(serde::Serialize, serde::Deserialize)]
struct TestPayload {}

impl Payload for TestPayload {
    const KIND: Kind = Kind::System;
}

#[tokio::test(start_paused = true)]
async fn a_consumer_failing_on_a_full_disk_is_retried_not_skipped() {
    let disk = Tmpfs::mount("16m");
    let store = Store::open(&store::db_path(disk.path())).unwrap();
    store
        .write(|c| {
            c.execute_batch(
                "CREATE TABLE test_effects (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
                 INSERT INTO consumer_cursors (consumer, seq, updated_at_ms) VALUES ('test-roomy', 0, 0);",
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let outbox = Outbox::new(store.clone(), OutboxConfig::default());
    let seq = outbox
        .publish(NewRecord::new("test", None, 0, &TestPayload {}).unwrap())
        .await
        .unwrap();
    // Room for a cursor update, none for the effect.
    let filler = disk.fill(128 << 10);
    let attempts = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let consumer = Arc::new(RoomyEffect {
        attempts: attempts.clone(),
    });
    let task = tokio::spawn({
        let (outbox, stop) = (outbox.clone(), stop.clone());
        async move { outbox.run_local(consumer, stop).await }
    });
    let cursor = |store: Store| async move {
        store
            .read(|c| {
                Ok::<i64, StoreError>(c.query_row(
                    "SELECT seq FROM consumer_cursors WHERE consumer = 'test-roomy'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap()
    };
    // Well past the 10 attempts after which a failing record used to be skipped.
    for _ in 0..600 {
        if attempts.load(Ordering::SeqCst) >= 15 || cursor(store.clone()).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        cursor(store.clone()).await,
        0,
        "the record was skipped while the disk was full"
    );
    let status = outbox.status().await.unwrap();
    let lag = status.consumers.iter().find(|c| c.consumer == "test-roomy");
    assert!(
        lag.and_then(|l| l.failing.as_deref())
            .is_some_and(|e| e.contains("disk full") || e.contains("lost")),
        "the failure shows in outbox status: {lag:?}"
    );
    std::fs::remove_file(filler).unwrap();
    let mut waited = 0;
    while cursor(store.clone()).await < seq {
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
        assert!(waited < 600, "the consumer never caught up");
    }
    let effects: i64 = store
        .read(|c| {
            Ok::<i64, StoreError>(
                c.query_row("SELECT COUNT(*) FROM test_effects", [], |r| r.get(0))?,
            )
        })
        .await
        .unwrap();
    assert_eq!(effects, 1, "the effect is applied once the disk has room");
    stop.cancel();
    task.await.unwrap();
    store.close().await;
}

fn post_one(http: &Http, worker: &str, frame: &str) -> (u16, String) {
    let body = json!({
        "camera_id": "gate",
        "task_type": "detect",
        "frame_id": frame,
        "detections": [{"label": "person", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}],
    });
    let a = http.post("/api/v1/ai/events", Some(worker), &body);
    (a.status, String::from_utf8_lossy(&a.body).into_owned())
}

/// The data partition turning read-only under the daemon (ext4 `errors=remount-ro` after a
/// media error): posts are refused with an error that says so, nothing refused is half-stored,
/// the fault shows in `heldar status`, and after the technician's e2fsck every acknowledged
/// batch is there and the database checks clean.
#[test]
fn a_data_disk_turning_read_only_refuses_posts_plainly_and_loses_nothing_acknowledged() {
    let (d, mut disk) = Daemon::start_on_ext4(
        "[recording]\nmin_free = \"0\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n",
        "64M",
    );
    let mut d = d.ready();
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let viewer = token(&d, "viewer");
    let mut acked = Vec::new();
    for i in 0..20 {
        let frame = format!("before-{i}");
        let (status, body) = post_one(&http, &worker, &frame);
        assert_eq!(status / 100, 2, "{body}");
        acked.push(frame);
    }
    disk.fail();
    let mut refused = 0;
    for i in 0..10 {
        let frame = format!("during-{i}");
        let (status, body) = post_one(&http, &worker, &frame);
        if status / 100 == 2 {
            acked.push(frame);
        } else {
            refused += 1;
            assert_eq!(status, 503, "retryable: {body}");
            assert!(body.contains("read-only"), "says what is wrong: {body}");
        }
    }
    assert!(refused > 0, "a read-only disk refused nothing");
    let status = d.cli(&["status"]);
    let text = stdout(&status);
    assert!(
        text.lines().any(|l| l.starts_with("storage")
            && l.contains("disk_failed")
            && l.contains("no commit since")),
        "heldar status shows the fault:\n{text}"
    );
    let metrics = String::from_utf8(http.get("/metrics", Some(&viewer)).body).unwrap();
    assert!(
        metrics.contains("heldar_store_faults_total{kind=\"disk_failed\"}"),
        "/metrics counts the fault"
    );
    // It cannot record a clean stop on a read-only disk, but it must stop.
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).is_some(), "stops");
    disk.repair();
    d.respawn();
    let c = db(&d);
    for f in &acked {
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM detection_batches WHERE frame_id = ?1",
                [f],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "acknowledged batch {f}");
    }
    let half: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM detection_batches WHERE frame_id LIKE 'during-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        half as usize,
        acked.len() - 20,
        "a refused batch was stored anyway"
    );
    // Posting works again, and the database checks clean.
    let (status, body) = post_one(&Http::new(&d), &worker, "after");
    assert_eq!(status / 100, 2, "{body}");
    d.stop_and_check_db();
}
