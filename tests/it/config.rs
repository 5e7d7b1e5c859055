//! `heldar config check`: bad files fail with exit 2 and the exact error; good files round-trip.

use std::path::Path;

use heldar_edge::config;

use crate::fixtures::{heldar, stderr, stdout};

/// A minimal valid camera, to build bad inputs around.
const CAM: &str = "[[cameras]]\nid = \"gate\"\nurl = \"rtsp://10.0.0.2/main\"\n";

/// Writes `text` as heldar.toml in a fresh dir and runs `heldar config check` on it.
fn check(text: &str) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heldar.toml");
    std::fs::write(&path, text).unwrap();
    let out = heldar(&["config", "check", path.to_str().unwrap()]);
    (dir, out)
}

#[test]
fn bad_configs_name_the_key_and_exit_2() {
    let cases: Vec<(String, &str)> = vec![
        (
            "colour = \"red\"".into(),
            "error: colour: unknown key (expected one of device_id, data_dir, board, log_level, http, control, mqtt, outbox, database, retention, recording, media, sampler, workers, limits, cameras, tasks, zones, serial, serial_ports, rules)",
        ),
        (
            format!("{CAM}fps = 5"),
            "error: cameras[0].fps: unknown key (expected one of id, name, url, sub_url, vendor, address, port, channel, username, password_file, transport, enabled, record, detect, segment_seconds, retention, priority, ptz)",
        ),
        (
            "[[serial]]\nname = \"ptz\"\ndevice = \"/dev/ttyS1\"\nprotocol = \"pelco-d\"\n\
             rs485 = { rts_before_send = \"2ms\", turnaround = \"2s\" }"
                .into(),
            "error: serial[0].rs485.turnaround: must be at most 1s, got 2s\nerror: serial[0].rs485.kernel_rts: RTS delays need kernel_rts = true (the kernel applies them)",
        ),
        (
            "[outbox]\nmax_age = \"7x\"".into(),
            "error: outbox.max_age: invalid duration \"7x\": use a number and a unit, like 90s, 15m, 7d",
        ),
        (
            "[outbox]\nmax_age = 90".into(),
            "error: outbox.max_age: invalid type: integer `90`, expected a duration such as \"90s\", \"15m\" or \"7d\"",
        ),
        (
            "[retention]\nmetadata_max_age = \"10m\"\naudit_max_age = \"2h\"\nmetadata_max_bytes = \"100KiB\"".into(),
            "error: retention.metadata_max_age: must be at least 1h, got 10m\nerror: retention.audit_max_age: must be at least 1d, got 2h\nerror: retention.metadata_max_bytes: must be at least 1MiB, got 100KiB",
        ),
        (
            "[database]\ncommit_linger = \"5s\"".into(),
            "error: database.commit_linger: must be at most 1s (every answer waits this long), got 5s",
        ),
        (
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nlabels_per_camera = 0".into(),
            "error: mqtt.labels_per_camera: must be 1..1000, got 0",
        ),
        (
            "[recording]\nmax_bytes = \"12 parsecs\"".into(),
            "error: recording.max_bytes: invalid size \"12 parsecs\": use a number and a unit, like 512MiB or 20GiB",
        ),
        (
            format!("{CAM}{CAM}"),
            "error: cameras[1].id: duplicate camera id \"gate\" (also at cameras[0].id)",
        ),
        (
            format!(
                "{CAM}[[cameras]]\nid = \"yard\"\nurl = \"rtsp://10.0.0.3/\"\nsegment_seconds = 1"
            ),
            "error: cameras[1].segment_seconds: must be 2..3600, got 1",
        ),
        (
            format!(
                "{CAM}[[zones]]\ncamera = \"garage\"\nname = \"z\"\nkind = \"region\"\npoints = [[0,0],[1,0],[1,1]]"
            ),
            "error: zones[0].camera: no camera \"garage\" is declared",
        ),
        (
            format!(
                "{CAM}[[zones]]\ncamera = \"gate\"\nname = \"z\"\nkind = \"region\"\npoints = [[0,0],[1,0]]"
            ),
            "error: zones[0].points: a region needs 3..512 points, got 2",
        ),
        (
            format!(
                "{CAM}[[zones]]\ncamera = \"gate\"\nname = \"z\"\nkind = \"region\"\npoints = [[0,0],[1.5,0],[1,1]]"
            ),
            "error: zones[0].points[1][0]: must be within 0..1, got 1.5",
        ),
        (
            format!(
                "{CAM}[[zones]]\ncamera = \"gate\"\nname = \"l\"\nkind = \"line\"\npoints = [[0,0],[1,0],[1,1]]"
            ),
            "error: zones[0].points: a line needs exactly 2 points, got 3",
        ),
        (
            "board = \"no-such-board\"".into(),
            "error: board: no board profile \"no-such-board\": not in DIR/board-configs and not built in (built-in: generic-x86_64, generic-arm64, rpi4, rpi5, rk3588, jetson-orin)",
        ),
        (
            "[mqtt]\nurl = \"mqtt://127.0.0.1\"\nusername = \"edge\"\npassword_file = \"missing.txt\"".into(),
            "error: mqtt.password_file: cannot read DIR/missing.txt: No such file or directory (os error 2)",
        ),
        (
            format!("{CAM}username = \"admin\"\npassword_file = \".\""),
            "error: cameras[0].password_file: cannot read DIR/.: Is a directory (os error 21)",
        ),
        (
            "[[cameras]]\nid = \"gate\"\nusername = \"viewer\"\nurl = \"rtsp://admin:pw@10.0.0.2/\"".into(),
            "error: cameras[0].url: the user name in the URL differs from username \"viewer\": give one",
        ),
        (
            "[[cameras]]\nid = \"gate\"\nvendor = \"acme\"\naddress = \"10.0.0.2\"".into(),
            "error: cameras[0].vendor: unknown variant `acme`, expected one of `hikvision`, `dahua`, `axis`, `reolink`, `amcrest`, `onvif`",
        ),
        (
            "[[cameras]]\nid = \"gate\"".into(),
            "error: cameras[0].url: a camera needs url, or vendor and address",
        ),
        (
            format!("{CAM}record = \"yes\""),
            "error: cameras[0].record: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[http]\nlisten = \"localhost\"".into(),
            "error: http.listen: invalid socket address syntax",
        ),
        (
            "[mqtt]\nurl = \"http://broker\"".into(),
            "error: mqtt.url: \"http://broker\" must look like mqtt://host:1883 or mqtts://host:8883",
        ),
        (
            "[mqtt]\nurl = \"mqtt://broker:x\"".into(),
            "error: mqtt.url: \"x\" is not a port",
        ),
        (
            format!("{CAM}[[tasks]]\ncamera = \"gate\"\ntask_type = \"motion\"\nfps = 60"),
            "error: tasks[0].fps: must be 0.1..30, got 60",
        ),
        (
            "device_id = \"nvr 01\"".into(),
            "error: device_id: \"nvr 01\" is not a valid id: use 1..64 letters, digits, '-' or '_'",
        ),
        (
            "[[rules]]\non = \"zone:driveway:arrive\"\ndo = \"relay:1:on\"".into(),
            "error: rules[0].on: unknown zone event \"arrive\" (enter, exit, dwell, cross_ab, cross_ba)\nerror: rules[0].do: relay actions need a modbus-rtu [[serial]] board",
        ),
        (
            "device_id = \"a\"\n[outbox\n".into(),
            "error: DIR/heldar.toml line 2: unclosed table, expected `]`",
        ),
    ];
    assert!(cases.len() >= 15);
    for (text, expected) in cases {
        let (dir, out) = check(&text);
        let expected = expected.replace("DIR", &dir.path().display().to_string());
        assert_eq!(
            out.status.code(),
            Some(2),
            "config:\n{text}\nstderr:\n{}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).trim_end(), expected, "config:\n{text}");
        assert!(
            stdout(&out).is_empty(),
            "nothing on stdout for a bad config"
        );
    }
}

#[test]
fn board_profile_problems_name_the_profile_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("board-configs")).unwrap();
    std::fs::write(
        dir.path().join("board-configs/tiny.toml"),
        "[sampler]\nmax_total_fps = \"fast\"\n[[cameras]]\nid = \"x\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("heldar.toml"), "board = \"tiny\"\n").unwrap();
    let out = heldar(&[
        "config",
        "check",
        dir.path().join("heldar.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let board = dir
        .path()
        .join("board-configs/tiny.toml")
        .display()
        .to_string();
    assert_eq!(
        stderr(&out).trim_end(),
        format!("error: {board}: cameras: not allowed in a board profile (set it in heldar.toml)")
    );
}

#[test]
fn heldar_toml_overrides_the_board_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heldar.toml");
    std::fs::write(
        &path,
        "board = \"generic-x86_64\"\n[media]\nh264_decoder = \"v4l2h264dec\"\n",
    )
    .unwrap();
    let loaded = config::load(&path).unwrap();
    assert_eq!(
        loaded.board_source.as_deref(),
        Some("built-in:generic-x86_64")
    );
    assert_eq!(
        loaded.config.media.h264_decoder, "v4l2h264dec",
        "the file wins"
    );
    assert_eq!(
        loaded.config.media.h265_decoder, "avdec_h265",
        "the profile fills the rest"
    );
    assert_eq!(
        loaded.config.limits.memory_max.map(|m| m.bytes()),
        Some(1 << 30)
    );
}

#[test]
fn the_example_config_checks_and_round_trips() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("heldar.example.toml");
    let first = heldar(&["config", "check", example.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));
    let printed = stdout(&first);

    // The printed effective config is itself a valid config that prints the same.
    let dir = tempfile::tempdir().unwrap();
    let reprinted_path = dir.path().join("heldar.toml");
    std::fs::write(&reprinted_path, &printed).unwrap();
    let second = heldar(&["config", "check", reprinted_path.to_str().unwrap()]);
    assert!(second.status.success(), "{}", stderr(&second));
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&printed), body(&stdout(&second)));
    assert_eq!(
        config::load(&example).unwrap().config,
        config::load(&reprinted_path).unwrap().config
    );
}

#[test]
fn secrets_are_read_but_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mqtt.pw"), "hunter2-mqtt\n").unwrap();
    std::fs::write(dir.path().join("cam.pw"), "hunter2-cam").unwrap();
    let path = dir.path().join("heldar.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"edge\"\npassword_file = \"mqtt.pw\"\n{CAM}username = \"admin\"\npassword_file = \"cam.pw\"\n"
        ),
    )
    .unwrap();
    let loaded = config::load(&path).unwrap();
    let mqtt = loaded.config.mqtt.as_ref().unwrap();
    assert_eq!(
        mqtt.password.as_ref().unwrap().expose(),
        "hunter2-mqtt",
        "trailing newline dropped"
    );
    assert_eq!(
        loaded.config.cameras[0].password.as_ref().unwrap().expose(),
        "hunter2-cam"
    );
    for args in [vec!["config", "check"], vec!["--json", "config", "check"]] {
        let mut args = args;
        args.push(path.to_str().unwrap());
        let out = heldar(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("mqtt.pw"), "the path is shown");
        assert!(!text.contains("hunter2"), "the secret is not:\n{text}");
    }
    assert!(
        !format!("{:?}", loaded.config).contains("hunter2"),
        "nor in Debug output"
    );
}
