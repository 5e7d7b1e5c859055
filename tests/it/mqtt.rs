//! The MQTT uplink against a real mosquitto started by each test on a free loopback port:
//! delivery across broker and daemon kills, retained state, the last will, config over MQTT, TLS
//! with a password, Home Assistant discovery.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::fixtures::{Daemon, wait_for};
use crate::perception::{Http, token};

/// A mosquitto process with its own config and persistence directory.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

/// How a test broker is set up.
#[derive(Clone, Default)]
pub struct BrokerSetup {
    pub persistence: bool,
    /// `(ca.crt, server.crt, server.key, passwd)` paths: TLS with passwords.
    pub tls: Option<(PathBuf, PathBuf, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    pub fn start(setup: BrokerSetup) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "user root\nlistener {port} 127.0.0.1\nlog_dest stderr\n\
             # Default limits drop messages for slow subscribers even after PUBACK.\n\
             max_queued_messages 0\nmax_inflight_messages 0\n"
        );
        if setup.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ));
        }
        match &setup.tls {
            None => conf.push_str("allow_anonymous true\n"),
            Some((ca, cert, key, passwd)) => conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}\n",
                ca.display(),
                cert.display(),
                key.display(),
                passwd.display()
            )),
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            dir,
            port,
            child: None,
        };
        b.spawn();
        b
    }

    /// Starts mosquitto (again) on the same port and files.
    pub fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (make deps)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .ok())
            .is_some(),
            "mosquitto did not start on port {port}"
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL).unwrap();
            c.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as a subscriber got it.
#[derive(Clone, Debug)]
pub struct Got {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// The broker's redelivery flag: repeats the box did not cause.
    pub dup: bool,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A QoS 1 subscriber in a thread of the test, reconnecting like any real one.
pub struct Sub {
    pub got: Arc<Mutex<Vec<Got>>>,
    client: Client,
    stop: Arc<AtomicBool>,
}

impl Sub {
    pub fn start(port: u16, id: &str, filters: &[&str], persistent: bool) -> Sub {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(32 << 20, 32 << 20);
        let (client, mut connection) = Client::new(o, 1000);
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicBool::new(false));
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        {
            let (got, stop, client, connected) =
                (got.clone(), stop.clone(), client.clone(), connected.clone());
            std::thread::spawn(move || {
                for event in connection.iter() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for f in &filters {
                                let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            connected.store(true, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => got.lock().unwrap().push(Got {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
                        }),
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            });
        }
        assert!(
            wait_for(Duration::from_secs(10), || connected
                .load(Ordering::SeqCst)
                .then_some(()))
            .is_some(),
            "the test subscriber did not connect"
        );
        Sub { got, client, stop }
    }

    pub fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The last message on `topic`, waiting up to `timeout` for one that satisfies `ok`.
    pub fn wait(&self, topic: &str, timeout: Duration, ok: impl Fn(&Got) -> bool) -> Option<Got> {
        wait_for(timeout, || {
            self.got
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|g| g.topic == topic && ok(g))
                .cloned()
        })
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .unwrap();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
    }
}

pub const CAMERA: &str =
    "[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n";

pub fn daemon_with_broker(mqtt: &str) -> Daemon {
    Daemon::start(&format!(
        "[recording]\nmin_free = \"0\"\n{CAMERA}\n[mqtt]\n{mqtt}\n"
    ))
    .ready()
}

/// Posts `n` one-detection batches from `threads` connections; returns the frame ids acknowledged.
pub fn post_batches(
    http: &Http,
    token: &str,
    prefix: &str,
    n: usize,
    threads: usize,
    pace: Option<Duration>,
) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let acked = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let frame_id = format!("{prefix}-{i}");
                    let body = json!({
                        "camera_id": "gate",
                        "task_type": "detect",
                        "frame_id": frame_id,
                        "detections": [{"label": "person", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2], "track_id": "1"}],
                    });
                    let a = http.post("/api/v1/ai/events", Some(token), &body);
                    if a.status / 100 == 2 {
                        acked.lock().unwrap().push(frame_id);
                    }
                    if let Some(p) = pace {
                        std::thread::sleep(p);
                    }
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

pub fn db(d: &Daemon) -> rusqlite::Connection {
    rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap()
}

/// Every outbox record: seq -> event id.
pub fn outbox(d: &Daemon) -> BTreeMap<i64, String> {
    let c = db(d);
    let mut stmt = c.prepare("SELECT seq, event_id FROM outbox").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub fn uplink_cursor(d: &Daemon) -> i64 {
    db(d)
        .query_row(
            "SELECT COALESCE((SELECT seq FROM consumer_cursors WHERE consumer = 'mqtt'), 0)",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Event messages received: seq -> (id, how often the box sent it).
pub fn events(sub: &Sub) -> BTreeMap<i64, (String, usize)> {
    let mut out: BTreeMap<i64, (String, usize)> = BTreeMap::new();
    for g in sub.all() {
        if !g.topic.contains("/events/") || g.dup {
            continue;
        }
        let v = g.json();
        let (seq, id) = (
            v["seq"].as_i64().unwrap(),
            v["id"].as_str().unwrap().to_string(),
        );
        let e = out.entry(seq).or_insert((id.clone(), 0));
        assert_eq!(e.0, id, "record {seq} keeps its id across redelivery");
        e.1 += 1;
    }
    out
}

/// Waits until the subscriber has every outbox record; returns the seqs still missing.
pub fn wait_all_delivered(d: &Daemon, sub: &Sub, timeout: Duration) -> Vec<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let want = outbox(d);
        let got = events(sub);
        let missing: Vec<i64> = want
            .keys()
            .filter(|s| !got.contains_key(s))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
    assert!(
        sub.wait("heldar/test/availability", Duration::from_secs(20), |g| g
            .text()
            == "online")
            .is_some()
    );

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
        ("config/camera/gate/set", br#"{"request_id": "b4", "url": "rtsp://u:p@cam/x"}"#.to_vec(), "invalid", Some("url")),
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
    let _d = daemon_with_broker(&format!("url = \"{}\"", broker.url()));
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
        assert!(v.get("state_topic").is_some() || v.get("command_topic").is_some());
        assert_eq!(v["device"]["identifiers"][0], "heldar_test");
        assert_eq!(v["availability_topic"], "heldar/test/availability");
        if g.topic.contains("/switch/") {
            assert!(v["command_topic"].as_str().unwrap().ends_with("/set"));
        }
        seen.insert(v["unique_id"].as_str().unwrap().to_string());
    }
    assert!(seen.len() >= need.len());
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
