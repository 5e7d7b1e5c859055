//! `POST /api/v1/ai/events`: a worker's batch of detections, stored durably before the answer.
//!
//! Invariant S2: the answer is 2xx only after the batch's detections and its outbox record are
//! committed, in one transaction through the group-commit writer; a batch is all or nothing; a
//! repeat of a stored `(camera, frame_id)` is a successful no-op. Provenance is the server's: every
//! detection shows `attributes.source = "worker"` and `attributes._prov` (credential, task, worker),
//! and whatever the client sent under those keys is discarded. The batch holds the provenance once
//! (its row, and its outbox record); a detection keeps only the worker's own attributes, and
//! readers write the provenance back.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::record::{Detection, DetectionBatch, StoredBatch, WorkerEvent};
use super::{Perception, PerceptionError, leases, tickets};
use crate::auth::Principal;
use crate::config::is_task_type;
use crate::outbox::{self, NewRecord};
use crate::provenance::Provenance;
use crate::registry::{self, DetectionGate};
use crate::store::StoreError;

/// Most detections one batch may carry.
pub const MAX_DETECTIONS: usize = 1000;
/// Event type prefixes only the box itself may use.
const RESERVED_PREFIXES: [&str; 7] = [
    "gate_", "entry_", "zone_", "camera_", "disk_", "raid_", "alarm_",
];

/// The request body, as workers of the upstream kernel send it.
#[derive(Debug, Default, Deserialize)]
pub struct IngestBody {
    #[serde(default)]
    pub camera_id: String,
    #[serde(default)]
    pub task_type: String,
    pub timestamp: Option<String>,
    pub frame_id: Option<String>,
    pub frame_ticket: Option<String>,
    #[serde(default)]
    pub detections: Vec<DetectionIn>,
    pub event: Option<EventIn>,
}

#[derive(Debug, Deserialize)]
pub struct DetectionIn {
    pub label: Option<String>,
    pub confidence: Option<f64>,
    pub bbox: Option<Vec<f64>>,
    /// A string; numbers are accepted and kept as their decimal text.
    pub track_id: Option<Value>,
    pub attributes: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct EventIn {
    pub event_type: String,
    pub severity: Option<String>,
    pub payload: Option<Value>,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct IngestAnswer {
    pub detections_ingested: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    pub ticketed: bool,
}

/// What the batch is about, decided by the ticket when there is one, else by the body.
struct Binding {
    camera_id: String,
    task_type: String,
    frame_id: Option<String>,
    task_id: Option<String>,
    worker_id: Option<String>,
    /// The frame's capture time (Unix ms) from its ticket; `None` for a ticketless batch.
    captured_ms: Option<i64>,
}

impl Binding {
    fn ticketed(&self) -> bool {
        self.captured_ms.is_some()
    }
}

fn bad(msg: impl Into<String>) -> PerceptionError {
    PerceptionError::BadRequest(msg.into())
}

impl Perception {
    pub async fn ingest(
        &self,
        principal: &Principal,
        body: IngestBody,
    ) -> Result<IngestAnswer, PerceptionError> {
        let binding = self.bind(principal, &body).await?;
        if binding.task_type.trim().is_empty() {
            return Err(bad("task_type must not be blank"));
        }
        if body.detections.len() > MAX_DETECTIONS {
            return Err(bad(format!(
                "too many detections: {} (at most {MAX_DETECTIONS} per batch)",
                body.detections.len()
            )));
        }
        let ts_ms = match &body.timestamp {
            None => chrono::Utc::now().timestamp_millis(),
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| {
                    bad(format!(
                        "invalid timestamp {t:?}: use RFC 3339, such as 2026-11-28T08:15:31.120Z"
                    ))
                })?
                .timestamp_millis(),
        };
        let detections = body
            .detections
            .into_iter()
            .enumerate()
            .map(|(i, d)| clean_detection(i, d))
            .collect::<Result<Vec<_>, _>>()?;
        let event = body.event.map(clean_event).transpose()?;

        let ticketed = binding.ticketed();
        let credential = principal.credential.clone();
        let n = detections.len();
        let camera_id = binding.camera_id.clone();
        let stored = self
            .store
            .write(move |c| store_batch(c, &binding, &credential, ts_ms, detections, event))
            .await?;
        match stored {
            Stored::New => {
                self.outbox.appended();
                Ok(IngestAnswer {
                    detections_ingested: n,
                    duplicate: None,
                    ticketed,
                })
            }
            Stored::Duplicate => Ok(IngestAnswer {
                detections_ingested: 0,
                duplicate: Some(true),
                ticketed,
            }),
            Stored::NoCamera => Err(PerceptionError::NotFound(format!(
                "camera {camera_id:?} not found"
            ))),
            Stored::Refused(why) => Err(PerceptionError::Forbidden(why)),
        }
    }

    async fn bind(
        &self,
        principal: &Principal,
        body: &IngestBody,
    ) -> Result<Binding, PerceptionError> {
        let ticket = body
            .frame_ticket
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(ticket) = ticket else {
            if self.require_tickets {
                return Err(PerceptionError::Unauthorized(
                    "frame_ticket_required: this box accepts only batches carrying the frame_ticket of a leased frame".into(),
                ));
            }
            return Ok(Binding {
                camera_id: body.camera_id.clone(),
                task_type: body.task_type.clone(),
                frame_id: body.frame_id.clone().filter(|f| !f.is_empty()),
                task_id: None,
                worker_id: None,
                captured_ms: None,
            });
        };
        let claims = tickets::parse(ticket)
            .ok_or_else(|| PerceptionError::Unauthorized("frame_ticket is malformed".into()))?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (task_id, credential) = (claims.task_id.clone(), principal.credential.clone());
        let lease = self
            .store
            .read(move |c| {
                Ok::<_, StoreError>(leases::live_lease(c, &task_id, &credential, now_ms)?)
            })
            .await?
            .ok_or_else(|| {
                PerceptionError::Unauthorized(
                    "frame_ticket names a task this credential holds no live lease on".into(),
                )
            })?;
        let task = self
            .registry
            .tasks()
            .await?
            .into_iter()
            .find(|t| t.id == claims.task_id)
            .ok_or_else(|| {
                PerceptionError::Unauthorized(
                    "frame_ticket names a task that no longer exists".into(),
                )
            })?;
        if !self.tickets.verify(
            &claims,
            &principal.credential,
            &task.camera_id,
            now_ms / 1000,
        ) {
            return Err(PerceptionError::Unauthorized(
                "frame_ticket is invalid or expired".into(),
            ));
        }
        let camera = self.registry.camera(&task.camera_id).await?;
        if !task.enabled || !camera.is_some_and(|c| c.enabled && c.detect) {
            return Err(PerceptionError::Forbidden(
                "the leased task or its camera is disabled".into(),
            ));
        }
        if !body.camera_id.is_empty() && body.camera_id != task.camera_id {
            return Err(PerceptionError::Conflict(format!(
                "camera_id {:?} disagrees with the frame_ticket (camera {:?})",
                body.camera_id, task.camera_id
            )));
        }
        if !body.task_type.is_empty() && body.task_type != task.task_type {
            return Err(PerceptionError::Conflict(format!(
                "task_type {:?} disagrees with the frame_ticket (task type {:?})",
                body.task_type, task.task_type
            )));
        }
        Ok(Binding {
            frame_id: Some(ticketed_frame_id(&task.id, claims.captured_ms)),
            camera_id: task.camera_id,
            task_type: task.task_type,
            task_id: Some(task.id),
            worker_id: Some(lease.worker_id),
            captured_ms: Some(claims.captured_ms),
        })
    }
}

/// Validates one detection and drops what it sent under the server's provenance keys.
fn clean_detection(i: usize, d: DetectionIn) -> Result<Detection, PerceptionError> {
    if let Some(c) = d.confidence
        && !(c.is_finite() && (0.0..=1.0).contains(&c))
    {
        return Err(bad(format!(
            "detections[{i}].confidence: must be within 0..1, got {c}"
        )));
    }
    let bbox = match d.bbox {
        None => None,
        Some(b) => match <[f64; 4]>::try_from(b.as_slice()) {
            Ok(b) if b.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)) => Some(b),
            _ => {
                return Err(bad(format!(
                    "detections[{i}].bbox: must be [x, y, w, h] with each value within 0..1, got {b:?}"
                )));
            }
        },
    };
    let track_id = match d.track_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(bad(format!(
                "detections[{i}].track_id: must be a string, got {other}"
            )));
        }
    };
    let mut attributes = match d.attributes {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => Map::from_iter([("_client".to_string(), other)]),
    };
    Provenance::strip(&mut attributes);
    Ok(Detection {
        label: d.label,
        confidence: d.confidence,
        bbox,
        track_id,
        attributes,
    })
}

/// Checks a worker's event: its type is the worker's own, its severity at most `warning`.
fn clean_event(e: EventIn) -> Result<WorkerEvent, PerceptionError> {
    let valid = !e.event_type.is_empty() && e.event_type.len() <= 64 && is_task_type(&e.event_type);
    if !valid {
        return Err(bad(format!(
            "event.event_type {:?} must match ^[a-z0-9_]{{1,64}}$",
            e.event_type
        )));
    }
    if let Some(prefix) = RESERVED_PREFIXES
        .iter()
        .find(|p| e.event_type.starts_with(*p))
    {
        return Err(bad(format!(
            "event.event_type {:?}: the prefix {prefix:?} is reserved for the box",
            e.event_type
        )));
    }
    let severity = match e.severity.as_deref() {
        None | Some("info") => "info",
        _ => "warning",
    };
    Ok(WorkerEvent {
        event_type: e.event_type,
        severity: severity.into(),
        payload: e.payload.unwrap_or_else(|| json!({})),
    })
}

/// What the batch's transaction did.
enum Stored {
    New,
    Duplicate,
    /// Nothing: the camera does not exist (checked in the same transaction, so a camera removed
    /// meanwhile cannot gain a batch).
    NoCamera,
    /// Nothing: the camera or the batch's task type is switched off, for this reason.
    Refused(String),
}

/// The one transaction of a batch: camera check, dedup check, outbox record, batch row,
/// detections.
fn store_batch(
    c: &Connection,
    b: &Binding,
    credential: &str,
    ts_ms: i64,
    detections: Vec<Detection>,
    event: Option<WorkerEvent>,
) -> Result<Stored, StoreError> {
    match registry::detection_gate(c, &b.camera_id, &b.task_type)? {
        DetectionGate::NoCamera => return Ok(Stored::NoCamera),
        DetectionGate::Closed(why) => return Ok(Stored::Refused(why)),
        DetectionGate::Open => {}
    }
    if let Some(frame_id) = &b.frame_id
        && frame_stored(c, b, frame_id)?
    {
        return Ok(Stored::Duplicate);
    }
    let batch = DetectionBatch {
        frame_id: b.frame_id.clone(),
        task_type: b.task_type.clone(),
        task_id: b.task_id.clone(),
        worker_id: b.worker_id.clone(),
        ticketed: b.ticketed(),
        detections,
        event,
    };
    let stored = StoredBatch {
        batch: &batch,
        credential,
    };
    let seq = outbox::append(
        c,
        &NewRecord::stored_as::<DetectionBatch>(
            "detections",
            Some(b.camera_id.clone()),
            ts_ms,
            &stored,
        )?,
    )?;
    c.prepare_cached(
        "INSERT INTO detection_batches (camera_id, frame_id, task_type, task_id, credential, worker_id, ts_ms, ticketed, outbox_seq, captured_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![b.camera_id, b.frame_id, b.task_type, b.task_id, credential, b.worker_id, ts_ms, b.ticketed(), seq, b.captured_ms])?;
    let batch_id = c.last_insert_rowid();
    let mut insert = c.prepare_cached(
        "INSERT INTO detections (batch_id, camera_id, ts_ms, label, confidence, bbox, track_id, attributes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for d in &batch.detections {
        insert.execute(params![
            batch_id,
            b.camera_id,
            ts_ms,
            d.label,
            d.confidence,
            d.bbox.map(|b| json_text(&b)),
            d.track_id,
            json_text(&d.attributes),
        ])?;
    }
    Ok(Stored::New)
}

/// Whether a batch of this camera and frame id is stored. Ticketless batches are found by
/// (camera, frame id); ticketed ones by (capture time, task), the index that appends at its end
/// (migration 0016). A frame id of the ticketed form `{task_id}:{captured_ms}` is looked for both
/// ways, so one frame id stays one batch per camera whichever way it came. No unique index spans
/// both keys: this check, in the single writer's transaction, is what keeps it.
fn frame_stored(c: &Connection, b: &Binding, frame_id: &str) -> Result<bool, StoreError> {
    let ticketless = c
        .prepare_cached(
            "SELECT 1 FROM detection_batches WHERE camera_id = ?1 AND frame_id = ?2 AND ticketed = 0",
        )?
        .exists(params![b.camera_id, frame_id])?;
    if ticketless {
        return Ok(true);
    }
    let Some((task, ms)) = ticketed_key(frame_id) else {
        return Ok(false);
    };
    Ok(c.prepare_cached(
        "SELECT 1 FROM detection_batches WHERE captured_ms = ?1 AND task_id = ?2 AND camera_id = ?3",
    )?
    .exists(params![ms, task, b.camera_id])?)
}

/// The frame id a ticket implies: `{task_id}:{captured_ms}` (documented in docs/worker-api.md).
fn ticketed_frame_id(task_id: &str, captured_ms: i64) -> String {
    format!("{task_id}:{captured_ms}")
}

/// The (task, capture time) of a frame id of the [`ticketed_frame_id`] form, whoever sent it;
/// `None` for any other id, including one whose time is not written as the ticket writes it.
fn ticketed_key(frame_id: &str) -> Option<(&str, i64)> {
    let (task, ms) = frame_id.rsplit_once(':')?;
    let n: i64 = ms.parse().ok()?;
    (ticketed_frame_id(task, n) == frame_id).then_some((task, n))
}

/// JSON text of a value that always serializes (numbers, strings, maps with string keys).
fn json_text(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Deletes up to `limit` batches (their detections go with them, `ON DELETE CASCADE`) whose
/// time is before `before_ms`: metadata retention by age.
pub fn prune_older(c: &Connection, before_ms: i64, limit: u64) -> Result<u64, StoreError> {
    crate::store::prune::older_per_group(
        c,
        "detection_batches",
        "camera_id",
        "ts_ms",
        before_ms,
        limit,
    )
}

/// Deletes the `limit` batches stored first, with their detections: the database size cap.
pub fn prune_oldest(c: &Connection, limit: u64) -> Result<u64, StoreError> {
    crate::store::prune::first_stored(c, "detection_batches", "1", limit)
}
