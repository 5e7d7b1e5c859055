//! Inference tasks in the registry: one kind of analysis on one camera stream.
//!
//! A task's id is `<camera>:<task_type>:<profile>`: stable for its life, readable in logs, and
//! unique because none of the three parts may contain `:`. At most one task exists per (camera,
//! task type, profile), as in the upstream kernel.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Source};
use crate::config::model::{StreamProfile, TaskConfig};
use crate::config::task_problems;
use crate::store::StoreError;

/// A task as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub camera_id: String,
    pub task_type: String,
    pub profile: StreamProfile,
    pub fps: f64,
    pub width: u32,
    pub config: serde_json::Value,
    pub enabled: bool,
    pub source: Source,
}

pub fn task_id(camera: &str, task_type: &str, profile: StreamProfile) -> String {
    let profile = match profile {
        StreamProfile::Main => "main",
        StreamProfile::Sub => "sub",
    };
    format!("{camera}:{task_type}:{profile}")
}

/// Splits a task id into camera, task type and profile; `None` when it is not one.
pub fn task_id_parts(id: &str) -> Option<(&str, &str, &str)> {
    let mut parts = id.split(':');
    let (camera, task_type, profile) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !camera.is_empty() && !task_type.is_empty())
        .then_some((camera, task_type, profile))
}

fn profile_str(p: StreamProfile) -> &'static str {
    match p {
        StreamProfile::Main => "main",
        StreamProfile::Sub => "sub",
    }
}

/// Makes the `tasks` table hold exactly the file's tasks plus the runtime ones.
pub(super) fn sync_file(c: &Connection, tasks: &[TaskConfig]) -> rusqlite::Result<()> {
    let mut ids = Vec::new();
    for t in tasks {
        let id = task_id(&t.camera, &t.task_type, t.profile);
        c.execute(
            "INSERT INTO tasks (id, camera_id, task_type, profile, fps, width, config, enabled, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'file')
             ON CONFLICT (id) DO UPDATE SET fps = ?5, width = ?6, config = ?7, enabled = ?8, source = 'file'",
            params![id, t.camera, t.task_type, profile_str(t.profile), t.fps, t.width, t.config.to_string(), t.enabled],
        )?;
        ids.push(id);
    }
    let mut stmt = c.prepare("SELECT id FROM tasks WHERE source = 'file'")?;
    let stored: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in stored.iter().filter(|id| !ids.contains(id)) {
        c.execute("DELETE FROM tasks WHERE id = ?1", [id])?;
    }
    // A task of a camera that no longer exists is meaningless.
    c.execute(
        "DELETE FROM tasks WHERE camera_id NOT IN (SELECT id FROM cameras)",
        [],
    )?;
    Ok(())
}

/// The camera a task runs on, read inside the caller's transaction (the worker contract checks
/// a lease and its task's camera in one read).
pub fn task_camera(c: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT camera_id FROM tasks WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .optional()
}

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    let profile: String = r.get(3)?;
    let config: String = r.get(6)?;
    let source: String = r.get(8)?;
    Ok(Task {
        id: r.get(0)?,
        camera_id: r.get(1)?,
        task_type: r.get(2)?,
        profile: if profile == "main" {
            StreamProfile::Main
        } else {
            StreamProfile::Sub
        },
        fps: r.get(4)?,
        width: r.get::<_, i64>(5)? as u32,
        config: serde_json::from_str(&config).unwrap_or_else(|_| serde_json::json!({})),
        enabled: r.get(7)?,
        source: if source == "file" {
            Source::File
        } else {
            Source::Runtime
        },
    })
}

const SELECT: &str =
    "SELECT id, camera_id, task_type, profile, fps, width, config, enabled, source FROM tasks";

impl Registry {
    /// Every task, ordered by id.
    pub async fn tasks(&self) -> Result<Vec<Task>, RegistryError> {
        self.inner
            .store
            .read(|c| {
                let mut stmt = c.prepare_cached(&format!("{SELECT} ORDER BY id"))?;
                let rows = stmt
                    .query_map([], task_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StoreError>(rows)
            })
            .await
            .map_err(RegistryError::from)
    }

    /// Creates or replaces a runtime task after validating it against the cameras that exist.
    pub async fn put_task(&self, task: TaskConfig) -> Result<Task, RegistryError> {
        let cameras = self.cameras().await?;
        let ids: Vec<&str> = cameras.iter().map(|c| c.id()).collect();
        let problems = task_problems(&task, &ids);
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        let id = task_id(&task.camera, &task.task_type, task.profile);
        let owned = id.clone();
        self.inner
            .store
            .write(move |c| {
                refuse_file_task(c, &owned)?;
                c.execute(
                    "INSERT INTO tasks (id, camera_id, task_type, profile, fps, width, config, enabled, source)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'runtime')
                     ON CONFLICT (id) DO UPDATE SET fps = ?5, width = ?6, config = ?7, enabled = ?8",
                    params![
                        owned,
                        task.camera,
                        task.task_type,
                        profile_str(task.profile),
                        task.fps,
                        task.width,
                        task.config.to_string(),
                        task.enabled
                    ],
                )?;
                Ok::<_, RegistryError>(())
            })
            .await?;
        self.changed();
        self.tasks()
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| RegistryError::NotFound(format!("task {id:?}")))
    }

    /// Removes a runtime task; workers holding its lease lose it at once.
    pub async fn delete_task(&self, id: &str) -> Result<(), RegistryError> {
        let owned = id.to_string();
        self.inner
            .store
            .write(move |c| {
                refuse_file_task(c, &owned)?;
                if c.execute("DELETE FROM tasks WHERE id = ?1", [&owned])? == 0 {
                    return Err(RegistryError::NotFound(format!("task {owned:?}")));
                }
                Ok(())
            })
            .await?;
        self.changed();
        Ok(())
    }

    /// Tasks offered to workers: enabled, on an enabled camera with detection on.
    pub async fn active_tasks(&self) -> Result<Vec<Task>, RegistryError> {
        let cameras = self.cameras().await?;
        let tasks = self.tasks().await?;
        Ok(tasks
            .into_iter()
            .filter(|t| {
                t.enabled
                    && cameras
                        .iter()
                        .any(|c| c.id() == t.camera_id && c.enabled && c.detect)
            })
            .collect())
    }
}

fn refuse_file_task(c: &Connection, id: &str) -> Result<(), RegistryError> {
    let source: Option<String> = c
        .query_row("SELECT source FROM tasks WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    if source.as_deref() == Some("file") {
        return Err(RegistryError::FileOwned(format!("task {id:?}")));
    }
    Ok(())
}
