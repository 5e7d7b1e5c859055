//! House rules checked on the source text, so a change that breaks them fails here rather than in
//! review: every table is queried only by the module that owns it, no module imports one above
//! it, and nothing in the repository points at files outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who owns each table: the only module whose SQL may name it (`docs/architecture.md`).
const TABLE_OWNERS: &[(&str, &str)] = &[
    ("alarm_inputs", "serial"),
    ("audit", "audit"),
    ("audit_retention", "audit"),
    ("boots", "store"),
    ("camera_health", "media"),
    ("command_counters", "uplink"),
    ("cameras", "registry"),
    ("consumer_cursors", "outbox"),
    ("counters", "outbox"),
    ("database_identity", "store"),
    ("detection_batches", "perception"),
    ("detections", "perception"),
    ("gaps", "media"),
    ("leases", "perception"),
    ("mqtt_retained", "uplink"),
    ("outbox", "outbox"),
    ("relay_pulses", "serial"),
    ("rule_actions", "serial"),
    ("schema_migrations", "store"),
    ("segments", "media"),
    ("settings", "registry"),
    ("tasks", "registry"),
    ("tokens", "auth"),
    ("workers", "perception"),
    ("zone_events", "zones"),
    ("zone_occupancy", "zones"),
    ("zone_state", "zones"),
    ("zones", "registry"),
];

/// The layers of the crate, lowest first: a module may import only modules of a lower layer.
/// The middle follows the data: frames from `media` to `perception`, whose detections the zone
/// engine reads, whose events the serial rules read. `worker` is a client of the HTTP contract
/// and imports nothing of the crate.
const LAYERS: &[&[&str]] = &[
    &["config", "metrics", "provenance", "recent_logs", "worker"],
    &["store"],
    &["auth", "audit", "outbox", "registry"],
    &["media"],
    &["perception"],
    &["zones"],
    &["serial"],
    &["uplink", "metadata_retention"],
    &["api"],
    &["daemon"],
    &["cli"],
];

const SQL_KEYWORDS: &[&str] = &["FROM", "INTO", "UPDATE", "JOIN", "TABLE"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Source files by the module they belong to (`src/<module>.rs` or `src/<module>/...`).
fn sources_by_module() -> BTreeMap<String, Vec<PathBuf>> {
    let src = root().join("src");
    let mut files = Vec::new();
    files_under(&src, "rs", &mut files);
    let mut by_module: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in files {
        let first = file
            .strip_prefix(&src)
            .unwrap()
            .components()
            .next()
            .unwrap();
        let module = first.as_os_str().to_str().unwrap().trim_end_matches(".rs");
        if module != "lib" && module != "main" {
            by_module.entry(module.to_string()).or_default().push(file);
        }
    }
    by_module
}

/// The lines of a file that are code: comments are prose and may name anything.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(n, l)| (n + 1, l.to_string()))
        .collect()
}

fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn every_table_is_queried_only_by_its_owner() {
    let owners: BTreeMap<&str, &str> = TABLE_OWNERS.iter().copied().collect();

    // A new table must be given an owner here before anyone can query it.
    let mut migrations = Vec::new();
    files_under(&root().join("migrations"), "sql", &mut migrations);
    for file in migrations {
        let text = std::fs::read_to_string(&file).unwrap().to_uppercase();
        let tokens = words(&text);
        for pair in tokens.windows(2) {
            if pair[0] == "TABLE" && pair[1] != "IF" {
                let table = pair[1].to_lowercase();
                assert!(
                    owners.contains_key(table.as_str()),
                    "{}: table {table} has no owner in TABLE_OWNERS",
                    file.display()
                );
            }
        }
    }

    let mut trespasses = Vec::new();
    for (module, files) in sources_by_module() {
        for file in files {
            for (n, line) in code_lines(&file) {
                let tokens = words(&line);
                for pair in tokens.windows(2) {
                    if !SQL_KEYWORDS.contains(&pair[0]) {
                        continue;
                    }
                    if let Some(owner) = owners.get(pair[1])
                        && *owner != module
                    {
                        trespasses.push(format!(
                            "{}:{n}: {module} queries {} (owned by {owner})",
                            file.strip_prefix(root()).unwrap().display(),
                            pair[1]
                        ));
                    }
                }
            }
        }
    }
    assert!(
        trespasses.is_empty(),
        "SQL on another module's tables; call a function of the owner instead:\n{}",
        trespasses.join("\n")
    );
}

/// The modules a file refers to as `crate::<module>`, including `use crate::{a, b::c}`.
fn crate_references(line: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn no_module_imports_one_above_it() {
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(n, names)| names.iter().map(move |m| (*m, n)))
        .collect();
    let modules = sources_by_module();
    for module in modules.keys() {
        assert!(
            layer_of.contains_key(module.as_str()),
            "module {module} is in no layer of LAYERS"
        );
    }
    let mut upward = Vec::new();
    for (module, files) in &modules {
        let mine = layer_of[module.as_str()];
        for file in files {
            // Multi-line `use crate::{...}` groups: read the file as one line per statement.
            let text = code_lines(file)
                .into_iter()
                .map(|(_, l)| l)
                .collect::<Vec<_>>()
                .join(" ");
            for other in crate_references(&text) {
                let Some(&theirs) = layer_of.get(other.as_str()) else {
                    continue;
                };
                let allowed = other == *module || (module != "worker" && theirs < mine);
                if !allowed {
                    upward.push(format!(
                        "{}: {module} (layer {mine}) uses crate::{other} (layer {theirs})",
                        file.strip_prefix(root()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up or sideways (move the shared type below both):\n{}",
        upward.join("\n")
    );
}

#[test]
fn crate_references_reads_grouped_imports() {
    let found = crate_references("use crate::{a::B, c::{d, e}, f}; x(crate::g::h)");
    assert_eq!(
        found,
        ["a", "c", "f", "g"].map(String::from).into_iter().collect()
    );
}

/// Text files a user receives with the repository.
fn repository_text_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![
        root.join("README.md"),
        root.join("Cargo.toml"),
        root.join("Makefile"),
        root.join("heldar.example.toml"),
        root.join(".ci/run"),
    ];
    for (dir, ext) in [
        ("src", "rs"),
        ("docs", "md"),
        ("tests", "rs"),
        ("benches", "rs"),
        ("migrations", "sql"),
        ("board-configs", "toml"),
        ("systemd", "service"),
        ("cross", "sh"),
    ] {
        if root.join(dir).exists() {
            files_under(&root.join(dir), ext, &mut files);
        }
    }
    files
}

#[test]
fn nothing_points_outside_the_repository() {
    // Spelled in two parts so this file does not match itself.
    let outside = [concat!("..", "/shared"), concat!("shared/", "spec")];
    let mut pointers = Vec::new();
    for file in repository_text_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o)) {
                pointers.push(format!(
                    "{}:{}: {}",
                    file.strip_prefix(root()).unwrap().display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        pointers.is_empty(),
        "references to files outside the repository (point into docs/ instead):\n{}",
        pointers.join("\n")
    );
}

#[test]
fn links_between_the_docs_resolve() {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    files_under(&root.join("docs"), "md", &mut pages);
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let Some(end) = rest.find(')') else { break };
                let target = &rest[..end];
                rest = &rest[end..];
                if target.contains("://")
                    || target.starts_with('#')
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let file = target.split('#').next().unwrap();
                if !page.parent().unwrap().join(file).exists() {
                    broken.push(format!(
                        "{}:{}: {target}",
                        page.strip_prefix(&root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
