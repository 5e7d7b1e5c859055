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

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    };
    let camera = SyntheticCamera::start(spec, 0).expect("synthetic camera");
    let url = camera.url("main");
    let ticks = clock_ticks();
    println!(
        "media benchmark: {url} (1280x720, 25 fps, 2 Mbit/s, GOP 2 s), {secs}s measured per line"
    );
    println!("{:<44} {:>14} {:>14}", "", "CPU-s/min", "peak RSS MiB");

    let dir = tempfile::tempdir().unwrap();
    let mut heldar = start_heldar(dir.path(), "one", &[url.as_str()]);
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
    let (h, f) = measure(&[&heldar, &ffmpeg], secs, ticks);
    println!("{:<44} {:>14.2} {:>14.1}", "heldar run, 1 camera", h.0, h.1);
    println!(
        "{:<44} {:>14.2} {:>14.1}",
        "ffmpeg -c copy -f segment, 1 camera", f.0, f.1
    );
    println!("{:<44} {:>14.2}", "heldar / ffmpeg CPU", h.0 / f.0);
    stop(&mut heldar);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();

    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 8).collect();
    let mut eight = start_heldar(dir.path(), "eight", &urls);
    let (e, _) = measure(&[&eight, &eight], secs, ticks);
    println!(
        "{:<44} {:>14.2} {:>14.1}",
        "heldar run, 8 cameras (whole daemon)", e.0, e.1
    );
    stop(&mut eight);
}

fn start_heldar(base: &Path, name: &str, urls: &[&str]) -> Child {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = format!(
        "device_id = \"bench\"\ndata_dir = \"{}\"\nlog_level = \"warn\"\n[recording]\nmin_free = \"0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[control]\nsocket = \"{}\"\ngroup = \"root\"\n",
        dir.join("data").display(),
        dir.join("heldar.sock").display()
    );
    for (i, url) in urls.iter().enumerate() {
        config.push_str(&format!(
            "[[cameras]]\nid = \"cam{i}\"\nurl = \"{url}\"\nsegment_seconds = 10\n"
        ));
    }
    std::fs::write(dir.join("heldar.toml"), config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_heldar"))
        .args(["run", "--config"])
        .arg(dir.join("heldar.toml"))
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .spawn()
        .expect("heldar run")
}

/// Waits for the recorders to connect, then returns per process (CPU-s per minute, peak RSS MiB).
fn measure(procs: &[&Child; 2], secs: u64, ticks: f64) -> ((f64, f64), (f64, f64)) {
    std::thread::sleep(Duration::from_secs(8));
    let before: Vec<u64> = procs.iter().map(|p| cpu_ticks(p.id())).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let result: Vec<(f64, f64)> = procs
        .iter()
        .zip(before)
        .map(|(p, b)| {
            let cpu_s = (cpu_ticks(p.id()) - b) as f64 / ticks;
            (cpu_s * 60.0 / secs as f64, peak_rss_mib(p.id()))
        })
        .collect();
    (result[0], result[1])
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the command name (which ends at ')').
    fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
