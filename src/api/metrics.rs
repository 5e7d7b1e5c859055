//! `GET /metrics`: the box's figures in the Prometheus/OpenMetrics text format.
//!
//! Values owned by a service (camera health, sampler grants, outbox lag, MQTT session, store,
//! disk) are read from that service at scrape time into a fresh registry, so a scrape never sees
//! a stale copy; event-driven counters and histograms come from [`crate::metrics`].

use std::sync::atomic::AtomicU64;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{ApiError, AppState};
use crate::auth::{Principal, Role};
use crate::config::model::StreamProfile;
use crate::media::CameraState;
use crate::media::index;
use crate::metrics::INSTRUMENTS;
use crate::store::StoreError;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraLabel {
    camera: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CameraStateLabel {
    camera: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SamplerLabel {
    camera: String,
    profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabel {
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

pub(super) async fn scrape(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    who.require(&[Role::Viewer, Role::Operator])?;
    let mut registry = Registry::default();
    INSTRUMENTS.register(&mut registry);

    let info = Family::<VersionLabel, Gauge>::default();
    info.get_or_create(&VersionLabel {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register("heldar_build_info", "The running version", info);
    let uptime = FloatGauge::default();
    uptime.set(state.system.started.elapsed().as_secs_f64());
    registry.register_with_unit(
        "heldar_uptime",
        "Time since the daemon started",
        Unit::Seconds,
        uptime,
    );

    register_cameras(&mut registry, &state).await?;
    register_samplers(&mut registry, &state);
    register_outbox(&mut registry, &state).await?;
    register_mqtt(&mut registry, &state);
    register_store_and_disk(&mut registry, &state).await?;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn register_cameras(registry: &mut Registry, state: &AppState) -> Result<(), ApiError> {
    let states = Family::<CameraStateLabel, Gauge>::default();
    let fps = Family::<CameraLabel, FloatGauge>::default();
    let bitrate = Family::<CameraLabel, FloatGauge>::default();
    let reconnects = Family::<CameraLabel, Counter>::default();
    for health in state.media.health().all() {
        for s in CameraState::ALL {
            states
                .get_or_create(&CameraStateLabel {
                    camera: health.camera_id.clone(),
                    state: s.as_str(),
                })
                .set(i64::from(s == health.state));
        }
        let camera = CameraLabel {
            camera: health.camera_id.clone(),
        };
        fps.get_or_create(&camera).set(health.fps.unwrap_or(0.0));
        bitrate
            .get_or_create(&camera)
            .set(health.bitrate_kbps.unwrap_or(0.0) * 1000.0);
        reconnects.get_or_create(&camera).inc_by(health.reconnects);
    }
    registry.register(
        "heldar_camera_state",
        "1 for the state each camera is in, 0 for the others",
        states,
    );
    registry.register(
        "heldar_camera_fps",
        "Frames per second received from the camera",
        fps,
    );
    registry.register_with_unit(
        "heldar_camera_bitrate",
        "Bits per second received from the camera",
        Unit::Other("bits_per_second".into()),
        bitrate,
    );
    registry.register(
        "heldar_camera_reconnects",
        "Pipeline rebuilds since the daemon started",
        reconnects,
    );

    let footage = state
        .store
        .read(|c| Ok::<_, StoreError>(index::footage(c)?))
        .await?;
    let segments = Family::<CameraLabel, Gauge>::default();
    let bytes = Family::<CameraLabel, Gauge>::default();
    let gaps = Family::<CameraLabel, Gauge>::default();
    let mut total_bytes = 0;
    for f in footage {
        let camera = CameraLabel { camera: f.camera };
        segments.get_or_create(&camera).set(f.segments);
        bytes.get_or_create(&camera).set(f.bytes);
        gaps.get_or_create(&camera).set(f.gaps);
        total_bytes += f.bytes;
    }
    registry.register(
        "heldar_camera_segments",
        "Recorded segments kept in the index",
        segments,
    );
    registry.register_with_unit(
        "heldar_camera_recorded",
        "Bytes of recorded segments kept",
        Unit::Bytes,
        bytes,
    );
    registry.register(
        "heldar_camera_gaps",
        "Holes in the kept recording (camera offline, daemon down, file lost)",
        gaps,
    );
    let recording = Gauge::<i64>::default();
    recording.set(total_bytes);
    registry.register_with_unit(
        "heldar_recording",
        "Bytes of recorded footage kept, all cameras",
        Unit::Bytes,
        recording,
    );
    Ok(())
}

fn register_samplers(registry: &mut Registry, state: &AppState) {
    let granted = Family::<SamplerLabel, FloatGauge>::default();
    let requested = Family::<SamplerLabel, FloatGauge>::default();
    for s in state.perception.samplers.status() {
        let label = SamplerLabel {
            camera: s.camera_id.clone(),
            profile: match s.stream_profile {
                StreamProfile::Main => "main",
                StreamProfile::Sub => "sub",
            },
        };
        granted.get_or_create(&label).set(s.fps);
        requested.get_or_create(&label).set(s.requested_fps);
    }
    registry.register(
        "heldar_sampler_granted_fps",
        "Frames per second the global budget grants each sampler",
        granted,
    );
    registry.register(
        "heldar_sampler_requested_fps",
        "Frames per second the sampler's tasks ask for",
        requested,
    );
}

async fn register_outbox(registry: &mut Registry, state: &AppState) -> Result<(), ApiError> {
    let status = state.outbox.status().await?;
    let records = Gauge::<i64>::default();
    records.set(status.records as i64);
    registry.register(
        "heldar_outbox_records",
        "Records kept in the outbox",
        records,
    );
    let bytes = Gauge::<i64>::default();
    bytes.set(status.bytes as i64);
    registry.register_with_unit(
        "heldar_outbox",
        "Payload bytes kept in the outbox",
        Unit::Bytes,
        bytes,
    );
    let dropped = Counter::<u64>::default();
    dropped.inc_by(status.dropped);
    registry.register(
        "heldar_outbox_dropped",
        "Records dropped by the outbox bounds before every consumer had them",
        dropped,
    );
    let backlog = Family::<ConsumerLabel, Gauge>::default();
    let age = Family::<ConsumerLabel, FloatGauge>::default();
    for c in status.consumers {
        let label = ConsumerLabel {
            consumer: c.consumer,
        };
        backlog.get_or_create(&label).set(c.backlog as i64);
        age.get_or_create(&label).set(c.oldest_age_s.unwrap_or(0.0));
    }
    registry.register(
        "heldar_outbox_backlog",
        "Records each consumer has not finished",
        backlog,
    );
    registry.register_with_unit(
        "heldar_outbox_oldest_age",
        "Age of the oldest record each consumer has not finished (0 when none)",
        Unit::Seconds,
        age,
    );
    Ok(())
}

fn register_mqtt(registry: &mut Registry, state: &AppState) {
    let Some(uplink) = &state.uplink else {
        return;
    };
    let status = uplink.status();
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(status.state == "connected"));
    registry.register(
        "heldar_mqtt_connected",
        "1 while the MQTT session is up",
        connected,
    );
    let connects = Counter::<u64>::default();
    connects.inc_by(status.connects);
    registry.register(
        "heldar_mqtt_connects",
        "MQTT sessions established since start",
        connects,
    );
    let last_ack = FloatGauge::default();
    last_ack.set(
        status
            .last_puback_at
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
    );
    registry.register_with_unit(
        "heldar_mqtt_last_ack_timestamp",
        "Unix time of the broker's last PUBACK (0 when none yet)",
        Unit::Seconds,
        last_ack,
    );
}

async fn register_store_and_disk(
    registry: &mut Registry,
    state: &AppState,
) -> Result<(), ApiError> {
    let store = state.store.status().await?;
    let depth = Gauge::<i64>::default();
    depth.set(store.queue_depth as i64);
    registry.register(
        "heldar_store_queue_depth",
        "Writes waiting for the store writer",
        depth,
    );
    let db = Gauge::<i64>::default();
    db.set((store.db_bytes + store.wal_bytes) as i64);
    registry.register_with_unit(
        "heldar_store_database",
        "Size of the database and its WAL",
        Unit::Bytes,
        db,
    );
    let usable = Gauge::<i64>::default();
    usable.set(i64::from(
        state.media.recordings().state == crate::media::RecordingsState::Ok,
    ));
    registry.register(
        "heldar_recordings_dir_usable",
        "1 while the recordings dir is this database's and in use; 0 while it is refused (not mounted, missing, foreign) or being checked",
        usable,
    );
    if let Some(disk) = state.media.disk() {
        let free = Gauge::<i64>::default();
        free.set(disk.free_bytes as i64);
        registry.register_with_unit(
            "heldar_disk_free",
            "Free bytes on the recordings file system",
            Unit::Bytes,
            free,
        );
        let total = Gauge::<i64>::default();
        total.set(disk.total_bytes as i64);
        registry.register_with_unit(
            "heldar_disk_size",
            "Size of the recordings file system",
            Unit::Bytes,
            total,
        );
    }
    Ok(())
}
