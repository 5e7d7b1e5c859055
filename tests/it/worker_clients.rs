//! The worker clients against a running daemon: the Rust client (`heldar_edge::worker::client`),
//! the Python client's own tests (`clients/python/tests`), and the people detector example
//! (`examples/people_worker.py`) finding people in a real pedestrian video served over RTSP.
//!
//! The Python side runs in the venv of `tests/python/setup.sh` (make test runs it), which also
//! fetches the video: `vtest.avi` from Debian's opencv-doc, 768x576 at 10 fps, 79 s of people
//! walking through a hall.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use heldar_edge::media::synthetic::{SyntheticCamera, SyntheticSpec};
use heldar_edge::worker::client::{Batch, Client, Detection, Frame, FrameFormat, Posted};

use crate::fixtures::{Daemon, Http, camera, camera_toml, token, wait_for};

/// Where the venv and the video are: `HELDAR_PYTHON_WORKERS_DIR`, or `target/python-workers`.
fn python_dir() -> PathBuf {
    std::env::var_os("HELDAR_PYTHON_WORKERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/python-workers"))
}

/// `name` in the Python workers' dir, which tests/python/setup.sh makes.
fn prepared(name: &str, what: &str) -> PathBuf {
    let path = python_dir().join(name);
    assert!(
        path.exists(),
        "no {what} at {}: run tests/python/setup.sh (make test does)",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    prepared("venv/bin/python", "Python worker venv")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A daemon recording one synthetic camera with one task of `task_type`.
fn daemon_with_task(camera_url: &str, task_type: &str, extra: &str) -> Daemon {
    let config = format!(
        "{}[[tasks]]\ncamera = \"gate\"\ntask_type = \"{task_type}\"\nprofile = \"main\"\nfps = 2\nwidth = 320\n{extra}",
        camera_toml("gate", camera_url, 10)
    );
    Daemon::start(&config).ready()
}

#[test]
fn the_rust_client_leases_fetches_posts_once_and_names_refusals() {
    let gate = camera();
    let d = daemon_with_task(&gate.url("main"), "counting", "");
    let http = Http::new(&d);
    let client = Client::new(&http.base, Some(token(&d, "worker")));
    let stop = AtomicBool::new(false);

    let lease = client
        .lease("rust-1", &["counting".to_string()], 60)
        .unwrap();
    assert_eq!(lease.tasks.len(), 1, "{lease:?}");
    let task = &lease.tasks[0];
    assert_eq!(
        (task.camera_id.as_str(), task.task_type.as_str()),
        ("gate", "counting")
    );
    let frame = wait_for(Duration::from_secs(30), || {
        client.frame(task, FrameFormat::Jpeg).unwrap()
    })
    .expect("a sampled frame");
    assert!(frame.data.starts_with(&[0xff, 0xd8]), "a JPEG");
    assert!(frame.ticket.is_some(), "a leased task's frame has a ticket");
    let gray = client.frame(task, FrameFormat::Gray).unwrap().unwrap();
    assert_eq!(
        (gray.format, gray.width, gray.stride),
        (FrameFormat::Gray, 320, 320)
    );
    assert_eq!(gray.data.len(), 320 * gray.height as usize);
    assert!(gray.ticket.is_some(), "raw frames have tickets too");
    let viewer = token(&d, "viewer");
    let png = http.get("/api/v1/cameras/gate/frame?format=png", Some(&viewer));
    assert_eq!(png.status, 400);
    assert_eq!(
        png.json()["error"],
        "format \"png\" must be jpeg, rgb or gray"
    );

    let seen = vec![Detection::new("person", 0.8, [0.1, 0.2, 0.3, 0.4]).track("r1")];
    let batch = Batch::of(task, &frame, seen.clone());
    assert_eq!(
        client.post(&batch, &stop),
        Posted::Stored {
            detections: 1,
            duplicate: false
        }
    );
    assert_eq!(
        client.post(&batch, &stop),
        Posted::Stored {
            detections: 0,
            duplicate: true
        },
        "the same frame id is stored once"
    );

    let forged = Frame {
        ticket: frame
            .ticket
            .as_ref()
            .map(|t| format!("{}AA", &t[..t.len() - 2])),
        ..frame.clone()
    };
    assert_eq!(
        client.post(&Batch::of(task, &forged, seen), &stop),
        Posted::TicketRefused
    );
    let outside = vec![Detection::new("person", 0.8, [1.5, 0.0, 0.1, 0.1])];
    match client.post(&Batch::of(task, &frame, outside), &stop) {
        Posted::Refused { status, error } => {
            assert_eq!(status, 400);
            assert!(error.contains("detections[0].bbox"), "{error}");
        }
        other => panic!("a box outside the frame is refused, not {other:?}"),
    }

    client.release(&lease.lease_id).unwrap();
    let other = client
        .lease("rust-2", &["counting".to_string()], 60)
        .unwrap();
    assert_eq!(other.tasks.len(), 1, "released, so another worker gets it");
}

#[test]
fn the_python_client_passes_its_tests_against_a_running_daemon() {
    let python = python();
    let gate = camera();
    let d = daemon_with_task(&gate.url("main"), "counting", "");
    let http = Http::new(&d);
    let out = Command::new(python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(repo("clients/python/tests"))
        .env("HELDAR_API", &http.base)
        .env("HELDAR_TOKEN", token(&d, "worker"))
        .env("HELDAR_VIEWER_TOKEN", token(&d, "viewer"))
        .env("HELDAR_TASK_TYPE", "counting")
        .env("HELDAR_API_SOCKET", d.api_socket())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client tests failed:\n{report}"
    );
    assert!(report.contains("Ran 10 tests"), "{report}");
}

/// The video, at its own size and rate.
fn pedestrians() -> SyntheticCamera {
    let video = prepared("vtest.avi", "pedestrian video");
    let spec = SyntheticSpec {
        width: 768,
        height: 576,
        fps: 10,
        gop_frames: 10,
        bitrate_kbps: 1500,
        video: Some(video),
    };
    SyntheticCamera::start(spec, 0).expect("pedestrian camera")
}

#[test]
fn the_people_worker_finds_people_in_a_pedestrian_video_and_zones_see_them() {
    let python = python();
    let hall = pedestrians();
    let config = format!(
        "{}[[tasks]]\ncamera = \"hall\"\ntask_type = \"people\"\nprofile = \"main\"\nfps = 2\nwidth = 1024\n\
         [[zones]]\ncamera = \"hall\"\nname = \"floor\"\nkind = \"region\"\n\
         points = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\ndwell_seconds = 2\nseverity = \"warning\"\n",
        camera_toml("hall", &hall.url("main"), 10)
    );
    let d = Daemon::start(&config).ready();
    let http = Http::new(&d);
    let viewer = token(&d, "viewer");
    let mut worker = Command::new(python)
        .arg(repo("examples/people_worker.py"))
        .args(["--worker-id", "people-test", "--socket"])
        .arg(d.api_socket())
        .env("HELDAR_TOKEN", token(&d, "worker"))
        // A file, not a pipe: a pipe nobody reads until the end could fill and stall the worker.
        .stderr(std::fs::File::create(d.dir.path().join("people.log")).unwrap())
        .spawn()
        .unwrap();

    let rows = wait_for(Duration::from_secs(60), || {
        let rows = http
            .get("/api/v1/cameras/hall/detections?limit=1000", Some(&viewer))
            .json();
        let rows = rows.as_array()?.clone();
        let frames: std::collections::HashSet<_> =
            rows.iter().map(|r| r["frame_id"].to_string()).collect();
        (frames.len() >= 12).then_some(rows)
    });
    let events = wait_for(Duration::from_secs(30), || {
        let events = zone_events(&d);
        let kinds = |k: &str| events.iter().filter(|(_, kind)| kind == k).count();
        (kinds("enter") >= 2 && kinds("dwell") >= 1).then_some(events)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = worker.wait().unwrap();
    let log = std::fs::read_to_string(d.dir.path().join("people.log")).unwrap();
    let rows = rows.unwrap_or_else(|| panic!("person detections on 12 frames; worker log:\n{log}"));
    assert!(status.success(), "a clean stop on SIGTERM: {status}\n{log}");
    let events =
        events.unwrap_or_else(|| panic!("zone enter and dwell events; worker log:\n{log}"));

    let mut tracks = std::collections::HashSet::new();
    for r in &rows {
        assert_eq!(r["label"], "person", "{r}");
        let b: Vec<f64> = r["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            b.iter().all(|v| (0.0..=1.0).contains(v)) && b[0] + b[2] <= 1.0 && b[1] + b[3] <= 1.0,
            "normalised box: {r}"
        );
        // HOG finds people standing upright: taller than wide.
        assert!(b[3] > b[2], "a person is taller than wide: {r}");
        assert!(r["confidence"].as_f64().unwrap() >= 0.6, "{r}");
        assert!(
            r["frame_id"]
                .as_str()
                .is_some_and(|f| f.starts_with("hall:people:main:")),
            "ticketed: {r}"
        );
        tracks.insert(r["track_id"].as_str().unwrap().to_string());
    }
    let frames: std::collections::HashSet<_> =
        rows.iter().map(|r| r["frame_id"].to_string()).collect();
    assert!(
        tracks.len() >= 2 && tracks.len() < rows.len(),
        "tracks follow people across frames: {} tracks for {} detections on {} frames",
        tracks.len(),
        rows.len(),
        frames.len()
    );
    assert!(events.iter().all(|(zone, _)| zone == "floor"), "{events:?}");
    // What a receiver sees of them (the MQTT payload is the same record).
    let records = http
        .get("/api/v1/events?kind=zone&limit=50", Some(&viewer))
        .json();
    let entered = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "enter")
        .unwrap_or_else(|| panic!("an enter record: {records}"));
    assert_eq!(entered["payload"]["severity"], "warning", "{entered}");
}

/// `(zone, kind)` of every zone event.
fn zone_events(d: &Daemon) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    let mut stmt = c
        .prepare("SELECT zone_id, type FROM zone_events ORDER BY ts_ms")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
