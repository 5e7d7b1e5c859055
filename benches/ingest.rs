//! Ingest and frames: durable detections/s and batches/s through `POST /api/v1/ai/events` (10
//! detections per batch) at 1, 8 and 64 concurrent HTTP clients with p50/p99 answer latency,
//! beside SQLite FULL with 100-row transactions on the same filesystem in the same run; the
//! frame endpoint's requests/s and CPU per served frame; and the sampler's CPU for a 720p25
//! stream decoding keyframes only (0.5 fps on a 2 s GOP) against a full decode (5 fps).
//!
//! Run: `cargo bench --bench ingest` (HELDAR_BENCH_SECS sets each span, default 10; the sampler
//! lines take 3 × 30 s). `cargo bench --bench ingest -- posts` (or `frames`, `sampler`) runs one
//! part.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, cpu_seconds, raw_sqlite};
use heldar_edge::media::synthetic::{SyntheticCamera, SyntheticSpec};
use serde_json::json;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn main() {
    let secs: u64 = std::env::var("HELDAR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let span = Duration::from_secs(secs);
    let base = std::env::var_os("HELDAR_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&base).unwrap();
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    println!("ingest benchmark in {} ({secs}s per line)", base.display());
    if run("posts") {
        posts(scratch.path(), span);
    }
    if run("frames") {
        frames(scratch.path(), span);
    }
    if run("sampler") {
        sampler_cpu(scratch.path());
    }
}

/// Batches through the ingest endpoint at 1, 8 and 64 clients, beside the raw SQLite limit.
fn posts(base: &std::path::Path, span: Duration) {
    let limit = raw_sqlite(base, "raw.db", 100, span);
    println!(
        "{:<46} {:>12.0} rows/s",
        "raw SQLite FULL, 100 rows per transaction", limit
    );

    let daemon = Daemon::start(
        base,
        "[http]\nlisten = \"127.0.0.1:0\"\nauth = false\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\nrecord = false\n",
    );
    let url = daemon.http();
    println!(
        "{:<22} {:>12} {:>10} {:>9} {:>9} {:>13}",
        "clients", "detections/s", "batches/s", "p50 ms", "p99 ms", "CPU ms/batch"
    );
    for clients in [1usize, 8, 64] {
        let cpu0 = cpu_seconds(daemon.pid());
        let (batches, mut latencies) = post_for(&url, clients, span);
        let cpu_ms = (cpu_seconds(daemon.pid()) - cpu0) * 1000.0 / batches.max(1) as f64;
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        let per_s = batches as f64 / span.as_secs_f64();
        println!(
            "{:<22} {:>12.0} {:>10.0} {:>9.1} {:>9.1} {:>13.3}   {:.0}% of the SQLite limit",
            format!("{clients} HTTP clients"),
            per_s * 10.0,
            per_s,
            pct(0.5),
            pct(0.99),
            cpu_ms,
            100.0 * per_s * 10.0 / limit
        );
    }
}

/// Posts 10-detection batches from `clients` threads for `span`; returns batches acknowledged
/// and every answer's latency in ms.
fn post_for(url: &str, clients: usize, span: Duration) -> (u64, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (url, stop) = (url.to_string(), stop.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let detections: Vec<_> = (0..10)
                        .map(|i| json!({"label": "person", "confidence": 0.9, "bbox": [0.1, 0.1, 0.2, 0.3], "track_id": i.to_string()}))
                        .collect();
                    let body = json!({"camera_id": "gate", "task_type": "detect", "frame_id": format!("{c}-{n}-{}", rand_suffix()), "detections": detections});
                    let started = Instant::now();
                    if let Ok(r) = agent.post(format!("{url}/api/v1/ai/events")).send_json(&body)
                        && r.status().is_success()
                    {
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(span);
    stop.store(true, Ordering::Relaxed);
    let latencies: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    (latencies.len() as u64, latencies)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Requests/s of the frame endpoint and CPU per served frame, 8 clients on one sampled camera.
fn frames(base: &std::path::Path, span: Duration) {
    let camera = SyntheticCamera::start(SyntheticSpec::default(), 0).unwrap();
    let daemon = Daemon::start(
        base,
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nauth = false\n[[cameras]]\nid = \"gate\"\nurl = \"{}\"\nrecord = false\n\
             [[tasks]]\ncamera = \"gate\"\ntask_type = \"detect\"\nprofile = \"main\"\nfps = 5\nwidth = 640\n",
            camera.url("main")
        ),
    );
    let url = format!("{}/api/v1/cameras/gate/frame?profile=main", daemon.http());
    let probe = agent();
    while probe
        .get(&url)
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu0 = cpu_seconds(daemon.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut served = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut r) = agent.get(&url).call()
                        && r.status().is_success()
                    {
                        let stamp = r
                            .headers()
                            .get("x-frame-captured-at")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let _ = r.body_mut().read_to_vec();
                        served.push(stamp);
                    }
                }
                served
            })
        })
        .collect();
    std::thread::sleep(span);
    stop.store(true, Ordering::Relaxed);
    let served: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let cpu = cpu_seconds(daemon.pid()) - cpu0;
    let distinct: std::collections::HashSet<&String> = served.iter().collect();
    println!(
        "frame endpoint, 8 clients: {:.0} requests/s, {} distinct frames served {} times, {:.2} ms of daemon CPU per request (sampling included)",
        served.len() as f64 / span.as_secs_f64(),
        distinct.len(),
        served.len(),
        cpu * 1000.0 / served.len().max(1) as f64
    );
}

/// Daemon CPU for a 720p25 stream with no sampler, a keyframe-only sampler, and a full decode.
fn sampler_cpu(base: &std::path::Path) {
    let spec = SyntheticSpec {
        width: 1280,
        height: 720,
        fps: 25,
        gop_frames: 50,
        bitrate_kbps: 2000,
        video: None,
    };
    let camera = SyntheticCamera::start(spec, 0).unwrap();
    let mut baseline = 0.0;
    for (label, fps) in [
        ("stream only (no sampler)", None),
        ("sampler 0.5 fps, keyframes only", Some(0.5)),
        ("sampler 5 fps, full decode", Some(5.0)),
    ] {
        let task = fps
            .map(|f| format!("[[tasks]]\ncamera = \"gate\"\ntask_type = \"detect\"\nprofile = \"main\"\nfps = {f}\nwidth = 640\n"))
            .unwrap_or_default();
        let daemon = Daemon::start(
            base,
            &format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[[cameras]]\nid = \"gate\"\nurl = \"{}\"\nrecord = false\n{task}",
                camera.url("main")
            ),
        );
        std::thread::sleep(Duration::from_secs(8));
        let cpu0 = cpu_seconds(daemon.pid());
        std::thread::sleep(Duration::from_secs(30));
        let per_min = (cpu_seconds(daemon.pid()) - cpu0) * 2.0;
        if fps.is_none() {
            baseline = per_min;
        }
        println!(
            "{label:<36} {per_min:>6.2} CPU-s/min of 720p25 ({:+.2} over the stream alone)",
            per_min - baseline
        );
    }
}
