//! Messages the box subscribes to: config changes, toggles, commands and Home Assistant's
//! birth message. Every config change and command is answered on `<dev>/config/result`, with
//! `ok: false` and an error naming the field for bad input of any kind; nothing is applied then,
//! and nothing here can stop the daemon.

use std::sync::Arc;

use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::{Inbound, Link, Stopping, Tag};
use super::state::StateNudge;
use crate::audit::{self, AuditEntry};
use crate::media::Media;
use crate::registry::{ConfigKind, ConfigOp, Refusal, Registry, Toggle, requests};
use crate::store::Store;

/// Payloads above this are refused unread (a config object is a few KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// What the command handler needs.
pub struct Commands {
    pub root: String,
    pub discovery_prefix: Option<String>,
    pub config_topics: bool,
    pub registry: Registry,
    pub media: Media,
    /// For the audit trail of changes made over MQTT.
    pub store: Store,
    pub link: Arc<Link>,
    pub nudge: Arc<StateNudge>,
}

/// The subscriptions, made after every connect.
pub fn filters(root: &str, discovery_prefix: Option<&str>) -> Vec<String> {
    let mut f = vec![
        format!("{root}/config/+/+/set"),
        format!("{root}/config/+/+/delete"),
        format!("{root}/cameras/+/+/set"),
        format!("{root}/cmd/#"),
    ];
    if let Some(p) = discovery_prefix {
        f.push(format!("{p}/status"));
    }
    f
}

/// An answer on `config/result`.
struct Answer {
    request_id: Value,
    kind: String,
    id: String,
    outcome: Result<Option<Value>, Refusal>,
}

/// `request_id` as sent (string or number), or null.
fn request_id(payload: &[u8]) -> Value {
    if payload.len() > MAX_PAYLOAD {
        return Value::Null;
    }
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id").cloned())
        .filter(|v| v.is_string() || v.is_number())
        .unwrap_or(Value::Null)
}

impl Commands {
    /// Handles messages until `shutdown`, one at a time, in arrival order.
    pub async fn run(self, mut inbound: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = inbound.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            if self.handle(message, &shutdown).await.is_err() {
                return;
            }
        }
    }

    async fn handle(&self, m: Inbound, shutdown: &CancellationToken) -> Result<(), Stopping> {
        if let Some(p) = &self.discovery_prefix
            && m.topic == format!("{p}/status")
        {
            if m.payload.trim_ascii() == b"online" {
                tracing::info!("Home Assistant is online: publishing discovery again");
                self.nudge.rediscover();
            }
            return Ok(());
        }
        let Some(rest) = m.topic.strip_prefix(&format!("{}/", self.root)) else {
            return Ok(());
        };
        let levels: Vec<&str> = rest.split('/').collect();
        let answer = match levels.as_slice() {
            ["config", kind, id, op @ ("set" | "delete")] => {
                self.config(kind, id, op, &m.payload).await
            }
            ["cameras", camera, toggle, "set"] => self.toggle(camera, toggle, &m.payload).await,
            ["cmd", "snapshot", camera] => return self.snapshot(camera, shutdown).await,
            ["cmd", "relay", n, "set"] => Answer {
                request_id: Value::Null,
                kind: "relay".into(),
                id: (*n).into(),
                outcome: Err(Refusal::new(
                    "unavailable",
                    "relay outputs are not supported by this version of heldar",
                )),
            },
            ["cmd", "ptz", camera] => Answer {
                request_id: request_id(&m.payload),
                kind: "ptz".into(),
                id: (*camera).into(),
                outcome: Err(Refusal::new(
                    "unavailable",
                    "PTZ control is not supported by this version of heldar",
                )),
            },
            _ => {
                tracing::debug!(topic = %m.topic, "ignoring a message on an unknown topic");
                return Ok(());
            }
        };
        audit::append(
            &self.store,
            AuditEntry {
                id: 0,
                at_ms: chrono::Utc::now().timestamp_millis(),
                actor: "mqtt".into(),
                source: m.topic.clone(),
                action: format!("mqtt {rest}"),
                status: if answer.outcome.is_ok() { 200 } else { 400 },
                detail: answer.outcome.as_ref().err().map(|r| r.message.clone()),
            },
        )
        .await;
        self.answer(answer, shutdown).await
    }

    async fn config(&self, kind: &str, id: &str, op: &str, payload: &[u8]) -> Answer {
        let mut answer = Answer {
            request_id: request_id(payload),
            kind: kind.to_string(),
            id: id.to_string(),
            outcome: Ok(None),
        };
        answer.outcome = self.apply(kind, id, op, payload).await;
        match &answer.outcome {
            Ok(_) => tracing::info!(kind, id, op, "config changed over MQTT"),
            Err(r) => {
                tracing::info!(kind, id, op, code = r.code, error = %r.message, "config change over MQTT refused")
            }
        }
        answer
    }

    async fn apply(
        &self,
        kind: &str,
        id: &str,
        op: &str,
        payload: &[u8],
    ) -> Result<Option<Value>, Refusal> {
        if !self.config_topics {
            return Err(Refusal::new(
                "disabled",
                "config over MQTT is disabled on this box (mqtt.config_topics = false)",
            ));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(Refusal::new(
                "too_large",
                format!(
                    "payload of {} bytes is over the limit of {MAX_PAYLOAD}",
                    payload.len()
                ),
            ));
        }
        let kind = ConfigKind::parse(kind).ok_or_else(|| {
            Refusal::new(
                "unknown_kind",
                format!("no config kind {kind:?}: use camera, zone, task or settings"),
            )
        })?;
        let op = if op == "set" {
            ConfigOp::Set(requests::object(payload).map_err(|p| Refusal {
                code: "bad_payload",
                message: p.to_string(),
                field: None,
            })?)
        } else {
            // A delete may come with `{request_id}` or nothing at all.
            if !payload.trim_ascii().is_empty() {
                requests::object(payload)
                    .map_err(|p| Refusal::new("bad_payload", p.to_string()))?;
            }
            ConfigOp::Delete
        };
        let applied = self.registry.apply(kind, id, op).await?;
        self.nudge.now();
        Ok(applied)
    }

    async fn toggle(&self, camera: &str, toggle: &str, payload: &[u8]) -> Answer {
        let outcome = async {
            let which = match toggle {
                "record" => Toggle::Record,
                "detect" => Toggle::Detect,
                other => {
                    return Err(Refusal::new(
                        "unknown_kind",
                        format!("no toggle {other:?}: use record or detect"),
                    ));
                }
            };
            let on = match payload.trim_ascii().to_ascii_uppercase().as_slice() {
                b"ON" => true,
                b"OFF" => false,
                _ => {
                    return Err(Refusal {
                        code: "bad_payload",
                        message: "payload must be ON or OFF".into(),
                        field: Some(toggle.to_string()),
                    });
                }
            };
            let camera = self.registry.set_toggle(camera, which, on).await?;
            self.nudge.now();
            Ok(Some(
                json!({ "camera": camera.id(), toggle: if on { "ON" } else { "OFF" } }),
            ))
        }
        .await;
        Answer {
            request_id: Value::Null,
            kind: "toggle".into(),
            id: format!("{camera}/{toggle}"),
            outcome,
        }
    }

    async fn snapshot(&self, camera: &str, shutdown: &CancellationToken) -> Result<(), Stopping> {
        match self.media.snapshot(camera, None).await {
            Ok(jpeg) => {
                self.link
                    .publish(
                        &format!("{}/cameras/{camera}/snapshot", self.root),
                        QoS::AtMostOnce,
                        false,
                        jpeg,
                        Tag::Other,
                        shutdown,
                    )
                    .await
            }
            Err(e) => {
                let answer = Answer {
                    request_id: Value::Null,
                    kind: "snapshot".into(),
                    id: camera.into(),
                    outcome: Err(Refusal::new("unavailable", e.to_string())),
                };
                self.answer(answer, shutdown).await
            }
        }
    }

    async fn answer(&self, a: Answer, shutdown: &CancellationToken) -> Result<(), Stopping> {
        let mut body = json!({
            "request_id": a.request_id,
            "kind": a.kind,
            "id": a.id,
            "ok": a.outcome.is_ok(),
        });
        match a.outcome {
            Ok(applied) => {
                body["version"] = self.registry.version().into();
                if let Some(object) = applied {
                    body["applied"] = object;
                }
            }
            Err(refusal) => body["error"] = serde_json::to_value(refusal).unwrap_or_default(),
        }
        self.link
            .publish(
                &format!("{}/config/result", self.root),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&body).unwrap_or_default(),
                Tag::Other,
                shutdown,
            )
            .await
    }
}
