//! Retention on a real store and real files: age, the size cap with fair share, the free-disk
//! floor, evidence locks and read locks.

use std::path::{Path, PathBuf};

use heldar_edge::config::Config;
use heldar_edge::media::index::{self, NewSegment};
use heldar_edge::media::retention::Retention;
use heldar_edge::registry::Registry;
use heldar_edge::store::{self, Store, StoreError};

const MIB: u64 = 1 << 20;
const HOUR_MS: i64 = 3_600_000;

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    store: Store,
    registry: Registry,
    config: Config,
}

/// A store with two cameras: `a` keeps footage 1 hour, `b` the default (7 days).
async fn fixture(max_bytes: Option<u64>, min_free: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        "data_dir = \"{}\"\n[recording]\nmin_free = \"{min_free}\"\n{}\
         [[cameras]]\nid = \"a\"\nurl = \"rtsp://10.0.0.1/\"\nretention = \"1h\"\n\
         [[cameras]]\nid = \"b\"\nurl = \"rtsp://10.0.0.2/\"\n",
        data.display(),
        max_bytes
            .map(|b| format!("max_bytes = \"{b}\"\n"))
            .unwrap_or_default(),
    );
    std::fs::write(dir.path().join("heldar.toml"), text).unwrap();
    let config = heldar_edge::config::load(&dir.path().join("heldar.toml"))
        .unwrap()
        .config;
    let store = Store::open(&store::db_path(&data)).unwrap();
    let registry = Registry::open(store.clone(), &config).await.unwrap();
    Fixture {
        _dir: dir,
        data,
        store,
        registry,
        config,
    }
}

impl Fixture {
    fn retention(&self) -> Retention {
        Retention::new(
            self.store.clone(),
            self.registry.clone(),
            &self.data,
            self.config.recording.clone(),
        )
    }

    /// A segment file of `bytes` and its row; returns the row id.
    async fn segment(&self, camera: &str, start_ms: i64, bytes: u64, locked: bool) -> i64 {
        let rel = format!("{camera}/day/{start_ms}.mkv");
        let path = self.data.join("recordings").join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; bytes as usize]).unwrap();
        let seg = NewSegment {
            camera_id: camera.into(),
            start_ms,
            end_ms: start_ms + 60_000,
            path: rel,
            bytes,
            codec: "h264".into(),
            width: None,
            height: None,
            recovered: false,
        };
        self.store
            .write(move |c| {
                let id = index::insert_segment(c, &seg, 0)?.id;
                c.execute(
                    "UPDATE segments SET evidence_locked = ?1 WHERE id = ?2",
                    rusqlite::params![locked, id],
                )?;
                Ok::<_, StoreError>(id)
            })
            .await
            .unwrap()
    }

    async fn ids(&self, camera: &str) -> Vec<i64> {
        let camera = camera.to_string();
        self.store
            .read(move |c| {
                let mut stmt =
                    c.prepare("SELECT id FROM segments WHERE camera_id = ?1 ORDER BY start_ms")?;
                let ids = stmt
                    .query_map([camera], |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()?;
                Ok::<_, StoreError>(ids)
            })
            .await
            .unwrap()
    }

    fn files(&self, camera: &str) -> usize {
        std::fs::read_dir(self.data.join("recordings").join(camera).join("day"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn age_limits_are_per_camera_and_evidence_is_kept() {
    let f = fixture(None, 0).await;
    let now = now_ms();
    let old_a1 = f.segment("a", now - 3 * HOUR_MS, 1000, false).await;
    let old_locked = f.segment("a", now - 3 * HOUR_MS + 60_000, 1000, true).await;
    let old_a2 = f.segment("a", now - 2 * HOUR_MS, 1000, false).await;
    let new_a = f.segment("a", now - 10 * 60_000, 1000, false).await;
    let old_b = f.segment("b", now - 3 * HOUR_MS, 1000, false).await;

    let report = f.retention().pass().await.unwrap();
    assert_eq!(report.age.segments, 2);
    assert_eq!(
        f.ids("a").await,
        vec![old_locked, new_a],
        "{old_a1} and {old_a2} went"
    );
    assert_eq!(f.ids("b").await, vec![old_b], "b keeps 7 days");
    assert_eq!(f.files("a"), 2, "files went with their rows");
}

#[tokio::test]
async fn the_size_cap_takes_from_the_camera_furthest_over_its_share() {
    let f = fixture(Some(10 * MIB), 0).await;
    let now = now_ms() - 30 * 60_000;
    let mut a = Vec::new();
    for i in 0..12 {
        a.push(f.segment("a", now + i * 60_000, MIB, i == 1).await);
    }
    let mut b = Vec::new();
    for i in 0..3 {
        b.push(
            f.segment("b", now - 10 * 60_000 + i * 60_000, MIB, false)
                .await,
        );
    }

    let report = f.retention().pass().await.unwrap();
    // 15 MiB against a 10 MiB cap: a (12 MiB, share 5) loses its oldest unlocked 5; b is under
    // its share and keeps everything, even though its footage is older.
    assert_eq!(report.cap.segments, 5);
    let kept_a = f.ids("a").await;
    assert!(kept_a.contains(&a[1]), "the locked segment stays");
    assert_eq!(kept_a, [&a[1..2], &a[6..]].concat());
    assert_eq!(f.ids("b").await, b);
}

#[tokio::test]
async fn segments_being_read_are_not_deleted() {
    let f = fixture(Some(2 * MIB), 0).await;
    let now = now_ms() - 30 * 60_000;
    let first = f.segment("a", now, MIB, false).await;
    let second = f.segment("a", now + 60_000, MIB, false).await;
    let third = f.segment("a", now + 120_000, MIB, false).await;
    let retention = f.retention();
    let guard = retention.read_locks.acquire(&[first]);

    retention.pass().await.unwrap();
    assert_eq!(
        f.ids("a").await,
        vec![first, third],
        "the oldest is being exported; the next one went"
    );
    drop(guard);
    let _ = second;
}

#[tokio::test]
async fn the_free_disk_floor_is_met_fairly() {
    // The floor sits a few MiB above what is free now, so deleting about that much meets it.
    let probe = tempfile::tempdir().unwrap();
    let free = free_bytes(probe.path());
    let f = fixture(None, free + 3 * MIB).await;
    let now = now_ms() - 30 * 60_000;
    let mut a = Vec::new();
    for i in 0..8 {
        a.push(f.segment("a", now + i * 60_000, MIB, i == 0).await);
    }
    let b_locked = f.segment("b", now - 60_000, MIB, true).await;
    let b = f.segment("b", now, MIB, false).await;

    let report = f.retention().pass().await.unwrap();
    assert!(report.floor.segments >= 3, "{report:?}");
    let kept_a = f.ids("a").await;
    assert!(kept_a.contains(&a[0]), "evidence stays");
    assert!(
        !kept_a.contains(&a[1]),
        "a, furthest over the average, lost its oldest unlocked footage"
    );
    assert!(f.ids("b").await.contains(&b_locked));
    let _ = b;
}

/// Item 3 of issue 13: with one camera holding footage (or all holding the same), no camera was
/// ever "over its share" of the total, so the floor deleted nothing and the disk filled.
#[tokio::test]
async fn the_free_disk_floor_frees_space_with_one_camera_or_equal_cameras() {
    for cameras in [&["a"][..], &["a", "b"][..]] {
        let probe = tempfile::tempdir().unwrap();
        let f = fixture(None, free_bytes(probe.path()) + 3 * MIB).await;
        let start = now_ms() - 30 * 60_000;
        for camera in cameras {
            for i in 0..6 {
                f.segment(camera, start + i * 60_000, MIB, false).await;
            }
        }
        let before: usize = cameras.iter().map(|c| f.files(c)).sum();
        let report = f.retention().pass().await.unwrap();
        assert!(report.floor.segments >= 3, "{cameras:?}: {report:?}");
        let after: usize = cameras.iter().map(|c| f.files(c)).sum();
        assert_eq!(
            before - after,
            report.floor.segments as usize,
            "{cameras:?}"
        );
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}
