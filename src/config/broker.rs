//! Where `mqtt.url` points. The one reading of the URL, used by validation (so `heldar config
//! check` refuses what the uplink could not connect to) and by the uplink itself.

use std::fmt;

use super::model::MqttConfig;

/// The broker of `mqtt.url`.
#[derive(Clone, Debug, PartialEq)]
pub struct Broker {
    /// `mqtts://`: TLS to the broker.
    pub tls: bool,
    /// A name or an address; an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Broker {
    /// `host:port`, with an IPv6 address in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl MqttConfig {
    /// `mqtt.url` read as `mqtt://` or `mqtts://`, then `host`, `host:port`, `[v6]` or
    /// `[v6]:port`, the port defaulting to 1883 (8883 for `mqtts`). The error says what is
    /// wrong; the caller names the key.
    pub fn broker(&self) -> Result<Broker, String> {
        // Looked for first, so no error below repeats a password, with or without a scheme.
        if self.url.contains('@') {
            return Err(
                "credentials in the URL are not accepted: use mqtt.username and mqtt.password_file"
                    .into(),
            );
        }
        let (tls, rest) = match self.url.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => {
                return Err(format!(
                    "{:?} must look like mqtt://host:1883 or mqtts://host:8883",
                    self.url
                ));
            }
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = host_port(authority, default_port)?;
        Ok(Broker {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

fn host_port(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{authority:?} has no closing ']'"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{after:?} after an IPv6 address is not :port"))?,
                ),
            };
            (host, port)
        }
        None if authority.matches(':').count() > 1 => {
            return Err(format!(
                "an IPv6 address needs brackets, as in [{authority}]:{default_port}"
            ));
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse().map_err(|_| format!("{p:?} is not a port"))?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(url: &str) -> Result<Broker, String> {
        let config: MqttConfig = toml::from_str(&format!("url = {url:?}")).unwrap();
        config.broker()
    }

    #[test]
    fn hosts_ports_and_their_defaults() {
        let b = |url: &str| broker(url).map(|b| (b.tls, b.to_string())).unwrap();
        assert_eq!(b("mqtt://[::1]"), (false, "[::1]:1883".into()));
        assert_eq!(b("mqtt://[fd00::2]:1884"), (false, "[fd00::2]:1884".into()));
        assert_eq!(b("mqtts://broker.lan"), (true, "broker.lan:8883".into()));
        assert_eq!(b("mqtt://10.0.0.5:1885/"), (false, "10.0.0.5:1885".into()));
    }

    #[test]
    fn a_malformed_url_says_what_is_wrong() {
        let error = |url: &str| broker(url).unwrap_err();
        assert!(error("mqtt://[::1").contains("no closing"));
        assert!(error("mqtt://[::1]1883").contains("not :port"));
        assert_eq!(error("mqtt://broker:mqtt"), "\"mqtt\" is not a port");
        assert_eq!(error("mqtt://:1883"), "no host");
        assert_eq!(
            error("mqtts://fd00::2"),
            "an IPv6 address needs brackets, as in [fd00::2]:8883"
        );
        assert!(error("mqtt://u:p@broker").contains("credentials"));
        assert!(error("u:secret@broker").contains("credentials"));
        assert_eq!(
            error("http://broker"),
            "\"http://broker\" must look like mqtt://host:1883 or mqtts://host:8883"
        );
    }
}
