//! Public keys of `mqtt.command_keys`, written `ed25519:<base64 of the 32-byte key>`: the form
//! `heldar keys generate` prints, so a key pasted into `heldar.toml` is read as it was printed.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// How a public key is written.
pub const KEY_PREFIX: &str = "ed25519:";

/// An Ed25519 public key allowed to sign config changes and commands for this box.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandKey(VerifyingKey);

/// A `command_keys` entry that is not a usable public key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("must start with \"{KEY_PREFIX}\" followed by the base64 of a 32-byte public key")]
    Prefix,
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("an Ed25519 public key is 32 bytes, this one is {0}")]
    Length(usize),
    #[error("not an Ed25519 public key: {0}")]
    Point(ed25519_dalek::SignatureError),
}

impl CommandKey {
    pub fn new(key: VerifyingKey) -> Self {
        CommandKey(key)
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl FromStr for CommandKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let b64 = text
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or(KeyError::Prefix)?;
        let bytes = BASE64.decode(b64)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        VerifyingKey::from_bytes(&array)
            .map(CommandKey)
            .map_err(KeyError::Point)
    }
}

impl TryFrom<String> for CommandKey {
    type Error = KeyError;

    fn try_from(text: String) -> Result<Self, KeyError> {
        text.parse()
    }
}

impl fmt::Display for CommandKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl From<CommandKey> for String {
    fn from(key: CommandKey) -> String {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_named_and_good_ones_print_back() {
        assert!(matches!(
            "AAAA".parse::<CommandKey>(),
            Err(KeyError::Prefix)
        ));
        assert!(matches!(
            "ed25519:AAAA".parse::<CommandKey>(),
            Err(KeyError::Length(3))
        ));
        assert!(matches!(
            "ed25519:not base64!".parse::<CommandKey>(),
            Err(KeyError::Base64(_))
        ));
        let text = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        assert_eq!(text.parse::<CommandKey>().unwrap().to_string(), text);
    }
}
