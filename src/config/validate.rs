//! Checks that types alone cannot express: ranges, uniqueness and references between sections.
//!
//! Every problem is reported (not just the first), each naming its key path, so an operator fixes
//! a config in one pass.

use std::collections::HashMap;

use super::model::{
    CameraConfig, Config, RecordingConfig, SamplerConfig, SerialConfig, SerialProtocol, TaskConfig,
    ZoneConfig, ZoneKind,
};
use super::rules::{Action, RelayOp, Trigger};
use super::secret::redact_url;
use super::{Problem, is_valid_id};

/// Problems of one zone on its own (its name's uniqueness is the caller's to check), with key
/// names relative to the zone; used for zones added at runtime.
pub fn zone_problems(zone: &ZoneConfig, cameras: &[&str]) -> Vec<Problem> {
    let mut v = Validator::default();
    v.zone("", zone, cameras);
    v.problems
}

/// Problems of one camera on its own (uniqueness of its id is the caller's to check), with key
/// names relative to the camera; used for cameras added at runtime.
pub fn camera_problems(cam: &CameraConfig, serial: &[SerialConfig]) -> Vec<Problem> {
    let mut v = Validator::default();
    v.camera("", cam, serial);
    v.problems
}

/// Problems of one task on its own (the camera must be one of `cameras`), with key names relative
/// to the task; used for tasks added at runtime.
pub fn task_problems(task: &TaskConfig, cameras: &[&str]) -> Vec<Problem> {
    let mut v = Validator::default();
    v.task(|key| key.to_string(), task, cameras);
    v.problems
}

/// Problems of a `[recording]` section, with key names relative to it; used for runtime settings.
pub fn recording_problems(recording: &RecordingConfig) -> Vec<Problem> {
    let mut v = Validator::default();
    v.recording("", recording);
    v.problems
}

/// Problems of a `[sampler]` section, with key names relative to it; used for runtime settings.
pub fn sampler_problems(sampler: &SamplerConfig) -> Vec<Problem> {
    let mut v = Validator::default();
    v.sampler("", sampler);
    v.problems
}

pub(super) fn validate(config: &Config) -> Vec<Problem> {
    let mut v = Validator::default();
    v.top_level(config);
    v.cameras(config);
    v.tasks(config);
    v.zones(config);
    v.serial(config);
    v.rules(config);
    v.problems
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn range_f64(&mut self, path: String, value: f64, min: f64, max: f64) {
        if !(value.is_finite() && value >= min && value <= max) {
            self.fail(path, format!("must be {min}..{max}, got {value}"));
        }
    }

    fn range_u64(&mut self, path: String, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.fail(path, format!("must be {min}..{max}, got {value}"));
        }
    }

    fn id(&mut self, path: String, value: &str) {
        if !is_valid_id(value) {
            self.fail(
                path,
                format!("{value:?} is not a valid id: use 1..64 letters, digits, '-' or '_'"),
            );
        }
    }

    /// Reports every value seen twice, pointing at the first occurrence.
    fn unique<'a>(&mut self, what: &str, items: impl Iterator<Item = (String, &'a str)>) {
        let mut seen: HashMap<&str, String> = HashMap::new();
        for (path, value) in items {
            if let Some(first) = seen.get(value) {
                self.fail(
                    path,
                    format!("duplicate {what} {value:?} (also at {first})"),
                );
            } else {
                seen.insert(value, path);
            }
        }
    }

    fn retention(&mut self, c: &Config) {
        let r = &c.retention;
        if r.metadata_max_age.get().as_secs() < 3600 {
            self.fail(
                "retention.metadata_max_age",
                format!("must be at least 1h, got {}", r.metadata_max_age),
            );
        }
        if r.audit_max_age.get().as_secs() < 86_400 {
            self.fail(
                "retention.audit_max_age",
                format!("must be at least 1d, got {}", r.audit_max_age),
            );
        }
        if r.metadata_max_bytes.bytes() < 1 << 20 {
            self.fail(
                "retention.metadata_max_bytes",
                format!("must be at least 1MiB, got {}", r.metadata_max_bytes),
            );
        }
        if let Some(m) = &c.mqtt {
            self.range_u64(
                "mqtt.labels_per_camera".into(),
                m.labels_per_camera.into(),
                1,
                1000,
            );
        }
    }

    fn top_level(&mut self, c: &Config) {
        self.id("device_id".into(), &c.device_id);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log_level) {
            self.fail(
                "log_level",
                format!("invalid log filter {:?}: {e}", c.log_level),
            );
        }
        if c.control.group.trim().is_empty() {
            self.fail("control.group", "must not be empty");
        }
        if c.database.commit_linger.get() > std::time::Duration::from_secs(1) {
            self.fail(
                "database.commit_linger",
                format!(
                    "must be at most 1s (every answer waits this long), got {}",
                    c.database.commit_linger
                ),
            );
        }
        if c.outbox.max_bytes.bytes() < 1 << 20 {
            self.fail(
                "outbox.max_bytes",
                format!("must be at least 1MiB, got {}", c.outbox.max_bytes),
            );
        }
        if c.outbox.max_age.get().as_secs() < 60 {
            self.fail(
                "outbox.max_age",
                format!("must be at least 1m, got {}", c.outbox.max_age),
            );
        }
        self.retention(c);
        self.recording("recording.", &c.recording);
        self.sampler("sampler.", &c.sampler);
        for (key, element) in [
            ("media.h264_decoder", &c.media.h264_decoder),
            ("media.h265_decoder", &c.media.h265_decoder),
        ] {
            if element.trim().is_empty() {
                self.fail(key, "must name a GStreamer element");
            }
        }
        if let Some(m) = &c.mqtt {
            let broker = m.broker();
            if let Err(e) = &broker {
                self.fail("mqtt.url", e);
            }
            if m.prefix.is_empty()
                || m.prefix.contains(['#', '+'])
                || m.prefix.starts_with('/')
                || m.prefix.ends_with('/')
            {
                self.fail(
                    "mqtt.prefix",
                    format!(
                        "{:?} must be a topic prefix without wildcards or leading/trailing '/'",
                        m.prefix
                    ),
                );
            }
            if m.password_file.is_some() && m.username.is_none() {
                self.fail("mqtt.password_file", "needs mqtt.username");
            }
            if m.client_cert_file.is_some() != m.client_key_file.is_some() {
                self.fail(
                    "mqtt.client_cert_file",
                    "client_cert_file and client_key_file go together",
                );
            }
            if broker.is_ok_and(|b| !b.tls) {
                for (key, set) in [
                    ("mqtt.ca_file", m.ca_file.is_some()),
                    ("mqtt.client_cert_file", m.client_cert_file.is_some()),
                ] {
                    if set {
                        self.fail(key, "needs an mqtts:// url");
                    }
                }
            }
        }
    }

    fn recording(&mut self, prefix: &str, r: &RecordingConfig) {
        if r.retention.get().as_secs() < 3600 {
            self.fail(
                format!("{prefix}retention"),
                format!("must be at least 1h, got {}", r.retention),
            );
        }
    }

    fn sampler(&mut self, prefix: &str, s: &SamplerConfig) {
        self.range_f64(
            format!("{prefix}max_total_fps"),
            s.max_total_fps,
            0.5,
            1000.0,
        );
    }

    fn cameras(&mut self, c: &Config) {
        self.unique(
            "camera id",
            c.cameras
                .iter()
                .enumerate()
                .map(|(i, cam)| (format!("cameras[{i}].id"), cam.id.as_str())),
        );
        for (i, cam) in c.cameras.iter().enumerate() {
            self.camera(&format!("cameras[{i}]."), cam, &c.serial);
        }
    }

    /// Checks one camera; `prefix` is prepended to key names (`cameras[1].` in a file).
    fn camera(&mut self, prefix: &str, cam: &CameraConfig, serial: &[SerialConfig]) {
        let p = |key: &str| format!("{prefix}{key}");
        self.id(p("id"), &cam.id);
        match (&cam.url, &cam.vendor, &cam.address) {
            (Some(_), None, None) => {}
            (None, Some(_), Some(_)) => {}
            (Some(_), _, _) => self.fail(
                p("url"),
                "give either url (and sub_url) or vendor and address, not both",
            ),
            (None, Some(_), None) => self.fail(p("address"), "vendor needs an address"),
            (None, None, Some(_)) => self.fail(p("vendor"), "address needs a vendor"),
            (None, None, None) => self.fail(p("url"), "a camera needs url, or vendor and address"),
        }
        if cam.sub_url.is_some() && cam.url.is_none() {
            self.fail(p("sub_url"), "sub_url needs url");
        }
        for (key, url) in [("url", &cam.url), ("sub_url", &cam.sub_url)] {
            if let Some(url) = url {
                self.stream_url(p(key), url);
            }
        }
        if let Some(address) = &cam.address
            && (address.is_empty() || address.contains(['/', '@', ' ', '?', '#', '&']))
        {
            // Not quoted: what is not a host name may be anything, a password included.
            self.fail(p("address"), "must be a host name or IP address");
        }
        if cam.password_file.is_some() && cam.username.is_none() {
            self.fail(p("password_file"), "needs username");
        }
        self.range_u64(p("segment_seconds"), cam.segment_seconds.into(), 2, 3600);
        if let Some(r) = cam.retention
            && r.get().as_secs() < 3600
        {
            self.fail(p("retention"), format!("must be at least 1h, got {r}"));
        }
        if let Some(ptz) = &cam.ptz {
            match serial.iter().find(|s| s.name == ptz.port) {
                None => self.fail(
                    p("ptz.port"),
                    format!("no [[serial]] port named {:?}", ptz.port),
                ),
                Some(s) if s.protocol != SerialProtocol::PelcoD => self.fail(
                    p("ptz.port"),
                    format!("serial port {:?} does not speak pelco-d", ptz.port),
                ),
                Some(_) => {}
            }
            if ptz.address == 0 {
                self.fail(p("ptz.address"), "must be 1..255, got 0");
            }
        }
    }

    /// Invariant M3: a refusal never quotes credentials; the URL it names is masked. User-info
    /// was split off where the URL arrived ([`CameraConfig::take_url_logins`]); one still here
    /// would be stored with its password, so it is refused. Query credentials stay: the camera
    /// wants them in the URL it is asked for.
    fn stream_url(&mut self, path: String, url: &str) {
        let shown = redact_url(url);
        match url.split_once("://") {
            Some(("rtsp" | "rtsps", rest)) if !rest.is_empty() => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if authority.contains('@') {
                    self.fail(
                        path,
                        "the user name and password could not be taken out of it",
                    );
                } else if authority.is_empty() {
                    self.fail(path, format!("{shown:?} has no host"));
                }
            }
            // Not quoted: without a scheme nothing marks where credentials in it would be.
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => self.fail(
                path,
                format!("must be an rtsp:// or rtsps:// URL, not {scheme}://"),
            ),
            _ => self.fail(path, "must be an rtsp:// or rtsps:// URL"),
        }
    }

    fn tasks(&mut self, c: &Config) {
        let mut seen = HashMap::new();
        let cameras: Vec<&str> = c.cameras.iter().map(|cam| cam.id.as_str()).collect();
        for (i, task) in c.tasks.iter().enumerate() {
            let p = |key: &str| format!("tasks[{i}].{key}");
            self.task(p, task, &cameras);
            let key = (task.camera.as_str(), task.task_type.as_str(), task.profile);
            if let Some(first) = seen.insert(key, i) {
                self.fail(
                    p("task_type"),
                    format!(
                        "duplicate task {:?} on camera {:?} (also at tasks[{first}])",
                        task.task_type, task.camera
                    ),
                );
            }
        }
    }

    fn task(&mut self, p: impl Fn(&str) -> String, task: &TaskConfig, cameras: &[&str]) {
        if !cameras.contains(&task.camera.as_str()) {
            self.fail(
                p("camera"),
                format!("no camera {:?} is declared", task.camera),
            );
        }
        if !is_task_type(&task.task_type) {
            self.fail(
                p("task_type"),
                format!("{:?} must match [a-z0-9_]{{1,64}}", task.task_type),
            );
        }
        self.range_f64(p("fps"), task.fps, 0.1, 30.0);
        self.range_u64(p("width"), task.width.into(), 160, 3840);
        if !task.config.is_object() {
            self.fail(p("config"), "must be a table");
        }
    }

    fn zones(&mut self, c: &Config) {
        self.unique(
            "zone name",
            c.zones
                .iter()
                .enumerate()
                .map(|(i, z)| (format!("zones[{i}].name"), z.name.as_str())),
        );
        let cameras: Vec<&str> = c.cameras.iter().map(|cam| cam.id.as_str()).collect();
        for (i, zone) in c.zones.iter().enumerate() {
            self.zone(&format!("zones[{i}]."), zone, &cameras);
        }
    }

    /// Checks one zone; `prefix` is prepended to key names.
    fn zone(&mut self, prefix: &str, zone: &ZoneConfig, cameras: &[&str]) {
        let p = |key: &str| format!("{prefix}{key}");
        self.id(p("name"), &zone.name);
        if !cameras.contains(&zone.camera.as_str()) {
            self.fail(
                p("camera"),
                format!("no camera {:?} is declared", zone.camera),
            );
        }
        let n = zone.points.len();
        match zone.kind {
            ZoneKind::Region if !(3..=512).contains(&n) => self.fail(
                p("points"),
                format!("a region needs 3..512 points, got {n}"),
            ),
            ZoneKind::Line if n != 2 => self.fail(
                p("points"),
                format!("a line needs exactly 2 points, got {n}"),
            ),
            _ => {}
        }
        for (j, point) in zone.points.iter().enumerate() {
            for (k, coord) in point.iter().enumerate() {
                if !(coord.is_finite() && (0.0..=1.0).contains(coord)) {
                    self.fail(
                        p(&format!("points[{j}][{k}]")),
                        format!("must be within 0..1, got {coord}"),
                    );
                }
            }
        }
        for (j, label) in zone.labels.iter().enumerate() {
            if label.trim().is_empty() {
                self.fail(p(&format!("labels[{j}]")), "must not be empty");
            }
        }
        self.range_f64(p("min_confidence"), zone.min_confidence, 0.0, 1.0);
        for (key, area) in [("min_area", zone.min_area), ("max_area", zone.max_area)] {
            if let Some(a) = area {
                self.range_f64(p(key), a, 0.0, 1.0);
            }
        }
        if let (Some(min), Some(max)) = (zone.min_area, zone.max_area)
            && min > max
        {
            self.fail(
                p("min_area"),
                format!("must not exceed max_area ({min} > {max})"),
            );
        }
        if let Some(d) = zone.dwell_seconds {
            self.range_f64(p("dwell_seconds"), d, 0.1, 86_400.0);
        }
    }

    fn serial(&mut self, c: &Config) {
        self.unique(
            "serial port name",
            c.serial
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("serial[{i}].name"), s.name.as_str())),
        );
        for (name, device) in &c.serial_ports {
            if !device.is_absolute() {
                self.fail(
                    format!("serial_ports.{name}"),
                    format!(
                        "must be an absolute device path, got {:?}",
                        device.display().to_string()
                    ),
                );
            }
        }
        let mut io_boards = 0;
        for (i, s) in c.serial.iter().enumerate() {
            let p = |key: &str| format!("serial[{i}].{key}");
            self.id(p("name"), &s.name);
            if !s.device.is_absolute() {
                let known: Vec<&str> = c.serial_ports.keys().map(String::as_str).collect();
                self.fail(
                    p("device"),
                    format!(
                        "{:?} is neither an absolute path nor a port of the board profile \
                         (serial_ports: {})",
                        s.device.display().to_string(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            self.range_u64(p("baud"), s.baud.into(), 300, 4_000_000);
            if let Some(rs) = &s.rs485 {
                for (key, d) in [
                    ("rs485.rts_before_send", rs.rts_before_send),
                    ("rs485.rts_after_send", rs.rts_after_send),
                    ("rs485.turnaround", rs.turnaround),
                ] {
                    if d.get() > std::time::Duration::from_secs(1) {
                        self.fail(p(key), format!("must be at most 1s, got {d}"));
                    }
                }
                if !rs.kernel_rts
                    && (!rs.rts_before_send.get().is_zero() || !rs.rts_after_send.get().is_zero())
                {
                    self.fail(
                        p("rs485.kernel_rts"),
                        "RTS delays need kernel_rts = true (the kernel applies them)",
                    );
                }
            }
            if !matches!(s.stop_bits, 1 | 2) {
                self.fail(
                    p("stop_bits"),
                    format!("must be 1 or 2, got {}", s.stop_bits),
                );
            }
            match s.protocol {
                SerialProtocol::ModbusRtu => {
                    io_boards += 1;
                    if io_boards > 1 {
                        self.fail(p("protocol"), "only one modbus-rtu I/O board is supported");
                    }
                    match s.unit {
                        None => {
                            self.fail(p("unit"), "a modbus-rtu board needs its unit id (1..247)")
                        }
                        Some(u) => self.range_u64(p("unit"), u.into(), 1, 247),
                    }
                    self.range_u64(p("inputs"), s.inputs.into(), 0, 2000);
                    if s.input_names.len() > usize::from(s.inputs) {
                        self.fail(
                            p("input_names"),
                            format!("{} names for {} inputs", s.input_names.len(), s.inputs),
                        );
                    }
                    self.range_u64(p("relays"), s.relays.into(), 0, 2000);
                    if s.poll_interval.get().as_millis() < 20 {
                        self.fail(
                            p("poll_interval"),
                            format!("must be at least 20ms, got {}", s.poll_interval),
                        );
                    }
                }
                SerialProtocol::PelcoD => {
                    for (key, set) in [
                        ("unit", s.unit.is_some()),
                        ("inputs", s.inputs > 0),
                        ("relays", s.relays > 0),
                    ] {
                        if set {
                            self.fail(p(key), "only applies to modbus-rtu ports");
                        }
                    }
                }
            }
        }
    }

    fn rules(&mut self, c: &Config) {
        let io = c
            .serial
            .iter()
            .find(|s| s.protocol == SerialProtocol::ModbusRtu);
        for (i, rule) in c.rules.iter().enumerate() {
            let p = |key: &str| format!("rules[{i}].{key}");
            match rule.on.parse::<Trigger>() {
                Err(e) => self.fail(p("on"), e),
                Ok(Trigger::Zone { zone, .. }) => {
                    if !c.zones.iter().any(|z| z.name == zone) {
                        self.fail(p("on"), format!("no zone named {zone:?}"));
                    }
                }
                Ok(Trigger::Alarm { input, .. }) => match io {
                    None => self.fail(p("on"), "alarm rules need a modbus-rtu [[serial]] board"),
                    Some(s) if input > s.inputs => self.fail(
                        p("on"),
                        format!(
                            "input {input} does not exist: board {:?} has {} inputs",
                            s.name, s.inputs
                        ),
                    ),
                    Some(_) => {}
                },
            }
            match rule.action.parse::<Action>() {
                Err(e) => self.fail(p("do"), e),
                Ok(Action::Relay { relay, op }) => {
                    match io {
                        None => {
                            self.fail(p("do"), "relay actions need a modbus-rtu [[serial]] board")
                        }
                        Some(s) if relay > s.relays => self.fail(
                            p("do"),
                            format!(
                                "relay {relay} does not exist: board {:?} has {} relays",
                                s.name, s.relays
                            ),
                        ),
                        Some(_) => {}
                    }
                    if let RelayOp::Pulse(d) = op
                        && (d.get().is_zero() || d.get().as_secs() > 3600)
                    {
                        self.fail(
                            p("do"),
                            format!("pulse must be longer than 0 and at most 1h, got {d}"),
                        );
                    }
                }
                Ok(Action::PtzGoto { camera, .. }) => {
                    match c.cameras.iter().find(|cam| cam.id == camera) {
                        None => self.fail(p("do"), format!("no camera {camera:?} is declared")),
                        Some(cam) if cam.ptz.is_none() => {
                            self.fail(p("do"), format!("camera {camera:?} has no ptz settings"))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

/// Task types travel in worker URLs and event records, so they keep to a conservative alphabet.
pub fn is_task_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
