//! The daemon as systemd runs it: notify protocol, watchdog, signals, boot records, the control
//! socket and its access check.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::fixtures::{Daemon, heldar_bin, stderr, stdout};

fn status_json(d: &Daemon) -> serde_json::Value {
    let out = d.cli(&["--json", "status"]);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn sigterm_stops_cleanly_within_the_grace_period() {
    let mut d = Daemon::start("").ready();
    let s = status_json(&d);
    assert_eq!(s["device_id"], "test");
    assert_eq!(
        s["store"]["schema_version"],
        heldar_edge::store::LATEST_VERSION
    );
    assert_eq!(s["boots"]["total"], 1);
    assert!(s["boots"]["previous_clean"].is_null(), "first start");

    let human = d.cli(&["status"]);
    assert!(human.status.success());
    let text = stdout(&human);
    for needle in [
        "heldar 0.1.0 on test",
        "uptime",
        "database",
        "queue 0",
        "http://127.0.0.1:",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    // The HTTP probes answer on the bound port.
    let addr: std::net::SocketAddr = s["http_listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz").0, 200);

    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(heldar_edge::daemon::GRACE + Duration::from_secs(2))
        .expect("exited within the grace period");
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    assert!(d.wait_notify("STOPPING=1", Duration::from_secs(1)));
    assert!(!d.socket().exists(), "socket removed on a clean stop");

    // The next start knows the previous run stopped cleanly.
    d.spawn(&[]);
    let s = wait_boots(&d, 2);
    assert_eq!(s["boots"]["previous_clean"], true);
    assert_eq!(s["boots"]["unclean"], 0);
}

#[test]
fn sigkill_is_recorded_as_an_unclean_stop_and_the_stale_socket_replaced() {
    let mut d = Daemon::start("").ready();
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(
        d.socket().exists() && d.api_socket().exists(),
        "a killed daemon leaves its socket files behind"
    );
    d.spawn(&[]);
    let s = wait_boots(&d, 2);
    assert!(
        std::os::unix::net::UnixStream::connect(d.api_socket()).is_ok(),
        "the stale API socket was replaced by a live one"
    );
    assert_eq!(s["boots"]["previous_clean"], false);
    assert_eq!(s["boots"]["unclean"], 1);
    assert!(
        d.log().contains("did not stop cleanly"),
        "the operator is told:\n{}",
        d.log()
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let first = Daemon::start("").ready();
    let out = crate::fixtures::heldar_command()
        .args(["run", "--config"])
        .arg(first.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another heldar daemon is answering on"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_where_a_socket_should_be_is_refused_and_kept() {
    let mut d = Daemon::start("").ready();
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        !d.api_socket().exists(),
        "a clean stop removes its API socket:\n{}",
        d.log()
    );
    std::fs::write(
        d.api_socket(),
        "not a socket: a mistyped path must cost no file",
    )
    .unwrap();
    let out = crate::fixtures::heldar_command()
        .args(["run", "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot bind http.socket")
            && stderr(&out).contains("exists and is not a socket"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(d.api_socket()).unwrap(),
        "not a socket: a mistyped path must cost no file"
    );
}

#[test]
fn watchdog_is_pinged_while_the_store_commits() {
    let mut d = Daemon::start_opts("", "root", &[("WATCHDOG_USEC", "400000")]).ready();
    let pings = |d: &Daemon| {
        d.notifications
            .iter()
            .filter(|n| n.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    assert!(d.wait_notify("WATCHDOG=1", Duration::from_secs(5)));
    let first = pings(&d);
    std::thread::sleep(Duration::from_millis(700));
    d.wait_notify("never", Duration::from_millis(300));
    assert!(pings(&d) > first, "pings keep coming");
    let s = status_json(&d);
    assert!(
        s["store"]["commits"].as_u64().unwrap() >= 2,
        "each ping rode on a commit"
    );
}

#[test]
fn control_socket_refuses_callers_outside_root_and_the_group() {
    // Group "daemon" (gid 1) exists on every Debian system: callers in it may use the CLI.
    let d = Daemon::start_opts("", "daemon", &[]).ready();
    // Let unprivileged users reach the socket file itself, so the daemon's own check decides.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();

    let as_nobody = |groups: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"]);
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            cmd.arg(format!("--groups={}", groups.join(",")));
        }
        cmd.arg(heldar_bin())
            .arg("--socket")
            .arg(d.socket())
            .arg("status")
            .output()
            .expect("setpriv (util-linux)")
    };
    let refused = as_nobody(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        stderr(&refused).trim_end(),
        "error: uid 65534 may not use heldar: run as root or as a member of group \"daemon\""
    );
    let allowed = as_nobody(&["1"]);
    assert!(
        allowed.status.success(),
        "a member of the group may: {}",
        stderr(&allowed)
    );
    assert!(d.log().contains("control socket refused a caller"));
}

/// Polls status until the boot count reaches `n` (the restarted daemon is up).
fn wait_boots(d: &Daemon, n: u64) -> serde_json::Value {
    crate::fixtures::wait_for(Duration::from_secs(20), || {
        let out = d.cli(&["--json", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["boots"]["total"].as_u64() == Some(n)).then_some(v)
    })
    .unwrap_or_else(|| panic!("daemon did not come back; log:\n{}", d.log()))
}

/// A minimal HTTP/1.1 GET, enough for probes.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, buf)
}
