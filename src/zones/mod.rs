//! The zone engine: regions and lines over tracked detections, as a local outbox consumer.
//!
//! Owns: the `zone_state`, `zone_events` and `zone_occupancy` tables.
//! Does not own: which zones exist (the [`crate::registry`]).
//!
//! Invariant O2: the engine reads detection records after its cursor and, in **one** store
//! transaction, loads the state of each camera involved, applies the records, writes the new
//! state, its zone events and occupancy changes (each also appended to the outbox as kind `zone`),
//! and advances its cursor. A crash anywhere neither loses nor repeats an event, and state resumes
//! from the database. Because state is read from the transaction itself, nothing in memory can
//! drift from what committed.
//!
//! Time-driven events (dwell, lost tracks) come from a tick that only runs when the engine has
//! caught up with the outbox, so a restart that replays a backlog gives the same events as an
//! uninterrupted run would have.

pub mod engine;
pub mod geometry;
pub mod queries;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use engine::{CameraState, Observation, Occupancy, TrackKey, Zone, ZoneEvent};
use record::ZoneOccupancy;

use crate::outbox::{self, ConsumeError, Kind, LocalConsumer, NewRecord, Outbox, Record};
use crate::perception::record::DetectionBatch;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// The consumer's name, its cursor's key.
pub const CONSUMER: &str = "zones";
/// How often deadlines are checked when no batch arrives.
const TICK: Duration = Duration::from_millis(500);

/// Zones by camera, refreshed from the registry.
type ZoneMap = Arc<RwLock<HashMap<String, Vec<Zone>>>>;

/// The zone engine service.
#[derive(Clone)]
pub struct ZoneEngine {
    store: Store,
    registry: Registry,
    outbox: Outbox,
    zones: ZoneMap,
}

impl ZoneEngine {
    pub fn new(store: Store, registry: Registry, outbox: Outbox) -> ZoneEngine {
        ZoneEngine {
            store,
            registry,
            outbox,
            zones: Arc::default(),
        }
    }

    /// Runs the consumer and the clock until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.refresh().await;
        let consumer = Arc::new(Applier {
            zones: self.zones.clone(),
        });
        let outbox = self.outbox.clone();
        let consume = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { outbox.run_local(consumer, shutdown).await }
        });
        let mut changes = self.registry.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changes.changed() => self.refresh().await,
                _ = tokio::time::sleep(TICK) => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "zone clock tick failed");
                    }
                }
            }
        }
        let _ = consume.await;
        Ok(())
    }

    async fn refresh(&self) {
        match self.registry.zones().await {
            Ok(zones) => {
                let mut by_camera: HashMap<String, Vec<Zone>> = HashMap::new();
                for z in zones {
                    by_camera
                        .entry(z.settings.camera.clone())
                        .or_default()
                        .push(Zone::new(z.settings));
                }
                *self.zones.write().unwrap_or_else(|e| e.into_inner()) = by_camera;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read zones; keeping the previous set"),
        }
    }

    /// Fires deadlines that passed (dwell, lost tracks) when the engine is caught up.
    async fn tick(&self) -> Result<(), StoreError> {
        let zones = self.zones.clone();
        let wrote = self
            .store
            .write(move |c| {
                if outbox::cursor(c, CONSUMER)?.unwrap_or(0) < outbox::head(c)? {
                    return Ok::<_, StoreError>(false);
                }
                let now = chrono::Utc::now().timestamp_millis();
                let zones = zones.read().unwrap_or_else(|e| e.into_inner()).clone();
                let cameras: Vec<String> = c
                    .prepare_cached("SELECT camera_id FROM zone_state")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut wrote = false;
                for camera in cameras {
                    let mut state = load_state(c, &camera)?;
                    let camera_zones = zones.get(&camera).cloned().unwrap_or_default();
                    let events = state.advance(&camera_zones, now);
                    if !events.is_empty() {
                        write_events(c, &events)?;
                        write_occupancy(c, &camera, &state, &camera_zones, now)?;
                        save_state(c, &camera, &state)?;
                        wrote = true;
                    }
                }
                Ok(wrote)
            })
            .await?;
        if wrote {
            self.outbox.appended();
        }
        Ok(())
    }
}

/// The outbox side of the engine.
struct Applier {
    zones: ZoneMap,
}

impl LocalConsumer for Applier {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn apply(&self, c: &Connection, records: &[Record]) -> Result<(), ConsumeError> {
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut states: BTreeMap<String, CameraState> = BTreeMap::new();
        let mut last_ts: HashMap<String, i64> = HashMap::new();
        for r in records.iter().filter(|r| r.kind == Kind::Detection) {
            let Some(camera) = &r.camera_id else { continue };
            let Some(camera_zones) = zones.get(camera) else {
                continue;
            };
            let batch: DetectionBatch = r
                .payload()
                .map_err(|e| ConsumeError::Malformed(e.to_string()))?;
            if !states.contains_key(camera) {
                states.insert(camera.clone(), load_state(c, camera)?);
            }
            let state = states.get_mut(camera).expect("just inserted");
            let events = state.observe(camera_zones, r.ts_ms, &observations(&batch));
            write_events(c, &events)?;
            last_ts.insert(camera.clone(), r.ts_ms);
        }
        for (camera, state) in &states {
            let camera_zones = zones.get(camera).cloned().unwrap_or_default();
            let now = last_ts.get(camera).copied().unwrap_or_default();
            write_occupancy(c, camera, state, &camera_zones, now)?;
            save_state(c, camera, state)?;
        }
        Ok(())
    }
}

/// The tracked detections of a batch; untracked ones cannot enter or leave anything.
fn observations(batch: &DetectionBatch) -> Vec<Observation> {
    let task = batch.task_id.as_ref().unwrap_or(&batch.task_type);
    batch
        .detections
        .iter()
        .filter_map(|d| {
            Some(Observation {
                track: TrackKey {
                    task: task.clone(),
                    track: d.track_id.clone()?,
                },
                label: d.label.clone(),
                confidence: d.confidence,
                bbox: d.bbox?,
            })
        })
        .collect()
}

fn load_state(c: &Connection, camera: &str) -> Result<CameraState, StoreError> {
    let text: Option<String> = c
        .query_row(
            "SELECT state FROM zone_state WHERE camera_id = ?1",
            [camera],
            |r| r.get(0),
        )
        .optional()?;
    // A state this binary cannot read (a hand-edited database, or one a newer build of the
    // same schema wrote with other field names) starts afresh:
    // tracks re-enter, which is visible, rather than the engine stopping for good.
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

fn save_state(c: &Connection, camera: &str, state: &CameraState) -> Result<(), StoreError> {
    let text = serde_json::to_string(state).map_err(|e| StoreError::Encode(Arc::new(e)))?;
    c.execute(
        "INSERT INTO zone_state (camera_id, state) VALUES (?1, ?2) ON CONFLICT (camera_id) DO UPDATE SET state = ?2",
        params![camera, text],
    )?;
    Ok(())
}

/// Stores events and announces each in the outbox, in the caller's transaction.
fn write_events(c: &Connection, events: &[ZoneEvent]) -> Result<(), StoreError> {
    for e in events {
        let seq = outbox::append(
            c,
            &NewRecord::new(e.kind.clone(), Some(e.camera.clone()), e.ts_ms, e)?,
        )?;
        c.execute(
            "INSERT INTO zone_events (zone_id, camera_id, task, track_id, label, type, ts_ms, dwell_ms, reason, outbox_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                e.zone,
                e.camera,
                e.task,
                e.track_id,
                e.label,
                e.kind,
                e.ts_ms,
                e.dwell_s.map(|d| (d * 1000.0) as i64),
                e.reason,
                seq
            ],
        )?;
    }
    Ok(())
}

/// Writes occupancy that changed, and announces it (`zone`/`occupancy` records feed MQTT's
/// retained counts).
fn write_occupancy(
    c: &Connection,
    camera: &str,
    state: &CameraState,
    zones: &[Zone],
    now: i64,
) -> Result<(), StoreError> {
    for (zone, occ) in state.occupancy(zones, now) {
        let previous: Option<(i64, String)> = c
            .query_row(
                "SELECT total, by_label FROM zone_occupancy WHERE zone_id = ?1",
                [&zone],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let by_label =
            serde_json::to_string(&occ.by_label).map_err(|e| StoreError::Encode(Arc::new(e)))?;
        let unchanged = previous
            .as_ref()
            .is_some_and(|(t, l)| *t == occ.total as i64 && *l == by_label);
        let first_empty = previous.is_none() && occ == Occupancy::default();
        if unchanged || first_empty {
            continue;
        }
        c.execute(
            "INSERT INTO zone_occupancy (zone_id, camera_id, total, by_label, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (zone_id) DO UPDATE SET total = ?3, by_label = ?4, updated_at_ms = ?5",
            params![zone, camera, occ.total, by_label, now],
        )?;
        let change = ZoneOccupancy {
            zone,
            total: occ.total,
            by_label: occ.by_label,
        };
        outbox::append(
            c,
            &NewRecord::new(record::OCCUPANCY, Some(camera.to_string()), now, &change)?,
        )?;
    }
    Ok(())
}

/// Deletes up to `limit` zone events from before `before_ms`: metadata retention by age.
pub fn prune_events_older(c: &Connection, before_ms: i64, limit: u64) -> Result<u64, StoreError> {
    crate::store::prune::older_per_group(c, "zone_events", "camera_id", "ts_ms", before_ms, limit)
}

/// Deletes the `limit` zone events stored first: the database size cap.
pub fn prune_oldest_events(c: &Connection, limit: u64) -> Result<u64, StoreError> {
    crate::store::prune::first_stored(c, "zone_events", "1", limit)
}
