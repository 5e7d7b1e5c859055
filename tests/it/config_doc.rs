//! `docs/config.md` against the config model: every key serde accepts has a row, every row is
//! a key serde accepts, and every default the page states is the default the binary applies.
//!
//! The keys come from serde itself: a probe key in a section is refused with the list of the
//! section's fields (`deny_unknown_fields`), so nothing here repeats the model by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use heldar_edge::config::model::Config;
use serde::Deserialize;

const PROBE: &str = "__probe";

/// How a section nests: a table (`[http]`) or an array of tables (`[[cameras]]`).
#[derive(Clone, Copy)]
enum Nest {
    Table,
    Array,
}

/// A config holding a probe key at `path`.
fn probe_at(path: &[(String, Nest)]) -> toml::Value {
    let mut value = toml::Value::Table(toml::Table::from_iter([(
        PROBE.to_string(),
        toml::Value::Integer(1),
    )]));
    for (name, nest) in path.iter().rev() {
        let inner = match nest {
            Nest::Table => value,
            Nest::Array => toml::Value::Array(vec![value]),
        };
        value = toml::Value::Table(toml::Table::from_iter([(name.clone(), inner)]));
    }
    value
}

/// The fields serde expects at `path`, or `None` when no struct lives there.
fn fields_at(path: &[(String, Nest)]) -> Option<Vec<String>> {
    let message = Config::deserialize(probe_at(path)).err()?.to_string();
    let at = message.find(&format!("unknown field `{PROBE}`"))?;
    // The line of serde's message; toml adds the key path (in `http`) on the next one.
    let listed = message[at + PROBE.len() + "unknown field ``".len()..]
        .lines()
        .next()
        .unwrap_or_default();
    Some(
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every key of the model, dotted, with `[]` after arrays of tables (`cameras[].ptz.port`).
fn model_keys(path: &mut Vec<(String, Nest)>, prefix: &str, out: &mut BTreeSet<String>) {
    for field in fields_at(path).expect("a struct at this path") {
        let mut found = false;
        for (nest, mark) in [(Nest::Table, ""), (Nest::Array, "[]")] {
            path.push((field.clone(), nest));
            if fields_at(path).is_some() {
                model_keys(path, &format!("{prefix}{field}{mark}."), out);
                found = true;
            }
            path.pop();
            if found {
                break;
            }
        }
        if !found {
            out.insert(format!("{prefix}{field}"));
        }
    }
}

struct Row {
    line: usize,
    default: String,
}

/// The rows of the page's key tables: key (without backticks) → its default cell.
fn documented() -> BTreeMap<String, Row> {
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
    let text = std::fs::read_to_string(&page).expect("docs/config.md");
    let mut rows = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = split_cells(rest);
        let key = cells[0].trim().trim_end_matches('`').to_string();
        let default = cells.get(1).map_or("", |c| c.trim()).to_string();
        let previous = rows.insert(
            key.clone(),
            Row {
                line: n + 1,
                default,
            },
        );
        assert!(previous.is_none(), "docs/config.md:{}: {key} twice", n + 1);
    }
    rows
}

/// Cells of a table row, honouring `\|` inside a cell.
fn split_cells(row: &str) -> Vec<&str> {
    let mut cells = Vec::new();
    let mut start = 0;
    let bytes = row.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\') {
            cells.push(&row[start..i]);
            start = i + 1;
        }
    }
    cells.push(&row[start..]);
    cells
}

/// A map key documented as `serial_ports.<name>` stands for the map `serial_ports`.
fn as_model_key(documented: &str) -> &str {
    documented
        .find(".<")
        .map_or(documented, |at| &documented[..at])
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let mut keys = BTreeSet::new();
    model_keys(&mut Vec::new(), "", &mut keys);
    assert!(
        keys.contains("cameras[].ptz.port") && keys.contains("mqtt.url"),
        "the probe found no nested keys: {keys:?}"
    );
    let rows = documented();
    let named: BTreeSet<&str> = rows.keys().map(|k| as_model_key(k)).collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !named.contains(k.as_str()))
        .collect();
    let unknown: Vec<String> = rows
        .iter()
        .filter(|(k, _)| !keys.contains(as_model_key(k)))
        .map(|(k, r)| format!("docs/config.md:{}: {k}", r.line))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "keys without a row in docs/config.md: {missing:?}\nrows for keys the config does not have: {unknown:?}"
    );
}

/// One of everything, with only what has no default.
const MINIMAL: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"

[[cameras]]
id = "cam"
url = "rtsp://127.0.0.1:8554/cam"
ptz = { port = "ptz", address = 1 }

[[tasks]]
camera = "cam"
task_type = "motion"

[[zones]]
camera = "cam"
name = "door"
kind = "region"
points = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]

[[serial]]
name = "io"
device = "/dev/null"
protocol = "modbus-rtu"
rs485 = {}

[[rules]]
on = "zone:door:enter"
do = "relay:1:on"
"#;

/// The value at a documented key in the serialized config (first element of arrays).
fn lookup<'a>(config: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    let mut at = config;
    for part in key.split('.') {
        let (name, array) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        at = at.get(name)?;
        if array {
            at = at.get(0)?;
        }
    }
    Some(at)
}

#[test]
fn every_documented_default_is_the_default_the_binary_applies() {
    let config: Config = toml::from_str(MINIMAL).expect("the minimal config parses");
    let effective = toml::Value::try_from(&config).unwrap();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (key, row) in documented() {
        let cell = row.default.as_str();
        let stated = match cell {
            "required" => {
                if lookup(&effective, &key).is_none() {
                    wrong.push(format!("{key}: documented as required, yet absent"));
                }
                continue;
            }
            "unset" => {
                if let Some(v) = lookup(&effective, &key) {
                    wrong.push(format!(
                        "{key}: documented as unset, the binary applies {v}"
                    ));
                }
                continue;
            }
            c if c.starts_with('`') && c.ends_with('`') && c.len() > 1 => &c[1..c.len() - 1],
            _ => continue,
        };
        let stated: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {stated}")) {
            Ok(mut t) => t.remove("v").unwrap(),
            Err(e) => {
                wrong.push(format!("{key}: default {cell} is not a TOML value ({e})"));
                continue;
            }
        };
        checked += 1;
        match lookup(&effective, &key) {
            Some(applied) if *applied == stated => {}
            Some(applied) => wrong.push(format!(
                "docs/config.md:{}: {key}: documented default {stated}, the binary applies {applied}",
                row.line
            )),
            None => wrong.push(format!(
                "docs/config.md:{}: {key}: documented default {stated}, the binary sets none",
                row.line
            )),
        }
    }
    assert!(checked > 40, "only {checked} defaults were checked");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
