//! Recording cost: CPU seconds per minute of stream and peak RSS of `heldar run` recording one
//! 1280x720 25 fps 2 Mbit/s H.264 RTSP stream, side by side in the same run with ffmpeg recording
//! the same stream the way Frigate and the upstream kernel do
//! (`ffmpeg -rtsp_transport tcp -i URL -c copy -f segment -segment_time 10`); then the daemon
//! recording 8 cameras at once.
//!
//! The camera is the in-process synthetic one (gst-rtsp-server + x264); its encoding cost is in
//! this process and is not counted for either recorder. The 8 cameras are 8 RTSP sessions on the
//! same shared stream, so one encoder feeds them all.
//!
//! Run: `cargo bench --bench media` (HELDAR_BENCH_SECS sets the measured span, default 60).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, cpu_seconds, cpu_seconds_of_task, peak_rss_mib};
use heldar_edge::media::synthetic::{SyntheticCamera, SyntheticSpec};

fn main() {
    let secs: u64 = std::env::var("HELDAR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let spec = SyntheticSpec {
        width: 1280,
        height: 720,
        fps: 25,
        gop_frames: 50,
        bitrate_kbps: 2000,
        video: None,
    };
    let camera = SyntheticCamera::start(spec, 0).expect("synthetic camera");
    let url = camera.url("main");
    println!(
        "media benchmark: {url} (1280x720, 25 fps, 2 Mbit/s, GOP 2 s), {secs}s measured per line"
    );
    println!("{:<44} {:>14} {:>14}", "", "CPU-s/min", "peak RSS MiB");

    let dir = tempfile::tempdir().unwrap();
    let heldar = Daemon::start(dir.path(), &cameras(&[url.as_str()]));
    let ff_dir = dir.path().join("ffmpeg");
    std::fs::create_dir_all(&ff_dir).unwrap();
    let mut ffmpeg = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            &url,
        ])
        .args(["-c", "copy", "-f", "segment", "-segment_time", "10"])
        .arg(ff_dir.join("out%04d.mp4"))
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg (apt install ffmpeg)");
    let threads_before = thread_cpu(heldar.pid());
    let (h, f) = measure([heldar.pid(), ffmpeg.id()], secs);
    let threads_after = thread_cpu(heldar.pid());
    println!("{:<44} {:>14.2} {:>14.1}", "heldar run, 1 camera", h.0, h.1);
    println!(
        "{:<44} {:>14.2} {:>14.1}",
        "ffmpeg -c copy -f segment, 1 camera", f.0, f.1
    );
    println!("{:<44} {:>14.2}", "heldar / ffmpeg CPU", h.0 / f.0);
    print_threads(&threads_before, &threads_after, secs);
    drop(heldar);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();

    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 8).collect();
    let eight = Daemon::start(dir.path(), &cameras(&urls));
    let (e, _) = measure([eight.pid(), eight.pid()], secs);
    println!(
        "{:<44} {:>14.2} {:>14.1}",
        "heldar run, 8 cameras (whole daemon)", e.0, e.1
    );
    drop(eight);
}

/// CPU seconds per thread name of a process (threads of one name summed).
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *by_name.entry(name.trim().to_string()).or_insert(0.0) += cpu_seconds_of_task(pid, tid);
    }
    by_name
}

/// The heldar threads that spent CPU in the measured span, per minute of stream.
fn print_threads(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    secs: u64,
) {
    let mut spent: Vec<(String, f64)> = after
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                (t - before.get(name).unwrap_or(&0.0)) * 60.0 / secs as f64,
            )
        })
        .filter(|(_, t)| *t > 0.005)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, per_min) in spent {
        println!("{:<44} {per_min:>14.2}", format!("  heldar thread {name}"));
    }
}

/// Config for cameras recording `urls` in 10 s segments.
fn cameras(urls: &[&str]) -> String {
    let mut config =
        String::from("[recording]\nmin_free = \"0\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
    for (i, url) in urls.iter().enumerate() {
        config.push_str(&format!(
            "[[cameras]]\nid = \"cam{i}\"\nurl = \"{url}\"\nsegment_seconds = 10\n"
        ));
    }
    config
}

/// Waits for the recorders to connect, then returns per process (CPU-s per minute, peak RSS MiB).
fn measure(pids: [u32; 2], secs: u64) -> ((f64, f64), (f64, f64)) {
    std::thread::sleep(Duration::from_secs(8));
    let before = pids.map(cpu_seconds);
    std::thread::sleep(Duration::from_secs(secs));
    let per_minute = |i: usize| {
        (
            (cpu_seconds(pids[i]) - before[i]) * 60.0 / secs as f64,
            peak_rss_mib(pids[i]),
        )
    };
    (per_minute(0), per_minute(1))
}
