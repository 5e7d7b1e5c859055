//! The runtime registry of cameras: what the box records now, whoever configured it.
//!
//! Owns: the `cameras` table. Invariant C1: the database is the source of truth at runtime.
//! Cameras declared in `heldar.toml` are upserted at every start (`source = file`) and may not be
//! changed or removed at runtime; cameras created at runtime (`source = runtime`) live only here.
//! The toggles `enabled`, `record` and `detect` apply to both kinds and persist across restarts.
//!
//! Invariant C2: every change goes through [`Registry`]: it validates everything first, writes in
//! one transaction, and only then announces the change (a version bump on a watch channel) to the
//! services that act on it. A refused change leaves nothing behind.

pub mod requests;
mod service;
mod settings;
mod tasks;
mod zones;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::config::model::{CameraConfig, RecordingConfig, SamplerConfig, SerialConfig};
use crate::config::secret::Secret;
use crate::config::{Problem, camera_problems};
use crate::store::{Store, StoreError};

pub use service::{Applied, ConfigKind, ConfigOp, Refusal, camera_object};
pub use settings::{SECTIONS as SETTINGS_SECTIONS, Settings, SettingsValue};
pub use tasks::{Task, task_camera, task_id, task_id_parts};
pub use zones::StoredZone;

/// Who declared a camera or task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Runtime,
}

/// A runtime toggle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    Enabled,
    Record,
    Detect,
}

impl Toggle {
    fn column(self) -> &'static str {
        match self {
            Toggle::Enabled => "enabled_override",
            Toggle::Record => "record_override",
            Toggle::Detect => "detect_override",
        }
    }

    fn configured(self, settings: &CameraConfig) -> bool {
        match self {
            Toggle::Enabled => settings.enabled,
            Toggle::Record => settings.record,
            Toggle::Detect => settings.detect,
        }
    }
}

/// A camera as the box runs it: its settings with the runtime toggles applied.
#[derive(Clone, Debug)]
pub struct Camera {
    /// The declared settings; `password` holds the secret when there is one.
    pub settings: CameraConfig,
    pub source: Source,
    pub enabled: bool,
    pub record: bool,
    pub detect: bool,
}

impl Camera {
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    pub fn password(&self) -> Option<&Secret> {
        self.settings.password.as_ref()
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", join_problems(.0))]
    Invalid(Vec<Problem>),
    #[error(
        "{0} is declared in heldar.toml: edit the file and restart heldar to change or remove it"
    )]
    FileOwned(String),
    #[error("no {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row that does not decode: only a bug or a hand-edited database does this.
    #[error("registry data is unreadable: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Store(e.into())
    }
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Passwords of file cameras, read from their `password_file` or split off their URL at
    /// start; never stored.
    file_secrets: RwLock<HashMap<String, Secret>>,
    serial: Vec<SerialConfig>,
    /// The file's sections that runtime settings may override.
    file_recording: RecordingConfig,
    file_sampler: SamplerConfig,
    version: watch::Sender<u64>,
}

impl Registry {
    /// Makes the registry reflect `heldar.toml`: file cameras are upserted, file cameras no longer
    /// in the file are removed, runtime cameras are kept (one that now has a file declaration
    /// becomes a file camera, with a warning).
    pub async fn open(store: Store, config: &Config) -> Result<Registry, RegistryError> {
        let (cameras, serial) = (&config.cameras, &config.serial);
        let file_tasks = config.tasks.clone();
        let file_zones = config.zones.clone();
        let file_secrets = cameras
            .iter()
            .filter_map(|c| c.password.clone().map(|p| (c.id.clone(), p)))
            .collect();
        let declared: Vec<(String, String)> = cameras
            .iter()
            .map(|c| Ok((c.id.clone(), serde_json::to_string(c)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let converted = store
            .write(move |c| {
                let now = now_ms();
                let mut converted = Vec::new();
                for (id, settings) in &declared {
                    let was_runtime: bool = c
                        .query_row("SELECT source = 'runtime' FROM cameras WHERE id = ?1", [id], |r| r.get(0))
                        .optional()?
                        .unwrap_or(false);
                    if was_runtime {
                        converted.push(id.clone());
                    }
                    c.execute(
                        "INSERT INTO cameras (id, source, settings, created_at_ms, updated_at_ms)
                         VALUES (?1, 'file', ?2, ?3, ?3)
                         ON CONFLICT (id) DO UPDATE SET source = 'file', settings = ?2, password = NULL,
                             updated_at_ms = ?3",
                        params![id, settings, now],
                    )?;
                }
                let ids: Vec<&str> = declared.iter().map(|(id, _)| id.as_str()).collect();
                let mut stmt = c.prepare("SELECT id FROM cameras WHERE source = 'file'")?;
                let stale: Vec<String> = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?
                    .into_iter()
                    .filter(|id| !ids.contains(&id.as_str()))
                    .collect();
                for id in &stale {
                    c.execute("DELETE FROM cameras WHERE id = ?1", [id])?;
                }
                tasks::sync_file(c, &file_tasks)?;
                zones::sync_file(c, &file_zones)?;
                Ok::<_, RegistryError>(converted)
            })
            .await?;
        for id in converted {
            tracing::warn!(camera = %id, "camera created at runtime is now declared in heldar.toml; the file's settings win");
        }
        let (version, _) = watch::channel(0);
        Ok(Registry {
            inner: Arc::new(Inner {
                store,
                file_secrets: RwLock::new(file_secrets),
                serial: serial.to_vec(),
                file_recording: config.recording.clone(),
                file_sampler: config.sampler.clone(),
                version,
            }),
        })
    }

    /// Every camera, ordered by id.
    pub async fn cameras(&self) -> Result<Vec<Camera>, RegistryError> {
        let inner = self.inner.clone();
        let rows = self
            .inner
            .store
            .read(|c| {
                let mut stmt = c.prepare(&format!("{SELECT} ORDER BY id"))?;
                let rows = stmt
                    .query_map([], Row::from_sql)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, RegistryError>(rows)
            })
            .await?;
        rows.into_iter().map(|r| r.into_camera(&inner)).collect()
    }

    pub async fn camera(&self, id: &str) -> Result<Option<Camera>, RegistryError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        let row = self
            .inner
            .store
            .read(move |c| {
                Ok::<_, RegistryError>(
                    c.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?
                        .query_row([&id], Row::from_sql)
                        .optional()?,
                )
            })
            .await?;
        row.map(|r| r.into_camera(&inner)).transpose()
    }

    /// Creates or replaces a runtime camera after validating it.
    pub async fn put_camera(
        &self,
        mut settings: CameraConfig,
        password: Option<Secret>,
    ) -> Result<Camera, RegistryError> {
        let mut problems = camera_problems(&settings, &self.inner.serial);
        if settings.password_file.is_some() {
            problems.push(Problem {
                path: "password_file".into(),
                message: "not accepted at runtime: send password".into(),
            });
        }
        if password.is_some() && settings.username.is_none() {
            problems.push(Problem {
                path: "password".into(),
                message: "needs username".into(),
            });
        }
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        settings.password = None;
        let json =
            serde_json::to_string(&settings).map_err(|e| RegistryError::Internal(e.to_string()))?;
        let id = settings.id.clone();
        let secret = password.map(|p| p.expose().to_string());
        self.inner
            .store
            .write(move |c| {
                refuse_file_owned(c, &id)?;
                c.execute(
                    "INSERT INTO cameras (id, source, settings, password, created_at_ms, updated_at_ms)
                     VALUES (?1, 'runtime', ?2, ?3, ?4, ?4)
                     ON CONFLICT (id) DO UPDATE SET settings = ?2, password = ?3, updated_at_ms = ?4",
                    params![id, json, secret, now_ms()],
                )?;
                Ok::<_, RegistryError>(())
            })
            .await?;
        self.changed();
        self.camera(&settings.id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("camera {:?}", settings.id)))
    }

    /// Removes a runtime camera. Its recordings stay until retention takes them.
    pub async fn delete_camera(&self, id: &str) -> Result<(), RegistryError> {
        let owned = id.to_string();
        self.inner
            .store
            .write(move |c| {
                refuse_file_owned(c, &owned)?;
                if c.execute("DELETE FROM cameras WHERE id = ?1", [&owned])? == 0 {
                    return Err(RegistryError::NotFound(format!("camera {owned:?}")));
                }
                Ok(())
            })
            .await?;
        self.changed();
        Ok(())
    }

    /// Sets a toggle; setting it back to the declared value clears the override.
    pub async fn set_toggle(
        &self,
        id: &str,
        toggle: Toggle,
        on: bool,
    ) -> Result<Camera, RegistryError> {
        let camera = self
            .camera(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("camera {id:?}")))?;
        let value = (toggle.configured(&camera.settings) != on).then_some(on);
        let owned = id.to_string();
        self.inner
            .store
            .write(move |c| {
                c.execute(
                    &format!(
                        "UPDATE cameras SET {} = ?1, updated_at_ms = ?2 WHERE id = ?3",
                        toggle.column()
                    ),
                    params![value, now_ms(), owned],
                )?;
                Ok::<_, RegistryError>(())
            })
            .await?;
        self.changed();
        self.camera(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("camera {id:?}")))
    }

    /// A receiver whose value changes after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// How many changes were applied since start: the `version` in answers to a change.
    pub fn version(&self) -> u64 {
        *self.inner.version.borrow()
    }

    fn changed(&self) {
        self.inner.version.send_modify(|v| *v += 1);
    }
}

const SELECT: &str = "SELECT id, source, settings, password, enabled_override, record_override, detect_override FROM cameras";

struct Row {
    id: String,
    source: String,
    settings: String,
    password: Option<String>,
    overrides: [Option<bool>; 3],
}

impl Row {
    fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            id: r.get(0)?,
            source: r.get(1)?,
            settings: r.get(2)?,
            password: r.get(3)?,
            overrides: [r.get(4)?, r.get(5)?, r.get(6)?],
        })
    }

    fn into_camera(self, inner: &Inner) -> Result<Camera, RegistryError> {
        let mut settings: CameraConfig = serde_json::from_str(&self.settings).map_err(|e| {
            RegistryError::Internal(format!("camera {:?} has unreadable settings: {e}", self.id))
        })?;
        let source = if self.source == "file" {
            Source::File
        } else {
            Source::Runtime
        };
        settings.password = match source {
            Source::File => inner
                .file_secrets
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.id)
                .cloned(),
            Source::Runtime => self.password.map(Secret::new),
        };
        let [enabled, record, detect] = self.overrides;
        Ok(Camera {
            enabled: enabled.unwrap_or(settings.enabled),
            record: record.unwrap_or(settings.record),
            detect: detect.unwrap_or(settings.detect),
            settings,
            source,
        })
    }
}

/// Whether a camera takes detections of `task_type`, inside the caller's transaction: ingest
/// checks it in the same transaction that stores the batch, saving a read round trip per
/// request, and a camera switched off meanwhile cannot gain a batch.
#[derive(Debug, PartialEq)]
pub enum DetectionGate {
    NoCamera,
    /// Refused, and why: the camera is disabled or has detection off, or every task of that
    /// type on it is disabled.
    Closed(String),
    Open,
}

/// The gate for a batch of `task_type` on a camera. A ticketed batch's own task was checked with
/// its ticket; this closes the camera for every batch, and a task type for a ticketless one,
/// which names no task. A task type with no task on the camera is a legacy worker's own, and
/// open.
pub fn detection_gate(
    c: &Connection,
    camera_id: &str,
    task_type: &str,
) -> Result<DetectionGate, StoreError> {
    // SQLite reads the two switches out of the settings JSON itself: nothing else of them is
    // parsed on this path, which every batch takes. Missing keys default to on, as in the file.
    let switches: Option<(bool, bool)> = c
        .prepare_cached(
            "SELECT coalesce(enabled_override, json_extract(settings, '$.enabled'), 1),
                    coalesce(detect_override, json_extract(settings, '$.detect'), 1)
             FROM cameras WHERE id = ?1",
        )?
        .query_row([camera_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((enabled, detect)) = switches else {
        return Ok(DetectionGate::NoCamera);
    };
    if !(enabled && detect) {
        return Ok(DetectionGate::Closed(format!(
            "camera {camera_id:?} has detection switched off"
        )));
    }
    let (tasks, enabled_tasks): (i64, i64) = c
        .prepare_cached(
            "SELECT count(*), coalesce(sum(enabled), 0) FROM tasks WHERE camera_id = ?1 AND task_type = ?2",
        )?
        .query_row([camera_id, task_type], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if tasks > 0 && enabled_tasks == 0 {
        return Ok(DetectionGate::Closed(format!(
            "every {task_type:?} task of camera {camera_id:?} is disabled"
        )));
    }
    Ok(DetectionGate::Open)
}

fn refuse_file_owned(c: &Connection, id: &str) -> Result<(), RegistryError> {
    let source: Option<String> = c
        .query_row("SELECT source FROM cameras WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    if source.as_deref() == Some("file") {
        return Err(RegistryError::FileOwned(format!("camera {id:?}")));
    }
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
