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

/// Secret text: read from a `*_file` key (a password, a private key) or split off a camera URL.
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

    /// The secret itself, for the places that hand it to a library (rtspsrc, rumqttc) or compare
    /// it without showing it (the audit trail's change detection).
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
/// `***@`, and the value of each credential pair (`password=...`, in the query or the path)
/// becomes `***`.
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
        out.push_str(&mask_pairs(tail));
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
    /// The user name, percent-decoded; empty for `rtsp://:pass@host` and `rtsp://@host`.
    pub user: String,
    /// The password, percent-decoded; `None` for `user@host`, empty for `user:@host` (some
    /// cameras ship with an empty password).
    pub password: Option<Secret>,
}

/// Splits `user:pass@` (or `user@`) off the authority of `url`, percent-decoding both parts, as
/// camera manuals write a password with `@` or `:` in it (`p%40ss`). `Ok(None)` when the URL has
/// no user-info. The last `@` of the authority ends the user-info, as in RFC 3986. A part that is
/// not UTF-8 once decoded is refused rather than guessed at: a wrong password would only show as
/// a camera refusing the login.
pub fn split_userinfo(url: &str) -> Result<Option<UrlLogin>, &'static str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Ok(None);
    };
    let userinfo = &rest[..at];
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| "the user name or password in the URL is not UTF-8 once percent-decoded")
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(Secret::new(decode(password)?))),
        None => (userinfo, None),
    };
    Ok(Some(UrlLogin {
        url: format!("{scheme}://{}", &rest[at + 1..]),
        user: decode(user)?,
        password,
    }))
}

/// Whether a URL holds a credential masked as `***` (a shown URL sent back as it is).
pub fn has_masked_credentials(url: &str) -> bool {
    let url = url.split('#').next().unwrap_or_default();
    url.split(PAIR_SEPARATORS).any(|pair| {
        pair.split_once('=')
            .is_some_and(|(key, value)| is_credential_key(key) && value == "***")
    })
}

/// What separates `key=value` pairs: the query's `&` and `;`, and the path's `/`, since some
/// cameras take credentials in the path (`/user=admin&password=...&channel=1&stream=0.sdp`).
const PAIR_SEPARATORS: [char; 4] = ['/', '?', '&', ';'];

/// `path?query#fragment` with the values of credential pairs, in the path or the query,
/// replaced by `***`.
fn mask_pairs(tail: &str) -> String {
    let (before, fragment) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (tail, None),
    };
    let mut out = String::with_capacity(tail.len());
    let mut pair = String::new();
    let flush = |pair: &mut String, out: &mut String| {
        match pair.split_once('=') {
            Some((key, _)) if is_credential_key(key) => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
        pair.clear();
    };
    for c in before.chars() {
        if PAIR_SEPARATORS.contains(&c) {
            flush(&mut pair, &mut out);
            out.push(c);
        } else {
            pair.push(c);
        }
    }
    flush(&mut pair, &mut out);
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
            (
                "rtsp://10.0.0.7:554/user=admin&password=s3cret&channel=1&stream=0.sdp?",
                "rtsp://10.0.0.7:554/user=***&password=***&channel=1&stream=0.sdp?",
            ),
        ] {
            assert_eq!(redact_url(input), masked);
        }
    }

    #[test]
    fn userinfo_is_split_off_and_decoded() {
        let split = |url| split_userinfo(url).unwrap();
        let login = split("rtsp://admin:p%40ss:w0rd@10.0.0.5:554/Streaming/101?x=a@b").unwrap();
        assert_eq!(login.url, "rtsp://10.0.0.5:554/Streaming/101?x=a@b");
        assert_eq!(login.user, "admin");
        assert_eq!(login.password.unwrap().expose(), "p@ss:w0rd");
        let login = split("rtsp://a@b:c@cam/x").unwrap();
        assert_eq!(
            (login.url.as_str(), login.user.as_str()),
            ("rtsp://cam/x", "a@b")
        );
        let login = split("rtsp://viewer@cam").unwrap();
        assert_eq!((login.url.as_str(), login.password), ("rtsp://cam", None));
        assert_eq!(split("rtsp://cam/live?user=a@b"), None);
        assert_eq!(split("not a url"), None);
        assert!(
            split_userinfo("rtsp://admin:%ff%fe@cam").is_err(),
            "not UTF-8"
        );
    }

    #[test]
    fn a_masked_query_credential_is_recognised() {
        assert!(has_masked_credentials("rtsp://h/s?user=***&password=***"));
        assert!(has_masked_credentials("rtsp://h/s?channel=1&pwd=***#f"));
        assert!(!has_masked_credentials("rtsp://h/s?user=admin&password=x"));
        assert!(!has_masked_credentials("rtsp://h/s?title=***"));
        assert!(has_masked_credentials(
            "rtsp://h/user=***&password=***&channel=1"
        ));
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
