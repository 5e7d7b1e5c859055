//! The zone engine inside the daemon: exactly-once events across SIGKILL, and end to end from a
//! moving ball.

use std::time::Duration;

use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::{Value, json};

use crate::fixtures::{Daemon, wait_for};
use crate::fixtures::{Http, motion_worker, token};
use crate::fixtures::{camera, camera_toml};

/// Two regions, a line between them, a dwell on the right.
const ZONES: &str = "[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n\
    [[zones]]\ncamera = \"gate\"\nname = \"left\"\nkind = \"region\"\npoints = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]\n\
    [[zones]]\ncamera = \"gate\"\nname = \"right\"\nkind = \"region\"\npoints = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\ndwell_seconds = 2\n\
    [[zones]]\ncamera = \"gate\"\nname = \"mid\"\nkind = \"line\"\npoints = [[0.5, 0.0], [0.5, 1.0]]\n";

/// Five people walking left to right and back at different speeds, 10 batches a second for
/// 12 s. Timestamps lie a day ahead, so no wall-clock deadline can fire during the test and every
/// event comes from the recorded trajectory alone.
fn trajectory() -> Vec<Value> {
    let base = chrono::Utc::now().timestamp_millis() + 86_400_000;
    (0..120)
        .map(|step| {
            let t = step as f64 / 10.0;
            let detections: Vec<Value> = (0..5)
                .map(|p| {
                    let speed = 0.08 + 0.03 * p as f64;
                    let phase = (t * speed + p as f64 * 0.1) % 2.0;
                    let x = 0.05 + 0.9 * if phase < 1.0 { phase } else { 2.0 - phase };
                    json!({"label": "person", "confidence": 0.9, "bbox": [x - 0.02, 0.4, 0.04, 0.2], "track_id": p.to_string()})
                })
                .collect();
            let ts = chrono::DateTime::from_timestamp_millis(base + step * 100).unwrap().to_rfc3339();
            json!({"camera_id": "gate", "task_type": "people", "frame_id": format!("step-{step}"), "timestamp": ts, "detections": detections})
        })
        .collect()
}

fn zone_events(d: &Daemon) -> Vec<String> {
    let c = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    let mut stmt = c.prepare("SELECT zone_id, track_id, type, ts_ms FROM zone_events ORDER BY ts_ms, zone_id, track_id, type").unwrap();
    stmt.query_map([], |r| {
        Ok(format!(
            "{}/{}/{}@{}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Waits until the zone engine has consumed every record.
fn caught_up(d: &Daemon, http: &Http, admin: &str) {
    wait_for(Duration::from_secs(30), || {
        let s = http.get("/api/v1/outbox", Some(admin)).json();
        let zones = s["consumers"]
            .as_array()?
            .iter()
            .find(|c| c["consumer"] == "zones")?
            .clone();
        (zones["backlog"] == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the zone engine never caught up; log:\n{}", d.log()));
}

#[test]
fn zone_events_are_exactly_once_across_sigkill() {
    let batches = trajectory();

    let reference = Daemon::start(ZONES).ready();
    let (http, admin) = (Http::new(&reference), token(&reference, "admin"));
    let worker = token(&reference, "worker");
    for b in &batches {
        assert_eq!(http.post("/api/v1/ai/events", Some(&worker), b).status, 200);
    }
    caught_up(&reference, &http, &admin);
    let expected = zone_events(&reference);
    assert!(expected.len() >= 15, "the walk makes news: {expected:?}");
    for kind in ["enter", "exit", "dwell", "cross_ab", "cross_ba"] {
        assert!(
            expected.iter().any(|e| e.contains(&format!("/{kind}@"))),
            "{kind} in {expected:?}"
        );
    }
    drop(reference);

    let mut d = Daemon::start(ZONES).ready();
    let mut http = Http::new(&d);
    // Tokens are durable: the same one works after every restart.
    let worker = token(&d, "worker");
    let mut rng = rand::rng();
    let kills: Vec<usize> = (0..3).map(|_| rng.random_range(5..115)).collect();
    for (i, b) in batches.iter().enumerate() {
        let r = http.post("/api/v1/ai/events", Some(&worker), b);
        assert_eq!(r.status, 200, "{}", r.text());
        if kills.contains(&i) {
            // Killed right after a batch was acknowledged, maybe before the engine applied it.
            d.signal(Signal::SIGKILL);
            d.wait_exit(Duration::from_secs(5)).unwrap();
            d.spawn(&[]);
            http = wait_for(Duration::from_secs(20), || {
                d.cli(&["--json", "status"])
                    .status
                    .success()
                    .then(|| Http::new(&d))
            })
            .expect("the daemon comes back");
        }
    }
    let admin = token(&d, "admin");
    caught_up(&d, &http, &admin);
    assert_eq!(
        zone_events(&d),
        expected,
        "the same events as the uninterrupted run"
    );
    let occupancy = http
        .get("/api/v1/cameras/gate/zones/occupancy", Some(&admin))
        .json();
    assert!(
        occupancy.as_array().is_some_and(|o| !o.is_empty()),
        "{occupancy}"
    );
}

#[test]
fn a_moving_ball_crosses_a_line_on_schedule() {
    // The ball moves as x = 0.5 + 0.5 sin(2π n / 200) at frame n (videotestsrc "wavy"): at 15 fps it
    // crosses the middle every 100 frames, 6.7 s, alternating direction.
    let cam = camera();
    let config = format!(
        "{}[[tasks]]\ncamera = \"gate\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 5\nwidth = 320\n\
         [[zones]]\ncamera = \"gate\"\nname = \"mid\"\nkind = \"line\"\npoints = [[0.5, 0.0], [0.5, 1.0]]\nanchor = \"center\"\n",
        camera_toml("gate", &cam.url("main"), 10)
    );
    let d = Daemon::start(&config).ready();
    let http = Http::new(&d);
    let (worker_token, viewer) = (token(&d, "worker"), token(&d, "viewer"));
    let mut worker = motion_worker(&http, &worker_token);
    let crossings = wait_for(Duration::from_secs(45), || {
        let events = http
            .get(
                "/api/v1/cameras/gate/zone-events?zone=mid&limit=100",
                Some(&viewer),
            )
            .json();
        let mut list: Vec<(i64, String)> = events
            .as_array()?
            .iter()
            .map(|e| {
                (
                    chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap())
                        .unwrap()
                        .timestamp_millis(),
                    e["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        list.sort();
        (list.len() >= 3).then_some(list)
    });
    let _ = worker.kill();
    let _ = worker.wait();
    let crossings = crossings.expect("the ball crosses the middle line");
    // The reference worker may lose the ball for a frame when the machine is busy and miss a
    // crossing; every crossing it does report must still fall on the schedule: a whole number
    // of half periods apart, alternating direction after an odd number of them.
    let mut consecutive = 0;
    for pair in crossings.windows(2) {
        let gap = (pair[1].0 - pair[0].0) as f64 / 1000.0;
        let halves = (gap / 6.67).round();
        assert!(
            halves >= 1.0 && (gap - halves * 6.67).abs() <= 1.5,
            "crossings 6.7 s apart (or a multiple), got {gap} s: {crossings:?}"
        );
        if halves as u64 % 2 == 1 {
            assert_ne!(
                pair[0].1, pair[1].1,
                "alternating directions: {crossings:?}"
            );
        } else {
            assert_eq!(
                pair[0].1, pair[1].1,
                "same direction after a full period: {crossings:?}"
            );
        }
        consecutive += usize::from(halves == 1.0);
    }
    assert!(
        consecutive >= 1,
        "two consecutive crossings seen: {crossings:?}"
    );
}
