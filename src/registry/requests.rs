//! Decoding untrusted JSON (API bodies, MQTT `config/.../set` payloads) into what the registry
//! accepts. One decoder per kind, shared by every caller, so a camera sent over MQTT and one sent
//! to the API are read by the same rules and refused with the same words.
//!
//! Every refusal is a [`Problem`] naming the field (`fps`, `points[2]`), or no field when the
//! payload as a whole is wrong.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::settings::SettingsValue;
use super::tasks::task_id_parts;
use crate::config::Problem;
use crate::config::model::{CameraConfig, RecordingConfig, SamplerConfig, TaskConfig, ZoneConfig};
use crate::config::secret::Secret;

fn problem(path: &str, message: impl Into<String>) -> Problem {
    Problem {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Parses bytes as a JSON object.
pub fn object(bytes: &[u8]) -> Result<Value, Problem> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| problem("", "payload is not UTF-8 text (expected a JSON object)"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| problem("", format!("payload is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(problem("", "payload must be a JSON object"));
    }
    Ok(value)
}

/// Typed decoding that names the field a type error is at.
fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Problem {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// Makes `value[key]` equal `id`: fills it in when absent, refuses a different one.
fn bind_id(value: &mut Value, key: &str, id: Option<&str>) -> Result<(), Problem> {
    let Some(id) = id else { return Ok(()) };
    match value.get(key) {
        None | Some(Value::Null) => {
            value[key] = Value::String(id.to_string());
            Ok(())
        }
        Some(Value::String(s)) if s == id => Ok(()),
        Some(other) => Err(problem(
            key,
            format!("{other} does not match the id {id:?} it was sent for"),
        )),
    }
}

/// Strips what a caller may add to any request (`request_id`) and the read-only `source` of a
/// published object, so a published object can be edited and sent back as it is.
fn strip_envelope(value: &mut Value) {
    if let Some(o) = value.as_object_mut() {
        o.remove("request_id");
        o.remove("source");
    }
}

/// A camera and its password; `password` is accepted here and only here, never echoed.
pub fn camera(
    mut value: Value,
    id: Option<&str>,
) -> Result<(CameraConfig, Option<Secret>), Problem> {
    strip_envelope(&mut value);
    bind_id(&mut value, "id", id)?;
    let password = match value.as_object_mut().and_then(|o| o.remove("password")) {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(Secret::new(p)),
        Some(_) => return Err(problem("password", "must be a string")),
    };
    Ok((decode(value)?, password))
}

/// A zone; its id is its name.
pub fn zone(mut value: Value, name: Option<&str>) -> Result<ZoneConfig, Problem> {
    strip_envelope(&mut value);
    bind_id(&mut value, "name", name)?;
    decode(value)
}

/// A task. Given the id `<camera>:<task_type>:<profile>`, the payload may leave those three out.
pub fn task(mut value: Value, id: Option<&str>) -> Result<TaskConfig, Problem> {
    strip_envelope(&mut value);
    if let Some(id) = id {
        let Some((camera, task_type, profile)) = task_id_parts(id) else {
            return Err(problem(
                "",
                format!("{id:?} is not a task id: use <camera>:<task_type>:<main|sub>"),
            ));
        };
        bind_id(&mut value, "camera", Some(camera))?;
        bind_id(&mut value, "task_type", Some(task_type))?;
        bind_id(&mut value, "profile", Some(profile))?;
        bind_id(&mut value, "id", Some(id))?;
    }
    if let Some(o) = value.as_object_mut() {
        o.remove("id");
    }
    decode(value)
}

/// A settings section by its name.
pub fn settings(section: &str, mut value: Value) -> Result<SettingsValue, Problem> {
    strip_envelope(&mut value);
    match section {
        "recording" => Ok(SettingsValue::Recording(decode::<RecordingConfig>(value)?)),
        "sampler" => Ok(SettingsValue::Sampler(decode::<SamplerConfig>(value)?)),
        other => Err(problem(
            "",
            format!("no settings section {other:?}: use recording or sampler"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(Result<(), Problem>, &str)> = vec![
            (object(b"\xff\xfe").map(drop), ""),
            (object(b"[1, 2]").map(drop), ""),
            (object(b"{\"a\":").map(drop), ""),
            (
                camera(serde_json::json!({"id": "a", "password": 5}), None).map(drop),
                "password",
            ),
            (
                camera(serde_json::json!({"id": "b"}), Some("a")).map(drop),
                "id",
            ),
            (
                task(serde_json::json!({"fps": "fast"}), Some("gate:motion:sub")).map(drop),
                "fps",
            ),
            (task(serde_json::json!({}), Some("gate")).map(drop), ""),
            (
                zone(
                    serde_json::json!({"camera": "gate", "kind": "region", "points": [[0, 0], [1]]}),
                    Some("z"),
                )
                .map(drop),
                "points[1]",
            ),
            (
                settings("sampler", serde_json::json!({"max_total_fps": true})).map(drop),
                "max_total_fps",
            ),
            (settings("network", serde_json::json!({})).map(drop), ""),
        ];
        for (i, (result, field)) in cases.into_iter().enumerate() {
            let p = result.expect_err(&format!("case {i} must be refused"));
            assert_eq!(p.path, field, "case {i}: {p}");
        }
    }

    #[test]
    fn ids_come_from_the_topic_when_the_payload_leaves_them_out() {
        let t = task(
            serde_json::json!({"fps": 2, "request_id": "r1"}),
            Some("gate:motion:main"),
        )
        .unwrap();
        assert_eq!(
            (t.camera.as_str(), t.task_type.as_str(), t.fps),
            ("gate", "motion", 2.0)
        );
        let (c, password) = camera(
            serde_json::json!({"url": "rtsp://h/s", "username": "u", "password": "p"}),
            Some("gate"),
        )
        .unwrap();
        assert_eq!(c.id, "gate");
        assert_eq!(password.unwrap().expose(), "p");
    }
}
