//! The worker contract against a real daemon, a real RTSP camera and real HTTP.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fixtures::*;

fn batches(d: &Daemon) -> i64 {
    let c = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    c.query_row("SELECT COUNT(*) FROM detection_batches", [], |r| r.get(0))
        .unwrap()
}

const TASKS: &str = "[[tasks]]\ncamera = \"gate\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 5\nwidth = 320\n\
                     [[tasks]]\ncamera = \"yard\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 5\nwidth = 320\n";

#[test]
fn the_worker_contract() {
    let (gate, yard) = (camera(), camera());
    // Auth is on: the fixture keeps http.auth at its default.
    let config = format!(
        "{}{}{TASKS}",
        camera_toml("gate", &gate.url("main"), 10),
        camera_toml("yard", &yard.url("main"), 10)
    );
    let d = Daemon::start(&config).ready();
    let http = Http::new(&d);
    let (worker_a, worker_b, viewer) = (
        token(&d, "worker"),
        token(&d, "worker"),
        token(&d, "viewer"),
    );

    // Auth: none, wrong, and a role without the right.
    assert_eq!(
        http.post("/api/v1/ai/leases", None, &json!({"worker_id": "a"}))
            .status,
        401
    );
    assert_eq!(
        http.post(
            "/api/v1/ai/leases",
            Some("hld_wrong"),
            &json!({"worker_id": "a"})
        )
        .status,
        401
    );
    assert_eq!(
        http.post(
            "/api/v1/ai/leases",
            Some(&viewer),
            &json!({"worker_id": "a"})
        )
        .status,
        403
    );
    let blank = http.post(
        "/api/v1/ai/leases",
        Some(&worker_a),
        &json!({"worker_id": "  "}),
    );
    assert_eq!(blank.status, 400, "{}", blank.text());

    // A lease, and the task objects workers rely on.
    let lease = http.post(
        "/api/v1/ai/leases",
        Some(&worker_a),
        &json!({"worker_id": "a", "ttl_secs": 120}),
    );
    assert_eq!(lease.status, 200, "{}", lease.text());
    let lease = lease.json();
    let tasks = lease["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 2, "{lease}");
    let gate_task = tasks
        .iter()
        .find(|t| t["camera_id"] == "gate")
        .unwrap()
        .clone();
    assert_eq!(gate_task["id"], "gate:motion:main");
    assert_eq!(
        gate_task["frame_url"],
        "/api/v1/cameras/gate/frame?profile=main&task=gate:motion:main"
    );
    for key in ["task_type", "stream_profile", "fps", "width", "config"] {
        assert!(!gate_task[key].is_null(), "{key} in {gate_task}");
    }
    let legacy = http.get("/api/v1/ai/tasks", Some(&worker_b));
    assert_eq!(legacy.status, 200);
    assert_eq!(
        legacy.json().as_array().unwrap().len(),
        2,
        "the legacy list is a bare array of every task"
    );

    // Frames: 404 before the first, then a JPEG with honest headers and, for the leaseholder, a ticket.
    let frame_url = gate_task["frame_url"].as_str().unwrap();
    let frame = wait_for(Duration::from_secs(20), || {
        let f = http.get(frame_url, Some(&worker_a));
        (f.status == 200).then_some(f)
    })
    .expect("a sampled frame");
    assert_eq!(frame.header("content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(frame.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(&frame.body[..2], &[0xFF, 0xD8]);
    let age: i64 = frame.header("x-frame-age-ms").unwrap().parse().unwrap();
    assert!(
        (0..2000).contains(&age),
        "a healthy sampler's frame is fresh: {age} ms"
    );
    let captured = frame.header("x-frame-captured-at").unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&captured).is_ok(),
        "{captured}"
    );
    let ticket = frame
        .header("x-frame-ticket")
        .expect("a ticket for the leaseholder");
    assert!(ticket.starts_with("f1.gate:motion:main."));
    assert!(
        http.get(frame_url, Some(&worker_b))
            .header("x-frame-ticket")
            .is_none(),
        "no ticket without a lease"
    );
    let later = wait_for(Duration::from_secs(5), || {
        let f = http.get(frame_url, Some(&worker_a));
        (f.header("x-frame-captured-at").as_deref() != Some(&captured)).then_some(f)
    });
    assert!(later.is_some(), "captured-at changes when the frame does");
    assert_eq!(
        http.get("/api/v1/cameras/ga..te/frame", Some(&worker_a))
            .status,
        400
    );
    assert_eq!(
        http.get("/api/v1/cameras/gate/frame?profile=side", Some(&worker_a))
            .status,
        400
    );

    // Ingest with the ticket: the server decides camera, task and frame id.
    let det = json!([{"label": "motion", "confidence": 0.9, "bbox": [0.1, 0.2, 0.3, 0.4], "track_id": "m1",
                      "attributes": {"source": "camera_native", "_prov": "forged", "colour": "red"}}]);
    let body = json!({"camera_id": "gate", "task_type": "motion", "frame_ticket": ticket, "detections": det});
    let stored = http.post("/api/v1/ai/events", Some(&worker_a), &body);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(
        stored.json(),
        json!({"detections_ingested": 1, "ticketed": true})
    );
    let again = http.post("/api/v1/ai/events", Some(&worker_a), &body);
    assert_eq!(
        again.json(),
        json!({"detections_ingested": 0, "duplicate": true, "ticketed": true})
    );
    // Its frame id without the ticket names the same frame (the two are kept in two indexes).
    let ms = ticket.split('.').nth(2).unwrap();
    let ticketless = |frame_id: String| json!({"camera_id": "gate", "task_type": "motion", "frame_id": frame_id, "detections": det});
    assert_eq!(
        http.post(
            "/api/v1/ai/events",
            Some(&worker_a),
            &ticketless(format!("gate:motion:main:{ms}"))
        )
        .json(),
        json!({"detections_ingested": 0, "duplicate": true, "ticketed": false})
    );
    let rows = http
        .get("/api/v1/cameras/gate/detections?limit=10", Some(&viewer))
        .json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "the repeats stored nothing: {rows:?}");
    assert_eq!(rows[0]["frame_id"], format!("gate:motion:main:{ms}"));
    assert_eq!(
        rows[0]["attributes"]["source"], "worker",
        "provenance is the server's"
    );
    assert_eq!(rows[0]["attributes"]["_prov"]["task"], "gate:motion:main");
    assert_eq!(rows[0]["attributes"]["colour"], "red");
    // Stored once, in the batch's row, not in every detection's.
    let db = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    let kept: String = db
        .query_row("SELECT attributes FROM detections", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, r#"{"colour":"red"}"#);
    let record: String = db
        .query_row(
            "SELECT payload FROM outbox WHERE kind = 'detection'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!record.contains("_prov"), "{record}");
    let published = http
        .get("/api/v1/events?kind=detection", Some(&viewer))
        .json();
    assert_eq!(published.as_array().unwrap().len(), 1, "{published}");
    assert_eq!(
        published[0]["payload"]["detections"][0]["attributes"],
        json!({"colour": "red", "source": "worker",
               "_prov": {"credential": rows[0]["attributes"]["_prov"]["credential"], "task": "gate:motion:main", "worker": "a"}}),
        "the record as read carries the provenance: {published}"
    );
    assert!(
        published[0]["payload"].get("credential").is_none(),
        "{published}"
    );
    assert_eq!(rows[0]["bbox"], json!([0.1, 0.2, 0.3, 0.4]));

    // Ticket problems: all 401 naming frame_ticket; disagreements 409.
    let with_ticket = |t: &str| json!({"camera_id": "gate", "task_type": "motion", "frame_ticket": t, "detections": []});
    let mut forged = ticket.clone();
    forged.pop();
    forged.push(if ticket.ends_with('A') { 'B' } else { 'A' });
    for (t, who) in [
        (forged.as_str(), &worker_a),
        ("f1.garbage", &worker_a),
        (ticket.as_str(), &worker_b),
    ] {
        let r = http.post("/api/v1/ai/events", Some(who), &with_ticket(t));
        assert_eq!(r.status, 401, "{t}: {}", r.text());
        assert!(r.text().contains("frame_ticket"), "{}", r.text());
    }
    let other_camera = json!({"camera_id": "yard", "task_type": "motion", "frame_ticket": ticket, "detections": []});
    assert_eq!(
        http.post("/api/v1/ai/events", Some(&worker_a), &other_camera)
            .status,
        409
    );
    let other_type = json!({"camera_id": "gate", "task_type": "people", "frame_ticket": ticket, "detections": []});
    assert_eq!(
        http.post("/api/v1/ai/events", Some(&worker_a), &other_type)
            .status,
        409
    );

    // Ticketless: the worker's own frame id, Python timestamps.
    let python = json!({"camera_id": "yard", "task_type": "motion", "frame_id": "yard:2026-11-28T08:15:31.120+00:00",
                        "timestamp": "2026-11-28T08:15:31.120000+00:00", "detections": [{"label": "motion"}]});
    let r = http.post("/api/v1/ai/events", Some(&worker_b), &python);
    assert_eq!(
        r.json(),
        json!({"detections_ingested": 1, "ticketed": false}),
        "{}",
        r.text()
    );

    // Bad input: a clear 4xx each, nothing stored.
    let before = batches(&d);
    let many: Vec<Value> = (0..1001).map(|_| json!({"label": "x"})).collect();
    let ok = |extra: Value| {
        let mut b = json!({"camera_id": "gate", "task_type": "motion", "detections": []});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "not valid JSON"),
        (
            ok(json!({"detections": [{"confidence": "high"}]}))
                .to_string()
                .into_bytes(),
            400,
            "detections[0].confidence",
        ),
        (
            ok(json!({"detections": [{"bbox": [0.1, 0.2, 0.3]}]}))
                .to_string()
                .into_bytes(),
            400,
            "detections[0].bbox",
        ),
        (
            ok(json!({"detections": [{"confidence": 7}]}))
                .to_string()
                .into_bytes(),
            400,
            "detections[0].confidence",
        ),
        (
            br#"{"camera_id": "gate", "task_type": "motion", "detections": [{"confidence": NaN}]}"#
                .to_vec(),
            400,
            "JSON",
        ),
        (
            ok(json!({"detections": many})).to_string().into_bytes(),
            400,
            "too many detections",
        ),
        (
            ok(json!({"task_type": " "})).to_string().into_bytes(),
            400,
            "task_type",
        ),
        (
            ok(json!({"timestamp": "yesterday"}))
                .to_string()
                .into_bytes(),
            400,
            "invalid timestamp",
        ),
        (
            ok(json!({"event": {"event_type": "zone_enter"}}))
                .to_string()
                .into_bytes(),
            400,
            "reserved",
        ),
        (
            ok(json!({"event": {"event_type": "Bad Type"}}))
                .to_string()
                .into_bytes(),
            400,
            "event_type",
        ),
        (
            ok(json!({"camera_id": "nowhere"})).to_string().into_bytes(),
            404,
            "not found",
        ),
        (vec![b' '; 9 << 20], 413, "MiB"),
    ];
    for (body, status, needle) in cases {
        let r = http.call("POST", "/api/v1/ai/events", Some(&worker_a), Some(&body));
        assert_eq!(r.status, status, "{needle}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(needle)),
            "{needle}: {}",
            r.text()
        );
    }
    assert_eq!(batches(&d), before, "nothing stored by bad input");
    assert_eq!(
        http.get("/api/v1/ai/embed-queries?worker_id=a", Some(&worker_a))
            .status,
        404
    );
    assert_eq!(
        http.post("/api/v1/ai/embeddings", Some(&worker_a), &json!({}))
            .status,
        404
    );
    assert_eq!(
        http.get("/healthz", None).status,
        200,
        "the daemon is healthy after all that"
    );

    // Sharing between two workers of one credential: b joins; after a renewal round each holds
    // one task; a goes silent and b takes everything once a's leases expire.
    let renew_a = http
        .post(
            "/api/v1/ai/leases",
            Some(&worker_a),
            &json!({"worker_id": "a", "ttl_secs": 15}),
        )
        .json();
    assert_eq!(renew_a["tasks"].as_array().unwrap().len(), 2, "{renew_a}");
    let lease_b = |http: &Http| {
        http.post(
            "/api/v1/ai/leases",
            Some(&worker_a),
            &json!({"worker_id": "b", "ttl_secs": 15}),
        )
        .json()
    };
    assert!(
        lease_b(&http)["tasks"].as_array().unwrap().is_empty(),
        "a still holds everything"
    );
    let a_again = http
        .post(
            "/api/v1/ai/leases",
            Some(&worker_a),
            &json!({"worker_id": "a", "ttl_secs": 15}),
        )
        .json();
    assert_eq!(
        a_again["tasks"].as_array().unwrap().len(),
        1,
        "a lets go of b's share: {a_again}"
    );
    assert_eq!(lease_b(&http)["tasks"].as_array().unwrap().len(), 1);
    std::thread::sleep(Duration::from_secs(16));
    assert_eq!(
        lease_b(&http)["tasks"].as_array().unwrap().len(),
        2,
        "a's leases expired"
    );
    let lease_id = lease["lease_id"].as_str().unwrap();
    for _ in 0..2 {
        let r = http.call(
            "DELETE",
            &format!("/api/v1/ai/leases/{lease_id}"),
            Some(&worker_a),
            None,
        );
        assert_eq!(r.status, 200, "release is idempotent: {}", r.text());
    }
}

#[test]
fn ball_to_sampler_to_motion_worker_to_detections() {
    let (gate, yard) = (camera(), camera());
    let config = format!(
        "{}{}[[tasks]]\ncamera = \"gate\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 5\nwidth = 320\n\
         [[tasks]]\ncamera = \"yard\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 0.5\nwidth = 320\n",
        camera_toml("gate", &gate.url("main"), 10),
        camera_toml("yard", &yard.url("main"), 10)
    );
    let d = Daemon::start(&config).ready();
    let http = Http::new(&d);
    let worker_token = token(&d, "worker");
    let viewer = token(&d, "viewer");
    let mut worker = motion_worker(&http, &worker_token);

    let rows = wait_for(Duration::from_secs(40), || {
        let rows = http
            .get("/api/v1/cameras/gate/detections?limit=500", Some(&viewer))
            .json();
        let rows = rows.as_array()?.clone();
        (rows.len() >= 25).then_some(rows)
    });
    let _ = worker.kill();
    let _ = worker.wait();
    let rows = rows.expect("detections from the motion worker");
    let centres: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let b = r["bbox"].as_array()?;
            Some((
                b[0].as_f64()? + b[2].as_f64()? / 2.0,
                b[1].as_f64()? + b[3].as_f64()? / 2.0,
            ))
        })
        .collect();
    let spread = |f: fn(&(f64, f64)) -> f64| {
        let v: Vec<f64> = centres.iter().map(f).collect();
        v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
    };
    assert!(
        spread(|c| c.0) > 0.2 || spread(|c| c.1) > 0.2,
        "the boxes follow the moving ball: {centres:?}"
    );
    for r in &rows {
        assert_eq!(r["label"], "motion");
        assert!(
            r["track_id"].as_str().is_some_and(|t| t.starts_with('m')),
            "{r}"
        );
        assert!(
            r["frame_id"]
                .as_str()
                .is_some_and(|f| f.starts_with("gate:motion:main:")),
            "ticketed frame ids: {r}"
        );
        assert_eq!(r["attributes"]["source"], "worker");
    }

    // 5 fps on a 1 s GOP needs full decoding; 0.5 fps needs keyframes only.
    let samplers = http.get("/api/v1/ai/samplers", Some(&viewer)).json();
    let by_camera = |id: &str| {
        samplers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["camera_id"] == id)
            .unwrap()
            .clone()
    };
    let (g, y) = (by_camera("gate"), by_camera("yard"));
    assert_eq!(
        (g["state"].as_str(), g["keyframe_only"].as_bool()),
        (Some("sampling"), Some(false)),
        "{g}"
    );
    assert_eq!(
        (y["keyframe_only"].as_bool(), y["fps"].as_f64()),
        (Some(true), Some(0.5)),
        "{y}"
    );
}

/// A box tuned for flash answers each post only after its commit linger (up to a second). The
/// reference worker keeps posts in flight, so a 5 fps task still has most frames stored; when it
/// waited for each answer, at most one frame a second was, and the rest were skipped.
#[test]
fn a_commit_linger_does_not_throttle_the_reference_worker() {
    let gate = camera();
    let config = format!(
        "[database]\ncommit_linger = \"1s\"\n{}[[tasks]]\ncamera = \"gate\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 5\nwidth = 320\n",
        camera_toml("gate", &gate.url("main"), 10)
    );
    let d = Daemon::start(&config).ready();
    let http = Http::new(&d);
    let mut worker = motion_worker(&http, &token(&d, "worker"));
    let stored = wait_for(Duration::from_secs(60), || {
        (batches(&d) >= 30).then_some(())
    });
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(stored.is_some(), "30 batches stored: {}", batches(&d));
    let c = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    let (first, thirtieth): (i64, i64) = c
        .query_row(
            "SELECT MIN(ts_ms), MAX(ts_ms) FROM (SELECT ts_ms FROM detection_batches ORDER BY ts_ms LIMIT 30)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // In capture time: 30 frames at 5 fps span 6 s; one frame per answer spans about 28 s.
    assert!(
        thirtieth - first < 15_000,
        "30 stored frames span {} ms of capture time",
        thirtieth - first
    );
}

#[test]
fn a_ticketless_batch_is_refused_where_detection_is_switched_off() {
    // No camera needs to stream: ingest is what is under test.
    let config = "[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/none\"\ndetect = false\n\
        [[cameras]]\nid = \"yard\"\nurl = \"rtsp://127.0.0.1:9/none\"\n\
        [[tasks]]\ncamera = \"yard\"\ntask_type = \"motion\"\nenabled = false\n\
        [[tasks]]\ncamera = \"yard\"\ntask_type = \"people\"\nprofile = \"main\"\nenabled = false\n\
        [[tasks]]\ncamera = \"yard\"\ntask_type = \"people\"\n";
    let d = Daemon::start(config).ready();
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let post = |camera: &str, task_type: &str| {
        let body =
            json!({"camera_id": camera, "task_type": task_type, "detections": [{"label": "x"}]});
        let r = http.post("/api/v1/ai/events", Some(&worker), &body);
        (
            r.status,
            r.json()["error"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        post("gate", "motion"),
        (
            403,
            "camera \"gate\" has detection switched off".to_string()
        )
    );
    assert_eq!(
        post("yard", "motion"),
        (
            403,
            "every \"motion\" task of camera \"yard\" is disabled".to_string()
        )
    );
    assert_eq!(
        batches(&d),
        0,
        "nothing stored for a switched-off camera or task"
    );
    assert_eq!(
        post("yard", "people").0,
        200,
        "one of its two people tasks is enabled"
    );
    assert_eq!(
        post("yard", "faces").0,
        200,
        "a type with no task is a legacy worker's own"
    );
    assert_eq!(post("nowhere", "motion").0, 404);
    assert_eq!(batches(&d), 2);
}
