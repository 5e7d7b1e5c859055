//! Secrets and credential masking.
//!
//! Invariant M3: credentials never appear in logs, MQTT payloads, API responses or error messages.
//! Secret text lives only in [`Secret`], whose `Debug` and `Display` print `***`, and every URL that
//! reaches a log line or an answer goes through [`redact_url`] first.

use std::fmt;
use std::path::Path;

/// Secret text read from a `*_file` key (a password, a private key).
///
/// It has no `Serialize`: printing a config prints the file's path, never its content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// Reads a secret file; a single trailing newline is dropped because editors add one.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let mut text = std::fs::read_to_string(path)?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(Secret(text))
    }

    /// The secret itself, for the one place that hands it to a library (rtspsrc, rumqttc).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces the user-info part of a URL (`user:pass@`) with `***@`.
///
/// Works on text that does not parse as a URL too (a camera's error message may embed a URL), by
/// masking every `scheme://userinfo@` occurrence it finds.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.push_str("***");
            rest = &rest[at..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        for (input, masked) in [
            (
                "rtsp://admin:s3cret@10.0.0.5:554/Streaming/101",
                "rtsp://***@10.0.0.5:554/Streaming/101",
            ),
            ("rtsp://admin@10.0.0.5/x", "rtsp://***@10.0.0.5/x"),
            ("rtsp://10.0.0.5/x?u=a@b", "rtsp://10.0.0.5/x?u=a@b"),
            (
                "could not open rtsp://u:p%40ss@cam/1 and mqtts://x:y@broker:8883",
                "could not open rtsp://***@cam/1 and mqtts://***@broker:8883",
            ),
            ("no url here", "no url here"),
        ] {
            assert_eq!(redact_url(input), masked);
        }
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
