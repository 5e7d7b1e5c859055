//! Home Assistant MQTT discovery: one device per box, entities for cameras, labels, zones and the
//! box's own health. Each config is a retained message under the discovery prefix; removing the
//! thing it describes publishes an empty retained message, which removes the entity.

use serde_json::{Value, json};

/// Discovery configs for one box.
pub struct Discovery {
    pub prefix: String,
    /// `<prefix>/<device_id>`: the box's root topic.
    pub root: String,
    pub device_id: String,
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

    /// The keys every entity carries: name, unique id, availability and the shared device.
    fn entity(&self, name: &str, object: &str, extra: Value) -> Value {
        let mut v = json!({
            "name": name,
            "unique_id": format!("{}_{}", self.node(), object_id(object)),
            "object_id": format!("{}_{}", self.node(), object_id(object)),
            "availability_topic": format!("{}/availability", self.root),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [self.node()],
                "name": format!("Heldar {}", self.device_id),
                "manufacturer": "Heldar",
                "model": "Heldar Edge",
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
        });
        if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), extra) {
            o.extend(extra);
        }
        v
    }

    /// Online binary sensor and `record`/`detect` switches of a camera.
    pub fn camera(&self, id: &str, name: &str) -> Vec<(String, Value)> {
        let cam = format!("{}/cameras/{id}", self.root);
        let mut out = vec![(
            self.topic("binary_sensor", &format!("{id}_online")),
            self.entity(
                &format!("{name} online"),
                &format!("{id}_online"),
                json!({
                    "device_class": "connectivity",
                    "state_topic": format!("{cam}/state"),
                    "value_template": "{{ 'ON' if value_json.status in ['recording', 'streaming'] else 'OFF' }}",
                }),
            ),
        )];
        for toggle in ["record", "detect"] {
            out.push((
                self.topic("switch", &format!("{id}_{toggle}")),
                self.entity(
                    &format!("{name} {toggle}"),
                    &format!("{id}_{toggle}"),
                    json!({
                        "state_topic": format!("{cam}/{toggle}/state"),
                        "command_topic": format!("{cam}/{toggle}/set"),
                        "payload_on": "ON",
                        "payload_off": "OFF",
                        "state_on": "ON",
                        "state_off": "OFF",
                    }),
                ),
            ));
        }
        out
    }

    /// Count of live objects of one label on one camera.
    pub fn label(&self, camera: &str, camera_name: &str, label: &str) -> (String, Value) {
        let object = format!("{camera}_{label}_count");
        (
            self.topic("sensor", &object),
            self.entity(
                &format!("{camera_name} {label} count"),
                &object,
                json!({
                    "state_topic": format!("{}/cameras/{camera}/{label}", self.root),
                    "state_class": "measurement",
                }),
            ),
        )
    }

    /// Occupancy of a zone.
    pub fn zone(&self, zone: &str) -> (String, Value) {
        let object = format!("zone_{zone}_occupancy");
        (
            self.topic("sensor", &object),
            self.entity(
                &format!("{zone} occupancy"),
                &object,
                json!({
                    "state_topic": format!("{}/zones/{zone}/occupancy", self.root),
                    "value_template": "{{ value_json.total }}",
                    "state_class": "measurement",
                }),
            ),
        )
    }

    /// Outbox backlog and disk use, from `stats`.
    pub fn box_sensors(&self) -> Vec<(String, Value)> {
        let stats = format!("{}/stats", self.root);
        vec![
            (
                self.topic("sensor", "outbox_backlog"),
                self.entity(
                    "Outbox backlog",
                    "outbox_backlog",
                    json!({
                        "state_topic": stats,
                        "value_template": "{{ value_json.outbox.backlog }}",
                        "unit_of_measurement": "records",
                        "state_class": "measurement",
                        "entity_category": "diagnostic",
                    }),
                ),
            ),
            (
                self.topic("sensor", "disk_used"),
                self.entity(
                    "Disk used",
                    "disk_used",
                    json!({
                        "state_topic": stats,
                        "value_template": "{{ value_json.disk.used_percent }}",
                        "unit_of_measurement": "%",
                        "state_class": "measurement",
                        "entity_category": "diagnostic",
                    }),
                ),
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
        let mut all = d.camera("gate", "Gate");
        all.push(d.label("gate", "Gate", "person"));
        all.push(d.zone("driveway"));
        all.extend(d.box_sensors());
        for (topic, config) in all {
            assert!(
                topic.starts_with("homeassistant/") && topic.ends_with("/config"),
                "{topic}"
            );
            assert!(d.owns(&topic));
            for key in ["name", "unique_id", "availability_topic", "device"] {
                assert!(config.get(key).is_some(), "{topic} lacks {key}");
            }
            assert!(config.get("state_topic").is_some() || config.get("command_topic").is_some());
            assert_eq!(config["device"]["identifiers"][0], "heldar_box1");
        }
    }
}
