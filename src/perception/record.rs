//! The payload of a `detection` outbox record: one stored batch as the zone engine, the rules,
//! the CLI and MQTT receivers read it. Ingest produces it; the field names are part of the MQTT
//! contract (`docs/mqtt.md`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::outbox::{Kind, Payload};

/// One batch of a worker, after validation, as every reader of its record sees it: with the
/// server's provenance in each detection (stored once, in [`StoredBatch`]).
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

/// A batch as its outbox record stores it: without the provenance every detection shows, which
/// the batch holds once (`credential` beside its `task_id` and `worker_id`) and
/// [`crate::provenance::restore_into_batch`] writes back when the record is read. Repeated per
/// detection it was a third of the record, and a record then no longer fitted two to a 1 KiB
/// page (the README's flash figures).
#[derive(Serialize)]
pub struct StoredBatch<'a> {
    /// With detections whose attributes hold no provenance
    /// ([`crate::provenance::Provenance::strip`]).
    #[serde(flatten)]
    pub batch: &'a DetectionBatch,
    pub credential: &'a str,
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
    /// The worker's attributes, with `source` and the server's `_prov` written over them (as
    /// read; [`StoredBatch`] stores them without).
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn batch(attributes: Value) -> DetectionBatch {
        DetectionBatch {
            frame_id: Some("gate:motion:sub:5".into()),
            task_type: "motion".into(),
            task_id: Some("gate:motion:sub".into()),
            worker_id: Some("w1".into()),
            ticketed: true,
            detections: vec![Detection {
                label: Some("motion".into()),
                confidence: None,
                bbox: None,
                track_id: None,
                attributes: serde_json::from_value(attributes).unwrap(),
            }],
            event: None,
        }
    }

    #[test]
    fn a_stored_batch_reads_back_with_its_provenance_in_every_detection() {
        let stored = StoredBatch {
            batch: &batch(json!({"colour": "red"})),
            credential: "tok_1",
        };
        let mut payload = serde_json::to_value(&stored).unwrap();
        assert_eq!(payload["credential"], "tok_1");
        crate::provenance::restore_into_batch(&mut payload);
        let read: DetectionBatch = serde_json::from_value(payload.clone()).unwrap();
        assert_eq!(
            read,
            batch(json!({"colour": "red", "source": "worker",
                         "_prov": {"credential": "tok_1", "task": "gate:motion:sub", "worker": "w1"}}))
        );
        assert!(payload.get("credential").is_none(), "{payload}");
    }

    #[test]
    fn a_record_stored_with_its_provenance_is_read_unchanged() {
        let old = batch(json!({"source": "worker",
                               "_prov": {"credential": "tok_1", "task": "gate:motion:sub", "worker": "w1"}}));
        let mut payload = serde_json::to_value(&old).unwrap();
        crate::provenance::restore_into_batch(&mut payload);
        assert_eq!(payload, serde_json::to_value(&old).unwrap());
    }
}
