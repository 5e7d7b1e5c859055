//! Zone engine speed: evaluations per second (tracks × zones) for 50 tracks against 20 zones of
//! 16 points, and the cost of one detection batch through the engine including its state load
//! and save in a durable store transaction, as the consumer runs it.
//!
//! Run: `cargo bench --bench zones`. Target: keep up with 64 cameras × 10 fps × 20 tracks on one
//! core, that is 640 batches of 20 tracks per second.

use std::time::Instant;

use heldar_edge::config::model::ZoneConfig;
use heldar_edge::store::{Store, StoreError};
use heldar_edge::zones::engine::{CameraState, Observation, TrackKey, Zone};

fn zones(n: usize) -> Vec<Zone> {
    (0..n)
        .map(|i| {
            // A 16-point ring around a centre spread over the frame.
            let (cx, cy) = (0.15 + 0.7 * (i % 5) as f64 / 4.0, 0.15 + 0.7 * (i / 5) as f64 / 3.0);
            let points: Vec<String> = (0..16)
                .map(|k| {
                    let a = k as f64 / 16.0 * std::f64::consts::TAU;
                    format!("[{:.4}, {:.4}]", cx + 0.12 * a.cos(), cy + 0.12 * a.sin())
                })
                .collect();
            let toml_text = format!("camera = \"c\"\nname = \"z{i}\"\nkind = \"region\"\npoints = [{}]\ndwell_seconds = 30", points.join(", "));
            Zone::new(toml::from_str::<ZoneConfig>(&toml_text).unwrap())
        })
        .collect()
}

fn batch(tracks: usize, step: usize) -> Vec<Observation> {
    (0..tracks)
        .map(|t| {
            let phase = (step as f64 * 0.01 + t as f64 * 0.37) % 1.0;
            let y = (t as f64 * 0.19) % 0.9;
            Observation {
                track: TrackKey {
                    task: "t".into(),
                    track: t.to_string(),
                },
                label: Some("person".into()),
                confidence: Some(0.9),
                bbox: [phase * 0.95, y, 0.04, 0.1],
            }
        })
        .collect()
}

fn main() {
    let z = zones(20);
    let mut state = CameraState::default();
    let steps = 2000;
    let start = Instant::now();
    let mut events = 0;
    for step in 0..steps {
        events += state.observe(&z, step as i64 * 100, &batch(50, step)).len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("zone engine: 50 tracks x 20 zones of 16 points");
    println!(
        "  {:.0} zone evaluations/s ({:.0} batches/s, {events} events)",
        (steps * 50 * 20) as f64 / secs,
        steps as f64 / secs
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("zones.db")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.write(|c| {
        c.execute_batch("CREATE TABLE state (id INTEGER PRIMARY KEY, json TEXT NOT NULL)")
            .map_err(StoreError::from)
    }))
    .unwrap();
    let z20 = std::sync::Arc::new(zones(20));
    let n = 640;
    let start = Instant::now();
    rt.block_on(async {
        let mut pending = Vec::new();
        for step in 0..n {
            let z = z20.clone();
            pending.push(store.write(move |c| {
                let json: Option<String> = c
                    .query_row("SELECT json FROM state WHERE id = 1", [], |r| r.get(0))
                    .ok();
                let mut s: CameraState = json
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default();
                s.observe(&z, step as i64 * 100, &batch(20, step));
                c.execute(
                    "INSERT OR REPLACE INTO state (id, json) VALUES (1, ?1)",
                    [serde_json::to_string(&s).unwrap()],
                )?;
                Ok::<_, StoreError>(())
            }));
        }
        for p in pending {
            p.await.unwrap();
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {n} batches of 20 tracks through load-evaluate-save transactions: {:.0} batches/s, {:.2} ms each (target 640/s)",
        n as f64 / secs,
        secs * 1000.0 / n as f64
    );
}
