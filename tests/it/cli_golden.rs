//! Golden files for the CLI's output against a running daemon: `tests/golden/<name>.txt`.
//!
//! Human output is compared after masking what changes from run to run (digits, the temp
//! directory); `--json` output is compared as its set of key paths, which is what scripts
//! depend on. `UPDATE_GOLDEN=1 cargo test cli_golden` rewrites the files; review the diff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::fixtures::{Daemon, heldar, stderr, stdout, wait_for};
use crate::fixtures::{Http, token};
use crate::fixtures::{camera, camera_toml};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Masks what varies between runs: the temp dir becomes `<DIR>`, digit runs `N` (counts, times,
/// ids), sizes `<SIZE>` (a WAL may be bytes or KiB), durations `<DURATION>`, and runs of spaces
/// one space (column padding follows the width of the masked numbers).
fn mask(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.display().to_string(), "<DIR>");
    let mut masked = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                masked.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            masked.push(c);
        }
    }
    for unit in ["N.N GiB", "N.N MiB", "N.N KiB", "N B"] {
        masked = masked.replace(unit, "<SIZE>");
    }
    for span in ["Nd Nh", "Nh Nm", "Nm Ns"] {
        masked = masked.replace(span, "<DURATION>");
    }
    masked = masked.replace("uptime     Ns", "uptime <DURATION>");
    masked
        .lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect()
}

/// Every key path of a JSON document (`a.b[].c`), one per line, sorted.
fn key_paths(v: &Value) -> String {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(p.clone());
                    walk(v, &p, out);
                }
            }
            Value::Array(a) => {
                for v in a {
                    walk(v, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut paths = BTreeSet::new();
    walk(v, "", &mut paths);
    paths.into_iter().map(|p| p + "\n").collect()
}

/// `--json` output: one document, or JSON lines (`events tail`).
fn json_paths(text: &str) -> String {
    let docs: Vec<Value> = match serde_json::from_str(text) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect(),
    };
    key_paths(&Value::Array(docs))
}

fn check(name: &str, actual: &str, failures: &mut Vec<String>) {
    let path = golden_dir().join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{name}: output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ));
    }
}

#[test]
fn cli_output_matches_the_golden_files() {
    let cam = camera();
    let d = Daemon::start(&format!(
        "{}[[tasks]]\ncamera = \"cam\"\ntask_type = \"motion\"\nprofile = \"main\"\nfps = 1\n\
         [[zones]]\ncamera = \"cam\"\nname = \"door\"\nkind = \"region\"\n\
         points = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0]]\n",
        camera_toml("cam", &cam.url("main"), 2)
    ))
    .ready();
    // A steady state: the camera recording with a segment, the sampler delivering frames.
    wait_for(Duration::from_secs(60), || {
        let s: Value = serde_json::from_slice(&d.cli(&["--json", "status"]).stdout).ok()?;
        let recording = s["cameras"][0]["state"] == "recording"
            && !s["cameras"][0]["last_segment_at"].is_null()
            && s["cameras"][0]["fps"].is_number();
        let sampling = s["samplers"][0]["state"] == "sampling";
        (recording && sampling).then_some(())
    })
    .expect("camera recording and sampler sampling");
    let created = d.cli(&["token", "create", "--role", "viewer", "--name", "golden"]);
    assert!(created.status.success(), "{}", stderr(&created));
    // One detection batch, so `events tail` has a record to print.
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    let post = http.post(
        "/api/v1/ai/events",
        Some(&worker),
        &serde_json::json!({"camera_id": "cam", "task_type": "motion", "frame_id": "g1",
                            "detections": [{"label": "motion", "confidence": 0.9,
                                            "bbox": [0.1, 0.1, 0.2, 0.2], "track_id": "t1"}]}),
    );
    assert_eq!(post.status, 200);
    wait_for(Duration::from_secs(20), || {
        let o: Value =
            serde_json::from_slice(&d.cli(&["--json", "outbox", "status"]).stdout).ok()?;
        (o["consumers"][0]["backlog"] == 0).then_some(())
    })
    .expect("the zone engine took the record");

    let dir = d.dir.path().to_path_buf();
    let commands: &[(&str, &[&str])] = &[
        ("status", &["status"]),
        ("cameras-list", &["cameras", "list"]),
        ("zones-list", &["zones", "list"]),
        ("outbox-status", &["outbox", "status"]),
        ("token-list", &["token", "list"]),
        ("audit", &["audit", "-n", "1"]),
        (
            "events-tail",
            &["events", "tail", "-n", "1", "--kind", "detection"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, args) in commands {
        let human = d.cli(args);
        assert!(human.status.success(), "{name}: {}", stderr(&human));
        check(name, &mask(&stdout(&human), &dir), &mut failures);
        let mut json_args = vec!["--json"];
        json_args.extend_from_slice(args);
        let json = d.cli(&json_args);
        assert!(json.status.success(), "{name} --json: {}", stderr(&json));
        check(
            &format!("{name}.json-keys"),
            &json_paths(&stdout(&json)),
            &mut failures,
        );
    }
    let unknown = d.cli(&["cameras", "test", "nosuch"]);
    assert!(!unknown.status.success());
    check(
        "error-unknown-camera",
        &mask(&stderr(&unknown), &dir),
        &mut failures,
    );

    // Offline commands, on the same files once the daemon stopped (its open segment closed).
    let mut d = d;
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    let config = d.config_path();
    let offline: &[(&str, Vec<&str>)] = &[
        (
            "config-check",
            vec!["config", "check", config.to_str().unwrap()],
        ),
        (
            "db-check",
            vec!["db", "check", "--config", config.to_str().unwrap()],
        ),
    ];
    for (name, args) in offline {
        let out = heldar(args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        check(name, &mask(&stdout(&out), &dir), &mut failures);
    }
    // Errors are one line that says what to do.
    let missing = heldar(&["--socket", "/nonexistent/heldar.sock", "status"]);
    assert_eq!(missing.status.code(), Some(1));
    check("error-no-daemon", &stderr(&missing), &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
