//! Secrets and credential masking.
//!
//! Invariant M3: credentials never appear in logs, MQTT payloads, API responses or error messages.
//! Secret text lives only in [`Secret`], whose `Debug` and `Display` print `***`, and every URL that
//! reaches a log line or an answer goes through [`redact_url`] first. A camera URL's user-info
//! (`rtsp://user:pass@host/...`, as camera manuals print it) is split off where the URL arrives
//! ([`split_userinfo`]), so the password becomes a [`Secret`] and the stored URL carries none.
//! Credentials a vendor wants in the query (`?user=x&password=y`) must stay in the URL the camera
//! is asked for, so they are masked wherever a URL is shown. Broker URLs with user-info are
//! refused: the broker has `username` and `password_file`.

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

/// A URL's user-info, split off by [`split_userinfo`].
#[derive(Debug, PartialEq)]
pub struct UrlLogin {
    /// The URL without `user:pass@`.
    pub url: String,
    pub user: String,
    pub password: Option<Secret>,
}

/// Splits `user:pass@` (or `user@`) off the authority of `url`, percent-decoding both parts, as
/// camera manuals write a password with `@` or `:` in it (`p%40ss`). `None` when the URL has no
/// user-info. The last `@` of the authority ends the user-info, as in RFC 3986.
pub fn split_userinfo(url: &str) -> Option<UrlLogin> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let userinfo = &rest[..at];
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(Secret::new(decode(password)))),
        None => (userinfo, None),
    };
    Some(UrlLogin {
        url: format!("{scheme}://{}", &rest[at + 1..]),
        user: decode(user),
        password,
    })
}

/// Whether a URL's query holds a credential masked as `***` (a shown URL sent back as it is).
pub fn has_masked_query_credentials(url: &str) -> bool {
    let Some((_, query)) = url.split_once('?') else {
        return false;
    };
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(key, value)| is_credential_key(key) && value == "***")
    })
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
    fn userinfo_is_split_off_and_decoded() {
        let login =
            split_userinfo("rtsp://admin:p%40ss:w0rd@10.0.0.5:554/Streaming/101?x=a@b").unwrap();
        assert_eq!(login.url, "rtsp://10.0.0.5:554/Streaming/101?x=a@b");
        assert_eq!(login.user, "admin");
        assert_eq!(login.password.unwrap().expose(), "p@ss:w0rd");
        let login = split_userinfo("rtsp://a@b:c@cam/x").unwrap();
        assert_eq!(
            (login.url.as_str(), login.user.as_str()),
            ("rtsp://cam/x", "a@b")
        );
        let login = split_userinfo("rtsp://viewer@cam").unwrap();
        assert_eq!((login.url.as_str(), login.password), ("rtsp://cam", None));
        assert_eq!(split_userinfo("rtsp://cam/live?user=a@b"), None);
        assert_eq!(split_userinfo("not a url"), None);
    }

    #[test]
    fn a_masked_query_credential_is_recognised() {
        assert!(has_masked_query_credentials(
            "rtsp://h/s?user=***&password=***"
        ));
        assert!(has_masked_query_credentials(
            "rtsp://h/s?channel=1&pwd=***#f"
        ));
        assert!(!has_masked_query_credentials(
            "rtsp://h/s?user=admin&password=x"
        ));
        assert!(!has_masked_query_credentials("rtsp://h/s?title=***"));
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
