//! Who produced a detection, as the server saw it. Ingest decides it; a batch stores it once
//! (its row, and its outbox record), and every reader writes it back into each detection's
//! attributes, where workers and MQTT receivers see it. It sits below both the outbox, which
//! restores it when a record is read, and perception, which writes and lists it.

use serde::Serialize;
use serde_json::{Map, Value};

/// Who produced a batch, as the server saw it: every detection of the batch shows it in its
/// attributes (`_prov`, with `source`), and clients cannot write either key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Provenance {
    pub credential: String,
    /// The task the frame ticket bound the batch to; `null` for a ticketless batch.
    pub task: Option<String>,
    /// The worker of the lease behind the ticket.
    pub worker: Option<String>,
}

impl Provenance {
    /// The attribute keys that are the server's, never the worker's.
    const KEYS: [&str; 2] = ["source", "_prov"];

    /// Writes `source` and `_prov` over whatever `attributes` held under those keys.
    pub fn write_into(&self, attributes: &mut Map<String, Value>) {
        attributes.insert(Self::KEYS[0].into(), "worker".into());
        attributes.insert(
            Self::KEYS[1].into(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        );
    }

    /// Removes the provenance keys, whoever wrote them. A detection is stored without them (in
    /// its row and in its batch's outbox record): the batch holds the provenance once, and the
    /// readers (`perception::detections::list`, [`restore_into_batch`]) write it back.
    pub fn strip(attributes: &mut Map<String, Value>) {
        attributes.retain(|k, _| !Self::KEYS.contains(&k.as_str()));
    }
}

/// Turns a detection record's payload as stored (`perception::record::StoredBatch`) into the
/// `DetectionBatch` every reader of the record sees: its provenance written into each
/// detection's attributes, its `credential` dropped. A record stored before schema 16 holds no
/// `credential` and has its provenance.
pub fn restore_into_batch(payload: &mut Value) {
    let Value::Object(batch) = payload else {
        return;
    };
    let Some(Value::String(credential)) = batch.get("credential").cloned() else {
        return;
    };
    batch.remove("credential");
    let text = |key: &str| batch.get(key).and_then(Value::as_str).map(String::from);
    let provenance = Provenance {
        credential,
        task: text("task_id"),
        worker: text("worker_id"),
    };
    let Some(Value::Array(detections)) = batch.get_mut("detections") else {
        return;
    };
    for detection in detections.iter_mut().filter_map(Value::as_object_mut) {
        let attributes = detection
            .entry("attributes")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(attributes) = attributes {
            provenance.write_into(attributes);
        }
    }
}
