//! Home Assistant MQTT discovery: the box is one device, each camera a device of its own linked
//! to it (`via_device`), and each camera's entities (health, switches, snapshot, label counts,
//! zones) hang on the camera's device. Each config is a retained message under the discovery
//! prefix; removing the thing it describes publishes an empty retained message, which removes the
//! entity.
//!
//! Entity names are short (`Online`, `Person count`): Home Assistant puts the device's name in
//! front, and warns about a name that repeats it.

use serde_json::{Value, json};

/// Discovery configs for one box.
pub struct Discovery {
    pub prefix: String,
    /// `<prefix>/<device_id>`: the box's root topic.
    pub root: String,
    pub device_id: String,
}

/// A camera as its entities need it.
pub struct CameraInfo<'a> {
    /// The camera's id, in object ids and topics.
    pub id: &'a str,
    /// The configured name, or the id: the camera device's name.
    pub name: &'a str,
    /// The camera's own web page ([`crate::media::url::camera_page`]), linked from its device.
    pub configuration_url: Option<String>,
}

/// A zone as its entities need it.
pub struct ZoneInfo<'a> {
    /// The zone's name, which is its id.
    pub name: &'a str,
    /// The zone's camera: its entities hang on the camera's device.
    pub camera: &'a CameraInfo<'a>,
    /// A line has a crossing event instead of occupancy.
    pub line: bool,
    /// The labels that get their own count and occupancy entities.
    pub labels: &'a [String],
}

/// Home Assistant accepts `[a-zA-Z0-9_-]` in object ids.
fn object_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `right_half` as a person would write it: `Right half`.
fn title(id: &str) -> String {
    let spaced = id.replace(['_', '-'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

/// A Jinja string literal for a value template: quotes and backslashes escaped.
fn jinja_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Discovery {
    fn node(&self) -> String {
        format!("heldar_{}", object_id(&self.device_id))
    }

    fn topic(&self, component: &str, object: &str) -> String {
        format!(
            "{}/{component}/{}/{}/config",
            self.prefix,
            self.node(),
            object_id(object)
        )
    }

    fn box_device(&self) -> Value {
        json!({
            "identifiers": [self.node()],
            "name": format!("Heldar {}", self.device_id),
            "manufacturer": "Heldar",
            "model": "Heldar Edge",
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn camera_device(&self, cam: &CameraInfo) -> Value {
        let mut device = json!({
            "identifiers": [format!("{}_{}", self.node(), object_id(cam.id))],
            "name": cam.name,
            "manufacturer": "Heldar",
            "model": "Camera recorded by Heldar Edge",
            "sw_version": env!("CARGO_PKG_VERSION"),
            "via_device": self.node(),
        });
        if let Some(url) = &cam.configuration_url {
            device["configuration_url"] = url.as_str().into();
        }
        device
    }

    /// One entity's config: the keys every entity carries (name, ids, availability, device)
    /// and its own. Home Assistant takes the entity id from `default_entity_id` since 2025.10,
    /// and from `object_id` before (which 2026.4 no longer reads); each ignores the other key.
    fn entity(
        &self,
        component: &str,
        name: &str,
        object: &str,
        device: Value,
        extra: Value,
    ) -> (String, Value) {
        let id = format!("{}_{}", self.node(), object_id(object));
        let mut v = json!({
            "name": name,
            "unique_id": id,
            "object_id": id,
            "default_entity_id": format!("{component}.{id}"),
            "availability_topic": format!("{}/availability", self.root),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        });
        if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), extra) {
            o.extend(extra);
        }
        (self.topic(component, object), v)
    }

    /// A camera's health, switches and snapshot: online, `record` and `detect`, frame rate,
    /// bitrate and reconnects from `cameras/<cam>/state`, the last segment from its own topic, the
    /// latest snapshot as a camera entity and a button that takes one.
    pub fn camera(&self, cam: &CameraInfo) -> Vec<(String, Value)> {
        let id = cam.id;
        let topics = format!("{}/cameras/{id}", self.root);
        let state = format!("{topics}/state");
        let device = || self.camera_device(cam);
        let mut out = vec![self.entity(
            "binary_sensor",
            "Online",
            &format!("{id}_online"),
            device(),
            json!({
                "device_class": "connectivity",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.status in ['recording', 'streaming'] else 'OFF' }}",
            }),
        )];
        for toggle in ["record", "detect"] {
            out.push(self.entity(
                "switch",
                &title(toggle),
                &format!("{id}_{toggle}"),
                device(),
                json!({
                    "state_topic": format!("{topics}/{toggle}/state"),
                    "command_topic": format!("{topics}/{toggle}/set"),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "state_on": "ON",
                    "state_off": "OFF",
                }),
            ));
        }
        for (name, key, extra) in [
            (
                "Frame rate",
                "fps",
                json!({"unit_of_measurement": "fps", "state_class": "measurement"}),
            ),
            (
                "Bitrate",
                "bitrate_kbps",
                json!({"unit_of_measurement": "kbit/s", "device_class": "data_rate",
                       "state_class": "measurement"}),
            ),
            (
                "Reconnects",
                "reconnects",
                json!({"state_class": "total_increasing"}),
            ),
        ] {
            let mut config = json!({
                "state_topic": state,
                "value_template": format!("{{{{ value_json.{key} }}}}"),
                "entity_category": "diagnostic",
            });
            if let (Some(o), Value::Object(extra)) = (config.as_object_mut(), extra) {
                o.extend(extra);
            }
            out.push(self.entity("sensor", name, &format!("{id}_{key}"), device(), config));
        }
        out.push(self.entity(
            "sensor",
            "Last segment",
            &format!("{id}_last_segment"),
            device(),
            json!({
                "state_topic": format!("{topics}/last_segment"),
                "device_class": "timestamp",
                "entity_category": "diagnostic",
            }),
        ));
        out.push(self.entity(
            "camera",
            "Snapshot",
            &format!("{id}_snapshot"),
            device(),
            json!({ "topic": format!("{topics}/snapshot") }),
        ));
        out.push(self.entity(
            "button",
            "Take snapshot",
            &format!("{id}_take_snapshot"),
            device(),
            json!({
                "command_topic": format!("{}/cmd/snapshot/{id}", self.root),
                "payload_press": "PRESS",
            }),
        ));
        out
    }

    /// Live objects of one label on a camera: a count, and whether any is there.
    pub fn label(&self, cam: &CameraInfo, label: &str) -> Vec<(String, Value)> {
        let state = format!("{}/cameras/{}/{label}", self.root, cam.id);
        vec![
            self.entity(
                "sensor",
                &format!("{} count", title(label)),
                &format!("{}_{label}_count", cam.id),
                self.camera_device(cam),
                json!({ "state_topic": state, "state_class": "measurement" }),
            ),
            self.entity(
                "binary_sensor",
                &format!("{} detected", title(label)),
                &format!("{}_{label}_detected", cam.id),
                self.camera_device(cam),
                json!({
                    "state_topic": state,
                    "device_class": "occupancy",
                    "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
                }),
            ),
        ]
    }

    /// A region: its occupancy in all and per label, as counts and as occupied or not. A line
    /// has no inside, so it gets an event entity that fires `cross_ab` or `cross_ba` from the
    /// zone events on `events/zone` instead.
    pub fn zone(&self, zone: &ZoneInfo) -> Vec<(String, Value)> {
        let name = title(zone.name);
        let device = || self.camera_device(zone.camera);
        if zone.line {
            let this = jinja_string(zone.name);
            return vec![self.entity(
                "event",
                &format!("{name} crossing"),
                &format!("zone_{}_crossing", zone.name),
                device(),
                json!({
                    "state_topic": format!("{}/events/zone", self.root),
                    "event_types": ["cross_ab", "cross_ba"],
                    "value_template": format!(
                        "{{% if value_json.zone == {this} and value_json.type in ['cross_ab', 'cross_ba'] %}}\
                         {{{{ {{'event_type': value_json.type, 'label': value_json.label, 'track_id': value_json.track_id}} | to_json }}}}\
                         {{% endif %}}"
                    ),
                }),
            )];
        }
        let state = format!("{}/zones/{}/occupancy", self.root, zone.name);
        let mut out = vec![
            self.entity(
                "sensor",
                &format!("{name} occupancy"),
                &format!("zone_{}_occupancy", zone.name),
                device(),
                json!({
                    "state_topic": state,
                    "value_template": "{{ value_json.total }}",
                    "state_class": "measurement",
                }),
            ),
            self.entity(
                "binary_sensor",
                &format!("{name} occupied"),
                &format!("zone_{}_occupied", zone.name),
                device(),
                json!({
                    "state_topic": state,
                    "device_class": "occupancy",
                    "value_template": "{{ 'ON' if value_json.total > 0 else 'OFF' }}",
                }),
            ),
        ];
        for label in zone.labels {
            let count = format!(
                "(value_json.by_label[{}] | default(0))",
                jinja_string(label)
            );
            out.push(self.entity(
                "sensor",
                &format!("{name} {label} count"),
                &format!("zone_{}_{label}_count", zone.name),
                device(),
                json!({
                    "state_topic": state,
                    "value_template": format!("{{{{ {count} }}}}"),
                    "state_class": "measurement",
                }),
            ));
            out.push(self.entity(
                "binary_sensor",
                &format!("{name} {label} occupancy"),
                &format!("zone_{}_{label}_occupancy", zone.name),
                device(),
                json!({
                    "state_topic": state,
                    "device_class": "occupancy",
                    "value_template": format!("{{{{ 'ON' if {count} > 0 else 'OFF' }}}}"),
                }),
            ));
        }
        out
    }

    /// Outbox backlog and disk use, from `stats`, on the box's own device.
    pub fn box_sensors(&self) -> Vec<(String, Value)> {
        let stats = format!("{}/stats", self.root);
        vec![
            self.entity(
                "sensor",
                "Outbox backlog",
                "outbox_backlog",
                self.box_device(),
                json!({
                    "state_topic": stats,
                    "value_template": "{{ value_json.outbox.backlog }}",
                    "unit_of_measurement": "records",
                    "state_class": "measurement",
                    "entity_category": "diagnostic",
                }),
            ),
            self.entity(
                "sensor",
                "Disk used",
                "disk_used",
                self.box_device(),
                json!({
                    "state_topic": stats,
                    "value_template": "{{ value_json.disk.used_percent }}",
                    "unit_of_measurement": "%",
                    "state_class": "measurement",
                    "entity_category": "diagnostic",
                }),
            ),
        ]
    }

    /// Whether a topic is one of this box's discovery configs.
    pub fn owns(&self, topic: &str) -> bool {
        topic.starts_with(&format!("{}/", self.prefix))
            && topic.contains(&format!("/{}/", self.node()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_has_the_keys_home_assistant_requires() {
        let d = Discovery {
            prefix: "homeassistant".into(),
            root: "heldar/box1".into(),
            device_id: "box1".into(),
        };
        let gate = CameraInfo {
            id: "gate",
            name: "Front gate",
            configuration_url: crate::media::url::camera_page(
                "rtsp://192.168.1.10:554/stream1?password=x",
            ),
        };
        let labels = ["person".to_string()];
        let mut all = d.camera(&gate);
        all.extend(d.label(&gate, "person"));
        for line in [false, true] {
            all.extend(d.zone(&ZoneInfo {
                name: if line { "door_line" } else { "driveway" },
                camera: &gate,
                line,
                labels: &labels,
            }));
        }
        all.extend(d.box_sensors());
        let mut ids = std::collections::HashSet::new();
        for (topic, config) in &all {
            assert!(
                topic.starts_with("homeassistant/") && topic.ends_with("/config"),
                "{topic}"
            );
            assert!(d.owns(topic));
            for key in ["name", "unique_id", "availability_topic", "device"] {
                assert!(config.get(key).is_some(), "{topic} lacks {key}");
            }
            let component = topic.split('/').nth(1).unwrap();
            assert_eq!(
                config["default_entity_id"],
                format!("{component}.{}", config["object_id"].as_str().unwrap()),
                "{topic}"
            );
            assert!(ids.insert(config["unique_id"].to_string()), "{topic}");
            assert!(
                !config["name"].as_str().unwrap().starts_with("Front gate"),
                "{topic}: Home Assistant adds the device name itself"
            );
        }
        let (_, online) = &all[0];
        assert_eq!(online["device"]["via_device"], "heldar_box1");
        assert_eq!(online["device"]["name"], "Front gate");
        assert_eq!(
            online["device"]["configuration_url"],
            "http://192.168.1.10/"
        );
        let line: Vec<_> = all
            .iter()
            .filter(|(t, _)| t.contains("door_line"))
            .collect();
        assert_eq!(
            line.len(),
            1,
            "a line has one crossing entity, no occupancy"
        );
        assert!(line[0].0.starts_with("homeassistant/event/"));
        assert!(
            all.iter()
                .any(|(t, _)| t.ends_with("/zone_driveway_person_occupancy/config"))
        );
    }
}
