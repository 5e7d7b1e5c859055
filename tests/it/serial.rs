//! Serial devices over real pseudo-terminals (`socat pty,raw,echo=0 pty,raw,echo=0`): the
//! daemon on one end; on the other an independent Modbus RTU slave (Debian's pymodbus), a
//! Pelco-D listener, or the test itself playing a broken slave.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::fixtures::{Daemon, PtyPair, Slave, io_toml, stderr, stdout, wait_for};
use crate::fixtures::{Http, token};

fn io_status(d: &Daemon) -> Value {
    let out = d.cli(&["--json", "io", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn alarm_records(d: &Daemon) -> Vec<Value> {
    let out = d.cli(&["--json", "events", "tail", "--kind", "alarm", "-n", "100"]);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn alarm_inputs_become_debounced_records_and_relays_are_read_back_from_the_slave() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    let d = Daemon::start(&io_toml(&pty.a, "")).ready();
    wait_for(Duration::from_secs(20), || {
        let s = io_status(&d);
        (s["io"]["inputs"][0]["active"] == false).then_some(())
    })
    .expect("the board is polled");

    // A held change is one record, with the input's name.
    slave.set_input(1, true);
    let records = wait_for(Duration::from_secs(10), || {
        let r = alarm_records(&d);
        (!r.is_empty()).then_some(r)
    })
    .expect("an alarm record");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["type"], "alarm_in");
    assert_eq!(r["payload"]["input"], 1);
    assert_eq!(r["payload"]["state"], "on");
    assert_eq!(r["payload"]["name"], "front door");

    // A blip shorter than the debounce is not a change.
    slave.set_input(2, true);
    std::thread::sleep(Duration::from_millis(100));
    slave.set_input(2, false);
    std::thread::sleep(Duration::from_millis(800));
    slave.set_input(1, false);
    let records = wait_for(Duration::from_secs(10), || {
        let r = alarm_records(&d);
        (r.len() >= 2).then_some(r)
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let records_after = alarm_records(&d);
    assert_eq!(
        records_after.len(),
        2,
        "only input 1 on and off: {records_after:?}"
    );
    assert_eq!(records[1]["payload"]["input"], 1);
    assert_eq!(records[1]["payload"]["state"], "off");

    // Relays, set by the CLI, read back from the slave.
    let out = d.cli(&["io", "relay", "2", "on"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(slave.coils(), [false, true, false, false]);
    assert!(d.cli(&["io", "relay", "2", "off"]).status.success());
    assert_eq!(slave.coils(), [false, false, false, false]);
    let started = Instant::now();
    assert!(d.cli(&["io", "relay", "3", "pulse", "1s"]).status.success());
    assert_eq!(slave.coils(), [false, false, true, false]);
    wait_for(Duration::from_secs(10), || {
        (!slave.coils()[2]).then_some(())
    })
    .expect("the pulse ends");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Bad relay requests name the problem; nothing changes.
    let out = d.cli(&["io", "relay", "9", "on"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("relay 9: the board has relays 1..4"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["io", "relay", "1", "pulse"]);
    assert!(stderr(&out).contains("duration"), "{}", stderr(&out));
    assert_eq!(slave.coils(), [false, false, false, false]);

    let s = io_status(&d);
    assert_eq!(s["ports"][0]["state"], "open");
    assert!(s["ports"][0]["requests_ok"].as_u64().unwrap() > 10);
    assert_eq!(s["io"]["relays"][2]["on"], false);
    let human = stdout(&d.cli(&["io", "status"]));
    assert!(human.contains("input      1 (front door) off"), "{human}");
}

#[test]
fn a_pulse_ends_on_time_even_when_the_daemon_dies_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    let mut d = Daemon::start(&io_toml(&pty.a, "")).ready();
    assert!(d.cli(&["io", "relay", "1", "pulse", "4s"]).status.success());
    assert!(slave.coils()[0]);
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    d.notifications.clear();
    d.spawn(&[]);
    assert!(d.wait_notify("READY=1", Duration::from_secs(30)));
    assert!(slave.coils()[0], "still on: the pulse has not ended");
    wait_for(Duration::from_secs(15), || {
        (!slave.coils()[0]).then_some(())
    })
    .expect("the restarted daemon ends the pulse");
}

#[test]
fn pelco_d_frames_reach_the_bus_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let d = Daemon::start(&format!(
        "[[cameras]]\nid = \"dome\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n\
         ptz = {{ port = \"ptz\", address = 5 }}\n\
         [[cameras]]\nid = \"fixed\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n\
         [[serial]]\nname = \"ptz\"\ndevice = \"{}\"\nprotocol = \"pelco-d\"\nbaud = 2400\n",
        pty.a.display()
    ))
    .ready();
    let mut peer = std::fs::File::open(&pty.b).unwrap();
    // The protocol table, written out: FF addr cmd1 cmd2 data1 data2 sum(addr..data2).
    let cases: &[(&[&str], [u8; 7])] = &[
        (&["goto", "3"], [0xFF, 0x05, 0x00, 0x07, 0x00, 0x03, 0x0F]),
        (&["set", "12"], [0xFF, 0x05, 0x00, 0x03, 0x00, 0x0C, 0x14]),
        (&["clear", "12"], [0xFF, 0x05, 0x00, 0x05, 0x00, 0x0C, 0x16]),
        (&["stop"], [0xFF, 0x05, 0x00, 0x00, 0x00, 0x00, 0x05]),
        (
            &["move", "1", "0"],
            [0xFF, 0x05, 0x00, 0x02, 0x3F, 0x00, 0x46],
        ),
        (
            &["move", "-1", "1"],
            [0xFF, 0x05, 0x00, 0x0C, 0x3F, 0x3F, 0x8F],
        ),
        (
            &["move", "0", "-0.5", "1"],
            [0xFF, 0x05, 0x00, 0x30, 0x00, 0x20, 0x55],
        ),
        (
            &["move", "0", "0", "-1"],
            [0xFF, 0x05, 0x00, 0x40, 0x00, 0x00, 0x45],
        ),
    ];
    for (args, expected) in cases {
        let mut cli = vec!["ptz", "dome"];
        cli.extend_from_slice(args);
        let out = d.cli(&cli);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let mut frame = [0u8; 7];
        peer.read_exact(&mut frame).unwrap();
        assert_eq!(&frame, expected, "{args:?}");
        // The peer decodes it: sync byte, address, checksum.
        assert_eq!(frame[0], 0xFF);
        assert_eq!(frame[1], 5);
        let sum = frame[1..6].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        assert_eq!(frame[6], sum);
    }
    // Refusals name the problem and send nothing.
    let out = d.cli(&["ptz", "fixed", "goto", "1"]);
    assert!(stderr(&out).contains("has no ptz"), "{}", stderr(&out));
    let out = d.cli(&["ptz", "dome", "goto", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("preset"), "{}", stderr(&out));
    let out = d.cli(&["ptz", "dome", "move", "2", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&["ptz", "nosuch", "stop"]);
    assert!(stderr(&out).contains("no camera"), "{}", stderr(&out));
    let status = io_status(&d);
    assert_eq!(status["ports"][0]["requests_ok"], cases.len());
}

/// The test plays a broken slave on `b`: it reads each request and answers with `reply`.
fn broken_slave(
    port: &Path,
    reply: fn(&[u8]) -> Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let port = port.to_path_buf();
    std::thread::spawn(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&port)
            .unwrap();
        let mut buf = [0u8; 256];
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let answer = reply(&buf[..n]);
                    let _ = f.write_all(&answer);
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

fn port_status(d: &Daemon) -> Value {
    io_status(d)["ports"][0].clone()
}

#[test]
fn garbage_silence_and_a_vanishing_port_are_counted_reported_and_recovered() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPair::start(dir.path());
    let d = Daemon::start(&io_toml(&pty.a, "")).ready();

    // Silence: timeouts.
    wait_for(Duration::from_secs(10), || {
        (port_status(&d)["timeouts"].as_u64().unwrap() >= 3).then_some(())
    })
    .expect("timeouts counted");
    assert!(
        port_status(&d)["last_error"]
            .as_str()
            .unwrap()
            .contains("did not answer")
    );

    // Garbage, and a truncated frame with a wrong CRC: bad frames, never a crash.
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = broken_slave(
        &pty.b,
        |_| b"\x13\x37garbage\xff\x00".to_vec(),
        stop.clone(),
    );
    wait_for(Duration::from_secs(10), || {
        (port_status(&d)["bad_frames"].as_u64().unwrap() >= 3).then_some(())
    })
    .expect("garbage counted as bad frames");
    stop.store(true, Ordering::SeqCst);
    garbage.join().unwrap();
    let before = port_status(&d)["bad_frames"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // A read-inputs answer (unit 1, fn 2, 1 byte) with its CRC bytes swapped.
    let bad_crc = broken_slave(
        &pty.b,
        |_| vec![0x01, 0x02, 0x01, 0x00, 0x88, 0xA1],
        stop.clone(),
    );
    wait_for(Duration::from_secs(10), || {
        (port_status(&d)["bad_frames"].as_u64().unwrap() >= before + 3).then_some(())
    })
    .expect("wrong CRCs counted as bad frames");
    stop.store(true, Ordering::SeqCst);
    bad_crc.join().unwrap();

    // The pty vanishes (adapter unplugged): reported unavailable, retried calmly.
    pty.stop();
    wait_for(Duration::from_secs(20), || {
        (port_status(&d)["state"] == "unavailable").then_some(())
    })
    .expect("a vanished port is reported");
    let opens_before = port_status(&d)["opens"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let st = port_status(&d);
    assert_eq!(
        st["opens"].as_u64().unwrap(),
        opens_before,
        "no reopen while absent"
    );
    let port_errors = st["port_errors"].as_u64().unwrap();
    assert!(
        port_errors <= 8,
        "backoff, not a busy loop: {port_errors} errors in seconds"
    );
    assert!(
        st["last_error"].as_str().unwrap().contains("cannot open"),
        "{st}"
    );
    // `heldar status` reports it too, with the reason.
    let status = stdout(&d.cli(&["status"]));
    let line = status
        .lines()
        .find(|l| l.starts_with("serial"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("io ") && line.contains("unavailable") && line.contains("cannot open"),
        "{line}"
    );

    // It comes back (same name, new pty): reopened, and a real slave is read again.
    let pty = PtyPair::start(dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    slave.set_input(3, true);
    wait_for(Duration::from_secs(60), || {
        let s = io_status(&d);
        (s["ports"][0]["state"] == "open" && s["io"]["inputs"][2]["active"] == true).then_some(())
    })
    .expect("the board is back");
    assert!(
        d.cli(&["status"]).status.success(),
        "the daemon kept running"
    );
}

/// Zone `door` over the whole frame; a relay pulse for every enter.
const RULE_CONFIG: &str = "[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n\
    [[zones]]\ncamera = \"gate\"\nname = \"door\"\nkind = \"region\"\nconfirm = \"0s\"\n\
    points = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n\
    [[rules]]\non = \"zone:door:enter\"\ndo = \"relay:1:pulse:300ms\"\n";

fn db(d: &Daemon) -> rusqlite::Connection {
    rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap()
}

fn count(d: &Daemon, sql: &str) -> i64 {
    db(d).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_zone_enter_rule_pulses_the_relay_exactly_once_per_event_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    let mut d = Daemon::start(&io_toml(&pty.a, RULE_CONFIG)).ready();
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let base = chrono::Utc::now().timestamp_millis();
    let post = |http: &Http, track: usize| {
        let ts = chrono::DateTime::from_timestamp_millis(base + track as i64 * 1000)
            .unwrap()
            .to_rfc3339();
        let body = json!({"camera_id": "gate", "task_type": "people", "frame_id": format!("f{track}"),
                          "timestamp": ts,
                          "detections": [{"label": "person", "confidence": 0.9,
                                          "bbox": [0.4, 0.4, 0.1, 0.1], "track_id": format!("t{track}")}]});
        let a = http.post("/api/v1/ai/events", Some(&worker), &body);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    };
    let mut saw_on = false;
    for track in 0..4 {
        post(&http, track);
        saw_on |= slave.coils()[0];
    }
    // Kill while rules are being decided and pulses given.
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    d.notifications.clear();
    d.spawn(&[]);
    assert!(d.wait_notify("READY=1", Duration::from_secs(30)));
    let http = Http::new(&d);
    for track in 4..8 {
        post(&http, track);
        saw_on |= slave.coils()[0];
    }
    let enters = wait_for(Duration::from_secs(30), || {
        let enters = count(&d, "SELECT COUNT(*) FROM zone_events WHERE type = 'enter'");
        let done = count(
            &d,
            "SELECT COUNT(*) FROM rule_actions WHERE done_at_ms IS NOT NULL",
        );
        (enters == 8 && done == 8).then_some(enters)
    })
    .expect("every enter decided and carried out");
    assert_eq!(enters, 8);
    // Exactly one action per enter record, each done once and successfully.
    assert_eq!(
        count(&d, "SELECT COUNT(*) FROM rule_actions"),
        count(
            &d,
            "SELECT COUNT(DISTINCT outbox_seq) FROM zone_events WHERE type = 'enter'"
        )
    );
    assert_eq!(
        count(&d, "SELECT COUNT(*) FROM rule_actions WHERE result = 'ok'"),
        8
    );
    assert_eq!(
        count(
            &d,
            "SELECT COUNT(*) FROM rule_actions a JOIN zone_events z ON z.outbox_seq = a.record_seq AND z.type = 'enter'"
        ),
        8
    );
    // And the relay did pulse, and ended off.
    wait_for(Duration::from_secs(5), || {
        saw_on |= slave.coils()[0];
        None::<()>
    });
    assert!(saw_on, "the relay was seen on");
    wait_for(Duration::from_secs(10), || {
        (!slave.coils()[0]).then_some(())
    })
    .expect("the last pulse ended");
    assert_eq!(count(&d, "SELECT COUNT(*) FROM relay_pulses"), 0);
}

#[test]
fn relay_and_ptz_commands_over_mqtt_reach_the_devices_and_are_answered() {
    use crate::fixtures::{Broker, BrokerSetup, Sub};
    let broker = Broker::start(BrokerSetup::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("io")).unwrap();
    std::fs::create_dir(dir.path().join("ptz")).unwrap();
    let io = PtyPair::start(&dir.path().join("io"));
    let bus = PtyPair::start(&dir.path().join("ptz"));
    let mut slave = Slave::start(&io.b, 4, 4);
    let d = Daemon::start(&io_toml(
        &io.a,
        &format!(
            "[[serial]]\nname = \"ptz\"\ndevice = \"{}\"\nprotocol = \"pelco-d\"\n\
             [[cameras]]\nid = \"dome\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n\
             ptz = {{ port = \"ptz\", address = 5 }}\n[mqtt]\nurl = \"{}\"\n",
            bus.a.display(),
            broker.url()
        ),
    ))
    .ready();
    let mut peer = std::fs::File::open(&bus.b).unwrap();
    let sub = Sub::start(broker.port, "tester", &["heldar/test/config/result"], false);
    // Commands are QoS 0 and the box subscribes after it connects: ask until answered.
    let ask = |topic: &str, payload: &[u8], kind: &str| -> Value {
        for _ in 0..20 {
            let n = sub.all().len();
            sub.publish(&format!("heldar/test/{topic}"), payload.to_vec());
            let answer = wait_for(Duration::from_secs(2), || {
                sub.all()[n..]
                    .iter()
                    .find(|g| g.json()["kind"] == kind)
                    .map(|g| g.json())
            });
            if let Some(a) = answer {
                return a;
            }
        }
        panic!("no answer to {topic}");
    };

    let a = ask("cmd/relay/2/set", b"PULSE 800", "relay");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["id"], "2");
    assert!(slave.coils()[1]);
    wait_for(Duration::from_secs(10), || {
        (!slave.coils()[1]).then_some(())
    })
    .expect("the pulse ends");
    for (payload, code) in [
        (&b"bogus"[..], "bad_payload"),
        (&b"PULSE"[..], "bad_payload"),
        (&b"PULSE 0"[..], "bad_payload"),
    ] {
        let a = ask("cmd/relay/2/set", payload, "relay");
        assert_eq!(a["ok"], false, "{a}");
        assert_eq!(a["error"]["code"], code, "{a}");
    }
    let a = ask("cmd/relay/9/set", b"ON", "relay");
    assert_eq!(a["ok"], false);
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("relays 1..4"),
        "{a}"
    );
    assert_eq!(
        slave.coils(),
        [false, false, false, false],
        "refusals changed nothing"
    );

    let a = ask(
        "cmd/ptz/dome",
        br#"{"action": "goto_preset", "preset": 4, "request_id": "p1"}"#,
        "ptz",
    );
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["request_id"], "p1");
    let mut frame = [0u8; 7];
    peer.read_exact(&mut frame).unwrap();
    assert_eq!(frame, [0xFF, 0x05, 0x00, 0x07, 0x00, 0x04, 0x10]);
    for payload in [
        &br#"{"action": "fly"}"#[..],
        b"\xff\xfe",
        br#"{"action": "goto", "preset": 0}"#,
    ] {
        let a = ask("cmd/ptz/dome", payload, "ptz");
        assert_eq!(a["ok"], false, "{a}");
    }
    let out = d.cli(&["--json", "audit"]);
    let audit: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "mqtt cmd/relay/2/set" && r["status"] == 200)
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "mqtt cmd/ptz/dome" && r["status"] == 400)
    );
}

#[test]
fn kernel_rs485_mode_on_a_device_without_it_is_a_clear_error_and_other_ports_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("io")).unwrap();
    std::fs::create_dir(dir.path().join("ptz")).unwrap();
    let io = PtyPair::start(&dir.path().join("io"));
    let bus = PtyPair::start(&dir.path().join("ptz"));
    // A pty has no RS-485 mode: the board's port must say so; the PTZ bus still works.
    let d = Daemon::start(&format!(
        "[[serial]]\nname = \"io\"\ndevice = \"{}\"\nprotocol = \"modbus-rtu\"\nunit = 1\ninputs = 2\n\
         rs485 = {{ kernel_rts = true, rts_before_send = \"1ms\" }}\n\
         [[serial]]\nname = \"ptz\"\ndevice = \"{}\"\nprotocol = \"pelco-d\"\n\
         [[cameras]]\nid = \"dome\"\nurl = \"rtsp://127.0.0.1:9/none\"\nrecord = false\n\
         ptz = {{ port = \"ptz\", address = 1 }}\n",
        io.a.display(),
        bus.a.display()
    ))
    .ready();
    let st = wait_for(Duration::from_secs(10), || {
        let s = io_status(&d);
        s["ports"][0]["last_error"].is_string().then_some(s)
    })
    .unwrap();
    assert_eq!(st["ports"][0]["state"], "unavailable");
    let error = st["ports"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("rs485.kernel_rts: the device refused RS-485 mode"),
        "{error}"
    );
    let mut peer = std::fs::File::open(&bus.b).unwrap();
    assert!(d.cli(&["ptz", "dome", "stop"]).status.success());
    let mut frame = [0u8; 7];
    peer.read_exact(&mut frame).unwrap();
    assert_eq!(frame, [0xFF, 0x01, 0, 0, 0, 0, 0x01]);
}

/// Item 7 of issue 13: a rule's relay pulse decided while the adapter was unplugged used to be
/// marked done with the error and never given. It is retried until the board is back (within the
/// actions' maximum age), and its outcome recorded.
#[test]
fn a_rule_action_failing_while_the_adapter_is_unplugged_is_retried_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPair::start(dir.path());
    let slave = Slave::start(&pty.b, 4, 4);
    let d = Daemon::start(&io_toml(&pty.a, RULE_CONFIG)).ready();
    wait_for(Duration::from_secs(20), || {
        (io_status(&d)["ports"][0]["state"] == "open").then_some(())
    })
    .expect("the board is polled");
    drop(slave);
    pty.stop();
    wait_for(Duration::from_secs(20), || {
        (io_status(&d)["ports"][0]["state"] != "open").then_some(())
    })
    .expect("the daemon notices the unplugged adapter");
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let body = json!({"camera_id": "gate", "task_type": "people", "frame_id": "f1",
                      "detections": [{"label": "person", "confidence": 0.9,
                                      "bbox": [0.4, 0.4, 0.1, 0.1], "track_id": "t1"}]});
    assert_eq!(
        http.post("/api/v1/ai/events", Some(&worker), &body).status,
        200
    );
    wait_for(Duration::from_secs(10), || {
        (count(&d, "SELECT COUNT(*) FROM rule_actions") == 1).then_some(())
    })
    .expect("the enter decided one action");
    // Long enough for several attempts against the missing adapter.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(
            &d,
            "SELECT COUNT(*) FROM rule_actions WHERE done_at_ms IS NOT NULL"
        ),
        0,
        "the action was given up while the adapter was away"
    );
    let pty = PtyPair::start(dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    let mut saw_on = false;
    wait_for(Duration::from_secs(30), || {
        saw_on |= slave.coils()[0];
        (count(&d, "SELECT COUNT(*) FROM rule_actions WHERE result = 'ok'") == 1).then_some(())
    })
    .expect("the action is carried out once the adapter is back");
    wait_for(Duration::from_secs(5), || {
        saw_on |= slave.coils()[0];
        None::<()>
    });
    assert!(saw_on, "the relay pulsed");
    assert_eq!(count(&d, "SELECT COUNT(*) FROM rule_actions"), 1);
}

/// Item 6 of issue 13: an alarm input's edge seen while the store cannot write (the disk is
/// full) used to be lost: the debounced state had already moved, so the edge was never stored
/// or reported. It is stored, in order, once the store works again.
#[test]
fn an_alarm_edge_seen_while_the_disk_is_full_is_stored_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    let (d, disk) = Daemon::start_on_tmpfs(&io_toml(&pty.a, ""), "32m");
    let mut d = d.ready();
    wait_for(Duration::from_secs(20), || {
        (io_status(&d)["io"]["inputs"][0]["active"] == false).then_some(())
    })
    .expect("the board is polled");
    let filler = disk.fill(0);
    slave.set_input(1, true);
    // Debounce (300 ms) and a few polls, all while nothing can be written.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        d.log()
            .contains("cannot store an alarm input change; retrying"),
        "the write failed: {}",
        d.log()
    );
    std::fs::remove_file(filler).unwrap();
    let records = wait_for(Duration::from_secs(15), || {
        let r = alarm_records(&d);
        (!r.is_empty()).then_some(r)
    })
    .expect("the edge is stored once there is room");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["payload"]["input"], 1);
    assert_eq!(records[0]["payload"]["state"], "on");
    d.stop_and_check_db();
    drop(disk);
}
