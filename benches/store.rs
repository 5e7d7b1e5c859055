//! Store benchmark: durable rows/s through the group-commit writer at 1, 8 and 64 concurrent
//! callers (10-row requests), printed beside the raw limits of the same filesystem measured in the
//! same run: an fdatasync loop, and SQLite with `synchronous=FULL` in WAL mode committing 1-row and
//! 100-row transactions from one connection.
//!
//! Run: `cargo bench --bench store` (set HELDAR_BENCH_DIR to measure another filesystem, and
//! HELDAR_BENCH_SECS to change the length of each measurement, default 3).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heldar_edge::store::{Store, StoreError};
use rusqlite::params;

mod common;

use common::{INSERT, SCHEMA, raw_sqlite};
const ROWS_PER_REQUEST: usize = 10;

fn main() {
    let base = std::env::var_os("HELDAR_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let secs: u64 = std::env::var("HELDAR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let span = Duration::from_secs(secs);
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    println!(
        "store benchmark in {} ({secs}s per measurement)",
        base.display()
    );
    println!("{:<44} {:>12} {:>12}", "", "rows/s", "commits/s");

    let syncs = fdatasync_loop(dir.path(), span);
    println!(
        "{:<44} {:>12} {:>12.0}",
        "raw fdatasync loop (4 KiB writes)", "-", syncs
    );
    let one = raw_sqlite(dir.path(), "raw1.db", 1, span);
    println!(
        "{:<44} {:>12.0} {:>12.0}",
        "raw SQLite FULL, 1 row per transaction", one, one
    );
    let hundred = raw_sqlite(dir.path(), "raw100.db", 100, span);
    println!(
        "{:<44} {:>12.0} {:>12.0}",
        "raw SQLite FULL, 100 rows per transaction",
        hundred,
        hundred / 100.0
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for callers in [1usize, 8, 64] {
        let (rows, commits) = runtime.block_on(writer(dir.path(), callers, span));
        println!(
            "{:<44} {:>12.0} {:>12.0}   {:.0}% of the 100-row limit",
            format!("writer, {callers} callers x {ROWS_PER_REQUEST}-row requests"),
            rows,
            commits,
            100.0 * rows / hundred
        );
    }
}

fn fdatasync_loop(dir: &std::path::Path, span: Duration) -> f64 {
    let mut f = std::fs::File::create(dir.join("sync.bin")).unwrap();
    let block = [0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < span {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn writer(dir: &std::path::Path, callers: usize, span: Duration) -> (f64, f64) {
    let store = Store::open(&dir.join(format!("writer{callers}.db"))).unwrap();
    store
        .write(|c| c.execute_batch(SCHEMA).map_err(StoreError::from))
        .await
        .unwrap();
    let commits_before = store.stats().commits.load(Ordering::Relaxed);
    let rows = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + span;
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (store, rows) = (store.clone(), rows.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    store
                        .write(|c| {
                            let mut stmt = c.prepare_cached(INSERT)?;
                            for i in 0..ROWS_PER_REQUEST {
                                stmt.execute(params![
                                    "gate",
                                    "person",
                                    0.9,
                                    format!("[0.{i},0.2,0.3,0.4]")
                                ])?;
                            }
                            Ok::<_, StoreError>(())
                        })
                        .await
                        .unwrap();
                    rows.fetch_add(ROWS_PER_REQUEST as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let commits = store.stats().commits.load(Ordering::Relaxed) - commits_before;
    store.close().await;
    (
        rows.load(Ordering::Relaxed) as f64 / elapsed,
        commits as f64 / elapsed,
    )
}
