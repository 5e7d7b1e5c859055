//! Helpers shared by the benchmarks: the raw SQLite limit of a filesystem, process CPU and
//! memory readings, and a daemon started from a config snippet.

#![allow(dead_code)] // Each benchmark uses a different subset.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bench (
    id INTEGER PRIMARY KEY, camera TEXT NOT NULL, label TEXT NOT NULL, confidence REAL NOT NULL, bbox TEXT NOT NULL)";
pub const INSERT: &str =
    "INSERT INTO bench (camera, label, confidence, bbox) VALUES (?1, ?2, ?3, ?4)";

/// Rows per second SQLite commits in WAL mode with `synchronous=FULL`, `rows_per_tx` at a time.
pub fn raw_sqlite(dir: &Path, name: &str, rows_per_tx: usize, span: Duration) -> f64 {
    let mut conn = Connection::open(dir.join(name)).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
        .unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    let start = Instant::now();
    let mut rows = 0u64;
    while start.elapsed() < span {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx.prepare_cached(INSERT).unwrap();
            for i in 0..rows_per_tx {
                stmt.execute(params![
                    "gate",
                    "person",
                    0.9,
                    format!("[0.{i},0.2,0.3,0.4]")
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        rows += rows_per_tx as u64;
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_of_stat(&format!("/proc/{pid}/stat"))
}

/// utime + stime of one thread of a process, in seconds.
pub fn cpu_seconds_of_task(pid: u32, tid: u32) -> f64 {
    cpu_of_stat(&format!("/proc/{pid}/task/{tid}/stat"))
}

fn cpu_of_stat(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    ticks as f64 / clock_ticks()
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `heldar run` on a fresh data dir with `extra` config; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(base: &Path, extra: &str) -> Daemon {
        Self::start_in(tempfile::tempdir_in(base).unwrap(), extra)
    }

    /// Starts on `dir`, whose `data/` may already hold a database.
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Daemon {
        let config = format!(
            "device_id = \"bench\"\ndata_dir = \"{}\"\nlog_level = \"warn\"\n{extra}\n\
             [control]\nsocket = \"{}\"\ngroup = \"root\"\n",
            dir.path().join("data").display(),
            dir.path().join("heldar.sock").display()
        );
        std::fs::write(dir.path().join("heldar.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_heldar"))
            .args(["run", "--config"])
            .arg(dir.path().join("heldar.toml"))
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .spawn()
            .expect("heldar run");
        Daemon { child, dir }
    }

    /// The HTTP address the daemon bound, once it answers.
    pub fn http(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if let Some(listen) = status["http_listen"].as_str() {
                return format!("http://{listen}");
            }
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `heldar --json status` over the control socket; `Null` until the daemon answers.
    pub fn status(&self) -> serde_json::Value {
        Command::new(env!("CARGO_BIN_EXE_heldar"))
            .arg("--socket")
            .arg(self.dir.path().join("heldar.sock"))
            .args(["--json", "status"])
            .output()
            .ok()
            .and_then(|out| serde_json::from_slice(&out.stdout).ok())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mosquitto on a free loopback port with its own config directory; killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
                 max_queued_messages 0\nmax_inflight_messages 0\nlog_dest none\n"
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (make deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
