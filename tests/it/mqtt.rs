//! The MQTT uplink against a real mosquitto started by each test on a free loopback port:
//! delivery across broker and daemon kills, retained state, the last will, config over MQTT, TLS
//! with a password, Home Assistant discovery.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::fixtures::*;

#[test]
fn ten_thousand_records_arrive_in_order_each_id_at_least_once() {
    let broker = Broker::start(BrokerSetup {
        persistence: true,
        ..Default::default()
    });
    let sub = Sub::start(broker.port, "counter", &["heldar/test/events/#"], true);
    let d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let acked = post_batches(&http, &worker, "f", 10_000, 8, None);
    assert_eq!(acked.len(), 10_000);
    let missing = wait_all_delivered(&d, &sub, Duration::from_secs(120));
    assert!(
        missing.is_empty(),
        "{} records never arrived, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let want = outbox(&d);
    assert!(want.len() >= 10_000);
    let got = events(&sub);
    for (seq, id) in &want {
        assert_eq!(&got[seq].0, id, "record {seq} arrives with its stable id");
    }
    let order: Vec<i64> = sub
        .all()
        .iter()
        .filter(|g| g.topic.contains("/events/"))
        .map(|g| g.json()["seq"].as_i64().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "in seq order without an outage"
    );
    let status = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("mqtt       connected"), "{text}");
    assert!(text.contains("last PUBACK"), "{text}");
}

/// Posts at a steady pace from a thread until stopped; returns the acknowledged frame ids.
fn keep_posting(
    http: Arc<Http>,
    worker: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += post_batches(
                &http,
                &worker,
                &format!("p{n}"),
                20,
                2,
                Some(Duration::from_millis(5)),
            )
            .len();
        }
        n
    })
}

fn broker_outage(outage: Duration) {
    let mut broker = Broker::start(BrokerSetup {
        persistence: true,
        ..Default::default()
    });
    let sub = Sub::start(broker.port, "counter", &["heldar/test/events/#"], true);
    let d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
    let http = Arc::new(Http::new(&d));
    let worker = token(&d, "worker");
    let stop = Arc::new(AtomicBool::new(false));
    let poster = keep_posting(http.clone(), worker.clone(), stop.clone());
    assert!(
        wait_for(Duration::from_secs(30), || (events(&sub).len() > 200)
            .then_some(()))
        .is_some(),
        "records flow before the outage"
    );
    let acked_before_kill = uplink_cursor(&d);
    broker.kill();
    std::thread::sleep(outage);
    broker.spawn();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    assert!(poster.join().unwrap() > 0);
    let missing = wait_all_delivered(&d, &sub, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "{} records lost across the outage, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let repeated: Vec<i64> = events(&sub)
        .into_iter()
        .filter(|(_, (_, n))| *n > 1)
        .map(|(seq, _)| seq)
        .collect();
    assert!(
        repeated.iter().all(|s| *s > acked_before_kill),
        "only records unacknowledged at the kill may repeat; cursor was {acked_before_kill}, repeats {repeated:?}"
    );
    assert!(d.log().contains("MQTT connection lost"), "{}", d.log());
}

#[test]
fn broker_sigkill_for_ten_seconds_loses_nothing() {
    broker_outage(Duration::from_secs(10));
}

#[test]
fn broker_sigkill_for_a_minute_loses_nothing() {
    broker_outage(Duration::from_secs(60));
}

#[test]
fn broker_down_at_start_and_daemon_sigkill_lose_nothing() {
    let mut broker = Broker::start(BrokerSetup {
        persistence: true,
        ..Default::default()
    });
    let sub = Sub::start(broker.port, "counter", &["heldar/test/events/#"], true);
    // mosquitto saves sessions every second (autosave_interval 1): killed sooner, it comes back
    // without the subscriber's session and drops what it receives before the resubscription.
    std::thread::sleep(Duration::from_millis(2500));
    broker.kill();
    let mut d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    assert_eq!(post_batches(&http, &worker, "a", 3000, 4, None).len(), 3000);
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("mqtt       disconnected") || status.contains("mqtt       connecting"),
        "{status}"
    );
    assert!(status.contains("last error"), "{status}");
    broker.spawn();
    assert!(
        wait_for(Duration::from_secs(40), || (events(&sub).len() > 100)
            .then_some(()))
        .is_some(),
        "draining starts once the broker is up"
    );
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    let delivered_at_kill = events(&sub).len();
    d.notifications.clear();
    d.spawn(&[]);
    assert!(d.wait_notify("READY=1", Duration::from_secs(20)));
    let missing = wait_all_delivered(&d, &sub, Duration::from_secs(90));
    assert!(
        delivered_at_kill < 3000,
        "the kill came mid-stream ({delivered_at_kill} delivered)"
    );
    assert!(
        missing.is_empty(),
        "{} records lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}

#[test]
fn last_will_online_and_retained_state_after_a_broker_that_forgot() {
    let mut broker = Broker::start(BrokerSetup::default());
    let watcher = Sub::start(broker.port, "watcher", &["heldar/test/availability"], false);
    let mut d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
    let availability = "heldar/test/availability";
    assert!(
        watcher
            .wait(availability, Duration::from_secs(20), |g| g.text()
                == "online")
            .is_some()
    );
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        watcher
            .wait(availability, Duration::from_secs(30), |g| g.text()
                == "offline")
            .is_some(),
        "the broker announces the last will"
    );
    d.notifications.clear();
    d.spawn(&[]);
    assert!(d.wait_notify("READY=1", Duration::from_secs(20)));
    let n = watcher.all().len();
    assert!(
        wait_for(Duration::from_secs(20), || (watcher.all()[n..]
            .iter()
            .any(|g| g.text() == "online"))
        .then_some(()))
        .is_some(),
        "online again after the restart"
    );
    drop(watcher);

    // A broker without persistence forgets every retained message when it restarts.
    broker.kill();
    broker.spawn();
    let fresh = Sub::start(
        broker.port,
        "fresh",
        &["heldar/test/#", "homeassistant/#"],
        false,
    );
    for topic in [
        "heldar/test/availability",
        "heldar/test/config/camera/gate",
        "heldar/test/cameras/gate/state",
        "heldar/test/cameras/gate/record/state",
        "heldar/test/config/settings/sampler",
        "homeassistant/switch/heldar_test/gate_record/config",
    ] {
        assert!(
            fresh
                .wait(topic, Duration::from_secs(40), |g| g.retain
                    || !g.payload.is_empty())
                .is_some(),
            "{topic} re-published after the broker restart"
        );
    }
}

/// The rows a config change may touch, to compare before and after refused changes.
fn config_rows(d: &Daemon) -> Vec<String> {
    let c = db(d);
    let mut rows = Vec::new();
    for q in [
        "SELECT id || settings || COALESCE(password, '') || COALESCE(record_override, -1) FROM cameras ORDER BY id",
        "SELECT id || settings FROM zones ORDER BY id",
        "SELECT id || fps || width || config || enabled FROM tasks ORDER BY id",
        "SELECT section || value FROM settings ORDER BY section",
    ] {
        let mut stmt = c.prepare(q).unwrap();
        rows.extend(
            stmt.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    rows
}

#[test]
fn config_over_mqtt_applies_good_changes_and_refuses_bad_ones_untouched() {
    let broker = Broker::start(BrokerSetup::default());
    let sub = Sub::start(
        broker.port,
        "fleet",
        &["heldar/test/#", "homeassistant/#"],
        false,
    );
    let d = Daemon::start(&format!("[mqtt]\nurl = \"{}\"\n", broker.url())).ready();
    let results = "heldar/test/config/result";
    let ask = |topic: &str, payload: &[u8], request_id: &str| -> Value {
        sub.publish(&format!("heldar/test/{topic}"), payload.to_vec());
        sub.wait(results, Duration::from_secs(20), |g| {
            g.json()["request_id"] == request_id
        })
        .unwrap_or_else(|| panic!("no answer to {topic} ({request_id})"))
        .json()
    };
    sub.wait_online();

    // Good changes, each applied, answered and re-published.
    let a = ask(
        "config/camera/gate/set",
        br#"{"request_id": "c1", "url": "rtsp://127.0.0.1:9/none", "record": false, "username": "admin", "password": "hunter2"}"#,
        "c1",
    );
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["applied"]["password"], "***");
    let zone = json!({"request_id": "z1", "camera": "gate", "kind": "region", "points": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], "labels": ["person"]});
    assert_eq!(
        ask("config/zone/door/set", zone.to_string().as_bytes(), "z1")["ok"],
        true
    );
    assert_eq!(
        ask(
            "config/task/gate:motion:sub/set",
            br#"{"request_id": "t1", "fps": 2}"#,
            "t1"
        )["ok"],
        true
    );
    let a = ask(
        "config/task/gate:motion:sub/set",
        br#"{"request_id": "t2", "fps": 4, "width": 640}"#,
        "t2",
    );
    assert_eq!(
        (a["ok"].clone(), a["applied"]["fps"].clone()),
        (json!(true), json!(4.0)),
        "{a}"
    );
    assert_eq!(
        ask(
            "config/settings/sampler/set",
            br#"{"request_id": "s1", "max_total_fps": 12}"#,
            "s1"
        )["ok"],
        true
    );
    sub.publish("heldar/test/cameras/gate/record/set", "ON");
    assert!(
        sub.wait(
            "heldar/test/cameras/gate/record/state",
            Duration::from_secs(20),
            |g| g.text() == "ON"
        )
        .is_some()
    );
    let fps: f64 = db(&d)
        .query_row(
            "SELECT fps FROM tasks WHERE id = 'gate:motion:sub'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fps, 4.0);
    let published = sub
        .wait(
            "heldar/test/config/camera/gate",
            Duration::from_secs(20),
            |g| g.json()["record"] == true,
        )
        .expect("the camera's config is re-published after the toggle");
    assert_eq!(published.json()["password"], "***");
    assert!(
        sub.wait(
            "heldar/test/config/zone/door",
            Duration::from_secs(20),
            |_| true
        )
        .is_some()
    );
    assert!(
        sub.wait(
            "homeassistant/sensor/heldar_test/zone_door_occupancy/config",
            Duration::from_secs(20),
            |_| true
        )
        .is_some()
    );

    // Bad input of every kind: refused with the right error, nothing changed.
    let before = config_rows(&d);
    let big = format!(
        "{{\"request_id\": \"big\", \"url\": \"rtsp://h/{}\"}}",
        "x".repeat(1 << 20)
    );
    let cases: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        ("config/camera/gate2/set", b"not json".to_vec(), "bad_payload", None),
        ("config/camera/gate2/set", br#"{"request_id": "b2", "url": 5}"#.to_vec(), "bad_payload", Some("url")),
        ("config/camera/gate2/set", br#"{"request_id": "b3", "url": "http://cam/x"}"#.to_vec(), "invalid", Some("url")),
        ("config/camera/gate/set", br#"{"request_id": "b4", "url": "rtsp://u:p@cam/x", "username": "v"}"#.to_vec(), "invalid", Some("url")),
        ("config/camera/bad id/set", br#"{"request_id": "b5", "url": "rtsp://cam/x"}"#.to_vec(), "invalid", Some("id")),
        ("config/widget/x/set", br#"{"request_id": "b6"}"#.to_vec(), "unknown_kind", None),
        ("config/zone/door2/set", br#"{"request_id": "b7", "camera": "nope", "kind": "region", "points": [[0,0],[1,0],[1,1]]}"#.to_vec(), "invalid", Some("camera")),
        ("config/zone/door/set", br#"{"request_id": "b8", "camera": "gate", "kind": "region", "points": [[0,0],[1,1]]}"#.to_vec(), "invalid", Some("points")),
        ("config/zone/door/set", br#"{"request_id": "b9", "camera": "gate", "kind": "region", "points": [[0,0],[2,0],[1,1]]}"#.to_vec(), "invalid", Some("points[1][0]")),
        ("config/task/gate:motion:sub/set", br#"{"request_id": "b10", "fps": 100}"#.to_vec(), "invalid", Some("fps")),
        ("config/task/gate:motion:sub/set", br#"{"request_id": "b11", "fps": "fast"}"#.to_vec(), "bad_payload", Some("fps")),
        ("config/task/nope:motion:sub/set", br#"{"request_id": "b12"}"#.to_vec(), "invalid", Some("camera")),
        ("config/settings/sampler/set", br#"{"request_id": "b13", "max_total_fps": 0}"#.to_vec(), "invalid", Some("max_total_fps")),
        ("config/settings/network/set", br#"{"request_id": "b14"}"#.to_vec(), "bad_payload", None),
        ("config/camera/ghost/delete", br#"{"request_id": "b15"}"#.to_vec(), "not_found", None),
        ("config/camera/gate2/set", big.into_bytes(), "too_large", None),
        ("config/camera/gate2/set", vec![0xff, 0x00, 0xfe, 0x7b, 0x22], "bad_payload", None),
        ("config/zone/door/set", b"[1, 2, 3]".to_vec(), "bad_payload", None),
        ("cameras/gate/record/set", b"MAYBE".to_vec(), "bad_payload", Some("record")),
        ("cameras/ghost/record/set", b"ON".to_vec(), "not_found", None),
        ("config/zone/door/set", br#"{"request_id": "b21", "camera": "gate", "kind": "region", "points": [[0,0],[1,0],[1,1]], "surprise": 1}"#.to_vec(), "bad_payload", Some("surprise")),
    ];
    assert!(cases.len() >= 15);
    let bad_cases = cases.len();
    for (i, (topic, payload, code, field)) in cases.into_iter().enumerate() {
        let n = sub.all().len();
        sub.publish(&format!("heldar/test/{topic}"), payload);
        let answer = wait_for(Duration::from_secs(20), || {
            sub.all()[n..].iter().find(|g| g.topic == results).cloned()
        })
        .unwrap_or_else(|| panic!("case {i} ({topic}) got no answer"))
        .json();
        assert_eq!(answer["ok"], false, "case {i} ({topic}): {answer}");
        assert_eq!(
            answer["error"]["code"], code,
            "case {i} ({topic}): {answer}"
        );
        assert_eq!(
            answer["error"]["field"].as_str(),
            field,
            "case {i} ({topic}): {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        config_rows(&d),
        before,
        "refused changes left everything as it was"
    );
    let status = d.cli(&["status"]);
    assert!(status.status.success(), "the daemon keeps running");
    // What the box published (the test's own `.../set` messages come back to it too).
    for g in sub.all().iter().filter(|g| !g.topic.ends_with("/set")) {
        assert!(
            !g.text().contains("hunter2"),
            "a password was published on {}",
            g.topic
        );
    }
    assert!(!d.log().contains("hunter2"));

    // Deleting the zone removes its Home Assistant entity (an empty retained config).
    assert_eq!(
        ask("config/zone/door/delete", br#"{"request_id": "d1"}"#, "d1")["ok"],
        true
    );
    assert!(
        sub.wait(
            "homeassistant/sensor/heldar_test/zone_door_occupancy/config",
            Duration::from_secs(20),
            |g| g.payload.is_empty()
        )
        .is_some()
    );
    assert!(
        sub.wait(
            "heldar/test/config/zone/door",
            Duration::from_secs(20),
            |g| g.payload.is_empty()
        )
        .is_some()
    );

    // Every change asked over MQTT is in the audit trail, refused ones with their reason.
    let out = d.cli(&["--json", "audit", "--limit", "1000"]);
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mqtt: Vec<&serde_json::Value> = audit.iter().filter(|r| r["actor"] == "mqtt").collect();
    let refused = mqtt.iter().filter(|r| r["status"] == 400).count();
    assert!(
        refused >= bad_cases,
        "{refused} refusals audited of {bad_cases}"
    );
    assert!(
        mqtt.iter()
            .all(|r| r["status"] == 200 || r["detail"].is_string()),
        "{mqtt:?}"
    );
    assert!(
        mqtt.iter()
            .any(|r| r["action"] == "mqtt config/zone/door/delete"
                && r["source"] == "heldar/test/config/zone/door/delete"
                && r["status"] == 200)
    );
    assert!(!out.stdout.windows(7).any(|w| w == b"hunter2"));
}

#[test]
fn home_assistant_discovery_has_the_required_keys() {
    let broker = Broker::start(BrokerSetup::default());
    let sub = Sub::start(broker.port, "ha", &["homeassistant/#"], false);
    let mut d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
    let need = [
        "homeassistant/binary_sensor/heldar_test/gate_online/config",
        "homeassistant/switch/heldar_test/gate_record/config",
        "homeassistant/switch/heldar_test/gate_detect/config",
        "homeassistant/sensor/heldar_test/outbox_backlog/config",
        "homeassistant/sensor/heldar_test/disk_used/config",
    ];
    for t in need {
        assert!(
            sub.wait(t, Duration::from_secs(20), |_| true).is_some(),
            "{t}"
        );
    }
    let n = sub.all().len();
    sub.publish("homeassistant/status", "online");
    assert!(
        wait_for(Duration::from_secs(20), || (sub.all()[n..]
            .iter()
            .filter(|g| need.contains(&g.topic.as_str()))
            .count()
            == need.len())
        .then_some(()))
        .is_some(),
        "discovery is re-published when Home Assistant comes online"
    );
    let mut seen = HashSet::new();
    for g in sub.all().iter().filter(|g| g.topic.ends_with("/config")) {
        let v = g.json();
        assert!(v.is_object(), "{} is JSON", g.topic);
        for key in ["name", "unique_id", "availability_topic", "device"] {
            assert!(v.get(key).is_some(), "{} lacks {key}", g.topic);
        }
        assert!(
            ["state_topic", "command_topic", "topic"]
                .iter()
                .any(|k| v.get(k).is_some()),
            "{} has nothing to read or write",
            g.topic
        );
        let device = v["device"]["identifiers"][0].as_str().unwrap();
        if device != "heldar_test" {
            // A camera's own device, linked to the box.
            assert_eq!(v["device"]["via_device"], "heldar_test", "{}", g.topic);
            assert!(device.starts_with("heldar_test_"), "{}", g.topic);
        }
        assert_eq!(v["availability_topic"], "heldar/test/availability");
        if g.topic.contains("/switch/") {
            assert!(v["command_topic"].as_str().unwrap().ends_with("/set"));
        }
        seen.insert(v["unique_id"].as_str().unwrap().to_string());
    }
    assert!(seen.len() >= need.len());

    // A clean stop leaves the camera's retained state saying so, not `recording`.
    let state = "heldar/test/cameras/gate/state";
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).is_some(), "stops");
    let fresh = Sub::start(broker.port, "after", &[state], false);
    let last = fresh
        .wait(state, Duration::from_secs(20), |g| g.retain)
        .expect("the camera's state stays retained");
    assert_eq!(last.json()["status"], "stopped", "{}", last.text());
    assert_eq!(last.json()["fps"], Value::Null, "{}", last.text());
}

/// A test CA, a server certificate for localhost/127.0.0.1, and a mosquitto password file.
fn tls_material(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .output()
            .expect("openssl/mosquitto_passwd");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=heldar-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    run(&[
        "mosquitto_passwd",
        "-c",
        "-b",
        "passwd",
        "edge",
        "s3cret-pw",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
        dir.join("passwd"),
    )
}

#[test]
fn tls_with_a_password_file_and_a_wrong_password_reported_plainly() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key, passwd) = tls_material(pki.path());
    let broker = Broker::start(BrokerSetup {
        persistence: false,
        tls: Some((ca.clone(), cert, key, passwd)),
    });
    let good = pki.path().join("good.pw");
    let bad = pki.path().join("bad.pw");
    std::fs::write(&good, "s3cret-pw\n").unwrap();
    std::fs::write(&bad, "not-the-password\n").unwrap();
    let mqtt = |pw: &Path| {
        format!(
            "url = \"mqtts://localhost:{}\"\nusername = \"edge\"\npassword_file = \"{}\"\nca_file = \"{}\"",
            broker.port,
            pw.display(),
            ca.display()
        )
    };
    let d = daemon_with_broker(&mqtt(&good));
    let connected = wait_for(Duration::from_secs(20), || {
        let s = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
        s.contains("mqtt       connected").then_some(s)
    });
    assert!(connected.unwrap().contains("(TLS)"));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    assert_eq!(post_batches(&http, &worker, "tls", 20, 1, None).len(), 20);
    assert!(
        wait_for(Duration::from_secs(20), || (uplink_cursor(&d) >= 20)
            .then_some(()))
        .is_some(),
        "records are acknowledged over TLS"
    );

    let wrong = daemon_with_broker(&mqtt(&bad));
    let refused = wait_for(Duration::from_secs(20), || {
        let s = String::from_utf8_lossy(&wrong.cli(&["status"]).stdout).into_owned();
        s.contains("NotAuthorized").then_some(s)
    })
    .expect("the refusal is shown in status");
    assert!(
        refused.contains("check mqtt.username and mqtt.password_file"),
        "{refused}"
    );
    assert!(!refused.contains("not-the-password") && !wrong.log().contains("not-the-password"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        wrong.cli(&["status"]).status.success(),
        "the daemon keeps running and retrying"
    );
    let connects: Value = serde_json::from_slice(&wrong.cli(&["--json", "status"]).stdout).unwrap();
    assert_eq!(connects["mqtt"]["connects"], 0);
}
