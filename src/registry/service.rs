//! The config service's one entry point for a change by kind and id (invariant C2): MQTT
//! `config/<kind>/<id>/set|delete` comes through [`Registry::apply`], and the API's camera and
//! zone routes (which the CLI calls) through the same decode, validate and put functions, so they
//! validate, apply and answer alike.
//!
//! An answer carries the applied object as it is published (`config/<kind>/<id>`): secrets
//! removed, a camera's password shown as `***` when one is set. A camera's password follows
//! neither a URL nor an address change ([`Registry::change_camera`]).

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{
    Camera, Registry, RegistryError, SETTINGS_SECTIONS, Source, StoredZone, Task, requests,
};
use crate::config::Problem;
use crate::config::model::{CameraConfig, Vendor};
use crate::config::secret::{Secret, has_masked_credentials, redact_url};

/// What can be configured by kind and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigKind {
    Camera,
    Zone,
    Task,
    Settings,
}

impl ConfigKind {
    pub const ALL: [ConfigKind; 4] = [
        ConfigKind::Camera,
        ConfigKind::Zone,
        ConfigKind::Task,
        ConfigKind::Settings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Camera => "camera",
            ConfigKind::Zone => "zone",
            ConfigKind::Task => "task",
            ConfigKind::Settings => "settings",
        }
    }

    pub fn parse(s: &str) -> Option<ConfigKind> {
        ConfigKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A change asked for.
#[derive(Clone, Debug)]
pub enum ConfigOp {
    /// The whole desired object.
    Set(Value),
    Delete,
}

/// Why a change was refused, in the shape of `config/result`'s `error`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refusal {
    /// `bad_payload`, `invalid`, `not_found`, `file_owned`, `unknown_kind`, `store`, `internal`,
    /// or a caller's own (`too_large`, `disabled`, `unavailable`).
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            field: None,
        }
    }

    fn bad_payload(p: Problem) -> Refusal {
        Refusal {
            code: "bad_payload",
            message: p.to_string(),
            field: (!p.path.is_empty()).then_some(p.path),
        }
    }
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Refusal {
        let message = e.to_string();
        match e {
            RegistryError::Invalid(problems) => Refusal {
                code: "invalid",
                message,
                field: problems.first().map(|p| p.path.clone()),
            },
            RegistryError::FileOwned(_) => Refusal::new("file_owned", message),
            RegistryError::NotFound(_) => Refusal::new("not_found", message),
            RegistryError::Store(_) => Refusal::new("store", message),
            RegistryError::Internal(_) => Refusal::new("internal", message),
        }
    }
}

/// A digest of secret text for telling before from after, keyed with a random key made once per
/// process: equal for equal secrets within a run, and no help to anyone guessing the secret.
fn fingerprint(secret: &str) -> String {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(secret.as_bytes());
    format!("{:x}", mac.finalize().into_bytes())
}

/// A change applied by [`Registry::apply`].
pub struct Applied {
    /// The object as published; `None` after a delete.
    pub object: Option<Value>,
    /// The object's [`Registry::audit_view`] before the change, for the audit row to name the
    /// fields that changed.
    pub before: Option<Value>,
    /// The same view after the change; `None` after a delete.
    pub after: Option<Value>,
}

/// How a set password is shown.
const MASK: &str = "***";

/// Every setting that decides where a camera's password is sent: url, sub_url, vendor, address,
/// port and channel.
type Streams<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<Vendor>,
    Option<&'a str>,
    Option<u16>,
    Option<u32>,
);

fn streams(c: &CameraConfig) -> Streams<'_> {
    (
        c.url.as_deref(),
        c.sub_url.as_deref(),
        c.vendor,
        c.address.as_deref(),
        c.port,
        c.channel,
    )
}

/// A camera as published: declared settings, secrets out, toggles in.
pub fn camera_object(c: &Camera) -> Value {
    let mut v = serde_json::to_value(c.settings.shown()).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.remove("password_file");
        if c.password().is_some() {
            o.insert("password".into(), MASK.into());
        }
        o.insert("enabled".into(), c.enabled.into());
        o.insert("record".into(), c.record.into());
        o.insert("detect".into(), c.detect.into());
        o.insert("source".into(), json!(c.source));
    }
    v
}

fn zone_object(z: &StoredZone) -> Value {
    serde_json::to_value(z).unwrap_or_else(|_| json!({}))
}

/// A task in the shape it is set with (`[[tasks]]` keys), plus its id and source.
fn task_object(t: &Task) -> Value {
    json!({
        "id": t.id,
        "camera": t.camera_id,
        "task_type": t.task_type,
        "profile": t.profile,
        "fps": t.fps,
        "width": t.width,
        "enabled": t.enabled,
        "config": t.config,
        "source": t.source,
    })
}

impl Registry {
    /// Creates or replaces a runtime camera as asked by a caller (the API, MQTT). A change replaces
    /// the camera whole: without `password` it has none. A URL's user-info
    /// (`rtsp://user:pass@host/...`, as cameras print it) is split off first, so it is the same
    /// as `username` and `password` given apart.
    ///
    /// The published object shows a password as `***`; sent back, `***` keeps the stored password
    /// rather than becoming it, but only while the camera's streams stay where they were (issue
    /// 13, item 12). A change that points the camera elsewhere with `***` is refused, naming
    /// `password`: else whoever may change a camera's URL could have the box hand its password to
    /// a host of their choosing.
    pub async fn change_camera(
        &self,
        mut settings: CameraConfig,
        password: Option<Secret>,
    ) -> Result<Camera, RegistryError> {
        let invalid = |path: &str, message: &str| {
            RegistryError::Invalid(vec![Problem {
                path: path.into(),
                message: message.into(),
            }])
        };
        let in_url = settings
            .take_url_logins()
            .map_err(|p| RegistryError::Invalid(vec![p]))?;
        let password = match (password, in_url) {
            // The published object sent back with a new password in its URL.
            (Some(given), Some(in_url)) if given.expose() == MASK => Some(in_url),
            (Some(given), Some(in_url)) if given != in_url => {
                return Err(invalid(
                    "password",
                    "differs from the password in the URL: give it once",
                ));
            }
            (given, in_url) => given.or(in_url),
        };
        self.keep_masked_urls(&mut settings).await?;
        let password = match password {
            Some(p) if p.expose() == MASK => self.kept_password(&settings).await?,
            other => other,
        };
        self.put_camera(settings, password).await
    }

    /// A URL shown with its query credentials masked (`?user=***&password=***`) and sent back
    /// as it is stands for the stored URL, under the rule `***` follows for a password: only
    /// while the URL is otherwise the same, so masked credentials never travel to another host.
    async fn keep_masked_urls(&self, settings: &mut CameraConfig) -> Result<(), RegistryError> {
        let masked = |url: &Option<String>| url.as_deref().is_some_and(has_masked_credentials);
        if !masked(&settings.url) && !masked(&settings.sub_url) {
            return Ok(());
        }
        let (url_was, sub_url_was) = match self.camera(&settings.id).await? {
            // A file camera's change is refused as file-owned by `put_camera`.
            Some(c) if c.source == Source::File => return Ok(()),
            Some(c) => (c.settings.url, c.settings.sub_url),
            None => (None, None),
        };
        for (key, url, was) in [
            ("url", &mut settings.url, url_was),
            ("sub_url", &mut settings.sub_url, sub_url_was),
        ] {
            if !masked(url) {
                continue;
            }
            match was {
                Some(was) if Some(redact_url(&was)) == *url => *url = Some(was),
                _ => {
                    return Err(RegistryError::Invalid(vec![Problem {
                        path: key.into(),
                        message: "its credentials are masked (***): they stand for the stored \
                                  ones only while the URL is otherwise the same; send them again"
                            .into(),
                    }]));
                }
            }
        }
        Ok(())
    }

    /// The stored password that `***` stands for in a change to `settings`.
    async fn kept_password(
        &self,
        settings: &CameraConfig,
    ) -> Result<Option<Secret>, RegistryError> {
        let Some(stored) = self.camera(&settings.id).await? else {
            return Ok(None);
        };
        // A file camera's change is refused as file-owned by `put_camera`, whatever its password.
        let (Source::Runtime, Some(secret)) = (stored.source, stored.password()) else {
            return Ok(None);
        };
        if streams(&stored.settings) != streams(settings) {
            return Err(RegistryError::Invalid(vec![Problem {
                path: "password".into(),
                message: "the camera's url or address changed: send the password again \
                          (\"***\" keeps the stored password only for the streams it was given for)"
                    .into(),
            }]));
        }
        Ok(Some(secret.clone()))
    }

    /// Applies one change: decode, validate, apply atomically, persist. `Ok` holds the applied
    /// object (`None` after a delete) and the object's views before and after, for the audit
    /// trail.
    pub async fn apply(
        &self,
        kind: ConfigKind,
        id: &str,
        op: ConfigOp,
    ) -> Result<Applied, Refusal> {
        let (object, before, after) = self
            .with_views(kind, id, self.apply_op(kind, id, op))
            .await?;
        Ok(Applied {
            object,
            before,
            after,
        })
    }

    /// Runs `change` between two [`Registry::audit_view`]s of the object it changes: its
    /// outcome, the view before and the view after. Futures do nothing until awaited, so
    /// `change` runs after the first view is taken.
    pub async fn with_views<T, E: From<RegistryError>>(
        &self,
        kind: ConfigKind,
        id: &str,
        change: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<(T, Option<Value>, Option<Value>), E> {
        let before = self.audit_view(kind, id).await?;
        let outcome = change.await?;
        let after = self.audit_view(kind, id).await?;
        Ok((outcome, before, after))
    }

    /// An object as the audit trail compares it before and after a change: as published, with
    /// [`fingerprint`]s in place of what the published object masks (the camera's password, a
    /// URL's query credentials), so that a new password shows as a changed field. Only field
    /// names leave this view (`audit::What::change`).
    async fn audit_view(&self, kind: ConfigKind, id: &str) -> Result<Option<Value>, RegistryError> {
        Ok(match kind {
            ConfigKind::Camera => self.camera(id).await?.map(|c| {
                let mut v = camera_object(&c);
                if let Some(p) = c.password() {
                    v["password"] = fingerprint(p.expose()).into();
                }
                for (key, url) in [("url", &c.settings.url), ("sub_url", &c.settings.sub_url)] {
                    if let Some(url) = url.as_deref().filter(|u| redact_url(u) != *u) {
                        v[key] = fingerprint(url).into();
                    }
                }
                v
            }),
            ConfigKind::Zone => self
                .zones()
                .await?
                .into_iter()
                .find(|z| z.settings.name == id)
                .map(|z| zone_object(&z)),
            ConfigKind::Task => self
                .tasks()
                .await?
                .into_iter()
                .find(|t| t.id == id)
                .map(|t| task_object(&t)),
            ConfigKind::Settings => self.settings_object(id).await?,
        })
    }

    async fn apply_op(
        &self,
        kind: ConfigKind,
        id: &str,
        op: ConfigOp,
    ) -> Result<Option<Value>, Refusal> {
        match (kind, op) {
            (ConfigKind::Camera, ConfigOp::Set(v)) => {
                let (settings, password) =
                    requests::camera(v, Some(id)).map_err(Refusal::bad_payload)?;
                Ok(Some(camera_object(
                    &self.change_camera(settings, password).await?,
                )))
            }
            (ConfigKind::Zone, ConfigOp::Set(v)) => {
                let zone = requests::zone(v, Some(id)).map_err(Refusal::bad_payload)?;
                Ok(Some(zone_object(&self.put_zone(zone).await?)))
            }
            (ConfigKind::Task, ConfigOp::Set(v)) => {
                let task = requests::task(v, Some(id)).map_err(Refusal::bad_payload)?;
                Ok(Some(task_object(&self.put_task(task).await?)))
            }
            (ConfigKind::Settings, ConfigOp::Set(v)) => {
                let value = requests::settings(id, v).map_err(Refusal::bad_payload)?;
                self.put_settings(value).await?;
                Ok(self.settings_object(id).await?)
            }
            (ConfigKind::Camera, ConfigOp::Delete) => {
                self.delete_camera(id).await?;
                Ok(None)
            }
            (ConfigKind::Zone, ConfigOp::Delete) => {
                self.delete_zone(id).await?;
                Ok(None)
            }
            (ConfigKind::Task, ConfigOp::Delete) => {
                self.delete_task(id).await?;
                Ok(None)
            }
            (ConfigKind::Settings, ConfigOp::Delete) => {
                self.delete_settings(id).await?;
                Ok(self.settings_object(id).await?)
            }
        }
    }

    async fn settings_object(&self, section: &str) -> Result<Option<Value>, RegistryError> {
        Ok(self
            .configured()
            .await?
            .into_iter()
            .find(|(k, id, _)| *k == ConfigKind::Settings && id == section)
            .map(|(_, _, v)| v))
    }

    /// Every configured object as published, by kind and id.
    pub async fn configured(&self) -> Result<Vec<(ConfigKind, String, Value)>, RegistryError> {
        let mut out = Vec::new();
        for c in self.cameras().await? {
            out.push((ConfigKind::Camera, c.id().to_string(), camera_object(&c)));
        }
        for z in self.zones().await? {
            out.push((ConfigKind::Zone, z.settings.name.clone(), zone_object(&z)));
        }
        for t in self.tasks().await? {
            out.push((ConfigKind::Task, t.id.clone(), task_object(&t)));
        }
        let s = self.settings().await?;
        for section in SETTINGS_SECTIONS {
            let (mut value, source) = match section {
                "recording" => (serde_json::to_value(&s.recording), s.recording_source),
                _ => (serde_json::to_value(&s.sampler), s.sampler_source),
            };
            if let Ok(Value::Object(o)) = &mut value {
                o.insert("source".into(), json!(source));
            }
            out.push((
                ConfigKind::Settings,
                section.to_string(),
                value.unwrap_or_else(|_| json!({})),
            ));
        }
        Ok(out)
    }
}
