//! Retention: keeps recordings within their age limits, the size cap and the free-disk floor.
//!
//! Order of a pass, each step only if needed:
//! 1. **age**: a camera's segments older than its `retention` (else `recording.retention`);
//! 2. **size cap** (`recording.max_bytes`): the camera furthest over its fair share of the cap
//!    (cap ÷ cameras holding footage; its locked footage counts against its own share) loses its
//!    oldest footage first, so one busy camera cannot eat another's history;
//! 3. **free-disk floor** (`recording.min_free`): the same fair choice, over the share of what
//!    may remain once the deficit is freed, until the floor is met; one camera alone, or cameras
//!    holding equal footage, lose their oldest unlocked footage too.
//!
//! Never deleted: evidence-locked segments (checked in the same statement that deletes the row)
//! and segments a clip export is reading ([`ReadLocks`]). A row is deleted before its file, so a
//! crash in between leaves a file without a row, which the start-up reconcile indexes again and
//! the next pass deletes again: never a row pointing at nothing. Every pass that deletes logs
//! what, how much and why. No pass runs while the recordings directory is refused
//! ([`super::recdir`]): the free space of an empty mount point says nothing about the real disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::params;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::recdir::RecordingsGate;
use crate::config::model::RecordingConfig;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// Oldest segments deleted per step, so a pass interleaves with recording writes.
const BATCH: usize = 20;
/// Longest a pass waits between runs when nothing nudges it.
const PERIOD: Duration = Duration::from_secs(60);
/// At most one pass per this interval however often segments close.
const MIN_SPACING: Duration = Duration::from_secs(5);
/// Exported clips are kept this long.
const CLIP_LIFETIME: Duration = Duration::from_secs(86_400);
/// Bound on floor steps per pass, in case deleting does not free space (another process filling
/// the disk): the pass stops and says so rather than deleting everything.
const MAX_FLOOR_STEPS: usize = 200;

/// Segments being read (clip export, snapshot at a time) or being deleted, so neither side
/// touches what the other holds.
#[derive(Clone, Default)]
pub struct ReadLocks {
    state: Arc<Mutex<LockState>>,
}

#[derive(Default)]
struct LockState {
    readers: HashMap<i64, usize>,
    deleting: HashSet<i64>,
}

/// Held while segments are read; releases them on drop.
pub struct ReadGuard {
    locks: ReadLocks,
    ids: Vec<i64>,
}

impl ReadLocks {
    /// Locks `ids` for reading; returns the guard and the ids actually locked (a segment being
    /// deleted is skipped: it is as good as gone).
    pub fn acquire(&self, ids: &[i64]) -> ReadGuard {
        let mut s = self.lock();
        let held: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !s.deleting.contains(id))
            .collect();
        for id in &held {
            *s.readers.entry(*id).or_default() += 1;
        }
        ReadGuard {
            locks: self.clone(),
            ids: held,
        }
    }

    fn claim_for_deletion(&self, ids: Vec<i64>) -> Vec<i64> {
        let mut s = self.lock();
        let claimed: Vec<i64> = ids
            .into_iter()
            .filter(|id| !s.readers.contains_key(id))
            .collect();
        s.deleting.extend(&claimed);
        claimed
    }

    fn release_deletion(&self, ids: &[i64]) {
        let mut s = self.lock();
        for id in ids {
            s.deleting.remove(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReadGuard {
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut s = self.locks.lock();
        for id in &self.ids {
            if let Some(n) = s.readers.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    s.readers.remove(id);
                }
            }
        }
    }
}

/// What one pass deleted, per reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    pub age: Deleted,
    pub cap: Deleted,
    pub floor: Deleted,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Deleted {
    pub segments: u64,
    pub bytes: u64,
}

/// The retention service.
#[derive(Clone)]
pub struct Retention {
    store: Store,
    registry: Registry,
    recordings_dir: PathBuf,
    clips_dir: PathBuf,
    policy: RecordingConfig,
    pub read_locks: ReadLocks,
    nudge: Arc<Notify>,
    /// When set, passes run only while it says the recordings directory is usable.
    gate: Option<RecordingsGate>,
}

struct Victim {
    id: i64,
    path: String,
    bytes: u64,
}

impl Retention {
    pub fn new(store: Store, registry: Registry, data_dir: &Path, policy: RecordingConfig) -> Self {
        Retention {
            store,
            registry,
            recordings_dir: data_dir.join("recordings"),
            clips_dir: super::clip::clips_dir(data_dir),
            policy,
            read_locks: ReadLocks::default(),
            nudge: Arc::default(),
            gate: None,
        }
    }

    /// Makes passes wait for the media service's verdict on the recordings directory.
    pub(crate) fn guarded_by(mut self, gate: RecordingsGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Asks for a pass soon (a segment closed); cheap, and coalesced.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut changes = self.registry.subscribe();
        loop {
            if let Err(e) = self.pass().await {
                tracing::error!(error = %e, "retention pass failed; trying again later");
            }
            // The spacing too gives way to a stop: it used to hold every clean stop up by it.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(MIN_SPACING) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.nudge.notified() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    /// One pass: expired clips, then age, size cap and free-disk floor.
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        remove_expired_clips(&self.clips_dir);
        let mut report = PassReport::default();
        if self.gate.as_ref().is_some_and(|g| !g.is_usable()) {
            return Ok(report);
        }
        let policy = match self.registry.settings().await {
            Ok(s) => s.recording,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot read runtime settings; using heldar.toml's");
                self.policy.clone()
            }
        };
        let ages: HashMap<String, i64> = match self.registry.cameras().await {
            Ok(cameras) => cameras
                .into_iter()
                .map(|c| {
                    let age = c.settings.retention.unwrap_or(policy.retention);
                    (c.settings.id, age.get().as_millis() as i64)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot read cameras; using the default age for all");
                HashMap::new()
            }
        };
        let default_age = policy.retention.get().as_millis() as i64;
        let now = chrono::Utc::now().timestamp_millis();
        for camera in self.totals().await?.into_keys() {
            let cutoff = now - ages.get(&camera).copied().unwrap_or(default_age);
            loop {
                let victims = self.oldest(&camera, Some(cutoff), None).await?;
                if victims.is_empty() {
                    break;
                }
                let d = self.delete(&camera, victims, "age").await?;
                if d.segments == 0 {
                    break;
                }
                add(&mut report.age, &d);
            }
        }
        if let Some(cap) = policy.max_bytes.map(|b| b.bytes()) {
            let mut protected = HashSet::new();
            loop {
                let totals = self.totals().await?;
                let total: u64 = totals.values().sum();
                if total <= cap {
                    break;
                }
                let Some(camera) = furthest_over_share(&totals, cap, &protected) else {
                    tracing::warn!(
                        total,
                        cap,
                        "recordings exceed recording.max_bytes but everything left is evidence-locked or being exported"
                    );
                    break;
                };
                let victims = self.oldest(&camera, None, Some(total - cap)).await?;
                let d = if victims.is_empty() {
                    Deleted::default()
                } else {
                    self.delete(&camera, victims, "size cap").await?
                };
                if d.segments == 0 {
                    protected.insert(camera);
                }
                add(&mut report.cap, &d);
            }
        }
        let floor = policy.min_free.bytes();
        let mut protected = HashSet::new();
        for _ in 0..MAX_FLOOR_STEPS {
            let free = free_bytes(&self.recordings_dir);
            if free.is_none_or(|f| f >= floor) {
                break;
            }
            let totals = self.totals().await?;
            let deficit = free.map_or(0, |f| floor.saturating_sub(f));
            let Some(camera) = floor_victim(&totals, deficit, &protected) else {
                tracing::warn!(
                    free,
                    floor,
                    "disk below recording.min_free and no deletable recording is left"
                );
                break;
            };
            let victims = self.oldest(&camera, None, Some(deficit)).await?;
            let d = if victims.is_empty() {
                Deleted::default()
            } else {
                self.delete(&camera, victims, "free-disk floor").await?
            };
            if d.segments == 0 {
                protected.insert(camera);
            }
            add(&mut report.floor, &d);
        }
        Ok(report)
    }

    /// Bytes of footage per camera, locked footage included.
    async fn totals(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.store
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT camera_id, SUM(bytes) FROM segments GROUP BY camera_id",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                Ok::<_, StoreError>(rows.collect::<Result<_, rusqlite::Error>>()?)
            })
            .await
    }

    /// The oldest deletable segments of a camera, optionally only those ending before `before_ms`
    /// and only as many as free `need_bytes`.
    async fn oldest(
        &self,
        camera: &str,
        before_ms: Option<i64>,
        need_bytes: Option<u64>,
    ) -> Result<Vec<Victim>, StoreError> {
        let camera = camera.to_string();
        let candidates: Vec<Victim> = self
            .store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, path, bytes FROM segments
                     WHERE camera_id = ?1 AND evidence_locked = 0 AND end_ms < ?2
                     ORDER BY start_ms LIMIT ?3",
                )?;
                let rows = stmt.query_map(
                    params![camera, before_ms.unwrap_or(i64::MAX), BATCH as i64 * 2],
                    |r| {
                        Ok(Victim {
                            id: r.get(0)?,
                            path: r.get(1)?,
                            bytes: r.get::<_, i64>(2)? as u64,
                        })
                    },
                )?;
                Ok::<_, StoreError>(rows.collect::<Result<_, rusqlite::Error>>()?)
            })
            .await?;
        let s = self.read_locks.lock();
        // Enough to free `need_bytes`, and no more: a cap or floor is met, not overshot.
        let mut freed = 0u64;
        Ok(candidates
            .into_iter()
            .filter(|v| !s.readers.contains_key(&v.id))
            .take(BATCH)
            .take_while(|v| {
                let more = need_bytes.is_none_or(|need| freed < need);
                freed += v.bytes;
                more
            })
            .collect())
    }

    /// Deletes rows (only if still unlocked), then their files.
    async fn delete(
        &self,
        camera: &str,
        victims: Vec<Victim>,
        reason: &str,
    ) -> Result<Deleted, StoreError> {
        let claimed = self
            .read_locks
            .claim_for_deletion(victims.iter().map(|v| v.id).collect());
        let chosen: Vec<(i64, String, u64)> = victims
            .into_iter()
            .filter(|v| claimed.contains(&v.id))
            .map(|v| (v.id, v.path, v.bytes))
            .collect();
        let result = self
            .store
            .write(move |c| {
                let mut gone = Vec::new();
                for (id, path, bytes) in chosen {
                    if c.execute(
                        "DELETE FROM segments WHERE id = ?1 AND evidence_locked = 0",
                        [id],
                    )? == 1
                    {
                        gone.push((path, bytes));
                    }
                }
                Ok::<_, StoreError>(gone)
            })
            .await;
        let gone = match result {
            Ok(g) => g,
            Err(e) => {
                self.read_locks.release_deletion(&claimed);
                return Err(e);
            }
        };
        let mut deleted = Deleted::default();
        for (path, bytes) in &gone {
            let full = self.recordings_dir.join(path);
            match std::fs::remove_file(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %full.display(), error = %e, "retention: cannot delete a recording file")
                }
            }
            if let Some(day) = full.parent() {
                // Only succeeds when the day directory is empty.
                let _ = std::fs::remove_dir(day);
            }
            deleted.segments += 1;
            deleted.bytes += bytes;
        }
        self.read_locks.release_deletion(&claimed);
        if deleted.segments > 0 {
            tracing::info!(
                camera,
                reason,
                segments = deleted.segments,
                mib = deleted.bytes / (1 << 20),
                oldest = %gone.first().map(|(p, _)| p.as_str()).unwrap_or_default(),
                "retention deleted recordings"
            );
        }
        Ok(deleted)
    }
}

/// Exported clips are fetched right after export; a day later they are only taking space.
fn remove_expired_clips(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let expired = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > CLIP_LIFETIME);
        if expired && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(clip = %entry.path().display(), "removed an expired clip");
        }
    }
}

fn add(into: &mut Deleted, d: &Deleted) {
    into.segments += d.segments;
    into.bytes += d.bytes;
}

/// The camera whose footage exceeds its equal share of `budget` by the most, among those not
/// `protected`; `None` when nobody is over their share.
fn furthest_over_share(
    totals: &HashMap<String, u64>,
    budget: u64,
    protected: &HashSet<String>,
) -> Option<String> {
    let holders = totals.values().filter(|b| **b > 0).count().max(1) as u64;
    let share = budget / holders;
    totals
        .iter()
        .filter(|(camera, bytes)| !protected.contains(*camera) && **bytes > share)
        .max_by_key(|(camera, bytes)| (**bytes - share, std::cmp::Reverse((*camera).clone())))
        .map(|(camera, _)| camera.clone())
}

/// Whose footage goes to make `deficit` bytes of room: the camera furthest over its share of what
/// may remain, else (shares already even, or the ones over it locked) the unprotected camera with
/// the most footage. Always someone while deletable footage is left, so the floor is always met
/// when it can be — with one camera too.
fn floor_victim(
    totals: &HashMap<String, u64>,
    deficit: u64,
    protected: &HashSet<String>,
) -> Option<String> {
    let total: u64 = totals.values().sum();
    furthest_over_share(totals, total.saturating_sub(deficit), protected).or_else(|| {
        totals
            .iter()
            .filter(|(camera, bytes)| !protected.contains(*camera) && **bytes > 0)
            .max_by_key(|(camera, bytes)| (**bytes, std::cmp::Reverse((*camera).clone())))
            .map(|(camera, _)| camera.clone())
    })
}

/// The filesystem that holds the recordings, as reported in status and MQTT stats.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskUsage {
    pub total_bytes: u64,
    /// Free for unprivileged writers (what the daemon can still write).
    pub free_bytes: u64,
}

impl DiskUsage {
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        100.0 * (self.total_bytes - self.free_bytes.min(self.total_bytes)) as f64
            / self.total_bytes as f64
    }
}

/// Size and free space of the filesystem holding `dir` (or its parent, before it exists).
pub fn disk_usage(dir: &Path) -> Option<DiskUsage> {
    let target = if dir.exists() { dir } else { dir.parent()? };
    let s = nix::sys::statvfs::statvfs(target).ok()?;
    let unit = s.fragment_size() as u64;
    Some(DiskUsage {
        total_bytes: s.blocks() as u64 * unit,
        free_bytes: s.blocks_available() as u64 * unit,
    })
}

fn free_bytes(dir: &Path) -> Option<u64> {
    disk_usage(dir).map(|d| d.free_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_camera_furthest_over_its_share_goes_first() {
        let totals: HashMap<String, u64> = [
            ("a".to_string(), 700),
            ("b".to_string(), 200),
            ("c".to_string(), 400),
        ]
        .into();
        // Cap 900 over three cameras: share 300; a is 400 over, c 100 over, b under.
        assert_eq!(
            furthest_over_share(&totals, 900, &HashSet::new()).as_deref(),
            Some("a")
        );
        let protected: HashSet<String> = ["a".to_string()].into();
        assert_eq!(
            furthest_over_share(&totals, 900, &protected).as_deref(),
            Some("c")
        );
        assert_eq!(furthest_over_share(&totals, 3000, &HashSet::new()), None);
    }

    #[test]
    fn read_locks_and_deletion_exclude_each_other() {
        let locks = ReadLocks::default();
        let guard = locks.acquire(&[1, 2]);
        assert_eq!(locks.claim_for_deletion(vec![1, 2, 3]), vec![3]);
        assert_eq!(
            locks.acquire(&[3, 4]).ids(),
            &[4],
            "a segment being deleted cannot be read"
        );
        drop(guard);
        locks.release_deletion(&[3]);
        assert_eq!(locks.claim_for_deletion(vec![1, 2, 3]), vec![1, 2, 3]);
    }
}
