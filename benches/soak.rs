//! Soak: 8 cameras recording one shared 1280x720 25 fps 2 Mbit/s synthetic stream, the
//! reference motion worker at 5 fps on each camera's sub stream (320x180, as NVRs detect on the
//! sub stream), two zones per camera, and the MQTT uplink draining
//! to a real mosquitto with a subscriber, for 30 minutes. Every 10 s it samples the daemon's
//! RSS, open fds, threads, CPU, WAL size, outbox backlog and bytes written (its own meter by kind,
//! and `/proc/PID/io`); at the end it prints the slope of each over the last two thirds of the run
//! and the writes extrapolated to a day, then which tables and indexes the commits wrote (pages
//! per commit, from the WAL's frames), writes the samples as CSV and, with gnuplot installed,
//! plots them to PNG.
//!
//! Run: `cargo bench --bench soak` (HELDAR_SOAK_MINUTES, default 30; HELDAR_SOAK_OUT, the
//! directory for `soak.csv`, `soak.png` and the worker's `worker.log`, default `target/soak`;
//! HELDAR_SOAK_CONFIG, TOML appended to the daemon's config, such as
//! `$'[database]\ncommit_linger = "100ms"'` in bash: a table header ends its line).

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, Daemon, cpu_seconds};
use heldar_edge::media::synthetic::{SyntheticCamera, SyntheticSpec};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const CAMERAS: usize = 8;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One sample of the daemon.
#[derive(Clone, Debug, Default)]
struct Sample {
    minutes: f64,
    rss_mib: f64,
    fds: f64,
    threads: f64,
    cpu_s: f64,
    wal_mib: f64,
    backlog: f64,
    /// Bytes written since start, by the daemon's own meter.
    wal_written: f64,
    db_written: f64,
    segments_written: f64,
    /// The kernel's `write_bytes` for the daemon, as its status reports it.
    process_written: f64,
    mqtt_received: f64,
    outbox_seq: f64,
}

fn main() {
    let minutes: f64 = std::env::var("HELDAR_SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    let out = std::env::var_os("HELDAR_SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak"));
    std::fs::create_dir_all(&out).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    let camera = SyntheticCamera::start(
        SyntheticSpec {
            width: 1280,
            height: 720,
            fps: 25,
            gop_frames: 50,
            bitrate_kbps: 2000,
            video: None,
        },
        0,
    )
    .expect("synthetic camera");
    let broker = Broker::start();
    let received = Arc::new(AtomicU64::new(0));
    subscribe(broker.port, received.clone());
    let daemon = Daemon::start(scratch.path(), &config(&camera, broker.port));
    let api = daemon.http();
    let worker_log = std::fs::File::create(out.join("worker.log")).unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_heldar"))
        .args(["worker", "motion", "--poll", "2", "--api", &api])
        .stdout(Stdio::null())
        .stderr(worker_log)
        .spawn()
        .expect("heldar worker motion");
    println!(
        "soak: {CAMERAS} cameras (1280x720 25 fps 2 Mbit/s), motion worker at 5 fps each on the sub stream, 2 zones per camera, MQTT to mosquitto; {minutes} min, a sample every {} s",
        SAMPLE_EVERY.as_secs()
    );

    let started = Instant::now();
    let span = Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    while started.elapsed() < span {
        std::thread::sleep(SAMPLE_EVERY);
        if let Some(s) = sample(&daemon, started, &received) {
            samples.push(s);
        }
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let csv = out.join("soak.csv");
    write_csv(&csv, &samples);
    report(&samples);
    wal_profile(&daemon.dir.path().join("data/heldar.db"));
    plot(&csv, &out.join("soak.png"));
}

/// Which tables and indexes the commits in the WAL wrote, in pages per commit: where the
/// metadata's flash writes go. Each WAL frame names the page it holds, and SQLite's `dbstat`,
/// read from the live database, names the table or index that owns each page now (a page freed
/// and reused since counts for its new owner, which is rare within one WAL).
fn wal_profile(db: &Path) {
    let wal = std::fs::read(format!("{}-wal", db.display())).unwrap_or_default();
    if wal.len() < 32 {
        println!("no WAL profile: the WAL is empty");
        return;
    }
    let be = |at: usize| u32::from_be_bytes(wal[at..at + 4].try_into().unwrap());
    let page_size = be(8) as usize;
    let salts = &wal[16..24];
    // Frames of the WAL's current generation: after a checkpoint restarts the WAL, older
    // frames further on carry the previous salts.
    let (mut pages, mut commits, mut at) = (Vec::new(), 0u32, 32);
    while at + 24 + page_size <= wal.len() && &wal[at + 8..at + 16] == salts {
        pages.push(be(at));
        commits += u32::from(be(at + 4) != 0);
        at += 24 + page_size;
    }
    let owners = || -> rusqlite::Result<HashMap<u32, String>> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare("SELECT pageno, name FROM dbstat")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    let owner = match owners() {
        Ok(owner) => owner,
        Err(e) => {
            println!("no WAL profile: cannot read the database's pages: {e}");
            return;
        }
    };
    let mut by_owner: HashMap<&str, u32> = HashMap::new();
    for p in &pages {
        *by_owner
            .entry(owner.get(p).map_or("(free now)", String::as_str))
            .or_default() += 1;
    }
    let mut by_owner: Vec<_> = by_owner.into_iter().collect();
    by_owner.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let commits = commits.max(1) as f64;
    println!(
        "WAL pages per commit by owner ({} pages of {page_size} bytes in the WAL's last {commits} commits; {:.1} per commit):",
        pages.len(),
        pages.len() as f64 / commits
    );
    for (name, n) in by_owner.iter().take(12) {
        println!("  {:>7.2}  {name}", *n as f64 / commits);
    }
}

fn config(camera: &SyntheticCamera, mqtt_port: u16) -> String {
    let (url, sub_url) = (camera.url("main"), camera.url("sub"));
    let mut config = format!(
        "[recording]\nmin_free = \"0\"\n[http]\nlisten = \"127.0.0.1:0\"\nauth = false\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n"
    );
    if let Ok(extra) = std::env::var("HELDAR_SOAK_CONFIG") {
        config.push_str(&extra);
        config.push('\n');
    }
    for i in 0..CAMERAS {
        config.push_str(&format!(
            "[[cameras]]\nid = \"cam{i}\"\nurl = \"{url}\"\nsub_url = \"{sub_url}\"\n\
             [[tasks]]\ncamera = \"cam{i}\"\ntask_type = \"motion\"\nprofile = \"sub\"\nfps = 5\nwidth = 320\n\
             [[zones]]\ncamera = \"cam{i}\"\nname = \"cam{i}_right\"\nkind = \"region\"\n\
             points = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\ndwell_seconds = 2\n\
             [[zones]]\ncamera = \"cam{i}\"\nname = \"cam{i}_middle\"\nkind = \"line\"\n\
             points = [[0.5, 0.0], [0.5, 1.0]]\n"
        ));
    }
    config
}

fn sample(daemon: &Daemon, started: Instant, received: &AtomicU64) -> Option<Sample> {
    let pid = daemon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    let system = daemon.status();
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let backlog = system["outbox"]["consumers"]
        .as_array()
        .map(|cs| cs.iter().map(|c| number(&c["backlog"])).fold(0.0, f64::max))
        .unwrap_or(0.0);
    let written = &system["disk_writes"];
    Some(Sample {
        minutes: started.elapsed().as_secs_f64() / 60.0,
        rss_mib: field("VmRSS:") / 1024.0,
        fds,
        threads: field("Threads:"),
        cpu_s: cpu_seconds(pid),
        wal_mib: number(&system["store"]["wal_bytes"]) / (1 << 20) as f64,
        backlog,
        wal_written: number(&written["wal"]),
        db_written: number(&written["db"]),
        segments_written: number(&written["segments"]),
        process_written: number(&written["process"]),
        mqtt_received: received.load(Ordering::Relaxed) as f64,
        outbox_seq: number(&system["outbox"]["newest_seq"]),
    })
}

const COLUMNS: &str = "minutes,rss_mib,fds,threads,cpu_s,wal_mib,backlog,wal_written,db_written,segments_written,process_written,mqtt_received,outbox_seq";

fn row(s: &Sample) -> [f64; 13] {
    [
        s.minutes,
        s.rss_mib,
        s.fds,
        s.threads,
        s.cpu_s,
        s.wal_mib,
        s.backlog,
        s.wal_written,
        s.db_written,
        s.segments_written,
        s.process_written,
        s.mqtt_received,
        s.outbox_seq,
    ]
}

fn write_csv(path: &Path, samples: &[Sample]) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "{COLUMNS}").unwrap();
    for s in samples {
        let line: Vec<String> = row(s).iter().map(|v| format!("{v:.3}")).collect();
        writeln!(f, "{}", line.join(",")).unwrap();
    }
    println!("samples: {}", path.display());
}

/// Least-squares slope of `y` over minutes, per hour.
fn slope_per_hour(samples: &[Sample], y: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.minutes).sum::<f64>() / n;
    let my = samples.iter().map(&y).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|s| (s.minutes - mx) * (y(s) - my)).sum();
    let var: f64 = samples.iter().map(|s| (s.minutes - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var * 60.0 }
}

/// One figure of a sample.
type Field = fn(&Sample) -> f64;

fn report(samples: &[Sample]) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        println!("no samples");
        return;
    };
    let tail = &samples[samples.len() / 3..];
    let range = |y: Field| {
        let (lo, hi) = tail
            .iter()
            .map(y)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        (lo, hi)
    };
    println!(
        "{:<22} {:>10} {:>10} {:>16}   (last two thirds: {:.1}..{:.1} min)",
        "", "min", "max", "slope per hour", tail[0].minutes, last.minutes
    );
    let lines: [(&str, Field); 5] = [
        ("RSS MiB", |s| s.rss_mib),
        ("open fds", |s| s.fds),
        ("threads", |s| s.threads),
        ("WAL file MiB", |s| s.wal_mib),
        ("outbox backlog", |s| s.backlog),
    ];
    for (name, y) in lines {
        let (lo, hi) = range(y);
        println!(
            "{name:<22} {lo:>10.1} {hi:>10.1} {:>16.2}",
            slope_per_hour(tail, y)
        );
    }
    let minutes = last.minutes - first.minutes;
    let per_day = |a: f64, b: f64| (b - a) / minutes * 60.0 * 24.0 / 1e9;
    println!(
        "CPU: {:.1} % of one core",
        (last.cpu_s - first.cpu_s) / (minutes * 60.0) * 100.0
    );
    println!(
        "written per day at this rate: metadata {:.2} GB (WAL {:.2} GB, database {:.2} GB), segments {:.1} GB; /proc/PID/io write_bytes {:.1} GB",
        per_day(
            first.wal_written + first.db_written,
            last.wal_written + last.db_written
        ),
        per_day(first.wal_written, last.wal_written),
        per_day(first.db_written, last.db_written),
        per_day(first.segments_written, last.segments_written),
        per_day(first.process_written, last.process_written),
    );
    println!(
        "outbox records: {:.0} appended, MQTT messages received: {:.0}",
        last.outbox_seq - first.outbox_seq,
        last.mqtt_received - first.mqtt_received
    );
    // Eight cameras in motion append records every second; a minute without one is a stall,
    // and every figure after it describes an idle box.
    let minute = (60 / SAMPLE_EVERY.as_secs()) as usize + 1;
    if let Some(stalled) = samples
        .windows(minute)
        .find(|w| w[minute - 1].outbox_seq == w[0].outbox_seq)
    {
        println!(
            "STALLED: no record appended from {:.1} min on (the worker's log: worker.log)",
            stalled[0].minutes
        );
    }
}

fn plot(csv: &Path, png: &Path) {
    let script = format!(
        "set datafile separator ','\nset terminal pngcairo size 1200,800 font ',10'\nset output '{}'\n\
         set multiplot layout 2,2 title 'heldar soak: 8 cameras, motion worker at 5 fps each, MQTT'\n\
         set xlabel 'minutes'\nset key left top\n\
         set title 'memory'\nset ylabel 'MiB'\nset yrange [0:*]\n\
         plot '{csv}' using 1:2 with lines title 'RSS'\n\
         set title 'fds and threads'\nset ylabel 'count'\n\
         plot '{csv}' using 1:3 with lines title 'open fds', '' using 1:4 with lines title 'threads'\n\
         set title 'WAL file and outbox backlog'\nset ylabel 'MiB / records'\n\
         plot '{csv}' using 1:6 with lines title 'WAL MiB', '' using 1:7 with lines title 'backlog'\n\
         set title 'metadata written'\nset ylabel 'MB'\n\
         plot '{csv}' using 1:($8/1e6) with lines title 'WAL', '' using 1:($9/1e6) with lines title 'database'\n\
         unset multiplot\n",
        png.display(),
        csv = csv.display()
    );
    let script_path = png.with_extension("gp");
    std::fs::write(&script_path, script).unwrap();
    match Command::new("gnuplot").arg(&script_path).status() {
        Ok(s) if s.success() => println!("plot: {}", png.display()),
        _ => println!("no plot: gnuplot is not installed (apt install gnuplot-nox)"),
    }
}

/// The MQTT subscriber: counts every event the uplink delivers.
fn subscribe(port: u16, received: Arc<AtomicU64>) {
    let mut o = MqttOptions::new("soak-subscriber", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut connection) = Client::new(o, 1000);
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("heldar/bench/events/#", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
}
