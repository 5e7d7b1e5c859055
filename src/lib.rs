//! Heldar Edge: the Heldar kernel rebuilt as one daemon for an NVR box.
//!
//! The map of the crate is `docs/architecture.md` (data flow, code map, invariants); each module's own doc
//! says what it owns and the rules its callers keep. In short:
//!
//! - [`config`]: `heldar.toml` over a board profile, validated with errors that name the key;
//! - [`store`]: SQLite with one group-committing writer thread and read-only readers;
//! - [`registry`]: the cameras the box runs, from the file and from runtime changes;
//! - [`media`]: camera pipelines, recording, the recording index and camera health;
//! - [`perception`]: samplers, the worker contract and durable ingest;
//! - [`outbox`]: the append-only log and its consumers' cursors;
//! - [`zones`]: the zone engine, a local outbox consumer;
//! - [`uplink`]: the MQTT session, events, retained state, config over MQTT, discovery;
//! - [`serial`]: the alarm I/O board (Modbus RTU), PTZ (Pelco-D) and the rules driving them;
//! - [`worker`]: the reference motion worker (`heldar worker motion`);
//! - [`metrics`]: counters and histograms filled by the hot paths, read by `/metrics`;
//! - [`audit`]: the append-only record of every change and who asked for it;
//! - [`auth`]: roles, the caller of a request and the token store;
//! - [`metadata_retention`]: the age and size bounds on detections, zone events, rule actions
//!   and audit rows;
//! - [`recent_logs`]: the in-memory ring of recent warnings the page shows;
//! - [`provenance`]: who produced a detection, stored once per batch and restored on read;
//! - [`api`]: the loopback HTTP listener and the CLI's Unix control socket;
//! - [`daemon`]: the composition root that builds and stops every service;
//! - [`cli`]: the `heldar` command.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod media;
pub mod metadata_retention;
pub mod metrics;
pub mod outbox;
pub mod perception;
pub mod provenance;
pub mod recent_logs;
pub mod registry;
pub mod serial;
pub mod store;
pub mod uplink;
pub mod worker;
pub mod zones;
