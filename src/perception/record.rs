//! The payload of a `detection` outbox record: one stored batch as the zone engine, the rules,
//! the CLI and MQTT receivers read it. Ingest produces it; the field names are part of the MQTT
//! contract (`docs/mqtt.md`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::outbox::{Kind, Payload};

/// One batch of a worker, after validation, with the server's provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionBatch {
    /// As the worker sent it, or as its frame ticket implied.
    pub frame_id: Option<String>,
    pub task_type: String,
    /// The task a frame ticket bound the batch to; absent for ticketless batches.
    pub task_id: Option<String>,
    pub worker_id: Option<String>,
    /// Whether camera, task and frame came from a ticket the box minted (invariant X2).
    pub ticketed: bool,
    pub detections: Vec<Detection>,
    /// An event the worker raised with the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<WorkerEvent>,
}

impl Payload for DetectionBatch {
    const KIND: Kind = Kind::Detection;
}

/// One detected object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub label: Option<String>,
    /// Within 0..1.
    pub confidence: Option<f64>,
    /// `[x, y, w, h]`, normalised to the frame (0..1).
    pub bbox: Option<[f64; 4]>,
    /// The worker's track id; only tracked detections can enter or leave a zone.
    pub track_id: Option<String>,
    /// The worker's attributes, with `source` and the server's `_prov` written over them.
    pub attributes: Map<String, Value>,
}

/// An event a worker raised; its type is the worker's own (never a prefix reserved for the box).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvent {
    pub event_type: String,
    /// `info` or `warning`: a worker cannot raise anything more severe.
    pub severity: String,
    pub payload: Value,
}
