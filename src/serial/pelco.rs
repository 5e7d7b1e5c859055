//! Pelco-D frames: 7 bytes, `FF addr cmd1 cmd2 data1 data2 sum`, where `sum` is the low byte of
//! the sum of bytes 2..6. Built here byte by byte from the protocol table so the tests can check
//! every command against it.

use serde::{Deserialize, Serialize};

/// Pan and tilt speeds run 0x00..=0x3F; 0x3F is the fastest non-turbo speed.
const MAX_SPEED: u8 = 0x3F;

/// A PTZ command as the API, CLI, MQTT and rules express it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PtzCommand {
    /// Speeds from -1.0 to 1.0: pan right, tilt up and zoom in are positive; 0 stops that axis.
    Move {
        #[serde(default)]
        pan: f64,
        #[serde(default)]
        tilt: f64,
        #[serde(default)]
        zoom: f64,
    },
    Stop,
    #[serde(alias = "goto_preset")]
    Goto {
        preset: u8,
    },
    #[serde(alias = "set_preset")]
    Set {
        preset: u8,
    },
    #[serde(alias = "clear_preset")]
    Clear {
        preset: u8,
    },
}

impl PtzCommand {
    /// The audit trail's name for this command sent to `camera`:
    /// `camera gate ptz {"action":"goto","preset":3}`.
    pub fn audited(&self, camera: &str) -> crate::audit::What {
        let command = serde_json::to_string(self).unwrap_or_default();
        crate::audit::What(format!("camera {camera} ptz {command}"))
    }

    /// Refuses what no camera could do, naming the field.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            PtzCommand::Move { pan, tilt, zoom } => {
                for (name, v) in [("pan", pan), ("tilt", tilt), ("zoom", zoom)] {
                    if !v.is_finite() || !(-1.0..=1.0).contains(&v) {
                        return Err(format!("{name}: must be -1.0..1.0, got {v}"));
                    }
                }
                Ok(())
            }
            PtzCommand::Stop => Ok(()),
            PtzCommand::Goto { preset }
            | PtzCommand::Set { preset }
            | PtzCommand::Clear { preset } => {
                if preset == 0 {
                    Err("preset: numbered from 1 (1..255)".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn speed(v: f64) -> u8 {
    (v.abs() * f64::from(MAX_SPEED))
        .round()
        .clamp(1.0, f64::from(MAX_SPEED)) as u8
}

/// The frame for `command` to the camera at `address`.
pub fn frame(address: u8, command: PtzCommand) -> [u8; 7] {
    let (cmd1, cmd2, data1, data2) = match command {
        PtzCommand::Stop => (0, 0, 0, 0),
        PtzCommand::Move { pan, tilt, zoom } => {
            let mut cmd2 = 0u8;
            let (mut data1, mut data2) = (0u8, 0u8);
            if pan > 0.0 {
                cmd2 |= 0x02;
                data1 = speed(pan);
            } else if pan < 0.0 {
                cmd2 |= 0x04;
                data1 = speed(pan);
            }
            if tilt > 0.0 {
                cmd2 |= 0x08;
                data2 = speed(tilt);
            } else if tilt < 0.0 {
                cmd2 |= 0x10;
                data2 = speed(tilt);
            }
            if zoom > 0.0 {
                cmd2 |= 0x20;
            } else if zoom < 0.0 {
                cmd2 |= 0x40;
            }
            (0, cmd2, data1, data2)
        }
        PtzCommand::Set { preset } => (0, 0x03, 0, preset),
        PtzCommand::Clear { preset } => (0, 0x05, 0, preset),
        PtzCommand::Goto { preset } => (0, 0x07, 0, preset),
    };
    let sum = [address, cmd1, cmd2, data1, data2]
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b));
    [0xFF, address, cmd1, cmd2, data1, data2, sum]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_the_protocol_table() {
        // (command, address, expected frame) from the Pelco-D table.
        let cases = [
            (
                PtzCommand::Stop,
                1,
                [0xFF, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01],
            ),
            (
                PtzCommand::Move {
                    pan: 1.0,
                    tilt: 0.0,
                    zoom: 0.0,
                },
                1,
                [0xFF, 0x01, 0x00, 0x02, 0x3F, 0x00, 0x42],
            ),
            (
                PtzCommand::Move {
                    pan: -0.5,
                    tilt: 0.0,
                    zoom: 0.0,
                },
                2,
                [0xFF, 0x02, 0x00, 0x04, 0x20, 0x00, 0x26],
            ),
            (
                PtzCommand::Move {
                    pan: 0.0,
                    tilt: 1.0,
                    zoom: 0.0,
                },
                1,
                [0xFF, 0x01, 0x00, 0x08, 0x00, 0x3F, 0x48],
            ),
            (
                PtzCommand::Move {
                    pan: 0.0,
                    tilt: -1.0,
                    zoom: 0.0,
                },
                1,
                [0xFF, 0x01, 0x00, 0x10, 0x00, 0x3F, 0x50],
            ),
            (
                PtzCommand::Move {
                    pan: 0.0,
                    tilt: 0.0,
                    zoom: 1.0,
                },
                1,
                [0xFF, 0x01, 0x00, 0x20, 0x00, 0x00, 0x21],
            ),
            (
                PtzCommand::Move {
                    pan: 0.0,
                    tilt: 0.0,
                    zoom: -1.0,
                },
                1,
                [0xFF, 0x01, 0x00, 0x40, 0x00, 0x00, 0x41],
            ),
            (
                PtzCommand::Move {
                    pan: 1.0,
                    tilt: 1.0,
                    zoom: 0.0,
                },
                1,
                [0xFF, 0x01, 0x00, 0x0A, 0x3F, 0x3F, 0x89],
            ),
            (
                PtzCommand::Set { preset: 3 },
                1,
                [0xFF, 0x01, 0x00, 0x03, 0x00, 0x03, 0x07],
            ),
            (
                PtzCommand::Clear { preset: 3 },
                1,
                [0xFF, 0x01, 0x00, 0x05, 0x00, 0x03, 0x09],
            ),
            (
                PtzCommand::Goto { preset: 3 },
                1,
                [0xFF, 0x01, 0x00, 0x07, 0x00, 0x03, 0x0B],
            ),
            // The checksum wraps modulo 256.
            (
                PtzCommand::Goto { preset: 200 },
                255,
                [0xFF, 0xFF, 0x00, 0x07, 0x00, 0xC8, 0xCE],
            ),
        ];
        for (command, address, expected) in cases {
            assert_eq!(
                frame(address, command),
                expected,
                "{command:?} to {address}"
            );
        }
    }

    #[test]
    fn bad_commands_name_the_field() {
        assert!(
            PtzCommand::Goto { preset: 0 }
                .check()
                .unwrap_err()
                .starts_with("preset")
        );
        let e = PtzCommand::Move {
            pan: 2.0,
            tilt: 0.0,
            zoom: 0.0,
        }
        .check()
        .unwrap_err();
        assert!(e.starts_with("pan"), "{e}");
        let e = PtzCommand::Move {
            pan: 0.0,
            tilt: f64::NAN,
            zoom: 0.0,
        }
        .check()
        .unwrap_err();
        assert!(e.starts_with("tilt"), "{e}");
    }
}
