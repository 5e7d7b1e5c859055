//! A real Home Assistant (core 2024.1.6, from PyPI, in the venv `tests/home-assistant/setup.sh`
//! makes; `make test` runs it) against mosquitto and the daemon: every discovery config the box
//! publishes becomes an entity with a state, the devices carry name, model and version, the
//! switches and the snapshot button drive the box, entities go `unavailable` when the daemon
//! stops and come back when it starts, and Home Assistant logs no warning or error about any of
//! it (issue 18, part 1).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::fixtures::{Broker, BrokerSetup, Daemon, Http, Sub, camera, post_batches, token};
use crate::fixtures::{wait_for, wait_state};

/// Where the venv is: `HELDAR_HA_DIR`, or `target/home-assistant` of this checkout.
fn ha_dir() -> PathBuf {
    std::env::var_os("HELDAR_HA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/home-assistant"))
}

/// A Home Assistant core on a free port, with the MQTT integration set up for `mqtt_port`.
struct HomeAssistant {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
    token: String,
}

impl HomeAssistant {
    fn start(mqtt_port: u16) -> HomeAssistant {
        let venv = ha_dir().join("venv");
        assert!(
            venv.join("bin/hass").exists(),
            "no Home Assistant in {}: run tests/home-assistant/setup.sh (make test does)",
            venv.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/home-assistant/ha_config.py");
        let out = Command::new(venv.join("bin/python"))
            .arg(script)
            .arg("--config")
            .arg(&config)
            .args(["--http-port", &http_port.to_string()])
            .args(["--mqtt-port", &mqtt_port.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = std::fs::read_to_string(config.join("token.txt"))
            .unwrap()
            .trim()
            .to_string();
        let child = Command::new(venv.join("bin/hass"))
            .arg("-c")
            .arg(&config)
            .arg("--skip-pip")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ha = HomeAssistant {
            child,
            dir,
            base: format!("http://127.0.0.1:{http_port}"),
            token,
        };
        wait_for(Duration::from_secs(90), || ha.get("/api/").ok())
            .unwrap_or_else(|| panic!("Home Assistant's API never answered:\n{}", ha.log()));
        ha
    }

    fn get(&self, path: &str) -> Result<Value, ureq::Error> {
        ureq::get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()?
            .body_mut()
            .read_json()
    }

    /// Every entity's state, by entity id.
    fn states(&self) -> HashMap<String, Value> {
        self.get("/api/states")
            .map(|v| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        (
                            s["entity_id"].as_str().unwrap_or_default().to_string(),
                            s.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn state(&self, entity: &str) -> String {
        self.states()
            .get(entity)
            .and_then(|s| s["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn call(&self, service: &str, entity: &str) {
        ureq::post(format!("{}/api/services/{service}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(json!({ "entity_id": entity }))
            .unwrap_or_else(|e| panic!("{service} {entity}: {e}"));
    }

    fn wait_state(&self, entity: &str, want: &str) {
        wait_for(Duration::from_secs(30), || {
            (self.state(entity) == want).then_some(())
        })
        .unwrap_or_else(|| panic!("{entity} never became {want}: {}", self.state(entity)));
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config().join("home-assistant.log")).unwrap_or_default()
    }

    /// Stops it the way it saves its registries: SIGTERM, then waits.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        wait_for(Duration::from_secs(60), || {
            self.child.try_wait().ok().flatten()
        })
        .expect("Home Assistant stops on SIGTERM");
    }

    /// A registry file of `.storage`, as saved at the stop.
    fn registry(&self, name: &str, list: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.config().join(".storage").join(name)).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["data"][list].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The discovery configs the box holds retained now, by topic.
fn published(sub: &Sub) -> BTreeMap<String, Value> {
    let mut configs = BTreeMap::new();
    for g in sub.all() {
        if g.payload.is_empty() {
            configs.remove(&g.topic);
        } else {
            configs.insert(g.topic.clone(), g.json());
        }
    }
    configs
}

#[test]
fn home_assistant_makes_an_entity_of_every_discovery_config_and_drives_the_box() {
    let cam = camera();
    let broker = Broker::start(BrokerSetup::default());
    let discovery = Sub::start(
        broker.port,
        "configs",
        &["homeassistant/+/+/+/config"],
        false,
    );
    let box_topics = Sub::start(broker.port, "box", &["heldar/test/#"], false);
    let mut d = Daemon::start(&format!(
        "[recording]\nmin_free = \"0\"\n[mqtt]\nurl = \"{}\"\n\
         [[cameras]]\nid = \"gate\"\nname = \"Front gate\"\nurl = \"{}\"\nsegment_seconds = 2\n\
         [[zones]]\ncamera = \"gate\"\nname = \"right_half\"\nkind = \"region\"\n\
         points = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\n\
         [[zones]]\ncamera = \"gate\"\nname = \"door_line\"\nkind = \"line\"\n\
         points = [[0.5, 0.0], [0.5, 1.0]]\n\
         [[tasks]]\ncamera = \"gate\"\ntask_type = \"people\"\nprofile = \"main\"\nfps = 1\nwidth = 320\n",
        broker.url(),
        cam.url("main")
    ))
    .ready();
    wait_state(&d, "gate", "recording", Duration::from_secs(30));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    assert_eq!(post_batches(&http, &worker, "ha", 3, 1, None).len(), 3);

    let mut ha = HomeAssistant::start(broker.port);
    // The camera 9, its label 2, the region 4 (with its person entities), the line 1, the box 2.
    let configs = wait_for(Duration::from_secs(30), || {
        let c = published(&discovery);
        (c.len() >= 18).then_some(c)
    })
    .unwrap_or_else(|| panic!("the box published {:?}", published(&discovery).keys()));

    // Every config an entity, available, with a state.
    let entity_of = |config: &Value| config["default_entity_id"].as_str().unwrap().to_string();
    let not_available = || -> Vec<String> {
        let states = ha.states();
        configs
            .values()
            .map(entity_of)
            .filter(|e| states.get(e).is_none_or(|s| s["state"] == "unavailable"))
            .collect()
    };
    if wait_for(Duration::from_secs(60), || {
        not_available().is_empty().then_some(())
    })
    .is_none()
    {
        panic!(
            "not entities, or unavailable: {:?}\nlog:\n{}",
            not_available(),
            ha.log()
        );
    }
    ha.wait_state("binary_sensor.heldar_test_gate_online", "on");
    let states = ha.states();
    let record = &states["switch.heldar_test_gate_record"];
    assert_eq!(record["state"], "on");
    assert_eq!(record["attributes"]["friendly_name"], "Front gate Record");
    for number in [
        "sensor.heldar_test_outbox_backlog",
        "sensor.heldar_test_disk_used",
        "sensor.heldar_test_gate_person_count",
        "sensor.heldar_test_zone_right_half_occupancy",
        "sensor.heldar_test_gate_fps",
    ] {
        // The camera's first state can come before its first frame-rate window has closed.
        let numeric = wait_for(Duration::from_secs(15), || {
            let state = ha.state(number);
            state.parse::<f64>().is_ok().then_some(())
        });
        assert!(numeric.is_some(), "{number} is {}", ha.state(number));
    }
    let last = wait_for(Duration::from_secs(20), || {
        let s = ha.state("sensor.heldar_test_gate_last_segment");
        s.contains('T').then_some(s)
    });
    assert!(last.is_some(), "the last segment is a time");
    assert_eq!(
        states["sensor.heldar_test_zone_right_half_occupancy"]["attributes"]["friendly_name"],
        "Front gate Right half occupancy"
    );
    assert!(
        !states.contains_key("sensor.heldar_test_zone_door_line_occupancy"),
        "a line has no occupancy"
    );
    assert!(states.contains_key("event.heldar_test_zone_door_line_crossing"));

    // A person walking across the line fires the line's event entity.
    let start = chrono::Utc::now();
    for step in 0..20 {
        let x = 0.2 + 0.03 * step as f64;
        let ts = start + chrono::Duration::milliseconds(100 * step);
        let batch = json!({
            "camera_id": "gate", "task_type": "people", "frame_id": format!("walk-{step}"),
            "timestamp": ts.to_rfc3339(),
            "detections": [{"label": "person", "confidence": 0.9,
                            "bbox": [x - 0.02, 0.4, 0.04, 0.2], "track_id": "walker"}],
        });
        assert_eq!(
            http.post("/api/v1/ai/events", Some(&worker), &batch).status,
            200
        );
    }
    let crossing = wait_for(Duration::from_secs(30), || {
        let s = ha
            .states()
            .remove("event.heldar_test_zone_door_line_crossing")?;
        s["attributes"]["event_type"].is_string().then_some(s)
    })
    .unwrap_or_else(|| panic!("the line's event never fired:\n{}", ha.log()));
    let attributes = &crossing["attributes"];
    assert!(
        attributes["event_type"] == "cross_ab" || attributes["event_type"] == "cross_ba",
        "{crossing}"
    );
    assert_eq!(attributes["label"], "person", "{crossing}");
    assert_eq!(attributes["track_id"], "walker", "{crossing}");

    // The switches and the button drive the box.
    ha.call("switch/turn_off", "switch.heldar_test_gate_record");
    ha.wait_state("switch.heldar_test_gate_record", "off");
    assert!(
        box_topics
            .wait(
                "heldar/test/cameras/gate/record/state",
                Duration::from_secs(20),
                |g| g.text() == "OFF"
            )
            .is_some()
    );
    // Not recording is not disabled: the camera still streams for its detection task.
    wait_state(&d, "gate", "streaming", Duration::from_secs(30));
    let listed = crate::fixtures::stdout(&d.cli(&["cameras", "list"]));
    let gate = listed
        .lines()
        .find(|l| l.starts_with("gate "))
        .unwrap_or_default();
    assert!(gate.contains("streaming"), "{listed}");
    ha.call("switch/turn_on", "switch.heldar_test_gate_record");
    ha.wait_state("switch.heldar_test_gate_record", "on");
    ha.call("switch/turn_off", "switch.heldar_test_gate_detect");
    ha.wait_state("switch.heldar_test_gate_detect", "off");
    // A flipped switch rebuilds the camera's pipeline: the snapshot needs its first frame.
    wait_state(&d, "gate", "recording", Duration::from_secs(30));
    ha.call("button/press", "button.heldar_test_gate_take_snapshot");
    let jpeg = box_topics
        .wait(
            "heldar/test/cameras/gate/snapshot",
            Duration::from_secs(30),
            |_| true,
        )
        .unwrap_or_else(|| {
            let results: Vec<String> = box_topics
                .all()
                .iter()
                .filter(|g| g.topic.ends_with("/config/result"))
                .map(|g| g.text())
                .collect();
            panic!("the button took no snapshot: {results:?}\n{}", d.log())
        });
    assert_eq!(&jpeg.payload[..2], &[0xff, 0xd8], "a JPEG");

    // Unavailable while the daemon is stopped, back when it starts.
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).is_some());
    for entity in configs.values().map(entity_of) {
        ha.wait_state(&entity, "unavailable");
    }
    d.respawn();
    ha.wait_state("binary_sensor.heldar_test_gate_online", "on");
    ha.wait_state("switch.heldar_test_gate_record", "on");
    ha.wait_state("switch.heldar_test_gate_detect", "off");

    // The registries, as Home Assistant saved them at its stop.
    ha.stop();
    let devices = ha.registry("core.device_registry", "devices");
    let device = |id: &str| {
        devices
            .iter()
            .find(|d| d["identifiers"] == json!([["mqtt", id]]))
            .unwrap_or_else(|| panic!("no device {id}: {devices:?}"))
            .clone()
    };
    let the_box = device("heldar_test");
    assert_eq!(the_box["name"], "Heldar test");
    assert_eq!(the_box["model"], "Heldar Edge");
    assert_eq!(the_box["sw_version"], env!("CARGO_PKG_VERSION"));
    let gate = device("heldar_test_gate");
    assert_eq!(gate["name"], "Front gate");
    assert_eq!(gate["via_device_id"], the_box["id"]);
    assert_eq!(gate["configuration_url"], "http://127.0.0.1/");
    let entities = ha.registry("core.entity_registry", "entities");
    for config in configs.values() {
        let unique_id = &config["unique_id"];
        let entity = entities
            .iter()
            .find(|e| e["unique_id"] == *unique_id && e["platform"] == "mqtt")
            .unwrap_or_else(|| panic!("no registry entry for {unique_id}"));
        assert_eq!(entity["entity_id"], entity_of(config).as_str());
    }

    // Nothing Home Assistant had to warn about.
    let log = ha.log();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARNING ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("Skipping pip installation of required modules"))
        .collect();
    assert!(
        complaints.is_empty(),
        "Home Assistant logged:\n{}",
        complaints.join("\n")
    );
}
