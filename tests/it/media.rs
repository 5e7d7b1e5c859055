//! Recording against a real RTSP server (gst-rtsp-server in this process) and a real daemon.

use std::path::Path;
use std::time::{Duration, Instant};

use heldar_edge::media::probe::probe_segment;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::fixtures::*;

#[test]
fn records_contiguous_keyframe_aligned_segments() {
    let cam = camera();
    let mut d = Daemon::start(&camera_toml("gate", &cam.url("main"), 4)).ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(20));
    stop(&mut d);

    let rows = segments(&d, "gate");
    assert!(rows.len() >= 4, "20 s in 4 s segments: {rows:?}");
    for pair in rows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.start_ms >= a.end_ms, "no overlap: {a:?} {b:?}");
        assert!(b.start_ms - a.end_ms < 100, "contiguous: {a:?} {b:?}");
    }
    for r in &rows {
        let path = recordings(&d).join(&r.path);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.len() as i64, r.bytes, "row matches file: {r:?}");
        assert!(!r.recovered);
        let p = probe_segment(&path).unwrap();
        assert!(p.first_is_keyframe, "{r:?} starts on a keyframe");
        assert!(!p.truncated, "{r:?} is a complete file");
        let row_ms = r.end_ms - r.start_ms;
        assert!(
            (row_ms - p.duration.as_millis() as i64).abs() < 200,
            "row {row_ms} ms vs file {:?}",
            p.duration
        );
    }
    for r in &rows[..rows.len() - 1] {
        let ms = r.end_ms - r.start_ms;
        assert!(
            (3_500..=5_500).contains(&ms),
            "segments near 4 s (GOP 1 s): {ms} ms"
        );
    }
    assert!(gaps(&d, "gate").is_empty(), "{:?}", gaps(&d, "gate"));
    // Files live under recordings/<camera>/<YYYY-MM-DD>/<start>.mkv, named by their first frame.
    let first = &rows[0];
    let name = Path::new(&first.path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let named = chrono::DateTime::from_timestamp_millis(first.start_ms)
        .unwrap()
        .format("%Y%m%dT%H%M%S%.3fZ.mkv")
        .to_string();
    assert_eq!(name, named);
}

/// A clean stop indexes the segment it was writing: right after SIGTERM, before any start-up
/// reconcile, every file on disk that plays has its row. Stopped at several points of a segment, since the
/// last fragment's close races the pipeline's own messages.
#[test]
fn a_clean_stop_indexes_the_segment_it_was_writing() {
    let cam = camera();
    let mut d = Daemon::start(&camera_toml("gate", &cam.url("main"), 2)).ready();
    for round in 0..6 {
        wait_state(&d, "gate", "recording", Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(2500 + 330 * round));
        stop(&mut d);
        let indexed: std::collections::HashSet<String> =
            segments(&d, "gate").into_iter().map(|r| r.path).collect();
        let root = recordings(&d);
        for line in walk(&root) {
            let (path, bytes) = line.rsplit_once(' ').unwrap();
            let relative = Path::new(path).strip_prefix(&root).unwrap();
            if relative.starts_with(".") || relative.to_string_lossy().starts_with('.') {
                continue;
            }
            assert!(
                indexed.contains(&*relative.to_string_lossy())
                    || discover(Path::new(path)).is_err(),
                "round {round}: {} ({bytes} bytes) plays but is not indexed after a clean stop; log:\n{}",
                relative.display(),
                d.log()
            );
        }
        d.respawn();
    }
}

/// A camera that falls silent mid-segment (a pulled cable: no end of stream, no error) fails
/// as a stalled stream, and the muxer never finalizes the file it was writing. That file plays
/// and is indexed (marked recovered) while the daemon runs, so the timeline has the seconds
/// before the outage at once, not after the next start's reconcile.
#[test]
fn a_silent_camera_has_the_segment_it_was_writing_indexed_at_once() {
    let cam = camera();
    let relay = SilentRelay::start(cam.port());
    let d = Daemon::start(&camera_toml("gate", &relay.url("main"), 60)).ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        segments(&d, "gate").is_empty(),
        "a 60 s segment is still open"
    );
    relay.fall_silent();
    wait_state(&d, "gate", "offline", Duration::from_secs(20));
    let rows = wait_for(Duration::from_secs(5), || {
        Some(segments(&d, "gate")).filter(|r| !r.is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "no segment indexed after the stall; files: {:?}\nlog:\n{}",
            walk(&recordings(&d)),
            d.log()
        )
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    let seconds = (rows[0].end_ms - rows[0].start_ms) as f64 / 1000.0;
    assert!(
        (3.0..=8.0).contains(&seconds),
        "the segment holds the ~5 s before the stall: {seconds} s"
    );
    assert!(rows[0].recovered, "{rows:?}");
    let file = recordings(&d).join(&rows[0].path);
    assert_eq!(
        std::fs::metadata(&file).unwrap().len() as i64,
        rows[0].bytes
    );
    assert!(discover(&file).is_ok(), "the indexed file plays");
}

#[test]
fn camera_outage_is_one_gap_and_recording_resumes_quickly() {
    let mut cam = camera();
    let other = camera();
    let mut d = Daemon::start(&format!(
        "{}{}",
        camera_toml("gate", &cam.url("main"), 2),
        camera_toml("yard", &other.url("main"), 2)
    ))
    .ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(4));

    cam.stop();
    let outage_started = Instant::now();
    wait_state(&d, "gate", "offline", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(10).saturating_sub(outage_started.elapsed()));
    cam.restart().unwrap();
    let back = Instant::now();
    wait_state(&d, "gate", "recording", Duration::from_secs(10));
    let resumed_after = back.elapsed();
    // Recording again within 2 s plus one GOP (1 s) of the stream's return; 1 s of slack for
    // the status poll.
    assert!(
        resumed_after < Duration::from_secs(4),
        "resumed after {resumed_after:?}"
    );
    std::thread::sleep(Duration::from_secs(5));
    stop(&mut d);

    let g = gaps(&d, "gate");
    let files: Vec<_> = walk(&recordings(&d));
    assert_eq!(
        g.len(),
        1,
        "exactly one gap: {g:?}\nrows: {:?}\nfiles: {files:?}\nlog:\n{}",
        segments(&d, "gate"),
        d.log()
    );
    let (start, end, reason) = &g[0];
    let seconds = (end - start) as f64 / 1000.0;
    assert!(
        (9.0..=14.0).contains(&seconds),
        "gap of about the outage: {seconds} s"
    );
    assert_eq!(reason, "camera_offline");
    assert!(
        gaps(&d, "yard").is_empty(),
        "the other camera was not restarted: {:?}",
        gaps(&d, "yard")
    );
}

#[test]
fn unreachable_and_wrong_path_cameras_fail_clearly_and_retry_calmly() {
    let cam = camera();
    // A TCP port that accepts and never answers, like a hung camera.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "rtsp://127.0.0.1:{}/stream",
        silent.local_addr().unwrap().port()
    );
    let pw_dir = tempfile::tempdir().unwrap();
    std::fs::write(pw_dir.path().join("pw"), "Sup3r-s3cret!").unwrap();
    let wrong_path = format!("{}-nope", cam.url("main"));
    let mut d = Daemon::start(&format!(
        "{}username = \"admin\"\npassword_file = \"{}\"\n{}",
        camera_toml("wrong", &wrong_path, 2),
        pw_dir.path().join("pw").display(),
        camera_toml("silent", &silent_url, 2),
    ))
    .ready();

    let error_of = |camera: &str| {
        health(&d, camera).and_then(|h| h["last_error"].as_str().map(str::to_string))
    };
    let wrong = wait_for(Duration::from_secs(15), || error_of("wrong"))
        .expect("an error for the wrong path");
    assert!(wrong.to_lowercase().contains("not found"), "{wrong}");
    let silent_err = wait_for(Duration::from_secs(25), || error_of("silent"))
        .expect("an error for the silent camera");
    assert!(
        silent_err.contains("no video within") || silent_err.to_lowercase().contains("timeout"),
        "{silent_err}"
    );

    // Retries continue, with backoff: not a busy loop.
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let reconnects = health(&d, "wrong").unwrap()["reconnects"].as_u64().unwrap();
    assert!(
        (2..=8).contains(&reconnects),
        "{reconnects} reconnects in {:?}",
        started.elapsed()
    );
    stop(&mut d);
    let log = d.log();
    assert!(
        !log.contains("Sup3r-s3cret!"),
        "the password never reaches the log"
    );
    let listing = d.cli(&["--json", "cameras", "list"]);
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("Sup3r-s3cret!"));
    drop(silent);
}

#[test]
fn sigkill_mid_segment_leaves_a_playable_indexed_segment() {
    let cam = camera();
    let mut d = Daemon::start(&camera_toml("gate", &cam.url("main"), 30)).ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(7));
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(
        segments(&d, "gate").is_empty(),
        "the 30 s segment was still open"
    );

    d.spawn(&[]);
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = segments(&d, "gate");
        (!rows.is_empty()).then_some(rows)
    })
    .unwrap_or_else(|| panic!("no recovered segment; log:\n{}", d.log()));
    let r = &rows[0];
    assert!(r.recovered, "{r:?}");
    let seconds = (r.end_ms - r.start_ms) as f64 / 1000.0;
    assert!(
        (4.0..=9.0).contains(&seconds),
        "about the 7 s recorded before the kill, minus what the muxer held: {seconds}"
    );

    let path = recordings(&d).join(&r.path);
    let discovered = discover(&path);
    assert!(
        discovered.is_ok(),
        "GStreamer's discoverer plays it: {discovered:?}"
    );
    stop(&mut d);
    let check = d.cli(&["db", "check", "--config", d.config_path().to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr(&check)
    );
}

#[test]
fn cameras_come_and_go_at_runtime_without_disturbing_others() {
    let cam = camera();
    let other = camera();
    let mut d = Daemon::start(&camera_toml("gate", &cam.url("main"), 2)).ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));

    let added = d.cli(&[
        "cameras",
        "add",
        "yard",
        "--url",
        &other.url("main"),
        "--segment-seconds",
        "2",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    wait_state(&d, "yard", "recording", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(5));
    let removed = d.cli(&["cameras", "remove", "yard"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    std::thread::sleep(Duration::from_secs(3));
    let refused = d.cli(&["cameras", "remove", "gate"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "file cameras are read-only at runtime"
    );
    assert!(stderr(&refused).contains("declared in heldar.toml"));
    stop(&mut d);

    assert!(
        !segments(&d, "yard").is_empty(),
        "the runtime camera recorded"
    );
    let gate = segments(&d, "gate");
    assert!(
        gaps(&d, "gate").is_empty(),
        "adding and removing yard left no gap in gate: {:?}",
        gaps(&d, "gate")
    );
    for pair in gate.windows(2) {
        assert!(
            pair[1].start_ms - pair[0].end_ms < 100,
            "gate stayed contiguous: {pair:?}"
        );
    }
}

#[test]
fn clips_snapshots_and_stream_tests() {
    let cam = camera();
    let pw_dir = tempfile::tempdir().unwrap();
    std::fs::write(pw_dir.path().join("pw"), "Cl1p-s3cret").unwrap();
    let mut d = Daemon::start(&format!(
        "{}username = \"viewer\"\npassword_file = \"{}\"\n",
        camera_toml("gate", &cam.url("main"), 2),
        pw_dir.path().join("pw").display()
    ))
    .ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(15));
    let rows = wait_for(Duration::from_secs(30), || {
        let rows = segments(&d, "gate");
        (rows.len() >= 4).then_some(rows)
    })
    .expect("four segments");

    // A clip across three segments, starting and ending inside the first and third.
    let from = rows[0].start_ms + 500;
    let to = rows[2].end_ms - 500;
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let out_dir = tempfile::tempdir().unwrap();
    let clip_path = out_dir.path().join("clip.mkv");
    let out = d.cli(&[
        "--json",
        "clip",
        "gate",
        "--from",
        &iso(from),
        "--to",
        &iso(to),
        "-o",
        clip_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["segments"], 3, "{report}");
    assert_eq!(report["gaps"].as_array().unwrap().len(), 0);
    let probed = probe_segment(&clip_path).unwrap();
    let asked = Duration::from_millis((to - from) as u64);
    assert!(probed.first_is_keyframe);
    assert!(
        probed.duration >= asked - Duration::from_millis(100)
            && probed.duration <= asked + Duration::from_millis(1100),
        "clip {:?} for a request of {asked:?} (one GOP is 1 s)",
        probed.duration
    );
    let first_frame = report["first_frame_ms"].as_i64().unwrap();
    assert!(
        (from - 1100..=from).contains(&first_frame),
        "the clip starts on the keyframe before `from`"
    );

    // Snapshots: the live frame and a recorded one, both real JPEGs of the camera's size.
    for args in [
        vec!["snapshot", "gate"],
        vec!["snapshot", "gate", "--at", &iso(rows[1].start_ms + 700)],
    ] {
        let jpeg = out_dir.path().join("snap.jpg");
        let mut args = args;
        args.extend(["-o", jpeg.to_str().unwrap()]);
        let out = d.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let bytes = std::fs::read(&jpeg).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "{args:?}: JPEG start of image");
        assert_eq!(jpeg_size(&bytes), Some((320, 240)), "{args:?}");
    }
    let missing = d.cli(&[
        "snapshot",
        "gate",
        "--at",
        "2001-01-01T00:00:00Z",
        "-o",
        "/tmp/never.jpg",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("nothing recorded"),
        "{}",
        stderr(&missing)
    );

    let test = d.cli(&["--json", "cameras", "test", "gate"]);
    assert!(test.status.success(), "{}", stderr(&test));
    let t: Value = serde_json::from_slice(&test.stdout).unwrap();
    assert_eq!(
        (
            t["codec"].as_str(),
            t["width"].as_i64(),
            t["height"].as_i64()
        ),
        (Some("h264"), Some(320), Some(240))
    );
    let fps = t["fps"].as_f64().unwrap();
    assert!((12.0..=18.0).contains(&fps), "fps {fps}");
    assert_eq!(
        t["gop_ms"].as_u64().map(|g| (g + 50) / 100),
        Some(10),
        "GOP of one second: {t}"
    );

    stop(&mut d);
    assert!(!d.log().contains("Cl1p-s3cret"), "credentials never logged");
}

/// Width and height from a baseline JPEG's SOF0 marker.
fn jpeg_size(bytes: &[u8]) -> Option<(u16, u16)> {
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if marker == 0xC0 {
            let h = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]);
            let w = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}
