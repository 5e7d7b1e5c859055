//! Secrets and credential masking.
//!
//! Invariant M3: credentials never appear in logs, MQTT payloads, API responses or error messages.
//! Secret text lives only in [`Secret`], whose `Debug` and `Display` print `***`, and every URL that
//! reaches a log line or an answer goes through [`redact_url`] first. Validation refuses camera
//! URLs with credentials (user-info or query) and broker URLs with user-info; masking guards URLs
//! that come from elsewhere (a library's error message).

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

/// Query keys that carry credentials in the URLs of some cameras (`?user=admin&password=...`);
/// compared without regard to case.
const CREDENTIAL_KEYS: &[&str] = &[
    "user",
    "username",
    "usr",
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "auth",
    "secret",
    "key",
    "apikey",
    "api_key",
    "access_token",
];

fn is_credential_key(key: &str) -> bool {
    CREDENTIAL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// Where a URL that starts at the beginning of `text` ends: at white space or a quote, so a URL
/// quoted in a message (`"rtsp://..."`) ends before the quote.
fn url_end(text: &str) -> usize {
    text.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
        .unwrap_or(text.len())
}

/// Whether a URL's query carries credentials (`?user=x&password=y`).
pub fn has_query_credentials(url: &str) -> bool {
    let url = &url[..url_end(url)];
    let Some((_, query)) = url.split_once('?') else {
        return false;
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .any(|pair| is_credential_key(pair.split('=').next().unwrap_or_default()))
}

/// Masks the credentials of every URL in `text`: the user-info part (`user:pass@`) becomes
/// `***@`, and the value of each credential query parameter (`password=...`) becomes `***`.
///
/// Works on text that does not parse as a URL too (a camera's error message may embed a URL), by
/// masking every `scheme://` occurrence it finds.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let end = url_end(rest);
        let (url, after) = rest.split_at(end);
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, tail) = url.split_at(authority_end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        out.push_str(&mask_query(tail));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `path?query#fragment` with the values of credential parameters replaced by `***`.
fn mask_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_credential_key(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{path}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
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
            (
                "rtsp://10.0.0.5/live?user=admin&PASSWORD=s3cret&channel=1#x",
                "rtsp://10.0.0.5/live?user=***&PASSWORD=***&channel=1#x",
            ),
            (
                "cannot open \"rtsp://u:p@cam/a?pwd=s3cret\": refused",
                "cannot open \"rtsp://***@cam/a?pwd=***\": refused",
            ),
            (
                "rtsp://cam/cam/realmonitor?channel=1&subtype=0",
                "rtsp://cam/cam/realmonitor?channel=1&subtype=0",
            ),
        ] {
            assert_eq!(redact_url(input), masked);
        }
    }

    #[test]
    fn credentials_in_a_query_are_found_by_key() {
        assert!(has_query_credentials("rtsp://h/s?user=a&password=b"));
        assert!(has_query_credentials("rtsp://h/s?channel=1&Pwd=b"));
        assert!(has_query_credentials("rtsp://h/s?token"));
        assert!(!has_query_credentials(
            "rtsp://h/cam/realmonitor?channel=1&subtype=0"
        ));
        assert!(!has_query_credentials("rtsp://h/s#password=x"));
        assert!(!has_query_credentials("rtsp://h/password=x"));
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
