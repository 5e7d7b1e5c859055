//! Reading `heldar.toml`: parse, merge over the board profile, deserialize, resolve paths and
//! secrets, validate. Nothing here has side effects beyond reading files.

use std::path::{Path, PathBuf};

use super::model::Config;
use super::secret::Secret;
use super::{ConfigError, Problem, validate};

/// Board profiles compiled into the binary, so a box always has the profile its binary was tested
/// with. A file `board-configs/<name>.toml` next to `heldar.toml` takes precedence.
pub const BUILTIN_BOARDS: &[(&str, &str)] = &[
    (
        "generic-x86_64",
        include_str!("../../board-configs/generic-x86_64.toml"),
    ),
    (
        "generic-arm64",
        include_str!("../../board-configs/generic-arm64.toml"),
    ),
    ("rpi4", include_str!("../../board-configs/rpi4.toml")),
    ("rpi5", include_str!("../../board-configs/rpi5.toml")),
    ("rk3588", include_str!("../../board-configs/rk3588.toml")),
    (
        "jetson-orin",
        include_str!("../../board-configs/jetson-orin.toml"),
    ),
];

/// Top-level keys that describe one installation, not a kind of board.
const NOT_IN_BOARD: &[&str] = &["device_id", "board", "cameras", "tasks", "zones", "rules"];

/// Where the effective config came from, for `heldar config check` to say.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// `None` when the config names no board; otherwise a path or `built-in:<name>`.
    pub board_source: Option<String>,
    /// What is accepted but better done otherwise (a password in a camera URL): `heldar config
    /// check` prints these and the daemon logs them at start.
    pub warnings: Vec<Problem>,
}

/// Loads and validates a config file with its board profile.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", path.display())))?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&text, &path.display().to_string(), &base_dir)
}

/// Loads config text; `origin` names it in messages and relative paths resolve against `base_dir`.
pub fn load_str(text: &str, origin: &str, base_dir: &Path) -> Result<Loaded, ConfigError> {
    let main = parse_table(text, origin)?;
    let (merged, board_source) = match main.get("board") {
        None => (main, None),
        Some(toml::Value::String(name)) => {
            let (board_text, board_origin) = find_board(name, base_dir)?;
            let board = parse_table(&board_text, &board_origin)?;
            check_board(&board, &board_origin)?;
            let mut merged = board;
            merge(&mut merged, main);
            (merged, Some(board_origin))
        }
        Some(other) => {
            return Err(ConfigError::one(
                "board",
                format!("must be a string, got {}", other.type_str()),
            ));
        }
    };
    let mut config = deserialize(merged)?;
    resolve_paths(&mut config, base_dir);
    let mut warnings = Vec::new();
    let mut problems = take_url_logins(&mut config, &mut warnings);
    problems.extend(read_secrets(&mut config));
    problems.extend(validate::validate(&config));
    if problems.is_empty() {
        Ok(Loaded {
            config,
            board_source,
            warnings,
        })
    } else {
        Err(ConfigError { problems })
    }
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        let place = match line {
            Some(l) => format!("{origin} line {l}"),
            None => origin.to_string(),
        };
        ConfigError::one("", format!("{place}: {}", e.message().trim()))
    })
}

/// Finds a board profile: a path, a file in `<config dir>/board-configs/`, or a built-in one.
fn find_board(name: &str, base_dir: &Path) -> Result<(String, String), ConfigError> {
    let looks_like_path = name.contains('/') || name.ends_with(".toml");
    let candidate = if looks_like_path {
        base_dir.join(name)
    } else {
        base_dir.join("board-configs").join(format!("{name}.toml"))
    };
    match std::fs::read_to_string(&candidate) {
        Ok(text) => return Ok((text, candidate.display().to_string())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound || looks_like_path => {
            return Err(ConfigError::one(
                "board",
                format!("cannot read {}: {e}", candidate.display()),
            ));
        }
        Err(_) => {}
    }
    match BUILTIN_BOARDS.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => Ok((text.to_string(), format!("built-in:{n}"))),
        None => {
            let known: Vec<&str> = BUILTIN_BOARDS.iter().map(|(n, _)| *n).collect();
            Err(ConfigError::one(
                "board",
                format!(
                    "no board profile {name:?}: not in {} and not built in (built-in: {})",
                    candidate.parent().unwrap_or(base_dir).display(),
                    known.join(", ")
                ),
            ))
        }
    }
}

/// A board profile is a partial `heldar.toml` without installation-specific keys; it must also be
/// valid on its own, so a broken profile is reported against its own file.
fn check_board(board: &toml::Table, origin: &str) -> Result<(), ConfigError> {
    let mut problems: Vec<Problem> = board
        .keys()
        .filter(|k| NOT_IN_BOARD.contains(&k.as_str()))
        .map(|k| Problem {
            path: k.clone(),
            message: "not allowed in a board profile (set it in heldar.toml)".into(),
        })
        .collect();
    if problems.is_empty()
        && let Err(e) = deserialize(board.clone())
    {
        problems = e.problems;
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &mut problems {
        p.path = if p.path.is_empty() {
            origin.to_string()
        } else {
            format!("{origin}: {}", p.path)
        };
    }
    Err(ConfigError { problems })
}

/// Merges `over` into `base`: tables merge key by key, anything else (arrays included) replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn deserialize(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(table).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_string();
        // serde_path_to_error's path already ends with the unknown key; serde's message repeats it
        // and lists the valid keys, which stay as the hint.
        let message = match message.strip_prefix("unknown field `") {
            Some(rest) => {
                let hint = rest.split_once('`').map(|(_, h)| h).unwrap_or("");
                let hint = hint.trim_start_matches(',').trim().replace('`', "");
                format!(
                    "unknown key (expected {})",
                    hint.strip_prefix("expected ").unwrap_or(&hint)
                )
            }
            None => message,
        };
        let problem = Problem {
            path: if path == "." { String::new() } else { path },
            message,
        };
        ConfigError {
            problems: vec![problem],
        }
    })
}

/// Relative paths are relative to the config file, not to whatever directory the daemon started in.
fn resolve_paths(config: &mut Config, base_dir: &Path) {
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base_dir.join(&*p);
        }
    };
    resolve(&mut config.data_dir);
    resolve(&mut config.control.socket);
    if let Some(socket) = &mut config.http.socket {
        resolve(socket);
    }
    // A bare name is a port of the board profile; validation names the ones it has when not.
    for s in &mut config.serial {
        let name = s.device.to_string_lossy().into_owned();
        if !name.contains('/')
            && let Some(device) = config.serial_ports.get(&name)
        {
            s.device = device.clone();
        }
    }
    if let Some(m) = &mut config.mqtt {
        for p in [
            &mut m.password_file,
            &mut m.ca_file,
            &mut m.client_cert_file,
            &mut m.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
    }
    for cam in &mut config.cameras {
        if let Some(p) = &mut cam.password_file {
            resolve(p);
        }
    }
}

/// Splits the user-info off every camera URL; its password serves like one from `password_file`,
/// with a warning, because the file readable by whoever may read `heldar.toml` now holds it.
fn take_url_logins(config: &mut Config, warnings: &mut Vec<Problem>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, cam) in config.cameras.iter_mut().enumerate() {
        let at = |p: &str| format!("cameras[{i}].{p}");
        match cam.take_url_logins() {
            Err(p) => problems.push(Problem {
                path: at(&p.path),
                message: p.message,
            }),
            Ok(None) => {}
            Ok(Some(_)) if cam.password_file.is_some() => problems.push(Problem {
                path: at("url"),
                message: "has a password and password_file is set too: keep one".into(),
            }),
            Ok(Some(password)) => {
                cam.password = Some(password);
                warnings.push(Problem {
                    path: at("url"),
                    message: "holds the camera's password: a password_file (mode 0600) keeps it \
                              out of the config file"
                        .into(),
                });
            }
        }
    }
    problems
}

/// Reads every `*_file` key now, so a missing or unreadable file is a config error at start-up
/// rather than a failure hours later when the broker reconnects.
fn read_secrets(config: &mut Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut read = |key: String, path: &Path| -> Option<Secret> {
        match Secret::read(path) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(Problem {
                    path: key,
                    message: format!("cannot read {}: {e}", path.display()),
                });
                None
            }
        }
    };
    if let Some(m) = &mut config.mqtt {
        if let Some(p) = &m.password_file {
            m.password = read("mqtt.password_file".into(), p);
        }
        if let Some(p) = &m.client_key_file {
            m.client_key = read("mqtt.client_key_file".into(), p);
        }
        for (key, path) in [
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.client_cert_file", &m.client_cert_file),
        ] {
            if let Some(p) = path {
                read(key.into(), p);
            }
        }
    }
    for (i, cam) in config.cameras.iter_mut().enumerate() {
        if let Some(p) = &cam.password_file {
            cam.password = read(format!("cameras[{i}].password_file"), p);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_profile_file_is_built_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("board-configs");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = BUILTIN_BOARDS.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
    }

    #[test]
    fn tables_merge_and_arrays_replace() {
        let mut base: toml::Table = "a = 1\n[t]\nx = 1\ny = 2\n[[s]]\nn = 1".parse().unwrap();
        let over: toml::Table = "[t]\ny = 3\n[[s]]\nn = 2".parse().unwrap();
        merge(&mut base, over);
        let expected: toml::Table = "a = 1\n[t]\nx = 1\ny = 3\n[[s]]\nn = 2".parse().unwrap();
        assert_eq!(base, expected);
    }
}
