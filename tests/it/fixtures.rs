//! Test fixtures: real processes and real files, each cleaned up on drop.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `heldar` binary cargo built for these tests.
pub fn heldar_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_heldar"))
}

/// The `heldar` binary as a command. Under `cross/test.sh` the tests themselves run in
/// qemu-user, which cannot exec a foreign binary on its own: `HELDAR_TEST_RUNNER` (the qemu
/// command line) is put in front.
pub fn heldar_command() -> Command {
    run_through_runner(heldar_bin())
}

/// This test binary as a command (for tests whose child process is the test binary itself),
/// through `HELDAR_TEST_RUNNER` like [`heldar_command`].
pub fn test_binary_command() -> Command {
    run_through_runner(&std::env::current_exe().unwrap())
}

fn run_through_runner(program: &Path) -> Command {
    let runner = std::env::var("HELDAR_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    match parts.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(parts).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `heldar` with `args` to completion.
pub fn heldar(args: &[&str]) -> Output {
    heldar_command()
        .args(args)
        .env_remove("HELDAR_SOCKET")
        .output()
        .expect("run heldar")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon started from a config file in its own temp dir, with a fake systemd notify socket.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    notify: UnixDatagram,
    /// Every notify datagram received so far, in order.
    pub notifications: Vec<String>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// `RLIMIT_NOFILE` (soft and hard) the daemon is started with, as systemd's `LimitNOFILE=`
    /// sets it on a box; `None` inherits the test's own.
    nofile: Option<u64>,
}

impl Daemon {
    /// Writes a minimal config (plus `extra` TOML) into a fresh temp dir and starts the daemon.
    pub fn start(extra: &str) -> Daemon {
        Self::start_opts(extra, "root", &[])
    }

    /// Like [`Daemon::start`], with the control group and extra environment variables.
    pub fn start_opts(extra: &str, group: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::prepare(extra, group);
        d.spawn(env);
        d
    }

    /// Like [`Daemon::start`], with the data directory on a tmpfs of `size` (a disk that can
    /// really fill up). The daemon is stopped before the tmpfs goes: keep the `Tmpfs` after it.
    pub fn start_on_tmpfs(extra: &str, size: &str) -> (Daemon, Tmpfs) {
        let mut d = Self::prepare(extra, "root");
        let disk = Tmpfs::mount_at(&d.dir.path().join("data"), size);
        d.spawn(&[]);
        (d, disk)
    }

    /// Like [`Daemon::start`], with the data directory on a loop-mounted ext4 image of `size`
    /// mounted `errors=remount-ro`, as a box's data partition is. Keep the `Ext4` after it.
    pub fn start_on_ext4(extra: &str, size: &str) -> (Daemon, Ext4) {
        let mut d = Self::prepare(extra, "root");
        let disk = Ext4::mount_at(&d.dir.path().join("data"), size);
        d.spawn(&[]);
        (d, disk)
    }

    /// Like [`Daemon::start`], with the daemon's descriptor limit set to `nofile`.
    pub fn start_with_nofile(extra: &str, nofile: u64) -> Daemon {
        let mut d = Self::prepare(extra, "root");
        d.nofile = Some(nofile);
        d.spawn(&[]);
        d
    }

    /// The temp dir, config and notify socket of a daemon not started yet.
    fn prepare(extra: &str, group: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "device_id = \"test\"\ndata_dir = \"{}\"\n{extra}\n[http]\nlisten = \"127.0.0.1:0\"\n[control]\nsocket = \"{}\"\ngroup = \"{group}\"\n",
            dir.path().join("data").display(),
            dir.path().join("heldar.sock").display(),
        );
        std::fs::write(dir.path().join("heldar.toml"), config).unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Daemon {
            dir,
            child: None,
            notify,
            notifications: Vec::new(),
            log: Default::default(),
            nofile: None,
        }
    }

    /// Starts (again) the daemon on this dir's config.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let mut cmd = heldar_command();
        cmd.args(["run", "--config"])
            .arg(self.config_path())
            .env_remove("HELDAR_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(nofile) = self.nofile {
            // SAFETY: setrlimit is a plain system call, async-signal-safe, and touches no memory
            // shared with the parent.
            unsafe {
                cmd.pre_exec(move || {
                    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn heldar run");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        self.child = Some(child);
    }

    /// Starts the daemon again on the same dir and waits for `READY=1` (after it stopped or was
    /// killed), panicking with its log if it does not come.
    pub fn respawn(&mut self) {
        self.notifications.clear();
        self.spawn(&[]);
        assert!(
            self.wait_notify("READY=1", Duration::from_secs(20)),
            "no READY=1; log:\n{}",
            self.log()
        );
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("heldar.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("heldar.sock")
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Reads notify datagrams until one contains `needle` (a line such as `READY=1`).
    pub fn wait_notify(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if self
                .notifications
                .iter()
                .any(|n| n.lines().any(|l| l == needle))
            {
                return true;
            }
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.notifications
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        false
    }

    /// Starts and waits for `READY=1`, panicking with the daemon's log if it does not come.
    pub fn ready(mut self) -> Daemon {
        assert!(
            self.wait_notify("READY=1", Duration::from_secs(20)),
            "no READY=1; log:\n{}",
            self.log()
        );
        self
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_for(timeout, || child.try_wait().unwrap());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Stops the daemon (SIGTERM) and runs `heldar db check` on its database: what every fault
    /// test ends with, so a fault that left the file damaged fails the test that caused it.
    pub fn stop_and_check_db(&mut self) {
        self.signal(Signal::SIGTERM);
        assert!(
            self.wait_exit(Duration::from_secs(20)).is_some(),
            "the daemon did not stop"
        );
        let check = heldar(&[
            "db",
            "check",
            "--config",
            self.config_path().to_str().unwrap(),
        ]);
        assert!(
            check.status.success(),
            "heldar db check after the fault: {}{}",
            stdout(&check),
            stderr(&check)
        );
    }

    /// `heldar --socket <this daemon's socket> args...`
    pub fn cli(&self, args: &[&str]) -> Output {
        heldar_command()
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run heldar")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The harness shows a failed test's output: the daemon's side of the story with it.
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("daemon exited: {exited:?}; its last log lines:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small tmpfs mounted for one test (a disk that really fills up), unmounted on drop.
/// Needs root (CI and `make test` run as root here); anything else is a loud failure, not a skip.
pub struct Tmpfs {
    path: PathBuf,
    mounted: bool,
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// On a fresh temp dir.
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tmpfs::mount_at(dir.path(), size);
        t._dir = Some(dir);
        t
    }

    /// On `path` (created if missing).
    pub fn mount_at(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the fault tests need root): {}",
            stderr(&out)
        );
        Tmpfs {
            path: path.to_path_buf(),
            mounted: true,
            _dir: None,
        }
    }

    /// A plain (not lazy) unmount: it fails if anybody (the daemon) holds something open in it.
    pub fn unmount(&mut self) {
        let out = Command::new("umount").arg(&self.path).output().unwrap();
        assert!(out.status.success(), "umount: {}", stderr(&out));
        self.mounted = false;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a filler file until the filesystem is full, then gives `room` bytes back (small
    /// writes succeed, large ones fail: a disk nearly full); returns the filler's path.
    pub fn fill(&self, room: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
        // Smaller writes take the last partial block too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(room)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// An ext4 filesystem in a sparse image file, loop-mounted for one test; unmounted on drop.
/// Its kernel's `trigger_fs_error` knob makes it fail as a worn eMMC does: ext4 records an
/// error and, mounted `errors=remount-ro`, turns read-only under its writers.
pub struct Ext4 {
    image: tempfile::TempDir,
    path: PathBuf,
    mounted: bool,
}

impl Ext4 {
    pub fn mount_at(path: &Path, size: &str) -> Ext4 {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.img");
        run(Command::new("truncate").args(["-s", size]).arg(&file));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&file));
        std::fs::create_dir_all(path).unwrap();
        let mut disk = Ext4 {
            image,
            path: path.to_path_buf(),
            mounted: false,
        };
        disk.mount();
        disk
    }

    fn mount(&mut self) {
        run(Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(self.image.path().join("disk.img"))
            .arg(&self.path));
        self.mounted = true;
    }

    /// What ext4 does on a media error: the filesystem turns read-only under open files.
    pub fn fail(&self) {
        let source = run(Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.path));
        let device = Path::new(source.trim()).file_name().unwrap().to_owned();
        let knob = Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error");
        std::fs::write(&knob, "heldar fault test").unwrap();
    }

    /// What a technician does after: unmount, `e2fsck -fy`, mount again.
    pub fn repair(&mut self) {
        run(Command::new("umount").arg(&self.path));
        self.mounted = false;
        let out = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(self.image.path().join("disk.img"))
            .output()
            .unwrap();
        // 0: clean, 1: errors corrected.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck: {}",
            stderr(&out)
        );
        self.mount();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
    }
}

/// Runs a setup command, panicking with its error output if it fails; returns its stdout.
fn run(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?}: {}", stderr(&out));
    stdout(&out)
}
