//! Serial devices: the alarm I/O board (Modbus RTU) and buses of PTZ cameras (Pelco-D), and the
//! rules that drive them from zone and alarm events.
//!
//! Owns: opening ports with tokio-serial and reopening them with backoff (a port that vanishes
//! or babbles never stops the daemon or another port), the board's polling and relays
//! ([`modbus`]), PTZ frames ([`pelco`], [`ptz`]) and rule execution ([`rules`]). Callers (API,
//! CLI, MQTT, rules) go through [`Serial`]; every request is answered, never left hanging.

pub mod board;
pub mod pelco;
mod port;
mod ptz;
pub mod record;
pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use board::{InputState, IoState, RelayState};
pub use pelco::PtzCommand;
pub use port::PortStatus;

use crate::config::model::{Config, SerialProtocol};
use crate::config::rules::RelayOp;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// Why a serial request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("no {0} is configured on this box")]
    NotConfigured(&'static str),
    #[error("relay {relay}: the board has relays 1..{relays}")]
    NoSuchRelay { relay: u16, relays: u16 },
    #[error("no camera {0:?}")]
    UnknownCamera(String),
    #[error("camera {0:?} has no ptz (port and address) in its config")]
    NoPtz(String),
    #[error("{0}")]
    BadCommand(String),
    /// The port is closed and being retried.
    #[error("{0}")]
    Unavailable(String),
    /// The device answered wrongly or not at all.
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `heldar io status` and `GET /api/v1/io` show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SerialStatus {
    pub ports: Vec<PortStatus>,
    /// Absent without a modbus-rtu board.
    pub io: Option<IoState>,
}

struct Board {
    requests: mpsc::Sender<board::IoRequest>,
    state: Arc<Mutex<IoState>>,
    relays: u16,
    /// Its port's status (also in `Inner::ports`).
    port: port::StatusCell,
}

struct Inner {
    board: Option<Board>,
    buses: HashMap<String, mpsc::Sender<ptz::Frame>>,
    ports: Vec<port::StatusCell>,
    registry: Registry,
}

/// The serial service's handle; cheap to clone.
#[derive(Clone)]
pub struct Serial {
    inner: Arc<Inner>,
}

/// The tasks behind a [`Serial`], started by [`SerialTasks::run`].
pub struct SerialTasks {
    board: Option<board::IoBoard>,
    buses: Vec<ptz::PtzBus>,
    rules: Option<(rules::RulesConsumer, rules::RulesExecutor)>,
    outbox: Outbox,
}

impl Serial {
    pub fn new(
        config: &Config,
        store: Store,
        outbox: Outbox,
        registry: Registry,
    ) -> (Serial, SerialTasks) {
        let mut ports = Vec::new();
        let mut board = None;
        let mut board_task = None;
        let mut buses = HashMap::new();
        let mut bus_tasks = Vec::new();
        for s in &config.serial {
            let status = port::StatusCell::new(s);
            ports.push(status.clone());
            match s.protocol {
                SerialProtocol::ModbusRtu => {
                    let (tx, rx) = mpsc::channel(64);
                    let state = Arc::new(Mutex::new(board::IoBoard::initial_state(s)));
                    board = Some(Board {
                        requests: tx,
                        state: state.clone(),
                        relays: s.relays,
                        port: status.clone(),
                    });
                    board_task = Some(board::IoBoard {
                        config: s.clone(),
                        store: store.clone(),
                        outbox: outbox.clone(),
                        status,
                        state,
                        requests: rx,
                    });
                }
                SerialProtocol::PelcoD => {
                    let (tx, rx) = mpsc::channel(64);
                    buses.insert(s.name.clone(), tx);
                    bus_tasks.push(ptz::PtzBus {
                        config: s.clone(),
                        status,
                        frames: rx,
                    });
                }
            }
        }
        let serial = Serial {
            inner: Arc::new(Inner {
                board,
                buses,
                ports,
                registry,
            }),
        };
        let rules = (!config.rules.is_empty()).then(|| {
            let wake = Arc::new(Notify::new());
            (
                rules::RulesConsumer::new(&config.rules, wake.clone()),
                rules::RulesExecutor {
                    store,
                    serial: serial.clone(),
                    wake,
                },
            )
        });
        let tasks = SerialTasks {
            board: board_task,
            buses: bus_tasks,
            rules,
            outbox,
        };
        (serial, tasks)
    }

    pub fn status(&self) -> SerialStatus {
        SerialStatus {
            ports: self.inner.ports.iter().map(port::StatusCell::get).collect(),
            io: self
                .inner
                .board
                .as_ref()
                .map(|b| b.state.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }

    /// Refuses a relay number the board does not have, before anything is stored.
    pub fn check_relay(&self, relay: u16) -> Result<(), SerialError> {
        let board = self
            .inner
            .board
            .as_ref()
            .ok_or(SerialError::NotConfigured("modbus-rtu I/O board"))?;
        if relay == 0 || relay > board.relays {
            return Err(SerialError::NoSuchRelay {
                relay,
                relays: board.relays,
            });
        }
        Ok(())
    }

    /// Refuses while the I/O board's port is not open: what is scheduled for the board now (a
    /// rule's pulse) would not be given.
    pub fn board_open(&self) -> Result<(), SerialError> {
        let board = self
            .inner
            .board
            .as_ref()
            .ok_or(SerialError::NotConfigured("modbus-rtu I/O board"))?;
        let port = board.port.get();
        if port.state == "open" {
            return Ok(());
        }
        Err(SerialError::Unavailable(format!(
            "port {} is {}: {}",
            port.name,
            port.state,
            port.last_error.as_deref().unwrap_or("not open yet")
        )))
    }

    /// Drives a relay; answers once the board confirmed (or why it could not).
    pub async fn relay(&self, relay: u16, op: RelayOp) -> Result<(), SerialError> {
        self.check_relay(relay)?;
        let board = self
            .inner
            .board
            .as_ref()
            .ok_or(SerialError::NotConfigured("modbus-rtu I/O board"))?;
        let (reply, answer) = oneshot::channel();
        board
            .requests
            .send(board::IoRequest::Relay { relay, op, reply })
            .await
            .map_err(|_| SerialError::Unavailable("the I/O board task is stopping".into()))?;
        answer
            .await
            .map_err(|_| SerialError::Unavailable("the I/O board task is stopping".into()))?
    }

    /// Tells the board that `relay_pulses` changed (a rule's pulse). Waits for room in the
    /// board's queue rather than dropping the wake-up.
    pub async fn sync_pulses(&self) {
        if let Some(b) = &self.inner.board {
            let _ = b.requests.send(board::IoRequest::SyncPulses).await;
        }
    }

    /// Sends a PTZ command to a camera on its Pelco-D bus.
    pub async fn ptz(&self, camera: &str, command: PtzCommand) -> Result<(), SerialError> {
        command.check().map_err(SerialError::BadCommand)?;
        let cam = self
            .inner
            .registry
            .camera(camera)
            .await
            .map_err(|e| SerialError::Device(e.to_string()))?
            .ok_or_else(|| SerialError::UnknownCamera(camera.to_string()))?;
        let ptz = cam
            .settings
            .ptz
            .clone()
            .ok_or_else(|| SerialError::NoPtz(camera.to_string()))?;
        let bus = self
            .inner
            .buses
            .get(&ptz.port)
            .ok_or(SerialError::NotConfigured("pelco-d port for this camera"))?;
        let (reply, answer) = oneshot::channel();
        bus.send(ptz::Frame {
            bytes: pelco::frame(ptz.address, command),
            reply,
        })
        .await
        .map_err(|_| SerialError::Unavailable("the PTZ task is stopping".into()))?;
        answer
            .await
            .map_err(|_| SerialError::Unavailable("the PTZ task is stopping".into()))??;
        tracing::info!(camera, ?command, "PTZ command sent");
        Ok(())
    }
}

impl SerialTasks {
    /// Runs every port's task and the rules until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        if let Some(board) = self.board {
            tracker.spawn(board.run(shutdown.clone()));
        }
        for bus in self.buses {
            tracker.spawn(bus.run(shutdown.clone()));
        }
        if let Some((consumer, executor)) = self.rules {
            // Rules act on what happens from now on: a box that gains rules (or gets them
            // back) must not replay its whole history onto sirens and gates.
            self.outbox.start_at_head(rules::CONSUMER).await?;
            let outbox = self.outbox.clone();
            let token = shutdown.clone();
            tracker.spawn(async move { outbox.run_local(Arc::new(consumer), token).await });
            tracker.spawn(executor.run(shutdown.clone()));
        }
        tracker.close();
        shutdown.cancelled().await;
        tracker.wait().await;
        Ok(())
    }
}
