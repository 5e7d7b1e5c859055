//! A camera's password goes only where it was given for (issue 13, item 12; invariant M3).
//!
//! - A change sends the published object back with `"password": "***"` to keep the stored
//!   password; that only holds while the stream URLs stay the same. A change that moves the camera
//!   (url, sub_url, vendor, address, port, channel) with `"***"` is refused, naming `password`:
//!   the password must be sent again. A change without `password` has none (a change replaces the
//!   camera whole).
//! - A URL as cameras print it (`rtsp://user:pass@host/...`, issue 18) is accepted in the file,
//!   `heldar cameras add --url`, the API and MQTT: the user-info is split off at once, the
//!   password kept as the camera's secret, the URL stored without it.
//! - Credentials a vendor wants in the query (`?user=x&password=...`) stay in the URL the camera
//!   is asked for and are masked (`***`) in every answer, MQTT message, audit row and log line;
//!   the masked URL sent back keeps them only while it names the same stream.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fixtures::{Answer, Http, token};
use crate::fixtures::{Broker, BrokerSetup, Sub};
use crate::fixtures::{Daemon, camera_with_login, heldar, stderr, stdout, wait_state};

fn stored(d: &Daemon, id: &str) -> (String, Option<String>) {
    let c = rusqlite::Connection::open(d.dir.path().join("data/heldar.db")).unwrap();
    let (settings, password): (String, Option<String>) = c
        .query_row(
            "SELECT settings, password FROM cameras WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let settings: Value = serde_json::from_str(&settings).unwrap();
    (
        settings["url"].as_str().unwrap_or_default().into(),
        password,
    )
}

/// `POST /api/v1/cameras` with `body`, as an admin.
fn post_camera(http: &Http, admin: &str, body: &Value) -> Answer {
    http.call(
        "POST",
        "/api/v1/cameras",
        Some(admin),
        Some(body.to_string().as_bytes()),
    )
}

/// A daemon with an uplink, the test's MQTT client, and `ask`: publish a config change, wait for
/// its answer.
struct Rig {
    _broker: Broker,
    sub: Sub,
    d: Daemon,
}

impl Rig {
    fn start() -> Rig {
        Self::start_with("")
    }

    /// With `extra` config (cameras) after the uplink's.
    fn start_with(extra: &str) -> Rig {
        let broker = Broker::start(BrokerSetup::default());
        let sub = Sub::start(broker.port, "fleet", &["heldar/test/#"], false);
        let d = Daemon::start(&format!(
            "[recording]\nmin_free = \"0\"\n[mqtt]\nurl = \"{}\"\n{extra}",
            broker.url()
        ))
        .ready();
        sub.wait_online();
        Rig {
            _broker: broker,
            sub,
            d,
        }
    }

    fn ask(&self, id: &str, mut payload: Value, request_id: &str) -> Value {
        payload["request_id"] = request_id.into();
        self.sub.publish(
            &format!("heldar/test/config/camera/{id}/set"),
            payload.to_string(),
        );
        self.sub
            .wait("heldar/test/config/result", Duration::from_secs(20), |g| {
                g.json()["request_id"] == request_id
            })
            .unwrap_or_else(|| panic!("no answer to {request_id}"))
            .json()
    }
}

#[test]
fn a_stored_password_stays_with_the_stream_it_was_given_for() {
    let rig = Rig::start();
    let d = &rig.d;
    let home = "rtsp://127.0.0.1:9/none";
    let away = "rtsp://198.51.100.7:554/stream";
    let a = rig.ask(
        "gate",
        json!({"url": home, "record": false, "username": "admin", "password": "hunter2"}),
        "c1",
    );
    assert_eq!(a["ok"], true, "{a}");
    let published = a["applied"].clone();
    assert_eq!(published["password"], "***");

    // The published object sent back as it is, with another toggle: the password stays.
    let mut same = published.clone();
    same["detect"] = false.into();
    let a = rig.ask("gate", same, "c2");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(stored(d, "gate"), (home.into(), Some("hunter2".into())));

    // Moved to another host with "***": refused, asking for the password; nothing changed.
    let mut moved = published.clone();
    moved["url"] = away.into();
    let a = rig.ask("gate", moved.clone(), "c3");
    assert_eq!(a["ok"], false, "the password followed the camera: {a}");
    assert_eq!(a["error"]["code"], "invalid", "{a}");
    assert_eq!(a["error"]["field"], "password", "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send the password again"),
        "{a}"
    );
    assert_eq!(stored(d, "gate"), (home.into(), Some("hunter2".into())));

    // Moved with the password given: applied.
    moved["password"] = "n3w-pass".into();
    let a = rig.ask("gate", moved, "c4");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(stored(d, "gate"), (away.into(), Some("n3w-pass".into())));

    // The API follows the same rule: back home with "***" is refused, without a password the
    // camera has none.
    let http = Http::new(d);
    let admin = token(d, "admin");
    let body = json!({"id": "gate", "url": home, "username": "admin", "password": "***"});
    let answer = post_camera(&http, &admin, &body);
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("password"), "{}", answer.text());
    assert_eq!(stored(d, "gate"), (away.into(), Some("n3w-pass".into())));
    let body = json!({"id": "gate", "url": home, "username": "admin"});
    let answer = post_camera(&http, &admin, &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["has_password"], false);
    assert_eq!(stored(d, "gate"), (home.into(), None));
}

/// Everything the box answers or says that could repeat a secret: API answers, the audit trail,
/// the log, and what it published over MQTT (not the test's own requests).
fn assert_nowhere(rig: &Rig, answers: &[String], secrets: &[&str]) {
    let http = Http::new(&rig.d);
    let admin = token(&rig.d, "admin");
    let mut texts = answers.to_vec();
    for path in [
        "/api/v1/cameras",
        "/api/v1/audit",
        "/api/v1/logs",
        "/api/v1/system",
    ] {
        texts.push(http.call("GET", path, Some(&admin), None).text());
    }
    let listing = rig.d.cli(&["--json", "cameras", "list"]);
    texts.push(stdout(&listing));
    texts.push(rig.d.log());
    for g in rig.sub.all().iter().filter(|g| !g.topic.ends_with("/set")) {
        texts.push(format!("{}: {}", g.topic, g.text()));
    }
    for secret in secrets {
        for (i, text) in texts.iter().enumerate() {
            assert!(
                !text.contains(secret),
                "text {i} repeats {secret:?}: {text}"
            );
        }
    }
}

#[test]
fn a_url_with_user_and_password_records_and_its_password_appears_nowhere() {
    const PASSWORD: &str = "P@ss:w0rd/Gate";
    const ENCODED: &str = "P%40ss%3Aw0rd%2FGate";
    let cam = camera_with_login("admin", PASSWORD);
    let with_login = |mount: &str| {
        cam.url(mount)
            .replacen("rtsp://", &format!("rtsp://admin:{ENCODED}@"), 1)
    };
    let mut answers = Vec::new();

    // In the file: accepted with a warning that a password_file is better.
    let file_camera = format!(
        "[[cameras]]\nid = \"gate\"\nurl = \"{}\"\nsegment_seconds = 2\ndetect = false\n",
        with_login("main")
    );
    let check_dir = tempfile::tempdir().unwrap();
    let config = check_dir.path().join("heldar.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{file_camera}",
            check_dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = heldar(&["config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: cameras[0].url: holds the camera's password")
            && stderr(&out).contains("password_file"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("username = \"admin\""),
        "{}",
        stdout(&out)
    );
    answers.push(format!("{}{}", stdout(&out), stderr(&out)));

    let rig = Rig::start_with(&file_camera);
    let d = &rig.d;
    // The camera asks for the login: recording proves the password reached it, decoded.
    wait_state(d, "gate", "recording", Duration::from_secs(30));
    let (url, password) = stored(d, "gate");
    assert_eq!(url, cam.url("main"), "stored without the user-info");
    assert_eq!(password, None, "a file camera's password is never stored");

    // The API: the same URL records too, and its password is kept as the camera's secret.
    let http = Http::new(d);
    let admin = token(d, "admin");
    let body =
        json!({"id": "yard", "url": with_login("main"), "segment_seconds": 2, "detect": false});
    let answer = post_camera(&http, &admin, &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["username"], "admin");
    assert_eq!(answer.json()["has_password"], true);
    answers.push(answer.text());
    wait_state(d, "yard", "recording", Duration::from_secs(30));
    assert_eq!(stored(d, "yard"), (cam.url("main"), Some(PASSWORD.into())));

    // The CLI and MQTT alike.
    let out = d.cli(&[
        "cameras",
        "add",
        "porch",
        "--url",
        &with_login("sub"),
        "--no-record",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    answers.push(format!("{}{}", stdout(&out), stderr(&out)));
    assert_eq!(stored(d, "porch"), (cam.url("sub"), Some(PASSWORD.into())));
    let a = rig.ask(
        "door",
        json!({"url": with_login("sub"), "record": false}),
        "m1",
    );
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["applied"]["url"], cam.url("sub"), "{a}");
    assert_eq!(a["applied"]["username"], "admin", "{a}");
    assert_eq!(a["applied"]["password"], "***", "{a}");
    assert_eq!(stored(d, "door"), (cam.url("sub"), Some(PASSWORD.into())));

    // Pointed elsewhere with the password masked: refused, the password stays home.
    let a = rig.ask(
        "door",
        json!({"url": "rtsp://admin:***@198.51.100.7/sub", "record": false}),
        "m2",
    );
    assert_eq!(a["ok"], false, "{a}");
    assert_eq!(a["error"]["field"], "password", "{a}");
    // Two passwords, or two users, are refused rather than guessed between.
    let a = rig.ask(
        "door",
        json!({"url": with_login("sub"), "password": "other", "record": false}),
        "m3",
    );
    assert_eq!(a["error"]["field"], "password", "{a}");
    let a = rig.ask(
        "door",
        json!({"url": with_login("sub"), "username": "viewer", "record": false}),
        "m4",
    );
    assert_eq!(a["error"]["field"], "url", "{a}");
    assert_eq!(stored(d, "door"), (cam.url("sub"), Some(PASSWORD.into())));

    assert_nowhere(&rig, &answers, &[PASSWORD, ENCODED]);
}

#[test]
fn credentials_in_a_url_query_reach_the_camera_but_are_shown_masked() {
    const SECRET: &str = "Qu3ry-S3cret";
    let rig = Rig::start();
    let d = &rig.d;
    let http = Http::new(d);
    let admin = token(d, "admin");
    let mut answers = Vec::new();
    let home = format!("rtsp://127.0.0.1:9/live?user=x&password={SECRET}&channel=1");
    let shown = "rtsp://127.0.0.1:9/live?user=***&password=***&channel=1";

    // The API keeps the URL as the camera wants it and shows it masked.
    let body = json!({"id": "q", "url": home, "record": false});
    let answer = post_camera(&http, &admin, &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["main_url"], shown, "{}", answer.text());
    answers.push(answer.text());
    assert_eq!(
        stored(d, "q").0,
        home,
        "the camera is asked with its credentials"
    );

    // MQTT alike; the published object sent back as it is keeps them.
    let a = rig.ask("q", json!({"url": home, "record": false}), "q1");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["applied"]["url"], shown, "{a}");
    let mut same = a["applied"].clone();
    same["detect"] = false.into();
    let a = rig.ask("q", same.clone(), "q2");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(stored(d, "q").0, home);
    // Masked, but pointed at another host: refused, naming the URL.
    same["url"] = "rtsp://198.51.100.7/live?user=***&password=***&channel=1".into();
    let a = rig.ask("q", same, "q3");
    assert_eq!(a["ok"], false, "{a}");
    assert_eq!(a["error"]["field"], "url", "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send them again"),
        "{a}"
    );
    assert_eq!(stored(d, "q").0, home);

    let out = d.cli(&["cameras", "add", "q2", "--url", &home, "--no-record"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    answers.push(format!("{}{}", stdout(&out), stderr(&out)));

    // In the file: `config check` shows it masked.
    let config = d.dir.path().join("check.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[[cameras]]\nid = \"c\"\nurl = \"{home}\"\n",
            d.dir.path().join("check").display()
        ),
    )
    .unwrap();
    for json in [false, true] {
        let mut args = vec!["config", "check", config.to_str().unwrap()];
        if json {
            args.insert(0, "--json");
        }
        let out = heldar(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("password=***"), "{}", stdout(&out));
        answers.push(format!("{}{}", stdout(&out), stderr(&out)));
    }

    // A URL refused for its scheme, or for having none, does not quote its credentials either.
    for (i, bad) in [
        format!("http://127.0.0.1:9/live?user=x&password={SECRET}"),
        format!("127.0.0.1:9/live?user=x&password={SECRET}"),
        format!("admin:{SECRET}@127.0.0.1/live"),
    ]
    .iter()
    .enumerate()
    {
        let body = json!({"id": "leak", "url": bad});
        let answer = post_camera(&http, &admin, &body);
        assert_eq!(answer.status, 400, "{}", answer.text());
        answers.push(answer.text());
        let a = rig.ask("leak", json!({"url": bad}), &format!("q4-{i}"));
        assert_eq!(a["error"]["field"], "url", "{a}");
    }

    assert_nowhere(&rig, &answers, &[SECRET]);
}
