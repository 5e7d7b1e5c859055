//! Retained state: camera state, toggles, label counts, zone occupancy, the applied config and
//! Home Assistant discovery, published retained and kept in step with the box.
//!
//! Each round builds the whole desired set of retained topics and publishes only the difference
//! from what this connection already sent. A new connection starts from nothing, so everything
//! is re-published on every (re)connect — a broker that lost its retained store gets it all back.
//! Topics the box published before and no longer holds (a removed camera, its entities) get an
//! empty retained message, which deletes them; the set of published topics is kept in SQLite
//! (`mqtt_retained`) so this also holds across daemon restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::discovery::{CameraInfo, Discovery, ZoneInfo};
use super::events::CONSUMER;
use super::session::{Link, Stopping, Tag};
use crate::config::model::{StreamProfile, ZoneKind};
use crate::media::index;
use crate::media::url::{camera_page, stream_url};
use crate::media::{CameraHealth, CameraState, Media};
use crate::outbox::Outbox;
use crate::perception::detections;
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::zones;

/// How often state is compared with what was published.
const ROUND: Duration = Duration::from_secs(2);
/// How often `stats` is published.
const STATS_EVERY: Duration = Duration::from_secs(30);
/// A label counts objects seen in a task's latest batch no older than this.
const LIVE: Duration = Duration::from_secs(10);
/// Topic levels under `cameras/<cam>/` that are not labels.
const RESERVED: [&str; 5] = ["state", "snapshot", "record", "detect", "last_segment"];

/// Where the state comes from.
pub struct StateSource {
    pub root: String,
    pub registry: Registry,
    pub media: Media,
    pub store: Store,
    pub outbox: Outbox,
    pub discovery: Option<Discovery>,
    pub started: Instant,
    /// `mqtt.labels_per_camera`: label topics kept per camera.
    pub labels_per_camera: usize,
    /// When each camera's label (`<camera>/<label>`) was last live in this process: who keeps a
    /// place when a camera has seen more labels than it may keep.
    pub last_live: std::sync::Mutex<HashMap<String, Instant>>,
}

/// Wakes the state publisher early (a change was applied, Home Assistant came online).
#[derive(Default)]
pub struct StateNudge {
    notify: Notify,
    /// Discovery configs must be sent again even if unchanged.
    rediscover: std::sync::atomic::AtomicBool,
}

impl StateNudge {
    pub fn now(&self) {
        self.notify.notify_one();
    }

    pub fn rediscover(&self) {
        self.rediscover
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// A label is usable as a topic level: no separators, wildcards or names taken by other topics.
fn label_level(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && !label.contains(['/', '+', '#', '\0'])
        && !RESERVED.contains(&label)
}

/// The labels a camera keeps a topic for, at most `cap`: live ones first (most objects first),
/// then those published before, most recently live first (never seen live by this process:
/// last, by name).
fn kept_labels(
    live: &BTreeMap<String, u64>,
    before: Vec<String>,
    cap: usize,
    last_live: impl Fn(&str) -> Option<Instant>,
) -> BTreeSet<String> {
    let mut by_count: Vec<(&String, &u64)> = live.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let mut rest: Vec<String> = before
        .into_iter()
        .filter(|l| !live.contains_key(l))
        .collect();
    rest.sort_by(|a, b| last_live(b).cmp(&last_live(a)).then_with(|| a.cmp(b)));
    by_count
        .into_iter()
        .map(|(l, _)| l.clone())
        .chain(rest)
        .take(cap)
        .collect()
}

impl StateSource {
    /// Every retained topic the box should hold now, with its payload.
    async fn desired(
        &self,
        published: &BTreeSet<String>,
    ) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let root = &self.root;
        let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut put = |topic: String, v: &Value| {
            out.insert(topic, serde_json::to_vec(v).unwrap_or_default());
        };
        let cameras = self.registry.cameras().await?;
        let zones = self.registry.zones().await?;
        let ids: Vec<String> = cameras.iter().map(|c| c.id().to_string()).collect();
        let (labels, occupancy, last_segments) = self.counts(ids.clone()).await?;

        let mut raw: Vec<(String, Vec<u8>)> =
            vec![(format!("{root}/availability"), b"online".to_vec())];
        // The labels each camera keeps a topic for: its zones' entities count the same ones.
        let mut kept_by_camera: HashMap<&str, Vec<String>> = HashMap::new();
        let infos: HashMap<&str, (String, Option<String>)> = cameras
            .iter()
            .map(|c| {
                let name = c
                    .settings
                    .name
                    .clone()
                    .unwrap_or_else(|| c.id().to_string());
                let page = stream_url(&c.settings, StreamProfile::Main)
                    .as_deref()
                    .and_then(camera_page);
                (c.id(), (name, page))
            })
            .collect();
        let info = |id: &'_ str| -> Option<CameraInfo<'_>> {
            infos
                .get_key_value(id)
                .map(|(id, (name, page))| CameraInfo {
                    id,
                    name,
                    configuration_url: page.clone(),
                })
        };
        for c in &cameras {
            let id = c.id();
            let health = self.media.health().get(id);
            let status = match (&health, c.enabled) {
                (_, false) => CameraState::Disabled.as_str(),
                (Some(h), true) => h.state.as_str(),
                (None, true) => CameraState::Connecting.as_str(),
            };
            // The index knows it across restarts; the health board only for this run.
            let last_segment = last_segments
                .get(id)
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(*ms))
                .or(health.as_ref().and_then(|h| h.last_segment_at));
            put(
                format!("{root}/cameras/{id}/state"),
                &camera_state(status, health.as_ref(), true, last_segment),
            );
            // On its own topic too, and only once known: Home Assistant's timestamp sensor warns
            // about a null.
            if let Some(at) = last_segment {
                raw.push((
                    format!("{root}/cameras/{id}/last_segment"),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        .into_bytes(),
                ));
            }
            for (toggle, on) in [("record", c.record), ("detect", c.detect)] {
                raw.push((
                    format!("{root}/cameras/{id}/{toggle}/state"),
                    if on { b"ON".to_vec() } else { b"OFF".to_vec() },
                ));
            }
            // Labels seen now, and labels published before (they go to 0, not away), up to the
            // camera's share; a label that loses its place loses its topic and entity.
            let prefix = format!("{root}/cameras/{id}/");
            let before: Vec<String> = published
                .iter()
                .filter_map(|t| t.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/') && label_level(rest))
                .map(str::to_string)
                .collect();
            let mut live = labels.get(id).cloned().unwrap_or_default();
            live.retain(|l, _| label_level(l));
            let names = {
                let mut last_live = self.last_live.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                for label in live.keys() {
                    last_live.insert(format!("{id}/{label}"), now);
                }
                let kept = kept_labels(&live, before, self.labels_per_camera, |label| {
                    last_live.get(&format!("{id}/{label}")).copied()
                });
                // Only kept labels' recency is ever asked again: an open vocabulary must not
                // grow this map either.
                let own = format!("{id}/");
                last_live.retain(|key, _| {
                    key.strip_prefix(&own)
                        .is_none_or(|label| kept.contains(label))
                });
                kept
            };
            let cam = info(id);
            for label in &names {
                let n = live.get(label).copied().unwrap_or(0);
                raw.push((format!("{prefix}{label}"), n.to_string().into_bytes()));
                if let (Some(d), Some(cam)) = (&self.discovery, &cam) {
                    for (t, v) in d.label(cam, label) {
                        put(t, &v);
                    }
                }
            }
            if let (Some(d), Some(cam)) = (&self.discovery, &cam) {
                for (t, v) in d.camera(cam) {
                    put(t, &v);
                }
            }
            kept_by_camera.insert(id, names.into_iter().collect());
        }
        for z in &zones {
            let name = &z.settings.name;
            let occ = occupancy
                .get(name)
                .cloned()
                .unwrap_or_else(|| json!({"total": 0, "by_label": {}, "updated_at": null}));
            put(format!("{root}/zones/{name}/occupancy"), &occ);
            if let (Some(d), Some(cam)) = (&self.discovery, info(&z.settings.camera)) {
                // A zone that counts only some labels gets entities for those; one that
                // counts every label, for those its camera keeps.
                let labels = if z.settings.labels.is_empty() {
                    kept_by_camera
                        .get(z.settings.camera.as_str())
                        .cloned()
                        .unwrap_or_default()
                } else {
                    z.settings.labels.clone()
                };
                let zone = ZoneInfo {
                    name,
                    camera: &cam,
                    line: z.settings.kind == ZoneKind::Line,
                    labels: &labels,
                };
                for (t, v) in d.zone(&zone) {
                    put(t, &v);
                }
            }
        }
        for (kind, id, object) in self.registry.configured().await? {
            put(format!("{root}/config/{}/{id}", kind.as_str()), &object);
        }
        if let Some(d) = &self.discovery {
            for (t, v) in d.box_sensors() {
                put(t, &v);
            }
        }
        out.extend(raw);
        Ok(out)
    }

    /// Live label counts and the end of the newest segment per camera, and occupancy per
    /// zone, from the database.
    async fn counts(
        &self,
        cameras: Vec<String>,
    ) -> Result<
        (
            HashMap<String, BTreeMap<String, u64>>,
            HashMap<String, Value>,
            HashMap<String, i64>,
        ),
        StoreError,
    > {
        let since = chrono::Utc::now().timestamp_millis() - LIVE.as_millis() as i64;
        self.store
            .read(move |c| {
                let mut labels = HashMap::new();
                let mut last_segments = HashMap::new();
                for camera in cameras {
                    if let Some(end) = index::last_segment_end_ms(c, &camera)? {
                        last_segments.insert(camera.clone(), end);
                    }
                    let by_label = detections::live_label_counts(c, &camera, since)?;
                    labels.insert(camera, by_label);
                }
                let mut occupancy = HashMap::new();
                for row in zones::queries::occupancy(c, None)? {
                    let at = row
                        .updated_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    occupancy.insert(
                        row.zone,
                        json!({"total": row.total, "by_label": row.by_label, "updated_at": at}),
                    );
                }
                Ok((labels, occupancy, last_segments))
            })
            .await
    }

    async fn stats(&self, cameras: usize) -> Value {
        let outbox = self.outbox.status().await.ok();
        let mine = outbox
            .as_ref()
            .and_then(|s| s.consumers.iter().find(|c| c.consumer == CONSUMER).cloned());
        let disk = self.media.disk();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "outbox": {
                "backlog": mine.as_ref().map_or(0, |c| c.backlog),
                "oldest_age_s": mine.as_ref().and_then(|c| c.oldest_age_s),
                "dropped": outbox.as_ref().map_or(0, |s| s.dropped),
            },
            "disk": disk.map(|d| json!({
                "total_bytes": d.total_bytes,
                "free_bytes": d.free_bytes,
                "used_percent": (d.used_percent() * 10.0).round() / 10.0,
            })),
            "cameras": cameras,
        })
    }
}

/// A camera's `cameras/<cam>/state`; a stopped box keeps the last segment and the reconnects
/// but claims no rate (`live` false).
fn camera_state(
    status: &str,
    health: Option<&CameraHealth>,
    live: bool,
    last_segment: Option<chrono::DateTime<chrono::Utc>>,
) -> Value {
    let live_health = health.filter(|_| live);
    json!({
        "status": status,
        "fps": live_health.and_then(|h| h.fps).map(|f| (f * 10.0).round() / 10.0),
        "bitrate_kbps": live_health.and_then(|h| h.bitrate_kbps).map(f64::round),
        "last_segment_at": last_segment,
        "reconnects": health.map_or(0, |h| h.reconnects),
    })
}

/// How long a stopping box waits for the broker to take its cameras' last state.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

impl StateSource {
    /// On a clean stop, leaves every camera's retained state saying `stopped` instead of the
    /// `recording` it said last, so whoever reads it while the box is down is not misled.
    /// `session` is the connection's own token, which outlives the uplink's shutdown for this;
    /// the whole goodbye is bounded, so a stalled broker cannot hold the stop.
    async fn say_stopped(&self, link: &Link, session: &CancellationToken) {
        if link.connection().borrow().is_none() {
            return;
        }
        if tokio::time::timeout(GOODBYE_TIMEOUT, self.publish_stopped(link, session))
            .await
            .is_err()
        {
            tracing::warn!("the broker did not take the cameras' last state before the stop");
        }
    }

    async fn publish_stopped(&self, link: &Link, session: &CancellationToken) {
        let Ok(cameras) = self.registry.cameras().await else {
            return;
        };
        for c in &cameras {
            let health = self.media.health().get(c.id());
            let camera = c.id().to_string();
            let indexed = self
                .store
                .read(move |c| Ok::<_, StoreError>(index::last_segment_end_ms(c, &camera)?))
                .await
                .ok()
                .flatten()
                .and_then(chrono::DateTime::from_timestamp_millis);
            let last_segment = indexed.or(health.as_ref().and_then(|h| h.last_segment_at));
            let state = camera_state("stopped", health.as_ref(), false, last_segment);
            let topic = format!("{}/cameras/{}/state", self.root, c.id());
            let payload = serde_json::to_vec(&state).unwrap_or_default();
            if link
                .publish(&topic, QoS::AtLeastOnce, true, payload, Tag::Other, session)
                .await
                .is_err()
            {
                return;
            }
        }
        link.settled().await;
    }
}

async fn load_published(store: &Store) -> Result<BTreeSet<String>, StoreError> {
    store
        .read(|c| {
            let mut stmt = c.prepare_cached("SELECT topic FROM mqtt_retained")?;
            let rows = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok::<_, StoreError>(rows)
        })
        .await
}

async fn save_published(
    store: &Store,
    added: Vec<String>,
    removed: Vec<String>,
) -> Result<(), StoreError> {
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    store
        .write(move |c| {
            for t in &added {
                c.execute(
                    "INSERT OR IGNORE INTO mqtt_retained (topic) VALUES (?1)",
                    [t],
                )?;
            }
            for t in &removed {
                c.execute("DELETE FROM mqtt_retained WHERE topic = ?1", [t])?;
            }
            Ok::<_, StoreError>(())
        })
        .await
}

/// Keeps the broker's retained state in step until `shutdown`.
pub async fn run(
    source: StateSource,
    link: Arc<Link>,
    nudge: Arc<StateNudge>,
    shutdown: CancellationToken,
    session: CancellationToken,
) {
    let mut published = match load_published(&source.store).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the list of retained MQTT topics");
            BTreeSet::new()
        }
    };
    let mut connection = link.connection();
    let mut changes = source.registry.subscribe();
    // What this connection has been sent: topic -> payload.
    let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
    let mut sent_on: Option<u64> = None;
    let mut last_stats: Option<Instant> = None;
    loop {
        let current = *connection.borrow_and_update();
        if current.is_some() {
            if current != sent_on {
                sent.clear();
                last_stats = None;
                sent_on = current;
            }
            if nudge
                .rediscover
                .swap(false, std::sync::atomic::Ordering::SeqCst)
                && let Some(d) = &source.discovery
            {
                sent.retain(|t, _| !d.owns(t));
            }
            match round(
                &source,
                &link,
                &mut sent,
                &mut published,
                &mut last_stats,
                &shutdown,
            )
            .await
            {
                Ok(()) => {}
                Err(RoundError::Stopping) => break,
                Err(RoundError::Failed(e)) => {
                    tracing::warn!(error = %e, "cannot publish MQTT state")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = connection.changed() => {}
            _ = changes.changed() => {}
            _ = nudge.notify.notified() => {}
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
    source.say_stopped(&link, &session).await;
}

enum RoundError {
    Stopping,
    Failed(anyhow::Error),
}

impl From<Stopping> for RoundError {
    fn from(_: Stopping) -> Self {
        RoundError::Stopping
    }
}

async fn round(
    source: &StateSource,
    link: &Link,
    sent: &mut HashMap<String, Vec<u8>>,
    published: &mut BTreeSet<String>,
    last_stats: &mut Option<Instant>,
    shutdown: &CancellationToken,
) -> Result<(), RoundError> {
    let desired = source
        .desired(published)
        .await
        .map_err(RoundError::Failed)?;
    let mut added = Vec::new();
    for (topic, payload) in &desired {
        if sent.get(topic) != Some(payload) {
            link.publish(
                topic,
                QoS::AtLeastOnce,
                true,
                payload.clone(),
                Tag::Other,
                shutdown,
            )
            .await?;
            sent.insert(topic.clone(), payload.clone());
            if published.insert(topic.clone()) {
                added.push(topic.clone());
            }
        }
    }
    let gone: Vec<String> = published
        .iter()
        .filter(|t| !desired.contains_key(*t))
        .cloned()
        .collect();
    for topic in &gone {
        link.publish(
            topic,
            QoS::AtLeastOnce,
            true,
            Vec::new(),
            Tag::Other,
            shutdown,
        )
        .await?;
        sent.remove(topic);
        published.remove(topic);
    }
    if let Err(e) = save_published(&source.store, added, gone).await {
        tracing::warn!(error = %e, "cannot record the retained MQTT topics");
    }
    if last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
        let cameras = desired
            .keys()
            .filter(|t| t.starts_with(&format!("{}/config/camera/", source.root)))
            .count();
        let stats = source.stats(cameras).await;
        link.publish(
            &format!("{}/stats", source.root),
            QoS::AtMostOnce,
            true,
            serde_json::to_vec(&stats).unwrap_or_default(),
            Tag::Other,
            shutdown,
        )
        .await?;
        *last_stats = Some(Instant::now());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_labels_win_places_then_the_most_recently_live() {
        let live: BTreeMap<String, u64> = [("person".into(), 1), ("car".into(), 3)].into();
        let before = vec!["dog".into(), "cat".into(), "bird".into(), "person".into()];
        let t0 = Instant::now();
        let seen = |l: &str| match l {
            "cat" => Some(t0),
            "dog" => Some(t0 + Duration::from_secs(1)),
            _ => None,
        };
        let kept = |cap| kept_labels(&live, before.clone(), cap, seen);
        assert_eq!(kept(1), BTreeSet::from(["car".to_string()]));
        assert_eq!(
            kept(3),
            BTreeSet::from(["car", "person", "dog"].map(String::from))
        );
        assert_eq!(
            kept(5),
            BTreeSet::from(["car", "person", "dog", "cat", "bird"].map(String::from))
        );
    }
}
