//! MQTT uplink: how fast a backlog drains, beside a plain rumqttc publisher, and how long a
//! record takes from ingest to a subscriber in steady state.
//!
//! 1. A plain rumqttc publisher sends 100,000 QoS 1 messages of 300 bytes with a window of
//!    `uplink::WINDOW` to a local mosquitto and counts PUBACKs: the ceiling.
//! 2. 100,000 records are queued in a fresh database's outbox (about 300 bytes each), then the
//!    daemon starts with `[mqtt]`: msgs/s from its first acknowledged record until its cursor
//!    reaches the end.
//! 3. Steady state: 50 batches/s posted to the worker endpoint for `HELDAR_BENCH_SECS` (default
//!    10); latency from the POST to the record reaching a test subscriber (an upper bound of
//!    ingest → PUBACK, which is not observable from outside the daemon).
//!
//! Run: `cargo bench --bench uplink` (mosquitto must be installed: `make deps`).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, Daemon};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;

const RECORDS: usize = 100_000;

/// Plain rumqttc: `n` QoS 1 publishes of `size` bytes, `window` in flight; msgs/s acknowledged.
async fn plain_publisher(port: u16, n: usize, size: usize, window: u16) -> f64 {
    let mut o = MqttOptions::new("plain-bench", "127.0.0.1", port);
    o.set_inflight(window)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, window as usize * 2);
    let publisher = tokio::spawn(async move {
        let payload = vec![b'x'; size];
        for _ in 0..n {
            client
                .publish("bench/plain", QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    let mut started = None;
    while acked < n {
        match eventloop.poll().await.unwrap() {
            Event::Outgoing(Outgoing::Publish(_)) if started.is_none() => {
                started = Some(Instant::now())
            }
            Event::Incoming(Packet::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let rate = n as f64 / started.unwrap().elapsed().as_secs_f64();
    drop(publisher.await);
    rate
}

/// A fresh data directory whose outbox holds `n` records of about 300 bytes.
fn queued_backlog(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = heldar_edge::store::db_path(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = heldar_edge::store::Store::open(&db).unwrap();
    rt.block_on(store.close());
    let mut c = rusqlite::Connection::open(&db).unwrap();
    let tx = c.transaction().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        let payload = json!({
            "frame_id": format!("f-{i}"),
            "task_type": "detect",
            "detections": [{"label": "person", "confidence": 0.91, "bbox": [0.1, 0.2, 0.3, 0.4], "track_id": "17"}],
        });
        tx.execute(
            "INSERT INTO outbox (event_id, kind, type, camera_id, ts_ms, payload, created_at_ms)
             VALUES (lower(hex(randomblob(16))), 'detection', 'detections', 'gate', ?1, ?2, ?1)",
            rusqlite::params![now, payload.to_string()],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    dir
}

fn cursor(db: &rusqlite::Connection) -> i64 {
    db.query_row(
        "SELECT COALESCE((SELECT seq FROM consumer_cursors WHERE consumer = 'mqtt'), 0)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn main() {
    let secs: u64 = std::env::var("HELDAR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let broker = Broker::start();
    let window = heldar_edge::uplink::WINDOW as u16;
    println!("uplink benchmark: local mosquitto, window {window}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = rt.block_on(plain_publisher(broker.port, RECORDS, 300, window));
    println!(
        "{:<52} {:>9.0} msg/s",
        "plain rumqttc, 300-byte QoS 1 messages", plain
    );

    let dir = queued_backlog(RECORDS);
    let db =
        rusqlite::Connection::open(heldar_edge::store::db_path(&dir.path().join("data"))).unwrap();
    let last: i64 = db
        .query_row("SELECT MAX(seq) FROM outbox", [], |r| r.get(0))
        .unwrap();
    let daemon = Daemon::start_in(
        dir,
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nauth = false\n[recording]\nmin_free = \"0\"\n\
             [[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\nrecord = false\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\ndiscovery = false\n",
            broker.port
        ),
    );
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = cursor(&db);
        if c > 0 && started.is_none() {
            started = Some((Instant::now(), c));
        }
        if c >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t0, c0) = started.unwrap();
    let drained = (last - c0) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "{:<52} {:>9.0} msg/s  ({:.0} % of plain)",
        "heldar backlog drain, 100,000 queued records",
        drained,
        100.0 * drained / plain
    );

    // Steady state: a subscriber times each record from its POST.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut o = MqttOptions::new("latency-bench", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (sub, mut conn) = rumqttc::Client::new(o, 100);
    sub.subscribe("heldar/bench/events/#", QoS::AtLeastOnce)
        .unwrap();
    {
        let (sent, latencies) = (sent.clone(), latencies.clone());
        std::thread::spawn(move || {
            for event in conn.iter() {
                if let Ok(Event::Incoming(Packet::Publish(p))) = event {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(f) = v["frame_id"].as_str()
                        && let Some(t) = sent.lock().unwrap().remove(f)
                    {
                        latencies
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let url = daemon.http();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < end {
        let frame = format!("steady-{n}");
        let body = json!({"camera_id": "gate", "task_type": "detect", "frame_id": frame,
            "detections": [{"label": "person", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.3], "track_id": "1"}]});
        sent.lock().unwrap().insert(frame, Instant::now());
        let _ = agent
            .post(format!("{url}/api/v1/ai/events"))
            .send_json(&body);
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "{:<52} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {n} records)",
        "steady 50 records/s, POST to subscriber",
        pct(0.5),
        pct(0.99),
        l[l.len() - 1],
        l.len()
    );
}
