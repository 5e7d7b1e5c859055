//! The lossy disk fixture bites and is faithful: a power cut keeps what was fsynced and loses
//! what was not, an unlinked file stays usable through its open handle, and SQLite in WAL mode
//! keeps every commit only when it syncs them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use rusqlite::Connection;

use crate::fixtures::LossyDisk;

fn mount(dir: &tempfile::TempDir) -> LossyDisk {
    LossyDisk::mount(&dir.path().join("backing"), &dir.path().join("mnt"))
}

#[test]
fn unsynced_data_is_lost_and_synced_data_survives_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = mount(&dir);
    let mnt = disk.mountpoint().to_path_buf();

    let mut a = File::create(mnt.join("a")).unwrap();
    a.write_all(b"synced").unwrap();
    a.sync_all().unwrap();
    a.write_all(b" then lost").unwrap();
    std::fs::write(mnt.join("b"), b"never synced").unwrap();
    let mut staged = File::create(mnt.join("c.tmp")).unwrap();
    staged.write_all(b"renamed after sync").unwrap();
    staged.sync_all().unwrap();
    drop(staged);
    std::fs::rename(mnt.join("c.tmp"), mnt.join("c")).unwrap();
    // Until the cut the mount shows every write, synced or not.
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"synced then lost");
    assert_eq!(std::fs::metadata(mnt.join("b")).unwrap().len(), 12);

    disk.cut();
    drop(a);
    disk.restore();

    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"synced");
    assert_eq!(std::fs::metadata(mnt.join("b")).unwrap().len(), 0);
    assert_eq!(std::fs::read(mnt.join("c")).unwrap(), b"renamed after sync");
    assert!(!mnt.join("c.tmp").exists());
}

#[test]
fn an_unlinked_file_stays_usable_through_its_open_handle() {
    let dir = tempfile::tempdir().unwrap();
    let disk = mount(&dir);
    let path = disk.mountpoint().join("scratch");

    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(b"still here").unwrap();
    f.sync_all().unwrap();
    f.write_all(b", and more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();

    assert_eq!(back, "still here, and more");
    assert_eq!(f.metadata().unwrap().len(), 20);
    assert!(!path.exists());
}

/// Opens `path` in WAL mode with `synchronous` and commits 200 rows, one transaction each.
fn commit_200_rows(path: &Path, synchronous: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!("PRAGMA synchronous={synchronous}"))
        .unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .unwrap();
    for i in 0..200 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    c
}

/// The rows of table `t`: 0 when even the table's creation was lost.
fn rows(c: &Connection) -> i64 {
    match c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)) {
        Ok(n) => n,
        Err(e) if e.to_string().contains("no such table") => 0,
        Err(e) => panic!("count rows: {e}"),
    }
}

#[test]
fn sqlite_with_full_sync_keeps_every_commit_and_without_it_loses_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = mount(&dir);
    let full = disk.mountpoint().join("full.db");
    let off = disk.mountpoint().join("off.db");

    let open = [commit_200_rows(&full, "FULL"), commit_200_rows(&off, "OFF")];
    assert_eq!(
        rows(&open[1]),
        200,
        "before the cut every commit is visible"
    );
    disk.cut();
    // Closed on the dead mount, before the restore: nothing of the old connections reaches
    // the new mount.
    drop(open);
    disk.restore();

    let c = Connection::open(&full).unwrap();
    assert_eq!(rows(&c), 200);
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let survived = rows(&Connection::open(&off).unwrap());
    assert!(
        survived < 200,
        "synchronous=OFF never fsyncs, yet all {survived} rows survived"
    );
}
