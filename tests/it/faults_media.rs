//! Recording-disk faults: a recordings directory that is not mounted, missing, or belongs to
//! another database must leave the index and its evidence locks alone (invariant S3: reconcile
//! removes rows only for files that are really gone), and recording resumes once it is back.

use std::time::Duration;

use rusqlite::Connection;
use serde_json::Value;

use crate::fixtures::{Daemon, Tmpfs, stderr, stdout, wait_for};
use crate::fixtures::{camera, camera_toml, gaps, health, recordings, stop, wait_state, walk};

/// The marker the daemon keeps at the top of its recordings directory: the database's id.
const MARKER: &str = ".heldar-database-id";

/// Every segment row as `(id, path, evidence_locked)`, by id.
fn index(d: &Daemon) -> Vec<(i64, String, bool)> {
    let c = Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    let mut stmt = c
        .prepare("SELECT id, path, evidence_locked FROM segments ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn file_lost(d: &Daemon) -> Vec<(i64, i64, String)> {
    gaps(d, "gate")
        .into_iter()
        .filter(|g| g.2 == "file_lost")
        .collect()
}

/// `heldar status`'s `recordings` object.
fn recordings_status(d: &Daemon) -> Option<Value> {
    let out = d.cli(&["--json", "status"]);
    let s: Value = serde_json::from_slice(&out.stdout).ok()?;
    s.get("recordings").cloned()
}

fn wait_recordings(d: &Daemon, want: &str, timeout: Duration) -> Option<Value> {
    wait_for(timeout, || {
        recordings_status(d).filter(|r| r["state"].as_str() == Some(want))
    })
}

/// Records a few 2 s segments, evidence-locks the first, stops; returns the index.
fn record_and_lock(d: &mut Daemon) -> Vec<(i64, String, bool)> {
    wait_state(d, "gate", "recording", Duration::from_secs(15));
    wait_for(Duration::from_secs(30), || {
        (index(d).len() >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("three segments; log:\n{}", d.log()));
    let first = index(d)[0].0.to_string();
    let locked = d.cli(&["segments", "lock", &first]);
    assert!(locked.status.success(), "{}", stderr(&locked));
    stop(d);
    let rows = index(d);
    assert!(rows[0].2, "the first segment is locked: {rows:?}");
    rows
}

/// Every row of `before` is still there, unchanged (ids, paths, locks).
fn assert_kept(d: &Daemon, before: &[(i64, String, bool)], when: &str) {
    let now = index(d);
    let missing: Vec<_> = before.iter().filter(|r| !now.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "{when}: rows removed or unlocked: {missing:?}\nnow: {now:?}\nfile_lost gaps: {:?}\nlog:\n{}",
        file_lost(d),
        d.log()
    );
    assert!(file_lost(d).is_empty(), "{when}: {:?}", file_lost(d));
}

/// `heldar_recordings_dir_usable` from `/metrics`.
fn usable_metric(d: &Daemon) -> Option<i64> {
    let http = crate::fixtures::Http::new(d);
    let viewer = crate::fixtures::token(d, "viewer");
    let text = String::from_utf8(http.get("/metrics", Some(&viewer)).body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("heldar_recordings_dir_usable "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn an_unmounted_recordings_disk_leaves_the_index_alone_and_recording_resumes_when_it_returns() {
    let cam = camera();
    let mut d = Daemon::start(&camera_toml("gate", &cam.url("main"), 2)).ready();
    let before = record_and_lock(&mut d);
    assert!(
        recordings(&d).join(MARKER).is_file(),
        "the daemon marked its recordings directory"
    );

    // (a) The disk did not mount: an empty file system shows at the recordings path.
    // An empty tmpfs over the directory: a disk that did not mount, the mount point shows through.
    let mut mount = Tmpfs::mount_at(&recordings(&d), "1m");
    d.respawn();
    let reported = wait_recordings(&d, "unavailable", Duration::from_secs(15));
    assert_kept(&d, &before, "disk not mounted");
    let reported = reported.unwrap_or_else(|| {
        panic!(
            "status never reported the recordings as unavailable: {:?}\nlog:\n{}",
            recordings_status(&d),
            d.log()
        )
    });
    let error = reported["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("recordings"), "{reported}");
    let human = stdout(&d.cli(&["status"]));
    assert!(
        human.contains("UNAVAILABLE") && human.contains(&error),
        "{human}"
    );
    assert_eq!(usable_metric(&d), Some(0), "/metrics shows the refusal");
    wait_state(&d, "gate", "error", Duration::from_secs(10));
    let last_error = health(&d, "gate").unwrap()["last_error"].clone();
    assert!(
        last_error
            .as_str()
            .unwrap_or_default()
            .contains("not recording"),
        "{last_error}"
    );
    assert!(
        d.log().contains("recordings directory"),
        "an error in the log:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(5));
    let written = walk(&recordings(&d));
    assert!(
        written.is_empty(),
        "nothing written to the wrong disk: {written:?}"
    );
    assert_kept(&d, &before, "disk not mounted, a while later");

    // (b) The disk mounts again: recording resumes without a restart.
    mount.unmount();
    wait_recordings(&d, "ok", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("recordings never came back; log:\n{}", d.log()));
    wait_state(&d, "gate", "recording", Duration::from_secs(20));
    wait_for(Duration::from_secs(20), || {
        (index(&d).len() > before.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("no new segment after the disk came back; log:\n{}", d.log()));
    assert_eq!(usable_metric(&d), Some(1));
    d.stop_and_check_db();
    assert_kept(&d, &before, "disk back");

    d.respawn();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    stop(&mut d);
    assert_kept(&d, &before, "disk back, restarted");
}

#[test]
fn a_missing_or_foreign_recordings_dir_is_refused_untouched() {
    let cam = camera();
    let mut d = Daemon::start(&camera_toml("gate", &cam.url("main"), 2)).ready();
    let before = record_and_lock(&mut d);
    let rec = recordings(&d);
    let away = d.dir.path().join("data/recordings.away");
    std::fs::rename(&rec, &away).unwrap();

    // Gone altogether: refused, and not recreated.
    d.respawn();
    let reported = wait_recordings(&d, "unavailable", Duration::from_secs(15));
    assert_kept(&d, &before, "directory missing");
    assert!(reported.is_some(), "{:?}", recordings_status(&d));
    assert!(!rec.exists(), "the daemon did not create {}", rec.display());
    stop(&mut d);

    // Another database's disk (swapped): refused, nothing written into it.
    std::fs::create_dir(&rec).unwrap();
    std::fs::write(rec.join(MARKER), "0123456789abcdef0123456789abcdef\n").unwrap();
    d.respawn();
    let reported = wait_recordings(&d, "unavailable", Duration::from_secs(15));
    assert_kept(&d, &before, "another database's directory");
    let reported = reported.unwrap_or_else(|| panic!("{:?}", recordings_status(&d)));
    assert!(
        reported["error"]
            .as_str()
            .unwrap_or_default()
            .contains("another database"),
        "{reported}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        walk(&rec).len(),
        1,
        "only the foreign marker: {:?}",
        walk(&rec)
    );
    stop(&mut d);

    // The right disk back: accepted, recording resumes, nothing lost.
    std::fs::remove_dir_all(&rec).unwrap();
    std::fs::rename(&away, &rec).unwrap();
    d.respawn();
    wait_recordings(&d, "ok", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{:?}\nlog:\n{}", recordings_status(&d), d.log()));
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    stop(&mut d);
    assert_kept(&d, &before, "directory back");
}
