//! The zone state machine: pure logic over observations and time, no I/O.
//!
//! Everything is in **time**, never in frames, so behaviour does not change when fps drops:
//! - a track enters (or leaves) a region once its anchor point has been inside (or outside) for
//!   the zone's `confirm` time; the event carries the capture time of the first detection in the
//!   new place, so the sampling rate shifts it by at most one frame;
//! - `dwell` fires once per visit at `entered + dwell_seconds`, from a clock tick when no batch
//!   comes;
//! - a track not seen for `lost_after` leaves every zone it was in (`exit`, reason `lost`), on its
//!   own camera, and is forgotten (outside every zone, after twice the camera's longest
//!   `lost_after`);
//! - a batch older than a track's last sighting is too late for that track and is skipped, so
//!   batches stored out of order never walk a track back;
//! - a line is crossed when the segment between a track's consecutive points properly crosses it
//!   (`cross_ab` / `cross_ba` by the side it ends on);
//! - a track whose anchor stays within [`STATIC_EPSILON`] for the zone's `static_after` is static:
//!   it produces no events and does not count in occupancy until it moves again.
//!
//! State is keyed per (camera, task, track): track ids of different tasks never collide.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::geometry::{Point, crossing, point_in_polygon};
use crate::config::model::{Anchor, LineDirection, Severity, ZoneConfig, ZoneKind};
use crate::config::rules::ZoneEventType;

/// Movement below this (fraction of the frame) is standing still.
pub const STATIC_EPSILON: f64 = 0.01;

/// A zone, ready for evaluation.
#[derive(Clone, Debug)]
pub struct Zone {
    pub id: String,
    pub camera: String,
    pub settings: ZoneConfig,
    points: Vec<Point>,
}

impl Zone {
    pub fn new(settings: ZoneConfig) -> Zone {
        Zone {
            id: settings.name.clone(),
            camera: settings.camera.clone(),
            points: settings.points.iter().map(|p| (p[0], p[1])).collect(),
            settings,
        }
    }

    fn ms(d: crate::config::units::Duration) -> i64 {
        d.get().as_millis() as i64
    }

    /// Whether a detection passes the zone's filters (label, confidence, size).
    fn accepts(&self, o: &Observation) -> bool {
        let s = &self.settings;
        let area = o.bbox[2] * o.bbox[3];
        (s.labels.is_empty() || o.label.as_ref().is_some_and(|l| s.labels.contains(l)))
            && o.confidence.unwrap_or(1.0) >= s.min_confidence
            && s.min_area.is_none_or(|m| area >= m)
            && s.max_area.is_none_or(|m| area <= m)
    }

    fn anchor(&self, bbox: &[f64; 4]) -> Point {
        match self.settings.anchor {
            Anchor::BottomCenter => (bbox[0] + bbox[2] / 2.0, bbox[1] + bbox[3]),
            Anchor::Center => (bbox[0] + bbox[2] / 2.0, bbox[1] + bbox[3] / 2.0),
        }
    }
}

/// Which track: tracks of different tasks on one camera never collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrackKey {
    pub task: String,
    pub track: String,
}

/// One detection, as the engine needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub track: TrackKey,
    pub label: Option<String>,
    pub confidence: Option<f64>,
    pub bbox: [f64; 4],
}

/// Something that happened in a zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneEvent {
    pub zone: String,
    pub camera: String,
    pub task: String,
    pub track_id: String,
    pub label: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    /// Capture time of the detection that caused it, or the deadline that passed, Unix ms.
    pub ts_ms: i64,
    /// Seconds inside (exit and dwell).
    pub dwell_s: Option<f64>,
    /// Why an exit happened: `left` or `lost`.
    pub reason: Option<String>,
    /// The zone's `severity`, so a receiver can tell a door's dwell from a driveway's without
    /// knowing the zones. Records written before it was carried read as `info`.
    #[serde(default = "info")]
    pub severity: Severity,
}

fn info() -> Severity {
    Severity::Info
}

/// Per (track, zone) state. Fields at their default are not stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct InZone {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inside: bool,
    /// A state change waiting for `confirm` to pass: (target, since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<(bool, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entered_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dwell_fired: bool,
}

/// Per track state. Every live track of a camera is rewritten in each commit that changes the
/// camera (`zone_state`; 30 tracks a camera made 7 KB in the soak), so it is stored with
/// one-letter keys, and without its zones while it is in none; the long names still read, for
/// states stored before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Track {
    #[serde(
        rename = "l",
        alias = "label",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    label: Option<String>,
    #[serde(rename = "t", alias = "last_seen_ms")]
    last_seen_ms: i64,
    /// Last anchor point per zone kind is the same bbox; keep the bbox.
    #[serde(rename = "b", alias = "last_bbox")]
    last_bbox: [f64; 4],
    #[serde(rename = "a", alias = "still_anchor")]
    still_anchor: Point,
    #[serde(rename = "s", alias = "still_since_ms")]
    still_since_ms: i64,
    #[serde(
        rename = "z",
        alias = "zones",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    zones: BTreeMap<String, InZone>,
}

/// The state of one camera; serialised with the consumer's cursor (invariant O2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CameraState {
    #[serde(with = "as_pairs")]
    tracks: BTreeMap<TrackKey, Track>,
}

/// JSON object keys must be strings; track keys are pairs, so the map travels as a list.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Track, TrackKey};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<TrackKey, Track>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<TrackKey, Track>, D::Error> {
        Ok(Vec::<(TrackKey, Track)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// Occupancy of a zone: tracks inside and not static, by label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Occupancy {
    pub total: u32,
    pub by_label: BTreeMap<String, u32>,
}

impl CameraState {
    fn is_static(track: &Track, zone: &Zone, now_ms: i64) -> bool {
        now_ms - track.still_since_ms >= Zone::ms(zone.settings.static_after)
    }

    /// Deadlines up to `now_ms`: lost tracks leave their zones, dwell timers fire.
    pub fn advance(&mut self, zones: &[Zone], now_ms: i64) -> Vec<ZoneEvent> {
        let mut events = Vec::new();
        for (key, track) in self.tracks.iter_mut() {
            let (label, last_seen, still_since) = (
                track.label.clone(),
                track.last_seen_ms,
                track.still_since_ms,
            );
            for zone in zones {
                let Some(state) = track.zones.get_mut(&zone.id) else {
                    continue;
                };
                let lost_at = last_seen + Zone::ms(zone.settings.lost_after);
                if state.inside && now_ms >= lost_at {
                    events.push(event(
                        zone,
                        key,
                        label.clone(),
                        ZoneEventType::Exit,
                        lost_at,
                        state.entered_ms,
                        Some("lost"),
                    ));
                    *state = InZone::default();
                    continue;
                }
                if !state.inside && now_ms >= lost_at {
                    // Lost before its entry was confirmed: it never entered, and keeping the
                    // pending entry would keep the track (and the state rewritten with every
                    // batch) for ever.
                    *state = InZone::default();
                    continue;
                }
                if let (true, false, Some(entered), Some(dwell)) = (
                    state.inside,
                    state.dwell_fired,
                    state.entered_ms,
                    zone.settings.dwell_seconds,
                ) {
                    let due = entered + (dwell * 1000.0) as i64;
                    if now_ms >= due {
                        // A deadline that passes while the object is parked passes quietly.
                        state.dwell_fired = true;
                        let parked = due - still_since >= Zone::ms(zone.settings.static_after);
                        if !parked {
                            events.push(event(
                                zone,
                                key,
                                label.clone(),
                                ZoneEventType::Dwell,
                                due,
                                Some(entered),
                                None,
                            ));
                        }
                    }
                }
            }
            track.zones.retain(|_, z| *z != InZone::default());
        }
        // A track outside every zone is forgotten once unseen for twice the longest `lost_after`,
        // so the state (rewritten with every batch) holds only tracks that can still matter.
        // Twice: a line still sees the step of a track sampled as slowly as `lost_after`, and
        // the clock tick (wall time) runs ahead of batches that arrive late (posts in flight, a
        // commit linger).
        let keep = 2 * zones
            .iter()
            .map(|z| Zone::ms(z.settings.lost_after))
            .max()
            .unwrap_or(0);
        self.tracks
            .retain(|_, t| !t.zones.is_empty() || now_ms - t.last_seen_ms < keep);
        events.sort_by_key(|e| e.ts_ms);
        events
    }

    /// One batch of observations at capture time `ts_ms`.
    pub fn observe(
        &mut self,
        zones: &[Zone],
        ts_ms: i64,
        observations: &[Observation],
    ) -> Vec<ZoneEvent> {
        let mut events = self.advance(zones, ts_ms);
        for o in observations {
            // A batch that arrives after a newer one of the same track (a worker with posts in
            // flight, a retry) would move it back and cross its lines twice; it is too late.
            if self
                .tracks
                .get(&o.track)
                .is_some_and(|t| t.last_seen_ms > ts_ms)
            {
                continue;
            }
            let track = self.tracks.entry(o.track.clone()).or_insert_with(|| Track {
                label: o.label.clone(),
                last_seen_ms: ts_ms,
                last_bbox: o.bbox,
                still_anchor: (o.bbox[0] + o.bbox[2] / 2.0, o.bbox[1] + o.bbox[3]),
                still_since_ms: ts_ms,
                zones: BTreeMap::new(),
            });
            let previous = track.last_bbox;
            let centre = (o.bbox[0] + o.bbox[2] / 2.0, o.bbox[1] + o.bbox[3]);
            let moved = (centre.0 - track.still_anchor.0).hypot(centre.1 - track.still_anchor.1)
                > STATIC_EPSILON;
            if moved {
                track.still_anchor = centre;
                track.still_since_ms = ts_ms;
            }
            if o.label.is_some() {
                track.label = o.label.clone();
            }
            for zone in zones {
                if !zone.settings.enabled {
                    continue;
                }
                let is_static = Self::is_static(track, zone, ts_ms);
                let accepted = zone.accepts(o);
                match zone.settings.kind {
                    ZoneKind::Line => {
                        if !accepted || is_static || zone.points.len() != 2 {
                            continue;
                        }
                        let (a, b) = (zone.points[0], zone.points[1]);
                        let Some(ab) = crossing(a, b, zone.anchor(&previous), zone.anchor(&o.bbox))
                        else {
                            continue;
                        };
                        let wanted = match zone.settings.direction {
                            LineDirection::Any => true,
                            LineDirection::Ab => ab,
                            LineDirection::Ba => !ab,
                        };
                        if wanted {
                            let kind = if ab {
                                ZoneEventType::CrossAb
                            } else {
                                ZoneEventType::CrossBa
                            };
                            events.push(event(
                                zone,
                                &o.track,
                                track.label.clone(),
                                kind,
                                ts_ms,
                                None,
                                None,
                            ));
                        }
                    }
                    ZoneKind::Region => {
                        let target =
                            accepted && point_in_polygon(zone.anchor(&o.bbox), &zone.points);
                        let state = track.zones.entry(zone.id.clone()).or_default();
                        if target == state.inside {
                            state.pending = None;
                            continue;
                        }
                        let since = match state.pending {
                            Some((t, since)) if t == target => since,
                            _ => {
                                state.pending = Some((target, ts_ms));
                                ts_ms
                            }
                        };
                        if ts_ms - since < Zone::ms(zone.settings.confirm) {
                            continue;
                        }
                        // The change happened when it was first seen; `confirm` only proved it.
                        state.pending = None;
                        state.inside = target;
                        if is_static {
                            // A parked object makes no news; it keeps its place quietly.
                            state.entered_ms = target.then_some(since);
                            continue;
                        }
                        if target {
                            state.entered_ms = Some(since);
                            state.dwell_fired = false;
                            events.push(event(
                                zone,
                                &o.track,
                                track.label.clone(),
                                ZoneEventType::Enter,
                                since,
                                None,
                                None,
                            ));
                        } else {
                            let entered = state.entered_ms.take();
                            events.push(event(
                                zone,
                                &o.track,
                                track.label.clone(),
                                ZoneEventType::Exit,
                                since,
                                entered,
                                Some("left"),
                            ));
                        }
                    }
                }
            }
            track
                .zones
                .retain(|id, z| *z != InZone::default() && zones.iter().any(|zone| zone.id == *id));
            track.last_seen_ms = ts_ms;
            track.last_bbox = o.bbox;
        }
        // Dwell timers that the new observations may have made due.
        events.extend(self.advance(zones, ts_ms));
        events
    }

    /// Occupancy of each of `zones` now.
    pub fn occupancy(&self, zones: &[Zone], now_ms: i64) -> HashMap<String, Occupancy> {
        let mut out: HashMap<String, Occupancy> = zones
            .iter()
            .map(|z| (z.id.clone(), Occupancy::default()))
            .collect();
        for track in self.tracks.values() {
            for zone in zones {
                let inside = track.zones.get(&zone.id).is_some_and(|z| z.inside);
                if inside && !Self::is_static(track, zone, now_ms) {
                    let o = out.entry(zone.id.clone()).or_default();
                    o.total += 1;
                    *o.by_label
                        .entry(track.label.clone().unwrap_or_else(|| "unknown".into()))
                        .or_default() += 1;
                }
            }
        }
        out
    }
}

fn event(
    zone: &Zone,
    key: &TrackKey,
    label: Option<String>,
    kind: ZoneEventType,
    ts_ms: i64,
    entered_ms: Option<i64>,
    reason: Option<&str>,
) -> ZoneEvent {
    ZoneEvent {
        zone: zone.id.clone(),
        camera: zone.camera.clone(),
        task: key.task.clone(),
        track_id: key.track.clone(),
        label,
        kind: kind.as_str().to_string(),
        ts_ms,
        dwell_s: entered_ms.map(|e| (ts_ms - e) as f64 / 1000.0),
        reason: reason.map(str::to_string),
        severity: zone.settings.severity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_stored_with_the_long_names_still_reads_and_is_stored_short() {
        let old = r#"{"tracks":[[{"task":"c:m:sub","track":"m1"},{"label":"motion","last_seen_ms":5,"last_bbox":[0.1,0.2,0.1,0.1],"still_anchor":[0.15,0.3],"still_since_ms":5,"zones":{"door":{"inside":true,"pending":null,"entered_ms":4,"dwell_fired":false}}}],[{"task":"c:m:sub","track":"m2"},{"label":null,"last_seen_ms":6,"last_bbox":[0.5,0.5,0.1,0.1],"still_anchor":[0.55,0.6],"still_since_ms":6,"zones":{}}]]}"#;
        let state: CameraState = serde_json::from_str(old).unwrap();
        let stored = serde_json::to_string(&state).unwrap();
        assert_eq!(
            stored,
            r#"{"tracks":[[{"task":"c:m:sub","track":"m1"},{"l":"motion","t":5,"b":[0.1,0.2,0.1,0.1],"a":[0.15,0.3],"s":5,"z":{"door":{"inside":true,"entered_ms":4}}}],[{"task":"c:m:sub","track":"m2"},{"t":6,"b":[0.5,0.5,0.1,0.1],"a":[0.55,0.6],"s":6}]]}"#
        );
        assert_eq!(serde_json::from_str::<CameraState>(&stored).unwrap(), state);
    }

    /// A zone from heldar.toml keys (camera `c`).
    fn zone(toml_text: &str) -> Zone {
        let settings: ZoneConfig = toml::from_str(&format!("camera = \"c\"\n{toml_text}")).unwrap();
        Zone::new(settings)
    }

    /// The right half of the frame, confirm 0.5 s, lost after 10 s.
    fn right_half() -> Zone {
        zone(
            "name = \"right\"\nkind = \"region\"\npoints = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]",
        )
    }

    /// A detection whose bottom centre (the anchor) is at (x, y).
    fn at(task: &str, track: &str, label: &str, x: f64, y: f64) -> Observation {
        Observation {
            track: TrackKey {
                task: task.into(),
                track: track.into(),
            },
            label: Some(label.into()),
            confidence: Some(0.9),
            bbox: [x - 0.02, y - 0.1, 0.04, 0.1],
        }
    }

    /// Runs a walk of `(ms, x)` positions (y 0.5) through the engine; returns "kind@ms" strings.
    fn walk(zones: &[Zone], steps: &[(i64, f64)]) -> Vec<String> {
        walk_on(&mut CameraState::default(), zones, steps)
    }

    /// [`walk`] on a state the caller goes on with.
    fn walk_on(s: &mut CameraState, zones: &[Zone], steps: &[(i64, f64)]) -> Vec<String> {
        let mut out = Vec::new();
        for (ms, x) in steps {
            for e in s.observe(zones, *ms, &[at("t", "1", "person", *x, 0.5)]) {
                out.push(format!("{}@{}", e.kind, e.ts_ms));
            }
        }
        out
    }

    /// A walk from x = 0.1 to 0.9 and back over 16 s, sampled every `period_ms`.
    fn there_and_back(period_ms: i64) -> Vec<(i64, f64)> {
        (0..=16_000 / period_ms)
            .map(|i| {
                let t = i * period_ms;
                let x = if t <= 8000 {
                    0.1 + 0.1 * t as f64 / 1000.0
                } else {
                    0.9 - 0.1 * (t - 8000) as f64 / 1000.0
                };
                (t, x)
            })
            .collect()
    }

    #[test]
    fn events_carry_their_zones_severity() {
        let door = zone(
            "name = \"door\"\nkind = \"region\"\nseverity = \"critical\"\n\
             points = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]",
        );
        let mut s = CameraState::default();
        let events: Vec<ZoneEvent> = (0..20)
            .flat_map(|i| {
                s.observe(
                    std::slice::from_ref(&door),
                    i * 100,
                    &[at("t", "1", "person", 0.8, 0.5)],
                )
            })
            .collect();
        assert_eq!(events[0].kind, "enter");
        assert_eq!(events[0].severity, Severity::Critical);
        assert_eq!(
            right_half().settings.severity,
            Severity::Info,
            "the default"
        );
        let old: ZoneEvent = serde_json::from_str(
            r#"{"zone": "door", "camera": "c", "task": "t", "track_id": "1", "label": null,
                "type": "enter", "ts_ms": 1, "dwell_s": null, "reason": null}"#,
        )
        .unwrap();
        assert_eq!(
            old.severity,
            Severity::Info,
            "a record from before reads as info"
        );
    }

    #[test]
    fn jitter_on_the_border_does_not_flap() {
        let steps: Vec<(i64, f64)> = (0..40)
            .map(|i| (i * 100, if i % 2 == 0 { 0.49 } else { 0.51 }))
            .collect();
        assert!(
            walk(&[right_half()], &steps).is_empty(),
            "alternating every 100 ms never confirms"
        );
        let mut steps = steps;
        steps.extend((40..50).map(|i| (i * 100, 0.6)));
        assert_eq!(walk(&[right_half()], &steps), vec!["enter@3900"]);
    }

    #[test]
    fn ten_fps_and_one_fps_give_the_same_events_within_one_frame() {
        let fast = walk(&[right_half()], &there_and_back(100));
        let slow = walk(&[right_half()], &there_and_back(1000));
        assert_eq!(fast.len(), 2, "{fast:?}");
        assert_eq!(slow.len(), 2, "{slow:?}");
        for (f, s) in fast.iter().zip(&slow) {
            let (fk, ft) = f.split_once('@').unwrap();
            let (sk, st) = s.split_once('@').unwrap();
            assert_eq!(fk, sk);
            let gap = (ft.parse::<i64>().unwrap() - st.parse::<i64>().unwrap()).abs();
            assert!(gap <= 1000, "{f} vs {s}");
        }
    }

    #[test]
    fn dwell_fires_on_time_without_new_batches_and_once_per_visit() {
        let z = zone(
            "name = \"door\"\nkind = \"region\"\npoints = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\ndwell_seconds = 5\nconfirm = \"0s\"\nlost_after = \"60s\"",
        );
        let mut s = CameraState::default();
        let enter = s.observe(
            std::slice::from_ref(&z),
            1000,
            &[at("t", "1", "person", 0.7, 0.5)],
        );
        assert_eq!(enter[0].kind, "enter");
        assert!(s.advance(std::slice::from_ref(&z), 5999).is_empty());
        let dwell = s.advance(std::slice::from_ref(&z), 7300);
        assert_eq!(dwell.len(), 1);
        assert_eq!(
            (dwell[0].kind.as_str(), dwell[0].ts_ms, dwell[0].dwell_s),
            ("dwell", 6000, Some(5.0))
        );
        assert!(
            s.advance(std::slice::from_ref(&z), 20_000).is_empty(),
            "once per visit"
        );
    }

    #[test]
    fn a_lost_track_exits_on_its_own_camera() {
        let z = right_half();
        let mut s = CameraState::default();
        s.observe(
            std::slice::from_ref(&z),
            0,
            &[at("t", "1", "person", 0.7, 0.5)],
        );
        s.observe(
            std::slice::from_ref(&z),
            600,
            &[at("t", "1", "person", 0.7, 0.5)],
        );
        assert!(s.advance(std::slice::from_ref(&z), 10_000).is_empty());
        let lost = s.advance(std::slice::from_ref(&z), 10_700);
        assert_eq!(lost.len(), 1);
        assert_eq!(
            (
                lost[0].kind.as_str(),
                lost[0].reason.as_deref(),
                lost[0].ts_ms
            ),
            ("exit", Some("lost"), 10_600)
        );
        assert_eq!(lost[0].camera, "c");
    }

    /// Seen once inside a zone, for less than `confirm`, and never again: forgotten like any
    /// lost track. It was kept with its entry pending for ever, so on a busy camera the state
    /// grew by every such track and every batch rewrote it (36 KB per camera after 5 minutes of
    /// the soak, most of the WAL's writes).
    #[test]
    fn a_track_lost_before_its_entry_confirmed_is_forgotten() {
        let z = right_half();
        let mut s = CameraState::default();
        s.observe(
            std::slice::from_ref(&z),
            0,
            &[at("t", "1", "person", 0.7, 0.5)],
        );
        assert_eq!(s.tracks.len(), 1);
        assert!(s.advance(std::slice::from_ref(&z), 120_000).is_empty());
        assert!(s.tracks.is_empty(), "{:?}", s.tracks);
    }

    /// Posts in flight can be stored out of order; the late one must not walk the track back
    /// over the line it has just crossed.
    #[test]
    fn a_late_batch_does_not_move_a_track_back() {
        let line = zone(
            "name = \"gate\"\nkind = \"line\"\npoints = [[0.5, 0.0], [0.5, 1.0]]\nconfirm = \"0s\"",
        );
        let steps = [(0, 0.3), (400, 0.7), (200, 0.4), (600, 0.8)];
        assert_eq!(walk(std::slice::from_ref(&line), &steps), ["cross_ba@400"]);
    }

    /// A track outside every zone is kept for twice `lost_after`: a line still sees the step of
    /// a track sampled every `lost_after`, and the state forgets it after that.
    #[test]
    fn a_slowly_sampled_track_crosses_a_line_and_is_forgotten_later() {
        let line = zone(
            "name = \"gate\"\nkind = \"line\"\npoints = [[0.5, 0.0], [0.5, 1.0]]\nlost_after = \"10s\"",
        );
        let zones = std::slice::from_ref(&line);
        let mut s = CameraState::default();
        let kinds = walk_on(&mut s, zones, &[(0, 0.3), (10_000, 0.7)]);
        assert_eq!(kinds, ["cross_ba@10000"]);
        s.advance(zones, 29_999);
        assert_eq!(s.tracks.len(), 1, "kept for twice lost_after");
        s.advance(zones, 30_000);
        assert!(s.tracks.is_empty(), "{:?}", s.tracks);
    }

    #[test]
    fn tracks_of_two_tasks_never_collide() {
        let z = right_half();
        let mut s = CameraState::default();
        let mut events = Vec::new();
        for ms in [0, 600] {
            events.extend(s.observe(
                std::slice::from_ref(&z),
                ms,
                &[
                    at("people", "1", "person", 0.7, 0.5),
                    at("cars", "1", "car", 0.2, 0.5),
                ],
            ));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].task.as_str(), events[0].label.as_deref()),
            ("people", Some("person"))
        );
    }

    #[test]
    fn lines_are_crossed_both_ways_and_filtered_by_direction() {
        let any = zone("name = \"gate\"\nkind = \"line\"\npoints = [[0.5, 0.0], [0.5, 1.0]]");
        let ab = zone(
            "name = \"in\"\nkind = \"line\"\npoints = [[0.5, 0.0], [0.5, 1.0]]\ndirection = \"ab\"",
        );
        let zones = [any, ab];
        let mut s = CameraState::default();
        let mut kinds = Vec::new();
        for (ms, x) in [(0, 0.3), (500, 0.7), (1000, 0.3)] {
            for e in s.observe(&zones, ms, &[at("t", "1", "person", x, 0.5)]) {
                kinds.push(format!("{}:{}", e.zone, e.kind));
            }
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert!(
            kinds.contains(&"gate:cross_ab".to_string())
                || kinds.contains(&"gate:cross_ba".to_string())
        );
        let gate: Vec<&String> = kinds.iter().filter(|k| k.starts_with("gate:")).collect();
        assert_ne!(gate[0], gate[1], "both directions: {kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| k.starts_with("in:")).count(),
            1,
            "one direction only"
        );
    }

    #[test]
    fn labels_and_confidence_filter() {
        let z = zone(
            "name = \"cars\"\nkind = \"region\"\npoints = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\nlabels = [\"car\"]\nmin_confidence = 0.6\nconfirm = \"0s\"",
        );
        let mut s = CameraState::default();
        let person = at("t", "1", "person", 0.7, 0.5);
        let mut weak_car = at("t", "2", "car", 0.7, 0.5);
        weak_car.confidence = Some(0.4);
        let car = at("t", "3", "car", 0.7, 0.5);
        let events = s.observe(std::slice::from_ref(&z), 0, &[person, weak_car, car]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].track_id, "3");
    }

    #[test]
    fn a_parked_object_goes_quiet_until_it_moves() {
        let z = zone(
            "name = \"lot\"\nkind = \"region\"\npoints = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\nconfirm = \"0s\"\nstatic_after = \"30s\"\nlost_after = \"600s\"\ndwell_seconds = 60",
        );
        let zones = std::slice::from_ref(&z);
        let mut s = CameraState::default();
        let first = s.observe(zones, 0, &[at("t", "car", "car", 0.7, 0.5)]);
        assert_eq!(first[0].kind, "enter");
        for ms in (1..=100).map(|i| i * 1000) {
            let events = s.observe(zones, ms, &[at("t", "car", "car", 0.7, 0.5)]);
            assert!(
                events.is_empty(),
                "a parked car makes no news at {ms}: {events:?}"
            );
        }
        assert_eq!(
            s.occupancy(zones, 100_000)["lot"].total,
            0,
            "static objects do not count"
        );
        // It drives off to the left: it leaves, and that is news again.
        let mut events = Vec::new();
        for (i, x) in [0.6, 0.4, 0.3].iter().enumerate() {
            events.extend(s.observe(
                zones,
                101_000 + i as i64 * 1000,
                &[at("t", "car", "car", *x, 0.5)],
            ));
        }
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            vec!["exit"]
        );
    }

    #[test]
    fn occupancy_counts_tracks_inside_by_label() {
        let z = zone(
            "name = \"right\"\nkind = \"region\"\npoints = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\nconfirm = \"0s\"",
        );
        let mut s = CameraState::default();
        s.observe(
            std::slice::from_ref(&z),
            0,
            &[
                at("t", "1", "person", 0.7, 0.5),
                at("t", "2", "person", 0.8, 0.5),
                at("t", "3", "car", 0.9, 0.5),
                at("t", "4", "car", 0.1, 0.5),
            ],
        );
        let o = &s.occupancy(std::slice::from_ref(&z), 0)["right"];
        assert_eq!(o.total, 3);
        assert_eq!((o.by_label["person"], o.by_label["car"]), (2, 1));
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let z: ZoneConfig = toml::from_str("camera = \"c\"\nname = \"z\"\nkind = \"region\"\npoints = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]").unwrap();
        let mut s = CameraState::default();
        let o = Observation {
            track: TrackKey {
                task: "t".into(),
                track: "1".into(),
            },
            label: None,
            confidence: None,
            bbox: [0.5, 0.1, 0.1, 0.1],
        };
        s.observe(&[Zone::new(z)], 0, &[o]);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<CameraState>(&text).unwrap(), s);
    }
}
