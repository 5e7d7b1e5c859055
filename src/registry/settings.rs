//! Runtime settings: box-level sections a fleet may tune without editing `heldar.toml`.
//!
//! Only sections that services re-read while running are offered: `recording` (retention's age,
//! size cap and free-disk floor, read at every pass) and `sampler` (the fps budget, re-planned at
//! every change). A section set at runtime replaces the file's section as a whole; deleting it
//! reverts to the file. The `settings` table holds only overrides, so a new `heldar.toml` value
//! shows through as soon as the override is deleted.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Source};
use crate::config::model::{RecordingConfig, SamplerConfig};
use crate::config::{recording_problems, sampler_problems};
use crate::store::StoreError;

/// A section's new value.
#[derive(Clone, Debug, PartialEq)]
pub enum SettingsValue {
    Recording(RecordingConfig),
    Sampler(SamplerConfig),
}

impl SettingsValue {
    fn section(&self) -> &'static str {
        match self {
            SettingsValue::Recording(_) => "recording",
            SettingsValue::Sampler(_) => "sampler",
        }
    }
}

/// The settings in effect, with where each section comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub recording: RecordingConfig,
    pub recording_source: Source,
    pub sampler: SamplerConfig,
    pub sampler_source: Source,
}

/// Names of the sections, as used in MQTT topics and the API.
pub const SECTIONS: [&str; 2] = ["recording", "sampler"];

impl Registry {
    /// The settings in effect now.
    pub async fn settings(&self) -> Result<Settings, RegistryError> {
        let rows: Vec<(String, String)> = self
            .inner
            .store
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT section, value FROM settings")?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                Ok::<_, StoreError>(rows)
            })
            .await?;
        let mut settings = Settings {
            recording: self.inner.file_recording.clone(),
            recording_source: Source::File,
            sampler: self.inner.file_sampler.clone(),
            sampler_source: Source::File,
        };
        let unreadable = |section: &str, e: serde_json::Error| {
            RegistryError::Internal(format!("settings {section:?}: {e}"))
        };
        for (section, value) in rows {
            match section.as_str() {
                "recording" => {
                    settings.recording =
                        serde_json::from_str(&value).map_err(|e| unreadable(&section, e))?;
                    settings.recording_source = Source::Runtime;
                }
                "sampler" => {
                    settings.sampler =
                        serde_json::from_str(&value).map_err(|e| unreadable(&section, e))?;
                    settings.sampler_source = Source::Runtime;
                }
                other => tracing::warn!(section = other, "ignoring an unknown settings section"),
            }
        }
        Ok(settings)
    }

    /// Validates and stores a section, replacing the file's values for it.
    pub async fn put_settings(&self, value: SettingsValue) -> Result<Settings, RegistryError> {
        let (problems, json) = match &value {
            SettingsValue::Recording(r) => (recording_problems(r), serde_json::to_string(r)),
            SettingsValue::Sampler(s) => (sampler_problems(s), serde_json::to_string(s)),
        };
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        let json = json.map_err(|e| RegistryError::Internal(e.to_string()))?;
        let section = value.section();
        self.inner
            .store
            .write(move |c| {
                c.execute(
                    "INSERT INTO settings (section, value, updated_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (section) DO UPDATE SET value = ?2, updated_at_ms = ?3",
                    params![section, json, super::now_ms()],
                )?;
                Ok::<_, StoreError>(())
            })
            .await?;
        self.changed();
        self.settings().await
    }

    /// Drops a section's runtime values: the file's apply again.
    pub async fn delete_settings(&self, section: &str) -> Result<Settings, RegistryError> {
        if !SECTIONS.contains(&section) {
            return Err(RegistryError::NotFound(format!(
                "settings section {section:?}"
            )));
        }
        let owned = section.to_string();
        let existed = self
            .inner
            .store
            .write(move |c| {
                let existed = c
                    .query_row(
                        "SELECT 1 FROM settings WHERE section = ?1",
                        [&owned],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                c.execute("DELETE FROM settings WHERE section = ?1", [&owned])?;
                Ok::<_, StoreError>(existed)
            })
            .await?;
        if existed {
            self.changed();
        }
        self.settings().await
    }
}
