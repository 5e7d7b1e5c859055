//! The small rule language of `[[rules]]`: `on = "zone:driveway:enter"`, `do = "relay:1:pulse:2s"`.
//!
//! Parsing lives with the config so that `heldar config check` rejects a rule the daemon could
//! not run; executing rules is the serial module's job.

use std::fmt;
use std::str::FromStr;

use super::units::Duration;

/// Zone events a rule can react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneEventType {
    Enter,
    Exit,
    Dwell,
    CrossAb,
    CrossBa,
}

impl ZoneEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneEventType::Enter => "enter",
            ZoneEventType::Exit => "exit",
            ZoneEventType::Dwell => "dwell",
            ZoneEventType::CrossAb => "cross_ab",
            ZoneEventType::CrossBa => "cross_ba",
        }
    }
}

impl FromStr for ZoneEventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "enter" => ZoneEventType::Enter,
            "exit" => ZoneEventType::Exit,
            "dwell" => ZoneEventType::Dwell,
            "cross_ab" => ZoneEventType::CrossAb,
            "cross_ba" => ZoneEventType::CrossBa,
            _ => {
                return Err(format!(
                    "unknown zone event {s:?} (enter, exit, dwell, cross_ab, cross_ba)"
                ));
            }
        })
    }
}

/// What fires a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// `zone:<zone>:<event>`
    Zone { zone: String, event: ZoneEventType },
    /// `alarm:<input>:on|off`, input numbered from 1 on the I/O board.
    Alarm { input: u16, active: bool },
}

impl FromStr for Trigger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORMS: &str =
            "expected zone:<zone>:<enter|exit|dwell|cross_ab|cross_ba> or alarm:<input>:<on|off>";
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["zone", zone, event] if !zone.is_empty() => Ok(Trigger::Zone {
                zone: zone.to_string(),
                event: event.parse()?,
            }),
            ["alarm", input, state] => Ok(Trigger::Alarm {
                input: parse_number(input, "alarm input")?,
                active: parse_on_off(state)?,
            }),
            _ => Err(format!("invalid trigger {s:?}: {FORMS}")),
        }
    }
}

/// What a relay does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RelayOp {
    On,
    Off,
    /// On, then off after the duration (the end time survives a restart).
    Pulse(Duration),
}

impl fmt::Display for RelayOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayOp::On => f.write_str("on"),
            RelayOp::Off => f.write_str("off"),
            RelayOp::Pulse(d) => write!(f, "pulse {d}"),
        }
    }
}

/// What a rule does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `relay:<n>:on|off|pulse:<duration>`
    Relay { relay: u16, op: RelayOp },
    /// `ptz:<camera>:goto:<preset>`
    PtzGoto { camera: String, preset: u8 },
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORMS: &str =
            "expected relay:<n>:<on|off|pulse:<duration>> or ptz:<camera>:goto:<preset>";
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["relay", n, op @ ..] => {
                let relay = parse_number(n, "relay")?;
                let op = match op {
                    ["on"] => RelayOp::On,
                    ["off"] => RelayOp::Off,
                    ["pulse", d] => RelayOp::Pulse(d.parse()?),
                    _ => return Err(format!("invalid action {s:?}: {FORMS}")),
                };
                Ok(Action::Relay { relay, op })
            }
            ["ptz", camera, "goto", preset] if !camera.is_empty() => Ok(Action::PtzGoto {
                camera: camera.to_string(),
                preset: preset
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| format!("invalid preset {preset:?}: must be 1..255"))?,
            }),
            _ => Err(format!("invalid action {s:?}: {FORMS}")),
        }
    }
}

fn parse_number(text: &str, what: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("invalid {what} number {text:?}: numbered from 1"))
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("invalid state {text:?}: on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_and_actions_parse() {
        assert_eq!(
            "zone:driveway:enter".parse::<Trigger>().unwrap(),
            Trigger::Zone {
                zone: "driveway".into(),
                event: ZoneEventType::Enter
            }
        );
        assert_eq!(
            "alarm:3:off".parse::<Trigger>().unwrap(),
            Trigger::Alarm {
                input: 3,
                active: false
            }
        );
        assert_eq!(
            "relay:1:pulse:2s".parse::<Action>().unwrap(),
            Action::Relay {
                relay: 1,
                op: RelayOp::Pulse(Duration::from_secs(2))
            }
        );
        assert_eq!(
            "ptz:gate:goto:4".parse::<Action>().unwrap(),
            Action::PtzGoto {
                camera: "gate".into(),
                preset: 4
            }
        );
        for bad in [
            "zone::enter",
            "zone:a:leave",
            "alarm:0:on",
            "alarm:1:maybe",
            "door:1:open",
        ] {
            assert!(bad.parse::<Trigger>().is_err(), "{bad}");
        }
        for bad in [
            "relay:0:on",
            "relay:1:blink",
            "relay:1:pulse:soon",
            "ptz:gate:goto:0",
            "siren",
        ] {
            assert!(bad.parse::<Action>().is_err(), "{bad}");
        }
    }
}
