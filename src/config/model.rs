//! The shape of `heldar.toml` (and of a board profile, which is a partial `heldar.toml`).
//!
//! Every key, its default and its unit is here; `docs/config.md` documents them for users, and a
//! test keeps the two in step. Unknown keys are errors (`deny_unknown_fields`), so a typo never
//! silently falls back to a default. Range checks and cross-references live in `validate.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problem;
use super::command_key::CommandKey;
use super::secret::{Secret, redact_url, split_userinfo};
use super::units::{ByteSize, Duration};

/// The effective configuration of the box: a board profile with `heldar.toml` merged over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names the box in MQTT topics and Home Assistant discovery.
    pub device_id: String,
    /// Database, recordings and snapshots live here.
    pub data_dir: PathBuf,
    /// Board profile name (`board-configs/<name>.toml`) or a path to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full `tracing` filter; `RUST_LOG` wins.
    pub log_level: String,
    pub http: HttpConfig,
    pub control: ControlConfig,
    /// Absent: no uplink, and the outbox keeps everything within its bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttConfig>,
    pub outbox: OutboxConfig,
    pub database: DatabaseConfig,
    pub retention: RetentionConfig,
    pub recording: RecordingConfig,
    pub media: MediaConfig,
    pub sampler: SamplerConfig,
    pub workers: WorkersConfig,
    pub limits: LimitsConfig,
    pub cameras: Vec<CameraConfig>,
    pub tasks: Vec<TaskConfig>,
    pub zones: Vec<ZoneConfig>,
    pub serial: Vec<SerialConfig>,
    /// Names for the board's serial devices (`rs485 = "/dev/ttyAMA0"`), set by board profiles
    /// so `[[serial]] device = "rs485"` works on every box of a kind whatever its device path.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub serial_ports: BTreeMap<String, PathBuf>,
    pub rules: Vec<RuleConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: default_device_id(),
            data_dir: PathBuf::from("/var/lib/heldar"),
            board: None,
            log_level: "info".into(),
            http: HttpConfig::default(),
            control: ControlConfig::default(),
            mqtt: None,
            outbox: OutboxConfig::default(),
            retention: RetentionConfig::default(),
            recording: RecordingConfig::default(),
            media: MediaConfig::default(),
            sampler: SamplerConfig::default(),
            workers: WorkersConfig::default(),
            limits: LimitsConfig::default(),
            database: DatabaseConfig::default(),
            cameras: Vec::new(),
            tasks: Vec::new(),
            zones: Vec::new(),
            serial: Vec::new(),
            serial_ports: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

/// The host name up to its first dot, with characters MQTT topics dislike replaced, so a box that
/// was never given a `device_id` still gets a stable, readable one.
fn default_device_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let short: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if short.is_empty() {
        "heldar".into()
    } else {
        short
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Loopback by default (invariant X1): reach it from elsewhere through an SSH tunnel.
    pub listen: SocketAddr,
    /// `false` only for development: every caller then acts as a local admin.
    pub auth: bool,
    /// The same API on a Unix socket too, for workers on the box: raw frames cost least over it.
    /// Tokens apply as on `listen`, so the socket is open to every local user (mode 0666).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            auth: true,
            socket: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The CLI's Unix socket; `HELDAR_SOCKET` overrides it for the daemon and the CLI alike.
    pub socket: PathBuf,
    /// Members of this group may use the CLI; root always may.
    pub group: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/heldar/heldar.sock"),
            group: "heldar".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    #[serde(default = "default_mqtt_prefix")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip)]
    pub password: Option<Secret>,
    /// CA bundle (PEM) that signed the broker's certificate; without it, the system's CA
    /// certificates are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    #[serde(skip)]
    pub client_key: Option<Secret>,
    /// Publish Home Assistant discovery configs.
    #[serde(default = "yes")]
    pub discovery: bool,
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// Accept `config/.../set` and `.../delete` topics; off makes the box read-only over MQTT.
    #[serde(default = "yes")]
    pub config_topics: bool,
    /// Public keys allowed to sign config changes and commands; when any is set, unsigned ones
    /// are refused, because a LAN broker is often open to anyone who can reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_keys: Vec<CommandKey>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Duration,
    /// Label topics (`cameras/<cam>/<label>`, and their Home Assistant sensors) kept per camera:
    /// a worker with an open vocabulary would otherwise leave one retained topic and one entity
    /// per word it ever said. Labels seen most recently win a place.
    #[serde(default = "default_labels_per_camera")]
    pub labels_per_camera: u32,
}

fn default_mqtt_prefix() -> String {
    "heldar".into()
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_labels_per_camera() -> u32 {
    32
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Past this many bytes the oldest records are dropped (counted and announced, invariant O4).
    pub max_bytes: ByteSize,
    /// Records older than this are dropped even if a consumer has not seen them.
    pub max_age: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: ByteSize::mib(256),
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// How the database spends the flash.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// How long the writer waits after a write arrives before it commits, so the writes of that
    /// span share one commit and its fsync. Every 4 KiB page a commit touches is written to the
    /// WAL again, so fewer commits write fewer bytes, at the cost of this much more latency per
    /// answer. Zero (the default) commits at once.
    pub commit_linger: Duration,
}

/// Bounds on what the box keeps besides footage and the outbox: without them a year of
/// detections, zone events, rule actions and audit rows fills the disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Detections (with their batches), zone events and finished rule actions older than this
    /// are deleted.
    pub metadata_max_age: Duration,
    /// The database's pages in use, less the outbox's payload (bounded by `outbox.max_bytes`),
    /// are kept under this: past it the oldest detections go first, then zone events, then
    /// finished rule actions, whatever their age. The file holds about this plus the outbox;
    /// it does not shrink, and the pages deletes free are reused before it grows.
    pub metadata_max_bytes: ByteSize,
    /// Audit rows older than this are deleted, except the newest `audit_keep`.
    pub audit_max_age: Duration,
    /// The newest audit rows kept whatever their age: the last technician visits stay readable
    /// on a box nobody touched for years.
    pub audit_keep: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            metadata_max_age: Duration::from_secs(30 * 86_400),
            metadata_max_bytes: ByteSize::gib(2),
            audit_max_age: Duration::from_secs(365 * 86_400),
            audit_keep: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Size cap for all recordings together; absent means only `min_free` bounds them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Free-disk floor: the oldest footage goes before the disk fills.
    pub min_free: ByteSize,
    /// Default age limit for cameras that do not set their own `retention`.
    pub retention: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            max_bytes: None,
            min_free: ByteSize::gib(5),
            retention: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Board-specific GStreamer choices; board profiles set these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Decoder element for H.264 on the sampler branch (never on the recording path).
    pub h264_decoder: String,
    /// Decoder element for H.265 on the sampler branch.
    pub h265_decoder: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            h264_decoder: "avdec_h264".into(),
            h265_decoder: "avdec_h265".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Frames per second decoded for inference across all cameras; shared out by priority.
    pub max_total_fps: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            max_total_fps: 40.0,
        }
    }
}

/// How inference workers are held to account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Accept only batches carrying the frame ticket of a leased frame (off: ticketless batches
    /// are accepted as the worker describes them, as upstream workers expect).
    pub require_tickets: bool,
}

/// Resource limits of the board, used by the systemd unit and shown by `heldar status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Hikvision,
    Dahua,
    Axis,
    Reolink,
    Amcrest,
    /// A generic ONVIF-style `/onvif1`-like path on port 554.
    Onvif,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Main stream. User-info (`user:pass@`) is split off where the URL arrives
    /// ([`CameraConfig::take_url_logins`]); credentials in the query stay and are masked where shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_url: Option<String>,
    /// With `address`, builds both stream URLs from the vendor's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<Vendor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(default = "default_transport")]
    pub transport: RtspTransport,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub record: bool,
    #[serde(default = "yes")]
    pub detect: bool,
    /// Target segment length; segments are cut on keyframes, so they are at least one GOP.
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: u32,
    /// Age limit of this camera's footage; absent means `recording.retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
    /// Higher priority cameras get their sampling fps first when the budget is short.
    #[serde(default)]
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptz: Option<PtzConfig>,
}

impl CameraConfig {
    /// The camera as it may be shown: credentials in its URLs' query or path masked (`***`).
    /// User-info never needs it: it was split off where the URL arrived.
    pub fn shown(&self) -> CameraConfig {
        let mut shown = self.clone();
        for url in [&mut shown.url, &mut shown.sub_url].into_iter().flatten() {
            *url = redact_url(url);
        }
        shown
    }

    /// Moves the user-info of `url` and `sub_url` (`rtsp://user:pass@host/...`, as cameras print
    /// their URLs) into `username` and the returned password, so no stored or shown URL carries
    /// it (invariant M3). A user that disagrees with `username`, or two different passwords, are
    /// refused rather than guessed between; problem paths are relative to the camera.
    pub fn take_url_logins(&mut self) -> Result<Option<Secret>, Problem> {
        let mut password: Option<(&str, Secret)> = None;
        for (key, url) in [("url", &mut self.url), ("sub_url", &mut self.sub_url)] {
            let refuse = |message: String| {
                Err(Problem {
                    path: key.into(),
                    message,
                })
            };
            let login = match url.as_deref().map(split_userinfo) {
                Some(Ok(Some(login))) => login,
                Some(Err(message)) => return refuse(message.into()),
                Some(Ok(None)) | None => continue,
            };
            *url = Some(login.url);
            if login.user.is_empty() {
                if login.password.is_some() {
                    return refuse("the URL has a password but no user name before it".into());
                }
                // `rtsp://@host`: nothing to take.
                continue;
            }
            match &self.username {
                // Not quoted: someone who typed only a password before the `@` would see it.
                Some(u) if *u != login.user => {
                    return refuse(format!(
                        "the user name in the URL differs from username {u:?}: give one"
                    ));
                }
                Some(_) => {}
                None => self.username = Some(login.user),
            }
            match (&password, login.password) {
                (Some((first, p)), Some(q)) if *p != q => {
                    return refuse(format!(
                        "the URL's password differs from the one in {first}"
                    ));
                }
                (None, Some(q)) => password = Some((key, q)),
                _ => {}
            }
        }
        Ok(password.map(|(_, p)| p))
    }
}

fn default_transport() -> RtspTransport {
    RtspTransport::Tcp
}

fn default_segment_seconds() -> u32 {
    60
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtzConfig {
    /// Name of a `[[serial]]` port speaking Pelco-D.
    pub port: String,
    /// Pelco-D address of the camera on that bus (1..255).
    pub address: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamProfile {
    Main,
    Sub,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub camera: String,
    pub task_type: String,
    /// Requested sampling rate, 0.1..30.
    #[serde(default = "default_task_fps")]
    pub fps: f64,
    /// Requested frame width in pixels, 160..3840.
    #[serde(default = "default_task_width")]
    pub width: u32,
    #[serde(default = "default_profile")]
    pub profile: StreamProfile,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Opaque to the daemon; handed to the worker with the task.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn default_task_fps() -> f64 {
    5.0
}

fn default_task_width() -> u32 {
    1280
}

fn default_profile() -> StreamProfile {
    StreamProfile::Sub
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneKind {
    Region,
    Line,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineDirection {
    Any,
    Ab,
    Ba,
}

/// Which point of a bounding box decides whether an object is inside a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// Where a person's feet or a car's wheels touch the ground: right for floor-plan zones.
    BottomCenter,
    Center,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub camera: String,
    /// Unique on the box: rules and MQTT topics name zones by it.
    pub name: String,
    pub kind: ZoneKind,
    /// Normalised 0..1, top-left origin; a region has 3..512 points, a line exactly 2.
    pub points: Vec<[f64; 2]>,
    /// Labels this zone reacts to; empty means all.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Lines only: which crossings count.
    #[serde(default = "default_direction")]
    pub direction: LineDirection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_seconds: Option<f64>,
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f64,
    /// Fraction of the frame an object's box must cover at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_area: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_area: Option<f64>,
    /// How long an object must stay in (or out) before `enter` (or `exit`) fires.
    #[serde(default = "default_confirm")]
    pub confirm: Duration,
    /// A track not seen for this long leaves every zone it was in (`exit`, reason `lost`).
    #[serde(default = "default_lost_after")]
    pub lost_after: Duration,
    /// An object that stays put this long (a parked car) makes no events and does not count in
    /// occupancy until it moves again.
    #[serde(default = "default_static_after")]
    pub static_after: Duration,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    #[serde(default = "default_anchor")]
    pub anchor: Anchor,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_direction() -> LineDirection {
    LineDirection::Any
}

fn default_min_confidence() -> f64 {
    0.5
}

fn default_confirm() -> Duration {
    Duration::from_millis(500)
}

fn default_lost_after() -> Duration {
    Duration::from_secs(10)
}

fn default_static_after() -> Duration {
    Duration::from_secs(120)
}

fn default_severity() -> Severity {
    Severity::Info
}

fn default_anchor() -> Anchor {
    Anchor::BottomCenter
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SerialProtocol {
    /// An alarm I/O board: discrete inputs and relay coils.
    ModbusRtu,
    /// A bus of PTZ cameras.
    PelcoD,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub name: String,
    pub device: PathBuf,
    pub protocol: SerialProtocol,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Modbus unit (slave) id of the I/O board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
    /// Number of discrete inputs, numbered from 1.
    #[serde(default)]
    pub inputs: u16,
    /// Number of relay outputs, numbered from 1.
    #[serde(default)]
    pub relays: u16,
    /// How often inputs are read.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
    /// An input must hold its new state this long before it counts as a change.
    #[serde(default = "default_debounce")]
    pub debounce: Duration,
    /// Names of the inputs in order (`["front door", "hall PIR"]`), carried in `alarm` events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_names: Vec<String>,
    /// How long a request may wait for the slave's answer.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// RS-485 line timing; absent for adapters that switch direction by themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rs485: Option<Rs485Config>,
}

/// RS-485 timing: half-duplex transceivers must be switched between sending and receiving.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rs485Config {
    /// Have the kernel drive RTS as the transmitter enable (TIOCSRS485): for UARTs wired to a
    /// transceiver's DE pin (Raspberry Pi HATs); USB adapters usually switch by themselves.
    #[serde(default)]
    pub kernel_rts: bool,
    /// With `kernel_rts`: RTS raised this long before the first bit (whole milliseconds).
    #[serde(default)]
    pub rts_before_send: Duration,
    /// With `kernel_rts`: RTS held this long after the last bit (whole milliseconds).
    #[serde(default)]
    pub rts_after_send: Duration,
    /// Quiet time after an answer before the next request, for slaves slow to turn their
    /// transceiver around.
    #[serde(default)]
    pub turnaround: Duration,
}

fn default_baud() -> u32 {
    9600
}

fn default_parity() -> Parity {
    Parity::None
}

fn default_stop_bits() -> u8 {
    1
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(200)
}

fn default_response_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_debounce() -> Duration {
    Duration::from_millis(100)
}

/// A local action on an event; `on` and `do` are parsed by [`super::rules`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub on: String,
    #[serde(rename = "do")]
    pub action: String,
}
