//! Power cuts, simulated: the daemon's data directory sits on a FUSE layer that keeps every
//! write in memory until it is fsynced (fixtures::lossfs), and a cut kills the daemon and that
//! layer together, so whatever was not made durable is gone, as after a real power loss (SIGKILL
//! alone leaves the page cache and cannot show a missing fsync).
//!
//! 20 cuts at random moments under 16 posting workers, 2 cameras recording 2 s segments, the
//! uplink draining to mosquitto and a rule pulsing a relay on a Modbus slave. After each cut, on
//! what survived: `PRAGMA integrity_check` is ok and every batch answered 2xx is there; the next
//! start records the boot as unclean. At the end: every acknowledged batch stored once, every
//! zone event and relay action decided once, every record at the MQTT subscriber in order,
//! every indexed segment playable and every playable file indexed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::fixtures::*;

const CUTS: usize = 20;
const POSTERS: usize = 16;

/// Every `DOG_EVERY`th batch of poster 0 is a dog at the door, whose rule pulses relay 1; the
/// rest are people in the yard, which only the zone engine sees.
const DOG_EVERY: usize = 4;

fn config(device: &Path, cams: &[String]) -> String {
    let mut extra = String::from("[recording]\nmin_free = \"0\"\n");
    for (n, url) in cams.iter().enumerate() {
        extra.push_str(&camera_toml(&format!("cam{n}"), url, 2));
    }
    extra.push_str(
        "[[zones]]\ncamera = \"cam0\"\nname = \"yard\"\nkind = \"region\"\nconfirm = \"0s\"\n\
         labels = [\"person\"]\npoints = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n\
         [[zones]]\ncamera = \"cam0\"\nname = \"door\"\nkind = \"region\"\nconfirm = \"0s\"\n\
         labels = [\"dog\"]\npoints = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n\
         [[rules]]\non = \"zone:door:enter\"\ndo = \"relay:1:pulse:100ms\"\n",
    );
    io_toml(device, &extra)
}

/// A batch of `people` detections (each its own track, so each is one `enter` of the yard), or
/// one dog.
fn batch(frame_id: &str, dog: bool) -> Value {
    let detections: Vec<Value> = if dog {
        vec![
            json!({"label": "dog", "confidence": 0.9, "bbox": [0.4, 0.4, 0.1, 0.1], "track_id": frame_id}),
        ]
    } else {
        (0..3)
            .map(|i| json!({"label": "person", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2], "track_id": format!("{frame_id}-{i}")}))
            .collect()
    };
    json!({"camera_id": "cam0", "task_type": "detect", "frame_id": frame_id, "detections": detections})
}

/// Posts batches until the daemon is gone or `stop`; returns the frame ids answered 2xx. A
/// 5xx (a full write queue) is fine; anything else would be the test's own mistake.
fn post_until_cut(
    base: &str,
    token: &str,
    round: usize,
    poster: usize,
    stop: &AtomicBool,
) -> Vec<String> {
    let answered = post_until_gone(base, Some(token), stop, |n| {
        let dog = poster == 0 && n % DOG_EVERY == DOG_EVERY - 1;
        let frame_id = format!("r{round}-p{poster}-{n}{}", if dog { "-dog" } else { "" });
        let body = batch(&frame_id, dog);
        (frame_id, body)
    });
    for (frame_id, status) in &answered {
        assert!(
            (200..300).contains(status) || *status >= 500,
            "{frame_id}: answered {status}"
        );
    }
    answered
        .into_iter()
        .filter(|(_, status)| (200..300).contains(status))
        .map(|(frame_id, _)| frame_id)
        .collect()
}

/// The stored frame ids and how often each is stored, read straight off the surviving files.
fn stored_batches(db: &Connection) -> HashMap<String, i64> {
    db.prepare("SELECT frame_id, COUNT(*) FROM detection_batches GROUP BY frame_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The first column of every row of `sql`.
fn column<T: rusqlite::types::FromSql>(db: &Connection, sql: &str) -> Vec<T> {
    db.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn count(db: &Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// What survived the cut, before any daemon touched it: the database is whole and holds every
/// acknowledged batch.
fn check_what_survived(db_path: &Path, acknowledged: &HashSet<String>, round: usize) {
    let db = Connection::open(db_path).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "cut {round}: integrity_check");
    let stored = stored_batches(&db);
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|f| !stored.contains_key(*f))
        .collect();
    assert!(
        lost.is_empty(),
        "cut {round}: {} acknowledged batches lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

/// Paths of the files under `dir`, relative to `base`.
fn files_under(dir: &Path, base: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path, base));
        } else {
            out.push(path.strip_prefix(base).unwrap().display().to_string());
        }
    }
    out
}

#[test]
fn acknowledged_work_survives_twenty_power_cuts() {
    let cams = [camera(), camera()];
    let urls: Vec<String> = cams.iter().map(|c| c.url("main")).collect();
    let serial_dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(serial_dir.path());
    let mut slave = Slave::start(&pty.b, 4, 4);
    let broker = Broker::start(BrokerSetup {
        persistence: true,
        ..Default::default()
    });
    let sub = Sub::start(broker.port, "power-sub", &["heldar/test/events/#"], true);
    let (d, mut disk) = Daemon::start_on_lossy_disk(&format!(
        "{}\n[mqtt]\nurl = \"{}\"\n",
        config(&pty.a, &urls),
        broker.url()
    ));
    let mut d = d.ready();
    let worker = token(&d, "worker");
    let db_path = d.dir.path().join("data/heldar.db");

    let mut rng = rand::rng();
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut dogs = 0usize;
    for round in 0..CUTS {
        wait_state(&d, "cam0", "recording", Duration::from_secs(20));
        wait_state(&d, "cam1", "recording", Duration::from_secs(20));
        let base = Http::new(&d).base;
        let stop = Arc::new(AtomicBool::new(false));
        let posters: Vec<_> = (0..POSTERS)
            .map(|poster| {
                let (base, token, stop) = (base.clone(), worker.clone(), stop.clone());
                std::thread::spawn(move || post_until_cut(&base, &token, round, poster, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..4_000)));

        // The power cut: the daemon and every write it had not made durable, at once.
        d.signal(nix::sys::signal::Signal::SIGKILL);
        d.wait_exit(Duration::from_secs(10));
        disk.cut();
        stop.store(true, Ordering::SeqCst);
        let mut acked_now = 0;
        for p in posters {
            let acked = p.join().unwrap();
            acked_now += acked.len();
            dogs += acked.iter().filter(|f| f.ends_with("-dog")).count();
            acknowledged.extend(acked);
        }
        assert!(
            acked_now > 0,
            "cut {round}: nothing was acknowledged before the cut"
        );

        disk.restore();
        check_what_survived(&db_path, &acknowledged, round);
        d.respawn();
        let status: Value = serde_json::from_slice(&d.cli(&["--json", "status"]).stdout).unwrap();
        assert_eq!(
            status["boots"]["previous_clean"], false,
            "cut {round}: the boot after a power cut is recorded as unclean: {status}"
        );
    }

    // A last run without cuts lets every consumer catch up.
    let caught_up = wait_for(Duration::from_secs(120), || {
        let out = d.cli(&["--json", "outbox", "status"]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        let consumers = status["consumers"].as_array()?;
        (!consumers.is_empty() && consumers.iter().all(|c| c["backlog"] == 0)).then_some(())
    });
    assert!(caught_up.is_some(), "consumers never caught up");
    let done = wait_for(Duration::from_secs(60), || {
        let db = Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        (count(&db, "SELECT COUNT(*) FROM relay_pulses") == 0
            && count(
                &db,
                "SELECT COUNT(*) FROM rule_actions WHERE done_at_ms IS NULL",
            ) == 0)
            .then_some(())
    });
    assert!(done.is_some(), "relay actions still pending");
    let recordings = recordings(&d);
    d.stop_and_check_db();
    // A segment the clean stop did not finalize in time is indexed by the start-up reconcile:
    // one more start and stop, as the next boot would.
    d.respawn();
    d.stop_and_check_db();
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    let stop_log = lines[lines.len().saturating_sub(40)..].join("\n");

    let db = Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    // Every acknowledged batch, once.
    let stored = stored_batches(&db);
    assert!(acknowledged.iter().all(|f| stored.contains_key(f)));
    assert!(stored.values().all(|n| *n == 1), "a batch stored twice");
    // Every surviving batch's people entered the yard exactly once, every dog the door once,
    // and each door enter gave exactly one relay action, carried out.
    let people = 3 * stored.keys().filter(|f| !f.ends_with("-dog")).count() as i64;
    let stored_dogs = stored.keys().filter(|f| f.ends_with("-dog")).count() as i64;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM zone_events WHERE zone_id = 'yard' AND type = 'enter'"
        ),
        people
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM (SELECT track_id FROM zone_events WHERE type = 'enter' \
             GROUP BY zone_id, track_id HAVING COUNT(*) > 1)"
        ),
        0,
        "a track entered twice"
    );
    let door_enters = count(
        &db,
        "SELECT COUNT(*) FROM zone_events WHERE zone_id = 'door' AND type = 'enter'",
    );
    assert_eq!(door_enters, stored_dogs);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM rule_actions"), door_enters);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM rule_actions WHERE result = 'ok'"),
        door_enters
    );
    // The relay really pulsed, and never more often than once per action plus once per cut
    // (a pulse the cut caught between the coil write and the durable `done` is given again).
    // Fewer rising edges than actions is right: a pulse asked for while the relay is still on
    // from the previous one extends it, as the backlog after each restart does.
    let pulses = slave.pulses()[0] as i64;
    assert!(
        door_enters > 0 && (1..=door_enters + CUTS as i64).contains(&pulses),
        "{pulses} pulses for {door_enters} door enters"
    );
    assert!(!slave.coils()[0], "the relay ended off");

    // MQTT: every record at the subscriber, first deliveries in order.
    let outbox: Vec<i64> = column(&db, "SELECT seq FROM outbox ORDER BY seq");
    let delivered = |sub: &Sub| -> Vec<i64> {
        sub.all()
            .iter()
            .filter_map(|g| g.json()["seq"].as_i64())
            .collect()
    };
    let arrived = wait_for(Duration::from_secs(30), || {
        let seen: HashSet<i64> = delivered(&sub).into_iter().collect();
        outbox.iter().all(|s| seen.contains(s)).then_some(())
    });
    // The order in which each record arrived for the first time.
    let mut seen = HashSet::new();
    let first_deliveries: Vec<i64> = delivered(&sub)
        .into_iter()
        .filter(|s| seen.insert(*s))
        .collect();
    assert!(
        arrived.is_some(),
        "records never published: {:?}",
        outbox
            .iter()
            .filter(|s| !seen.contains(s))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        first_deliveries.windows(2).all(|w| w[0] < w[1]),
        "a record was first published before an earlier one"
    );

    // Recordings: every indexed segment plays, every file that plays is indexed.
    let indexed: HashSet<String> = column(&db, "SELECT path FROM segments")
        .into_iter()
        .collect();
    assert!(
        indexed.len() >= CUTS,
        "only {} segments in 20 runs",
        indexed.len()
    );
    for path in &indexed {
        let file = recordings.join(path);
        assert!(file.exists(), "indexed segment {path} is gone");
        if let Err(e) = discover(&file) {
            panic!("indexed segment {path} does not play: {e}");
        }
    }
    for path in files_under(&recordings, &recordings) {
        // The disk marker and the files reconcile set aside as unplayable.
        if path.starts_with('.') {
            continue;
        }
        assert!(
            indexed.contains(&path) || discover(&recordings.join(&path)).is_err(),
            "{path} plays but is not indexed; log:\n{stop_log}"
        );
    }
    eprintln!(
        "power cuts: {CUTS}, acknowledged batches {}, dogs {dogs}, door enters {door_enters}, pulses {pulses}, \
         records {}, segments {}",
        acknowledged.len(),
        outbox.len(),
        indexed.len()
    );
    drop(disk);
}
