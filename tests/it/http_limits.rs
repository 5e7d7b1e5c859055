//! The loopback HTTP listener against a local user who opens sockets and never finishes a request
//! (issue 13, item 9): the daemon runs under a descriptor limit like the unit's `LimitNOFILE=`, and
//! 1100 half-open sockets must not stop recording, `/healthz` or the control socket, must not eat
//! the daemon's descriptors, and must be closed by the server on its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::Value;

use crate::fixtures::{Daemon, heldar_command, stderr, wait_for};
use crate::fixtures::{camera, camera_toml};

/// The daemon's descriptor limit: what an unconfigured service gets, and below the sockets opened.
const DAEMON_NOFILE: u64 = 1024;
const SOCKETS: usize = 1100;
/// The HTTP listener may hold at most this many more descriptors than before the attack: the
/// other half of the limit stays for segment files, camera sockets and the database.
const MAX_GROWTH: usize = DAEMON_NOFILE as usize / 2;
/// Idle sockets are closed within this long (the header-read timeout plus slack).
const CLOSED_WITHIN: Duration = Duration::from_secs(25);

fn http_listen(d: &Daemon) -> SocketAddr {
    let out = d.cli(&["--json", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status["http_listen"].as_str().unwrap().parse().unwrap()
}

fn open_fds(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn segment_count(d: &Daemon) -> i64 {
    let c = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM segments WHERE camera_id = 'gate'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// `GET /healthz` on a fresh connection; `Err` says what went wrong.
fn healthz(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e} (after {answer:?})"))?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(answer)
    } else {
        Err(format!("answer: {answer:?}"))
    }
}

/// `heldar status` over the control socket, given up after `timeout`: a daemon out of descriptors
/// never accepts the connection, and the CLI would wait for ever.
fn status_within(d: &Daemon, timeout: Duration) -> Result<(), String> {
    let mut child = heldar_command()
        .arg("--socket")
        .arg(d.socket())
        .args(["--json", "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match wait_for(timeout, || child.try_wait().unwrap()) {
        Some(status) if status.success() => Ok(()),
        Some(status) => {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            Err(format!("{status}: {err}"))
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("no answer within {timeout:?}"))
        }
    }
}

/// The test holds every socket it opens: its own soft limit goes up to its hard limit.
fn raise_own_nofile(needed: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < needed {
        assert!(
            hard >= needed,
            "this test needs RLIMIT_NOFILE {needed}; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

#[test]
fn half_open_sockets_stop_neither_recording_nor_healthz_and_are_closed_by_the_server() {
    raise_own_nofile(SOCKETS as u64 + 512);
    let cam = camera();
    let d =
        Daemon::start_with_nofile(&camera_toml("gate", &cam.url("main"), 2), DAEMON_NOFILE).ready();
    let addr = http_listen(&d);
    healthz(addr).expect("healthz before the attack");
    wait_for(Duration::from_secs(30), || {
        (segment_count(&d) >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("no segment recorded before the attack; log:\n{}", d.log()));
    let before = open_fds(&d);

    // Half send nothing, half stop in the middle of the request line.
    let mut idle = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i} of the attack: {e}"));
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /healthz HT");
        }
        idle.push(s);
    }
    let opened = Instant::now();

    let mut problems = Vec::new();
    std::thread::sleep(Duration::from_secs(1));
    if let Err(e) = healthz(addr) {
        problems.push(format!("/healthz during the attack: {e}"));
    }
    if let Err(e) = status_within(&d, Duration::from_secs(10)) {
        problems.push(format!("control socket during the attack: {e}"));
    }
    let segments = segment_count(&d);
    let mut peak = open_fds(&d);
    let recorded = wait_for(Duration::from_secs(15), || {
        peak = peak.max(open_fds(&d));
        (segment_count(&d) >= segments + 2).then_some(())
    });
    if recorded.is_none() {
        problems.push(format!(
            "recording stopped: {} segments in 15 s during the attack",
            segment_count(&d) - segments
        ));
    }
    eprintln!("descriptors: {before} before the attack, {peak} at most during it");
    if peak > before + MAX_GROWTH {
        problems.push(format!(
            "the daemon held {peak} descriptors during the attack ({before} before, limit {DAEMON_NOFILE})"
        ));
    }

    // The server closes every idle socket on its own: a read sees end of file (or a reset).
    let mut open = 0;
    for s in &mut idle {
        let left = CLOSED_WITHIN.saturating_sub(opened.elapsed());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 512];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                // A 408 or 400 answer before the close is fine.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        if !closed {
            open += 1;
        }
    }
    if open > 0 {
        problems.push(format!(
            "{open} of {SOCKETS} idle sockets still open {CLOSED_WITHIN:?} after they were opened"
        ));
    }
    drop(idle);
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        problems.is_empty(),
        "{}\nlog tail:\n{}",
        problems.join("\n"),
        lines[lines.len().saturating_sub(12)..].join("\n")
    );
    healthz(addr).expect("healthz after the attack");
}

/// Reads one HTTP/1.1 response with a `content-length` body; `Err` says what went wrong.
fn read_response(s: &mut TcpStream) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                return Ok(String::from_utf8_lossy(&got[..end + 4 + length]).into_owned());
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A client whose request body trails its head (a worker on a busy box, descheduled between two
/// writes) and that is refused before the body is read (no token): the connection must stay
/// usable for its next request, as the answer did not say `connection: close`. Closing it made
/// the client's next request on the pooled connection fail with "peer disconnected".
#[test]
fn a_request_refused_before_its_body_arrived_leaves_the_connection_usable() {
    let d = Daemon::start("").ready();
    let addr = http_listen(&d);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = br#"{"camera": "nocam", "detections": []}"#;
    s.write_all(
        format!(
            "POST /api/v1/ai/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let first = read_response(&mut s).expect("the refusal");
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    s.write_all(body).unwrap();
    let closes = first.to_ascii_lowercase().contains("connection: close");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    match read_response(&mut s) {
        Ok(second) => assert!(second.starts_with("HTTP/1.1 200"), "{second}"),
        Err(e) => panic!(
            "the next request on the connection got no answer ({e}); the refusal said connection: close: {closes}"
        ),
    }
}
