//! What a frame costs to hand to a worker on the box, by path, in one run: JPEG over the TCP port
//! (what every upstream worker does), raw RGB over TCP, raw RGB and grey over the API's Unix
//! socket (`http.socket`).
//!
//! One 1280x720 25 fps camera, one task sampling its main stream at 5 fps at full width. Each
//! path runs for the same span with one worker that takes every new frame: it waits about one
//! frame period, asks, and asks again every 5 ms until the capture time changes. Per path:
//! - daemon CPU per frame: the daemon's utime+stime over the span, minus the same span with no
//!   worker at all (the camera and its sampler), divided by the new frames the worker got;
//! - worker time per frame: from sending the request that brought a new frame to having its
//!   pixels in hand (JPEG decoded with jpeg-decoder, raw read into a buffer), p50 and p99.
//!
//! `cargo bench --bench frames` (`HELDAR_BENCH_SECS`, default 30 s per path).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, cpu_seconds};
use heldar_edge::media::synthetic::{SyntheticCamera, SyntheticSpec};

const FRAME_URL: &str = "/api/v1/cameras/gate/frame?profile=main";
const PERIOD: Duration = Duration::from_millis(200);

fn main() {
    let secs: u64 = std::env::var("HELDAR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let span = Duration::from_secs(secs);
    let base = std::env::var_os("HELDAR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&base).unwrap();
    let camera = SyntheticCamera::start(
        SyntheticSpec {
            width: 1280,
            height: 720,
            fps: 25,
            gop_frames: 25,
            bitrate_kbps: 2000,
            video: None,
        },
        0,
    )
    .unwrap();
    let socket = scratch.path().join("api.sock");
    let daemon = Daemon::start(
        scratch.path(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nauth = false\nsocket = \"{}\"\n\
             [[cameras]]\nid = \"gate\"\nurl = \"{}\"\nrecord = false\n\
             [[tasks]]\ncamera = \"gate\"\ntask_type = \"detect\"\nprofile = \"main\"\nfps = 5\nwidth = 1280\n",
            socket.display(),
            camera.url("main")
        ),
    );
    let tcp = daemon.http();
    let addr = tcp.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fetch(Path::new(""), &addr, "jpeg").is_none() {
        assert!(Instant::now() < deadline, "no frame within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));

    let cpu0 = cpu_seconds(daemon.pid());
    std::thread::sleep(span);
    let idle_cpu = cpu_seconds(daemon.pid()) - cpu0;
    println!(
        "frame paths: 1280x720 frames sampled at 5 fps, {secs} s per path; the camera and sampler alone: {:.2} CPU-s/min",
        idle_cpu * 60.0 / span.as_secs_f64()
    );
    println!(
        "{:<26} {:>7} {:>12} {:>16} {:>16}",
        "path", "frames", "bytes/frame", "daemon ms/frame", "worker ms p50/p99"
    );
    let mut results = Vec::new();
    for (label, path, format) in [
        ("JPEG over TCP", None, "jpeg"),
        ("RGB over TCP", None, "rgb"),
        ("RGB over the Unix socket", Some(&socket), "rgb"),
        ("grey over the Unix socket", Some(&socket), "gray"),
    ] {
        let where_ = path.map_or(Path::new(""), |p| p.as_path());
        let cpu0 = cpu_seconds(daemon.pid());
        let (frames, bytes, mut latencies) = worker(where_, &addr, format, span);
        let daemon_ms = (cpu_seconds(daemon.pid()) - cpu0 - idle_cpu) * 1000.0 / frames as f64;
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "{label:<26} {frames:>7} {:>12} {daemon_ms:>16.2} {:>9.2}/{:.2}",
            bytes / frames,
            at(0.5),
            at(0.99)
        );
        results.push((label, daemon_ms, at(0.5)));
    }
    let (jpeg, raw) = (results[0], results[2]);
    println!(
        "JPEG over TCP against RGB over the Unix socket: {:.1}x the daemon CPU, {:.1}x the worker's time per frame",
        jpeg.1 / raw.1.max(1e-6),
        jpeg.2 / raw.2.max(1e-6)
    );
}

/// Takes every new frame for `span`: frames, bytes, and ms from request to pixels of each.
fn worker(socket: &Path, addr: &str, format: &str, span: Duration) -> (u64, u64, Vec<f64>) {
    let started = Instant::now();
    let (mut frames, mut bytes, mut latencies) = (0u64, 0u64, Vec::new());
    let mut last = String::new();
    while started.elapsed() < span {
        let asked = Instant::now();
        let Some((captured, body)) = fetch(socket, addr, format) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if captured == last {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if format == "jpeg" {
            let mut decoder = jpeg_decoder::Decoder::new(body.as_slice());
            let pixels = decoder.decode().expect("a JPEG");
            assert!(pixels.len() >= 1280 * 720 * 3);
        }
        latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
        frames += 1;
        bytes += body.len() as u64;
        last = captured;
        std::thread::sleep(PERIOD - Duration::from_millis(20));
    }
    (frames, bytes, latencies)
}

/// One frame over TCP (`socket` empty) or the Unix socket: its capture time and body. A new
/// connection per request for both, so neither path is favoured by keep-alive.
fn fetch(socket: &Path, addr: &str, format: &str) -> Option<(String, Vec<u8>)> {
    let target = if format == "jpeg" {
        FRAME_URL.to_string()
    } else {
        format!("{FRAME_URL}&format={format}")
    };
    let request = format!("GET {target} HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n");
    if socket.as_os_str().is_empty() {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        answer(s)
    } else {
        let mut s = UnixStream::connect(socket).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        answer(s)
    }
}

/// Reads an HTTP/1.1 answer with a content length: the capture time and the body of a 200.
fn answer(stream: impl Read) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let ok = line.starts_with("HTTP/1.1 200");
    let (mut length, mut captured) = (0usize, String::new());
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "x-frame-captured-at" => captured = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    ok.then_some((captured, body))
}
