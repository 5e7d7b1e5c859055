//! The uplink consumer: outbox records to `<dev>/events/<kind>`, QoS 1, in `seq` order, with the
//! dispatcher's window of records in flight (invariant O3). The cursor is the dispatcher's: it
//! moves over the contiguous prefix the broker acknowledged.

use std::sync::Arc;

use rumqttc::QoS;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::session::{Link, Tag};
use crate::outbox::{ExternalEnd, Record};

/// The outbox consumer name (its cursor's key).
pub const CONSUMER: &str = "mqtt";

/// One record as published: the record's own fields with the envelope (`seq`, `id`, `kind`,
/// `type`, `camera_id`, `ts`) on top, so receivers read `frame_id` or `zone` directly.
pub fn message(r: &Record) -> Vec<u8> {
    let mut o = match &r.payload {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        other => {
            let mut o = Map::new();
            o.insert("payload".into(), other.clone());
            o
        }
    };
    o.insert("seq".into(), r.seq.into());
    o.insert("id".into(), r.id.clone().into());
    o.insert("kind".into(), r.kind.as_str().into());
    o.insert("type".into(), r.r#type.clone().into());
    match &r.camera_id {
        Some(c) => o.insert("camera_id".into(), c.clone().into()),
        None => o.remove("camera_id"),
    };
    let ts = chrono::DateTime::from_timestamp_millis(r.ts_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    o.insert("ts".into(), ts.into());
    serde_json::to_vec(&Value::Object(o)).unwrap_or_default()
}

/// Publishes what the dispatcher hands over, while connected, until `shutdown`.
pub async fn run(link: Arc<Link>, mut end: ExternalEnd, root: String, shutdown: CancellationToken) {
    let mut connection = link.connection();
    loop {
        let (generation, record) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = end.records.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        loop {
            if generation != end.acker.generation() {
                break;
            }
            if connection.borrow_and_update().is_some() {
                let topic = format!("{root}/events/{}", record.kind);
                if link
                    .publish(
                        &topic,
                        QoS::AtLeastOnce,
                        false,
                        message(&record),
                        Tag::Record(record.seq),
                        &shutdown,
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = connection.changed() => if changed.is_err() { return },
            }
        }
    }
}
