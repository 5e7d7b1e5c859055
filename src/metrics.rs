//! Event-driven instruments: the counters and histograms that only the code doing the work can
//! fill (ingest answers, store commits, MQTT acknowledgements).
//!
//! Everything else in `/metrics` (camera state, outbox lag, disk) is read from the owning
//! service when Prometheus scrapes (see `api::metrics`), so there is one source of truth per
//! figure and nothing to keep in step. These instruments are process-wide because they are
//! touched from hot paths owned by different modules, and one daemon runs per process.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// How an ingest request ended, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestOutcome {
    /// `stored`, `duplicate` or `refused`.
    pub outcome: &'static str,
}

/// Which outbox consumer failed, and why, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerFailure {
    pub consumer: String,
    /// `store` (retried until it works) or `malformed` (skipped after repeated attempts).
    pub cause: &'static str,
}

/// Which metadata table lost rows to retention, and why, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetadataDeleted {
    pub table: &'static str,
    /// `age` (past its `retention.*_max_age`) or `size` (the database cap, before its age).
    pub reason: &'static str,
}

/// What kind of storage fault, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreFault {
    /// `disk_full`, `disk_failed` (I/O error or read-only) or `corrupt`.
    pub kind: &'static str,
}

/// What the bytes written to the disk were for, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiskWrite {
    /// `wal` (frames appended to the database's write-ahead log), `db` (pages checkpointed
    /// into the database file) or `segments` (recorded video files).
    pub kind: &'static str,
}

/// Bytes written since start, for `heldar status`: what wears the flash, and by what.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DiskWrites {
    pub wal: u64,
    pub db: u64,
    pub segments: u64,
    /// Everything the process wrote, as the kernel counts it (`write_bytes` of `/proc/self/io`;
    /// logs to the journal are not in it); absent where the kernel does not keep the count.
    #[serde(default)]
    pub process: Option<u64>,
}

/// `write_bytes` of a `/proc/.../io` file (a process, `self`, or `thread-self`): the bytes the
/// kernel counted as sent to storage for it; `None` where it keeps no such count.
pub fn kernel_write_bytes(io_file: &str) -> Option<u64> {
    std::fs::read_to_string(io_file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The process-wide instruments.
pub struct Instruments {
    pub ingest_requests: Family<IngestOutcome, Counter>,
    pub ingest_detections: Counter,
    pub ingest_seconds: Histogram,
    pub store_commit_seconds: Histogram,
    pub mqtt_acks: Counter,
    pub mqtt_publish_seconds: Histogram,
    pub consumer_failures: Family<ConsumerFailure, Counter>,
    pub metadata_deletes: Family<MetadataDeleted, Counter>,
    pub store_faults: Family<StoreFault, Counter>,
    pub disk_writes: Family<DiskWrite, Counter>,
}

/// Latency buckets from 0.5 ms to about 8 s: commits on flash take milliseconds, a stalled
/// broker takes seconds, and both must be visible.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15)
}

pub static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    ingest_requests: Family::default(),
    ingest_detections: Counter::default(),
    ingest_seconds: Histogram::new(latency_buckets()),
    store_commit_seconds: Histogram::new(latency_buckets()),
    mqtt_acks: Counter::default(),
    mqtt_publish_seconds: Histogram::new(latency_buckets()),
    consumer_failures: Family::default(),
    metadata_deletes: Family::default(),
    store_faults: Family::default(),
    disk_writes: Family::default(),
});

impl Instruments {
    pub fn observe_ingest(&self, outcome: &'static str, detections: usize, took: Duration) {
        self.ingest_requests
            .get_or_create(&IngestOutcome { outcome })
            .inc();
        self.ingest_detections.inc_by(detections as u64);
        self.ingest_seconds.observe(took.as_secs_f64());
    }

    pub fn consumer_failed(&self, consumer: &str, cause: &'static str) {
        self.consumer_failures
            .get_or_create(&ConsumerFailure {
                consumer: consumer.to_string(),
                cause,
            })
            .inc();
    }

    pub fn metadata_deleted(&self, table: &'static str, reason: &'static str, rows: u64) {
        if rows == 0 {
            return;
        }
        self.metadata_deletes
            .get_or_create(&MetadataDeleted { table, reason })
            .inc_by(rows);
    }

    pub fn store_fault(&self, kind: &'static str) {
        self.store_faults.get_or_create(&StoreFault { kind }).inc();
    }

    /// Counts bytes handed to the kernel for the disk; flash wears by them.
    pub fn disk_written(&self, kind: &'static str, bytes: u64) {
        self.disk_writes
            .get_or_create(&DiskWrite { kind })
            .inc_by(bytes);
    }

    /// Bytes written so far for `kind` (`wal`, `db` or `segments`).
    pub fn disk_writes_of(&self, kind: &'static str) -> u64 {
        self.disk_writes.get_or_create(&DiskWrite { kind }).get()
    }

    pub fn disk_writes(&self) -> DiskWrites {
        let process = kernel_write_bytes("/proc/self/io");
        DiskWrites {
            wal: self.disk_writes_of("wal"),
            db: self.disk_writes_of("db"),
            segments: self.disk_writes_of("segments"),
            process,
        }
    }

    /// Adds the instruments to a scrape's registry. The metrics are shared handles, so the
    /// scrape reads the live values.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "heldar_consumer_failures",
            "Failed attempts of a local outbox consumer, by cause",
            self.consumer_failures.clone(),
        );
        registry.register(
            "heldar_store_faults",
            "Database errors caused by the disk or the file: full, failed or read-only, corrupt",
            self.store_faults.clone(),
        );
        registry.register_with_unit(
            "heldar_disk_write",
            "Bytes this process wrote for the disk, by what they were for (wal, db, segments)",
            Unit::Bytes,
            self.disk_writes.clone(),
        );
        registry.register(
            "heldar_metadata_deleted",
            "Metadata rows deleted by retention, by table and reason",
            self.metadata_deletes.clone(),
        );
        registry.register(
            "heldar_ingest_requests",
            "Worker event posts answered, by outcome",
            self.ingest_requests.clone(),
        );
        registry.register(
            "heldar_ingest_detections",
            "Detections stored durably",
            self.ingest_detections.clone(),
        );
        registry.register_with_unit(
            "heldar_ingest_latency",
            "Time from a worker's post to its answer (after the commit)",
            Unit::Seconds,
            self.ingest_seconds.clone(),
        );
        registry.register_with_unit(
            "heldar_store_commit_latency",
            "Duration of one group commit of the store writer",
            Unit::Seconds,
            self.store_commit_seconds.clone(),
        );
        registry.register(
            "heldar_mqtt_acks",
            "Outbox records acknowledged by the MQTT broker",
            self.mqtt_acks.clone(),
        );
        registry.register_with_unit(
            "heldar_mqtt_publish_latency",
            "Time from writing a QoS 1 publish to its PUBACK",
            Unit::Seconds,
            self.mqtt_publish_seconds.clone(),
        );
    }
}
