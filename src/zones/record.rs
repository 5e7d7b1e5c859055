//! The payloads of the zone engine's `zone` outbox records: an event (`enter`, `exit`, `dwell`,
//! `cross_ab`, `cross_ba`) is a [`ZoneEvent`]; a change of a zone's count is an `occupancy`
//! record, a [`ZoneOccupancy`]. Serial rules, the CLI and MQTT receivers read them; the field
//! names are part of the MQTT contract (`docs/mqtt.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::engine::ZoneEvent;
use crate::outbox::{Kind, Payload};

/// The record type of an occupancy change; every other zone record is a [`ZoneEvent`].
pub const OCCUPANCY: &str = "occupancy";

impl Payload for ZoneEvent {
    const KIND: Kind = Kind::Zone;
}

/// A zone's count changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneOccupancy {
    pub zone: String,
    /// Objects inside now.
    pub total: u32,
    /// Objects inside now per label.
    pub by_label: BTreeMap<String, u32>,
}

impl Payload for ZoneOccupancy {
    const KIND: Kind = Kind::Zone;
}
