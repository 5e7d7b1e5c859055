//! What ships besides the binary: board profiles and systemd units. (The .deb and the ARM build
//! have their own slow checks: `make ship-test`.)

use std::path::Path;
use std::process::Command;

use crate::fixtures::{heldar, heldar_bin, stderr, stdout};

const BOARDS: &[&str] = &[
    "generic-x86_64",
    "generic-arm64",
    "rpi4",
    "rpi5",
    "rk3588",
    "jetson-orin",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_board_profile_passes_config_check_built_in_and_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = std::fs::read_dir(repo().join("board-configs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), BOARDS.len(), "{files:?}");
    for board in BOARDS {
        for reference in [
            board.to_string(),
            repo()
                .join(format!("board-configs/{board}.toml"))
                .display()
                .to_string(),
        ] {
            let config = dir.path().join(format!("{board}.toml"));
            std::fs::write(
                &config,
                format!(
                    "device_id = \"box\"\nboard = \"{reference}\"\ndata_dir = \"{}\"\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let out = heldar(&["--json", "config", "check", config.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{board} ({reference}): {}",
                stderr(&out)
            );
            let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(effective["sampler"]["max_total_fps"].as_f64().unwrap() > 0.0);
            assert!(effective["limits"]["memory_max"].is_string(), "{board}");
            assert!(
                effective["serial_ports"]["usb"].is_string(),
                "{board} names its serial ports"
            );
            let decoder = effective["media"]["h264_decoder"].as_str().unwrap();
            let text = std::fs::read_to_string(repo().join(format!("board-configs/{board}.toml")))
                .unwrap();
            assert!(text.contains(decoder), "{board}: {decoder}");
            // A comment says why for every setting: no key line without a comment above it.
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let is_key = line.contains(" = ") && !line.trim_start().starts_with('#');
                if is_key && i > 0 {
                    let above = lines[..i]
                        .iter()
                        .rev()
                        .take_while(|l| !l.trim().is_empty())
                        .any(|l| l.trim_start().starts_with('#'));
                    assert!(above, "{board}: {line:?} has no comment saying why");
                }
            }
        }
    }
}

#[test]
fn serial_port_names_of_the_board_resolve_and_unknown_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("heldar.toml");
    let write = |device: &str| {
        std::fs::write(
            &config,
            format!(
                "board = \"rpi4\"\ndata_dir = \"{}\"\n[[serial]]\nname = \"io\"\n\
                 device = \"{device}\"\nprotocol = \"modbus-rtu\"\nunit = 1\ninputs = 4\n",
                dir.path().display()
            ),
        )
        .unwrap();
    };
    write("rs485");
    let out = heldar(&["--json", "config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["serial"][0]["device"], "/dev/ttyAMA0");

    write("rs232");
    let out = heldar(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("serial[0].device") && err.contains("rs232") && err.contains("rs485, usb"),
        "{err}"
    );
}

#[test]
fn the_systemd_drop_in_carries_the_board_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("heldar.toml");
    std::fs::write(
        &config,
        format!(
            "board = \"rpi4\"\ndata_dir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = heldar(&["config", "systemd", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("[Service]\nMemoryMax=805306368\n"), "{text}");
    let quiet = heldar(&["config", "check", "--quiet", config.to_str().unwrap()]);
    assert!(quiet.status.success());
    assert!(quiet.stdout.is_empty());
}

/// The units as installed, with `/usr/bin/heldar` pointing at the binary under test so
/// `systemd-analyze verify` can check the command lines.
fn units_for_verify(dir: &Path) -> Vec<std::path::PathBuf> {
    ["heldar.service", "heldar-worker@.service"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(repo().join("systemd").join(name))
                .unwrap()
                .replace("/usr/bin/heldar", &heldar_bin().display().to_string());
            // A template is verified through an instance.
            let path = dir.join(name.replace("@.", "@demo."));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn systemd_units_verify_and_the_service_exposure_is_at_most_three() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_verify(dir.path());
    std::fs::copy(
        dir.path().join("heldar-worker@demo.service"),
        dir.path().join("heldar-worker@.service"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (apt install systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
    for unit in &units {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let text = stdout(&out);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in: {text}{}", stderr(&out)));
        assert!(level <= 3.0, "{}: exposure {level}", unit.display());
        eprintln!("{}: exposure {level}", unit.display());
    }
    let service = std::fs::read_to_string(repo().join("systemd/heldar.service")).unwrap();
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "StartLimitBurst=",
        "User=heldar",
        "SupplementaryGroups=dialout video",
        "StateDirectory=heldar",
        "RuntimeDirectory=heldar",
        "LogsDirectory=heldar",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=4096",
    ] {
        assert!(
            service.contains(directive),
            "heldar.service lacks {directive}"
        );
    }
}
