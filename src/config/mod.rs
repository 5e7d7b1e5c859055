//! File configuration: `heldar.toml` merged over a board profile, validated with errors that name
//! the key.
//!
//! Owns: the shape of the file ([`model`]), loading and merging ([`load()`]), validation, the rule
//! syntax ([`rules`]), units ([`units`]) and secret handling ([`secret`]).
//! Does not own: runtime configuration. Invariant C1: at runtime the database is the source of
//! truth; what the file declares is upserted at every start by the services that own it.
//!
//! Rule for callers: a [`Config`] that exists has passed validation; code downstream may rely on
//! every range and reference checked in `validate.rs` and need not re-check it.

pub mod broker;
pub mod command_key;
mod load;
pub mod model;
pub mod rules;
pub mod secret;
pub mod units;
mod validate;

use std::fmt;

pub use load::{BUILTIN_BOARDS, Loaded, load, load_str};
pub use model::Config;
pub use validate::{
    camera_problems, is_task_type, recording_problems, sampler_problems, task_problems,
    zone_problems,
};

/// One thing wrong with a config, at a key path such as `cameras[1].segment_seconds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Empty when the problem is the file as a whole (unreadable, not TOML).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a config; each problem prints on its own line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(path: &str, message: String) -> Self {
        ConfigError {
            problems: vec![Problem {
                path: path.into(),
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Ids (device, cameras, zones, serial ports) appear in MQTT topics, URLs and file names, so they
/// keep to letters, digits, `-` and `_`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    /// The effective config as TOML, as [`Config::shown`] gives it.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.shown()).expect("a validated config always serializes")
    }

    /// The config as it may be printed: secrets are never serialized (only `*_file` paths are),
    /// user-info was split off camera URLs at load, and credentials in a camera URL's query are
    /// masked here.
    pub fn shown(&self) -> Config {
        let mut shown = self.clone();
        for cam in &mut shown.cameras {
            *cam = cam.shown();
        }
        shown
    }
}
