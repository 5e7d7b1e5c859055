//! A camera's password goes only where it was given for (issue 13, item 12; invariant M3).
//!
//! - A change sends the published object back with `"password": "***"` to keep the stored
//!   password; that only holds while the stream URLs stay the same. A change that moves the camera
//!   (url, sub_url, vendor, address, port, channel) with `"***"` is refused, naming `password`:
//!   the password must be sent again. A change without `password` has none (a change replaces the
//!   camera whole).
//! - Credentials in a URL's query (`?user=x&password=...`) are refused like `user:pass@`, and the
//!   refusal does not repeat them: not in answers, MQTT messages, the audit trail or the log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fixtures::{Broker, BrokerSetup, Sub};
use crate::fixtures::{Daemon, heldar, stderr, stdout};
use crate::fixtures::{Http, token};

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

/// A daemon with an uplink, the test's MQTT client, and `ask`: publish a config change, wait for
/// its answer.
struct Rig {
    _broker: Broker,
    sub: Sub,
    d: Daemon,
}

impl Rig {
    fn start() -> Rig {
        let broker = Broker::start(BrokerSetup::default());
        let sub = Sub::start(broker.port, "fleet", &["heldar/test/#"], false);
        let d = Daemon::start(&format!(
            "[recording]\nmin_free = \"0\"\n[mqtt]\nurl = \"{}\"\n",
            broker.url()
        ))
        .ready();
        assert!(
            sub.wait("heldar/test/availability", Duration::from_secs(20), |g| g
                .text()
                == "online")
                .is_some()
        );
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
    let answer = http.call(
        "POST",
        "/api/v1/cameras",
        Some(&admin),
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("password"), "{}", answer.text());
    assert_eq!(stored(d, "gate"), (away.into(), Some("n3w-pass".into())));
    let body = json!({"id": "gate", "url": home, "username": "admin"});
    let answer = http.call(
        "POST",
        "/api/v1/cameras",
        Some(&admin),
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["has_password"], false);
    assert_eq!(stored(d, "gate"), (home.into(), None));
}

#[test]
fn credentials_in_a_url_query_are_refused_and_never_repeated() {
    const SECRET: &str = "Qu3ry-S3cret";
    let rig = Rig::start();
    let d = &rig.d;
    let http = Http::new(d);
    let admin = token(d, "admin");
    let mut answers = Vec::new();

    for url in [
        format!("rtsp://127.0.0.1:9/live?user=x&password={SECRET}"),
        format!("rtsp://127.0.0.1:9/live?channel=1&PWD={SECRET}"),
        // Refused for its scheme too: that refusal must not quote it either.
        format!("http://127.0.0.1:9/live?user=x&password={SECRET}"),
    ] {
        for key in ["url", "sub_url"] {
            let mut body = json!({"id": "leak", "url": "rtsp://127.0.0.1:9/main"});
            body[key] = url.clone().into();
            let answer = http.call(
                "POST",
                "/api/v1/cameras",
                Some(&admin),
                Some(body.to_string().as_bytes()),
            );
            assert_eq!(answer.status, 400, "{key} = {url}: {}", answer.text());
            assert!(answer.text().contains(key), "{}", answer.text());
            answers.push(answer.text());

            let a = rig.ask("leak", body.clone(), &format!("q-{key}-{}", answers.len()));
            assert_eq!(a["ok"], false, "{key} = {url}: {a}");
            assert_eq!(a["error"]["field"], key, "{a}");
        }
        let out = d.cli(&["cameras", "add", "leak2", "--url", &url]);
        assert!(!out.status.success(), "{url}: {}", stdout(&out));
        answers.push(format!("{}{}", stdout(&out), stderr(&out)));

        // Declared in the file: `config check` refuses it in the same words.
        let config = d.dir.path().join("check.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[[cameras]]\nid = \"c\"\nurl = \"{url}\"\n",
                d.dir.path().join("check").display()
            ),
        )
        .unwrap();
        let out = heldar(&["config", "check", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stdout(&out));
        assert!(stderr(&out).contains("url"), "{}", stderr(&out));
        answers.push(format!("{}{}", stdout(&out), stderr(&out)));
    }

    for path in ["/api/v1/cameras", "/api/v1/audit", "/api/v1/logs"] {
        answers.push(http.call("GET", path, Some(&admin), None).text());
    }
    for (i, text) in answers.iter().enumerate() {
        assert!(
            !text.contains(SECRET),
            "answer {i} repeats the secret: {text}"
        );
    }
    // What the box published, not the test's own requests.
    for g in rig.sub.all().iter().filter(|g| !g.topic.ends_with("/set")) {
        assert!(
            !g.text().contains(SECRET),
            "{} repeats the secret: {}",
            g.topic,
            g.text()
        );
    }
    assert!(!d.log().contains(SECRET), "the log repeats the secret");
}
