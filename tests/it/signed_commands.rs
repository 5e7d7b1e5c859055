//! Signed config changes and commands over MQTT (`mqtt.command_keys`), against a real mosquitto:
//! what a key of the box signed is applied; unsigned, forged, replayed, moved or other-box
//! messages are refused on `config/result`, audited, and change nothing, across a restart too.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::fixtures::*;

const RESULT: &str = "heldar/test/config/result";

/// The answers on `config/result` so far.
fn answers(sub: &Sub) -> Vec<Value> {
    sub.all()
        .iter()
        .filter(|g| g.topic == RESULT)
        .map(|g| g.json())
        .collect()
}

/// Publishes `payload` on `heldar/test/<topic>` and returns the answer it got.
fn send(sub: &Sub, topic: &str, payload: &str) -> Value {
    let before = answers(sub).len();
    sub.publish(&format!("heldar/test/{topic}"), payload.as_bytes().to_vec());
    wait_for(Duration::from_secs(20), || {
        answers(sub).get(before).cloned()
    })
    .unwrap_or_else(|| panic!("no answer to {topic}"))
}

/// Like [`send`] just after a (re)connect, when the box may not have subscribed yet (its
/// subscriptions are QoS 0, so the broker keeps nothing for it): sends again until answered.
fn send_after_reconnect(sub: &Sub, topic: &str, payload: &str) -> Value {
    for _ in 0..6 {
        let before = answers(sub).len();
        sub.publish(&format!("heldar/test/{topic}"), payload.as_bytes().to_vec());
        if let Some(a) = wait_for(Duration::from_secs(5), || answers(sub).get(before).cloned()) {
            return a;
        }
    }
    panic!("no answer to {topic} after the restart")
}

/// `heldar sign` for box `device`, as an operator runs it.
fn sign(key: &std::path::Path, device: &str, counter: u64, topic: &str, payload: &str) -> String {
    let counter = counter.to_string();
    let o = heldar(&[
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--device",
        device,
        "--counter",
        &counter,
        &format!("heldar/test/{topic}"),
        payload,
    ]);
    assert!(o.status.success(), "heldar sign: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn toggle(d: &Daemon, camera: &str, which: &str) -> Value {
    let cameras: Value = serde_json::from_str(&stdout(&d.cli(&["--json", "cameras", "list"])))
        .expect("cameras list --json");
    cameras
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == camera)
        .map(|c| c[which].clone())
        .unwrap_or(Value::Null)
}

fn refused(answer: &Value, code: &str) {
    assert_eq!(
        (answer["ok"].clone(), answer["error"]["code"].clone()),
        (Value::Bool(false), Value::String(code.into())),
        "{answer}"
    );
}

#[test]
fn only_commands_signed_for_this_box_by_its_keys_are_applied() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("operator.pem");
    let made = heldar(&["keys", "generate", "--out", key.to_str().unwrap()]);
    assert!(made.status.success(), "{}", stderr(&made));
    let public = stdout(&made).trim().to_string();
    // A second operator's key made with OpenSSL, signing with the documented openssl recipe.
    let openssl_key = keys.path().join("openssl.pem");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&openssl_key)
        .status()
        .unwrap();
    assert!(status.success());
    let openssl_public = stdout(&heldar(&["keys", "public", openssl_key.to_str().unwrap()]))
        .trim()
        .to_string();
    let stranger = keys.path().join("stranger.pem");
    assert!(
        heldar(&["keys", "generate", "--out", stranger.to_str().unwrap()])
            .status
            .success()
    );

    let broker = Broker::start(BrokerSetup::default());
    let sub = Sub::start(broker.port, "operator", &["heldar/test/#"], false);
    let mut d = Daemon::start(&format!(
        "[recording]\nmin_free = \"0\"\n{CAMERA}\n[mqtt]\nurl = \"{}\"\ncommand_keys = [\"{public}\", \"{openssl_public}\"]\n",
        broker.url()
    ))
    .ready();
    sub.wait_online();
    assert_eq!(toggle(&d, "gate", "record"), false);

    // Signed by the box's key: applied.
    let record_on = sign(&key, "test", 10, "cameras/gate/record/set", "ON");
    let a = send_after_reconnect(&sub, "cameras/gate/record/set", &record_on);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(toggle(&d, "gate", "record"), true);

    // Unsigned, forged, moved, for another box, by a stranger, replayed: refused, nothing changed.
    refused(&send(&sub, "cameras/gate/record/set", "OFF"), "unsigned");
    let mut forged: Value = serde_json::from_str(&record_on).unwrap();
    forged["payload"] = "OFF".into();
    refused(
        &send(&sub, "cameras/gate/record/set", &forged.to_string()),
        "bad_signature",
    );
    refused(
        &send(&sub, "cameras/gate/detect/set", &record_on),
        "bad_signature",
    );
    let other_box = sign(&key, "box2", 11, "cameras/gate/record/set", "OFF");
    refused(
        &send(&sub, "cameras/gate/record/set", &other_box),
        "wrong_device",
    );
    let by_stranger = sign(&stranger, "test", 12, "cameras/gate/record/set", "OFF");
    refused(
        &send(&sub, "cameras/gate/record/set", &by_stranger),
        "bad_signature",
    );
    refused(
        &send(&sub, "cameras/gate/record/set", &record_on),
        "replayed",
    );
    let older = sign(&key, "test", 9, "cameras/gate/record/set", "OFF");
    refused(&send(&sub, "cameras/gate/record/set", &older), "replayed");
    assert_eq!(toggle(&d, "gate", "record"), true);

    // Config changes and outputs are covered too: an unsigned zone is not created.
    let zone = r#"{"request_id": "z1", "camera": "gate", "kind": "region", "points": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]}"#;
    refused(&send(&sub, "config/zone/door/set", zone), "unsigned");
    refused(&send(&sub, "cmd/relay/1/set", "PULSE 100"), "unsigned");
    let zones = stdout(&d.cli(&["--json", "zones", "list"]));
    assert!(!zones.contains("door"), "{zones}");
    let signed_zone = sign(&key, "test", 20, "config/zone/door/set", zone);
    let a = send(&sub, "config/zone/door/set", &signed_zone);
    assert_eq!(
        (a["ok"].clone(), a["request_id"].clone()),
        (true.into(), "z1".into()),
        "{a}"
    );
    assert!(stdout(&d.cli(&["--json", "zones", "list"])).contains("door"));

    // The documented OpenSSL recipe signs what the box verifies.
    let message = keys.path().join("message.bin");
    std::fs::write(
        &message,
        b"heldar-command-v1\0test\0heldar/test/cameras/gate/detect/set\x005\0OFF",
    )
    .unwrap();
    let signature = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl pkeyutl -sign -inkey {} -rawin -in {} | base64 -w0",
            openssl_key.display(),
            message.display()
        ))
        .output()
        .unwrap();
    let envelope = serde_json::json!({
        "device": "test", "counter": 5, "payload": "OFF",
        "signature": String::from_utf8(signature.stdout).unwrap(),
    });
    let a = send(&sub, "cameras/gate/detect/set", &envelope.to_string());
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(toggle(&d, "gate", "detect"), false);

    // The counter survives a restart: the zone change captured off the broker stays refused.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    let seen = sub.all().len();
    d.respawn();
    // The new session's `online`, not the old one's: until then nothing is subscribed.
    assert!(
        wait_for(Duration::from_secs(30), || sub.all()[seen..]
            .iter()
            .any(|g| g.topic == "heldar/test/availability" && g.text() == "online")
            .then_some(()))
        .is_some(),
        "the daemon did not come back online"
    );
    refused(
        &send(&sub, "config/zone/door/set", &signed_zone),
        "replayed",
    );
    let record_off = sign(&key, "test", 21, "cameras/gate/record/set", "OFF");
    assert_eq!(
        send(&sub, "cameras/gate/record/set", &record_off)["ok"],
        true
    );
    assert_eq!(toggle(&d, "gate", "record"), false);

    // Every refusal is in the audit trail with its reason.
    let audit = stdout(&d.cli(&["--json", "audit", "-n", "100"]));
    for reason in [
        "this box accepts only signed commands",
        "a replay",
        "signed for box \\\"box2\\\"",
    ] {
        assert!(
            audit.contains(reason),
            "no audit row with {reason:?}: {audit}"
        );
    }
    d.stop_and_check_db();
}

#[test]
fn a_read_only_box_refuses_toggles_as_well_as_config_changes() {
    let broker = Broker::start(BrokerSetup::default());
    let sub = Sub::start(broker.port, "operator", &["heldar/test/#"], false);
    let d = daemon_with_broker(&format!(
        "url = \"{}\"\nconfig_topics = false",
        broker.url()
    ));
    sub.wait_online();
    refused(
        &send_after_reconnect(&sub, "cameras/gate/record/set", "ON"),
        "disabled",
    );
    refused(&send(&sub, "cmd/relay/1/set", "ON"), "disabled");
    assert_eq!(toggle(&d, "gate", "record"), false);
    let audit = stdout(&d.cli(&["--json", "audit"]));
    assert!(audit.contains("mqtt cameras/gate/record/set"), "{audit}");
    assert!(audit.contains("mqtt cmd/relay/1/set"), "{audit}");
}
