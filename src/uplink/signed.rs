//! Signed config changes and commands over MQTT (`mqtt.command_keys`), for boxes on a broker
//! that anyone on the LAN can publish to.
//!
//! A signed message wraps the payload it carries in an envelope
//! `{"device", "counter", "payload", "signature"}`; the Ed25519 signature covers the box's
//! device id, the topic the message arrived on, the counter and the payload, so a message for
//! another box, moved to another topic, replayed or changed by one byte is refused. The counter
//! must grow per key; the last one accepted is stored before the command runs, so a replay is
//! refused across restarts too (a power cut between the two loses that one command, which its
//! sender sees unanswered and sends again, signed anew). See docs/mqtt.md#signed-commands.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::config::command_key::CommandKey;

/// Domain separation: a signature made for something else is never a valid command.
const CONTEXT: &[u8] = b"heldar-command-v1";

/// A private key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not an Ed25519 private key in PKCS#8 PEM: {0}")]
pub struct PrivateKeyError(String);

/// A new private key as PKCS#8 v1 PEM, the form `openssl genpkey -algorithm ed25519` writes,
/// so OpenSSL can sign with it too (it does not read the v2 form that carries the public key).
pub fn generate() -> (String, CommandKey) {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = v1
        .to_pkcs8_pem(Default::default())
        .expect("an Ed25519 key always encodes");
    (pem.to_string(), CommandKey::new(key.verifying_key()))
}

/// Reads a PKCS#8 PEM private key.
pub fn read_private(pem: &str) -> Result<SigningKey, PrivateKeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| PrivateKeyError(e.to_string()))
}

/// The bytes a signature covers: fields separated by NUL, which none of them may hold.
pub fn signed_bytes(device: &str, topic: &str, counter: u64, payload: &str) -> Vec<u8> {
    let counter = counter.to_string();
    let mut out =
        Vec::with_capacity(CONTEXT.len() + device.len() + topic.len() + payload.len() + 24);
    for part in [
        CONTEXT,
        device.as_bytes(),
        topic.as_bytes(),
        counter.as_bytes(),
    ] {
        out.extend_from_slice(part);
        out.push(0);
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

/// What travels on the topic instead of the bare payload.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub device: String,
    pub counter: u64,
    pub payload: String,
    pub signature: String,
}

/// The envelope for `payload` on `topic` of box `device`.
pub fn sign(key: &SigningKey, device: &str, topic: &str, counter: u64, payload: &str) -> Envelope {
    let signature = key.sign(&signed_bytes(device, topic, counter, payload));
    Envelope {
        device: device.to_string(),
        counter,
        payload: payload.to_string(),
        signature: BASE64.encode(signature.to_bytes()),
    }
}

/// Why a message was not taken as signed by one of the box's keys.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "this box accepts only signed commands (mqtt.command_keys): wrap the payload with `heldar sign`"
    )]
    Unsigned,
    #[error("signed for box {0:?}, this is {1:?}")]
    OtherBox(String, String),
    #[error("the signature does not match the topic, payload and counter for any key of this box")]
    Forged,
    #[error("counter {counter} was not above {last}, the last accepted for this key: a replay")]
    Replayed { counter: u64, last: u64 },
}

impl Refused {
    /// The `config/result` error code.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Unsigned => "unsigned",
            Refused::OtherBox(..) => "wrong_device",
            Refused::Forged => "bad_signature",
            Refused::Replayed { .. } => "replayed",
        }
    }
}

/// A message whose signature holds: the key that made it (as configured, which names its
/// counter), its counter and the inner payload.
#[derive(Debug)]
pub struct Verified {
    pub key: String,
    pub counter: u64,
    pub payload: Vec<u8>,
}

/// Checks the envelope in `raw` against `keys`; the counter is checked by [`accept_counter`].
pub fn verify(
    keys: &[CommandKey],
    device: &str,
    topic: &str,
    raw: &[u8],
) -> Result<Verified, Refused> {
    let envelope: Envelope = serde_json::from_slice(raw).map_err(|_| Refused::Unsigned)?;
    if envelope.device != device {
        return Err(Refused::OtherBox(envelope.device, device.to_string()));
    }
    let signature = BASE64
        .decode(&envelope.signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(Refused::Forged)?;
    let message = signed_bytes(device, topic, envelope.counter, &envelope.payload);
    let key = keys
        .iter()
        .find(|k| k.key().verify(&message, &signature).is_ok())
        .ok_or(Refused::Forged)?;
    Ok(Verified {
        key: key.to_string(),
        counter: envelope.counter,
        payload: envelope.payload.into_bytes(),
    })
}

/// Stores `counter` as the last of `key` if it is above the stored one, in the caller's write
/// transaction, so the command runs only once its counter can no longer be used again.
pub fn accept_counter(
    c: &Connection,
    key: &str,
    counter: u64,
) -> rusqlite::Result<Result<(), Refused>> {
    let last: Option<i64> = c
        .query_row(
            "SELECT counter FROM command_counters WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    let stored = i64::try_from(counter).unwrap_or(i64::MAX);
    if let Some(last) = last
        && stored <= last
    {
        return Ok(Err(Refused::Replayed {
            counter,
            last: last as u64,
        }));
    }
    c.execute(
        "INSERT INTO command_counters (key, counter, at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET counter = excluded.counter, at_ms = excluded.at_ms",
        params![key, stored, chrono::Utc::now().timestamp_millis()],
    )?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_device_topic_counter_and_payload() {
        let (pem, public) = generate();
        let key = read_private(&pem).unwrap();
        let keys = [public];
        let topic = "heldar/box1/cmd/relay/1/set";
        let raw = serde_json::to_vec(&sign(&key, "box1", topic, 7, "ON")).unwrap();
        let ok = verify(&keys, "box1", topic, &raw).unwrap();
        assert_eq!((ok.counter, ok.payload.as_slice()), (7, b"ON".as_slice()));

        assert!(matches!(
            verify(&keys, "box2", topic, &raw),
            Err(Refused::OtherBox(..))
        ));
        assert!(matches!(
            verify(&keys, "box1", "heldar/box1/cmd/relay/2/set", &raw),
            Err(Refused::Forged)
        ));
        let mut changed: Envelope = serde_json::from_slice(&raw).unwrap();
        changed.payload = "OFF".into();
        let changed = serde_json::to_vec(&changed).unwrap();
        assert!(matches!(
            verify(&keys, "box1", topic, &changed),
            Err(Refused::Forged)
        ));
        assert!(matches!(
            verify(&keys, "box1", topic, b"ON"),
            Err(Refused::Unsigned)
        ));
        let (_, other) = generate();
        assert!(matches!(
            verify(&[other], "box1", topic, &raw),
            Err(Refused::Forged)
        ));
    }
}
