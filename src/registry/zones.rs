//! Zones in the registry. A zone's id is its name, unique on the box: rules and MQTT topics
//! name zones by it.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Registry, RegistryError, Source};
use crate::config::model::ZoneConfig;
use crate::config::{Problem, zone_problems};
use crate::store::StoreError;

/// Makes the `zones` table hold exactly the file's zones plus the runtime ones.
pub(super) fn sync_file(c: &Connection, zones: &[ZoneConfig]) -> Result<(), RegistryError> {
    let mut names = Vec::new();
    for z in zones {
        let settings =
            serde_json::to_string(z).map_err(|e| RegistryError::Internal(e.to_string()))?;
        c.execute(
            "INSERT INTO zones (id, camera_id, source, settings) VALUES (?1, ?2, 'file', ?3)
             ON CONFLICT (id) DO UPDATE SET camera_id = ?2, source = 'file', settings = ?3",
            params![z.name, z.camera, settings],
        )?;
        names.push(z.name.clone());
    }
    let mut stmt = c.prepare("SELECT id FROM zones WHERE source = 'file'")?;
    let stored: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in stored.iter().filter(|id| !names.contains(id)) {
        c.execute("DELETE FROM zones WHERE id = ?1", [id])?;
    }
    c.execute(
        "DELETE FROM zones WHERE camera_id NOT IN (SELECT id FROM cameras)",
        [],
    )?;
    Ok(())
}

/// A zone as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredZone {
    #[serde(flatten)]
    pub settings: ZoneConfig,
    pub source: Source,
}

impl Registry {
    /// Every zone, ordered by name.
    pub async fn zones(&self) -> Result<Vec<StoredZone>, RegistryError> {
        self.inner
            .store
            .read(|c| {
                let mut stmt =
                    c.prepare_cached("SELECT settings, source FROM zones ORDER BY id")?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, StoreError>(rows)
            })
            .await?
            .into_iter()
            .map(|(settings, source)| {
                Ok(StoredZone {
                    settings: serde_json::from_str(&settings)
                        .map_err(|e| RegistryError::Internal(e.to_string()))?,
                    source: if source == "file" {
                        Source::File
                    } else {
                        Source::Runtime
                    },
                })
            })
            .collect()
    }

    /// Creates or replaces a runtime zone after validating it against the cameras that exist.
    pub async fn put_zone(&self, zone: ZoneConfig) -> Result<StoredZone, RegistryError> {
        let cameras = self.cameras().await?;
        let ids: Vec<&str> = cameras.iter().map(|c| c.id()).collect();
        let problems: Vec<Problem> = zone_problems(&zone, &ids);
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        let settings =
            serde_json::to_string(&zone).map_err(|e| RegistryError::Internal(e.to_string()))?;
        let (id, camera) = (zone.name.clone(), zone.camera.clone());
        self.inner
            .store
            .write(move |c| {
                refuse_file_zone(c, &id)?;
                c.execute(
                    "INSERT INTO zones (id, camera_id, source, settings) VALUES (?1, ?2, 'runtime', ?3)
                     ON CONFLICT (id) DO UPDATE SET camera_id = ?2, settings = ?3",
                    params![id, camera, settings],
                )?;
                Ok::<_, RegistryError>(())
            })
            .await?;
        self.changed();
        Ok(StoredZone {
            settings: zone,
            source: Source::Runtime,
        })
    }

    pub async fn delete_zone(&self, id: &str) -> Result<(), RegistryError> {
        let owned = id.to_string();
        self.inner
            .store
            .write(move |c| {
                refuse_file_zone(c, &owned)?;
                if c.execute("DELETE FROM zones WHERE id = ?1", [&owned])? == 0 {
                    return Err(RegistryError::NotFound(format!("zone {owned:?}")));
                }
                Ok(())
            })
            .await?;
        self.changed();
        Ok(())
    }
}

fn refuse_file_zone(c: &Connection, id: &str) -> Result<(), RegistryError> {
    let source: Option<String> = c
        .query_row("SELECT source FROM zones WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    if source.as_deref() == Some("file") {
        return Err(RegistryError::FileOwned(format!("zone {id:?}")));
    }
    Ok(())
}
