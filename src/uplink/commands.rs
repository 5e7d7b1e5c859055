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
use super::signed;
use super::state::StateNudge;
use crate::audit::{self, AuditEntry, What};
use crate::config::command_key::CommandKey;
use crate::config::rules::RelayOp;
use crate::media::Media;
use crate::registry::{Applied, ConfigKind, ConfigOp, Refusal, Registry, Toggle, requests};
use crate::serial::{PtzCommand, Serial};
use crate::store::Store;

/// Payloads above this are refused unread (a config object is a few KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// What the command handler needs.
pub struct Commands {
    pub root: String,
    pub discovery_prefix: Option<String>,
    pub config_topics: bool,
    /// The box's device id, which every signed command must name.
    pub device_id: String,
    /// `mqtt.command_keys`: when any is set, changes and commands must be signed by one.
    pub command_keys: Vec<CommandKey>,
    pub registry: Registry,
    pub media: Media,
    /// For the audit trail of changes made over MQTT.
    pub store: Store,
    pub serial: Serial,
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
    /// What an applied change did, for its audit row.
    what: Option<What>,
}

/// The `config/result` error code of a serial failure.
fn serial_code(e: &crate::serial::SerialError) -> &'static str {
    use crate::serial::SerialError as E;
    match e {
        E::NotConfigured(_) | E::Unavailable(_) | E::Device(_) | E::Store(_) => "unavailable",
        E::UnknownCamera(_) => "not_found",
        E::NoSuchRelay { .. } | E::NoPtz(_) | E::BadCommand(_) => "invalid",
    }
}

/// A command's answer and what it did, as [`Answer`] holds them.
fn split_what(
    outcome: Result<(Value, What), Refusal>,
) -> (Result<Option<Value>, Refusal>, Option<What>) {
    match outcome {
        Ok((answer, what)) => (Ok(Some(answer)), Some(what)),
        Err(refusal) => (Err(refusal), None),
    }
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
        if m.retain && matches!(levels.first(), Some(&("cmd" | "cameras" | "config"))) {
            // A retained command or change would fire again at every reconnect (a door strike
            // opening each time the link flaps, a config version bumped per connect): they count
            // only when sent.
            tracing::warn!(topic = %m.topic, "ignoring a retained command; publish commands and config changes without retain");
            return Ok(());
        }
        let is_change = match levels.first() {
            Some(&"cmd") => levels.get(1) != Some(&"snapshot"),
            Some(&("config" | "cameras")) => true,
            _ => false,
        };
        if is_change && !self.config_topics {
            let answer = Answer {
                request_id: request_id(&m.payload),
                kind: levels.get(1).copied().unwrap_or("cmd").to_string(),
                id: levels.get(2).copied().unwrap_or_default().to_string(),
                outcome: Err(Refusal::new(
                    "disabled",
                    "config and commands over MQTT are disabled on this box (mqtt.config_topics = false)",
                )),
                what: None,
            };
            return self
                .audit_and_answer(&m.topic, rest, answer, shutdown)
                .await;
        }
        let mut payload = m.payload;
        if !self.command_keys.is_empty() && (is_change || levels.first() == Some(&"cmd")) {
            match self.unwrap_signed(&m.topic, &payload).await {
                Ok(inner) => payload = inner,
                Err(refusal) => {
                    tracing::warn!(topic = %m.topic, code = refusal.code, error = %refusal.message, "refused a command that is not signed by a key of this box");
                    let answer = Answer {
                        request_id: Value::Null,
                        kind: levels.get(1).copied().unwrap_or("cmd").to_string(),
                        id: levels.get(2).copied().unwrap_or_default().to_string(),
                        outcome: Err(refusal),
                        what: None,
                    };
                    return self
                        .audit_and_answer(&m.topic, rest, answer, shutdown)
                        .await;
                }
            }
        }
        let answer = match levels.as_slice() {
            ["config", kind, id, op @ ("set" | "delete")] => {
                self.config(kind, id, op, &payload).await
            }
            ["cameras", camera, toggle, "set"] => self.toggle(camera, toggle, &payload).await,
            ["cmd", "snapshot", camera] => return self.snapshot(camera, shutdown).await,
            ["cmd", "relay", n, "set"] => self.relay(n, &payload).await,
            ["cmd", "ptz", camera] => self.ptz(camera, &payload).await,
            _ => {
                tracing::debug!(topic = %m.topic, "ignoring a message on an unknown topic");
                return Ok(());
            }
        };
        self.audit_and_answer(&m.topic, rest, answer, shutdown)
            .await
    }

    /// The payload inside a signed envelope, once its signature holds and its counter has been
    /// stored as used.
    async fn unwrap_signed(&self, topic: &str, raw: &[u8]) -> Result<Vec<u8>, Refusal> {
        if raw.len() > MAX_PAYLOAD {
            return Err(Refusal::new(
                "too_large",
                format!(
                    "payload of {} bytes is over the limit of {MAX_PAYLOAD}",
                    raw.len()
                ),
            ));
        }
        let refused = |r: signed::Refused| Refusal::new(r.code(), r.to_string());
        let verified =
            signed::verify(&self.command_keys, &self.device_id, topic, raw).map_err(refused)?;
        let (key, counter) = (verified.key.clone(), verified.counter);
        let accepted = self
            .store
            .write(move |c| {
                Ok::<_, crate::store::StoreError>(signed::accept_counter(c, &key, counter)?)
            })
            .await
            .map_err(|e| Refusal::new("unavailable", format!("cannot record the counter: {e}")))?;
        accepted.map_err(refused)?;
        Ok(verified.payload)
    }

    /// Every change and command, applied or refused, leaves an audit row before it is answered.
    async fn audit_and_answer(
        &self,
        topic: &str,
        rest: &str,
        answer: Answer,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopping> {
        audit::append(
            &self.store,
            AuditEntry {
                id: 0,
                at_ms: chrono::Utc::now().timestamp_millis(),
                actor: "mqtt".into(),
                source: topic.to_string(),
                action: format!("mqtt {rest}"),
                status: if answer.outcome.is_ok() { 200 } else { 400 },
                detail: answer.outcome.as_ref().err().map(|r| r.message.clone()),
                what: answer.what.as_ref().map(|w| w.0.clone()),
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
            what: None,
        };
        match self.apply(kind, id, op, payload).await {
            Ok(applied) => {
                answer.what = Some(What::change(
                    kind,
                    id,
                    applied.before.as_ref(),
                    applied.after.as_ref(),
                ));
                answer.outcome = Ok(applied.object);
            }
            Err(refusal) => answer.outcome = Err(refusal),
        }
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
    ) -> Result<Applied, Refusal> {
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
            let state = if on { "ON" } else { "OFF" };
            Ok((
                json!({ "camera": camera.id(), toggle: state }),
                What(format!("camera {} changed: {toggle} {state}", camera.id())),
            ))
        }
        .await;
        let (outcome, what) = split_what(outcome);
        Answer {
            request_id: Value::Null,
            kind: "toggle".into(),
            id: format!("{camera}/{toggle}"),
            outcome,
            what,
        }
    }

    /// `cmd/relay/<n>/set` with `ON`, `OFF` or `PULSE <ms>`.
    async fn relay(&self, n: &str, payload: &[u8]) -> Answer {
        let outcome = async {
            let relay: u16 = n.parse().map_err(|_| Refusal {
                code: "bad_payload",
                message: format!("relay {n:?} is not a number"),
                field: Some("relay".into()),
            })?;
            let text = String::from_utf8_lossy(payload).trim().to_ascii_uppercase();
            let op = match text.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["ON"] => RelayOp::On,
                ["OFF"] => RelayOp::Off,
                ["PULSE", ms] => match ms.parse::<u64>() {
                    Ok(ms @ 1..=3_600_000) => {
                        RelayOp::Pulse(crate::config::units::Duration::from_millis(ms))
                    }
                    _ => {
                        return Err(Refusal {
                            code: "bad_payload",
                            message: format!("PULSE needs 1..3600000 ms, got {ms:?}"),
                            field: Some("pulse".into()),
                        });
                    }
                },
                _ => {
                    return Err(Refusal {
                        code: "bad_payload",
                        message: "payload must be ON, OFF or PULSE <ms>".into(),
                        field: Some("state".into()),
                    });
                }
            };
            self.serial
                .relay(relay, op)
                .await
                .map_err(|e| Refusal::new(serial_code(&e), e.to_string()))?;
            Ok((
                json!({ "relay": relay, "done": op.to_string() }),
                What::relay(relay, &op),
            ))
        }
        .await;
        let (outcome, what) = split_what(outcome);
        Answer {
            request_id: Value::Null,
            kind: "relay".into(),
            id: n.into(),
            outcome,
            what,
        }
    }

    /// `cmd/ptz/<cam>` with `{action, pan?, tilt?, zoom?, preset?}`.
    async fn ptz(&self, camera: &str, payload: &[u8]) -> Answer {
        let outcome = async {
            if payload.len() > MAX_PAYLOAD {
                return Err(Refusal::new("too_large", "payload over the limit"));
            }
            let command: PtzCommand = serde_json::from_slice::<Value>(payload)
                .map_err(|e| Refusal::new("bad_payload", format!("not JSON: {e}")))
                .and_then(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("request_id");
                    }
                    serde_json::from_value(v).map_err(|e| Refusal {
                        code: "bad_payload",
                        message: e.to_string(),
                        field: Some("action".into()),
                    })
                })?;
            self.serial
                .ptz(camera, command)
                .await
                .map_err(|e| Refusal::new(serial_code(&e), e.to_string()))?;
            Ok((
                json!({ "camera": camera, "sent": command }),
                command.audited(camera),
            ))
        }
        .await;
        let (outcome, what) = split_what(outcome);
        Answer {
            request_id: request_id(payload),
            kind: "ptz".into(),
            id: camera.into(),
            outcome,
            what,
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
                    what: None,
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
