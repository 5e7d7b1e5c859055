//! The payload of an `alarm` outbox record: an input of the I/O board changed, after debounce.
//! The board produces it, rules and MQTT receivers read it; the field names are part of the
//! MQTT contract (`docs/mqtt.md`).

use serde::{Deserialize, Serialize};

use crate::outbox::{Kind, Payload};

/// The record type of an input change.
pub const ALARM_IN: &str = "alarm_in";

/// An alarm input went on or off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmInput {
    /// The `[[serial]]` board's name.
    pub board: String,
    /// Numbered from 1.
    pub input: u16,
    /// The input's configured name, if any.
    pub name: Option<String>,
    /// `on` or `off`, for people and simple automations.
    pub state: String,
    pub active: bool,
}

impl Payload for AlarmInput {
    const KIND: Kind = Kind::Alarm;
}
