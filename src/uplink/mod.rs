//! The MQTT uplink (`docs/mqtt.md`): the session with the broker, the outbox consumer
//! that publishes events, retained state, config and commands over MQTT, and Home Assistant
//! discovery.
//!
//! Owns: the rumqttc client and everything published or received through it. Delivery of events
//! is the outbox's guarantee (invariant O3), not the client's: records are acknowledged to the
//! outbox only on PUBACK and resent from the cursor after any connection loss.
//!
//! Tasks: the session ([`session::drive`]), the events publisher, the state publisher and the
//! command handler; they share the [`session::Link`] and stop with the daemon.

mod commands;
pub mod discovery;
pub mod events;
pub mod session;
pub mod signed;
mod state;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use session::UplinkStatus;

use crate::config::model::MqttConfig;
use crate::media::Media;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::serial::Serial;
use crate::store::Store;

/// Records in flight (published, not yet acknowledged) at most.
pub const WINDOW: usize = 256;

/// Reads the uplink's status; cheap to clone.
#[derive(Clone)]
pub struct UplinkHandle {
    status: Arc<Mutex<UplinkStatus>>,
}

impl UplinkHandle {
    pub fn status(&self) -> UplinkStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the uplink is built from.
pub struct UplinkDeps {
    pub device_id: String,
    pub registry: Registry,
    pub media: Media,
    pub store: Store,
    pub outbox: Outbox,
    /// Relay and PTZ commands go to the serial devices.
    pub serial: Serial,
}

/// Builds the uplink from `[mqtt]`; a config that cannot work (unreadable CA file) is an error
/// here, before the daemon reports ready.
pub struct Uplink {
    config: MqttConfig,
    deps: UplinkDeps,
    options: rumqttc::MqttOptions,
    status: Arc<Mutex<UplinkStatus>>,
}

impl Uplink {
    pub fn new(config: MqttConfig, deps: UplinkDeps) -> anyhow::Result<Uplink> {
        // A loaded config has had its URL checked; this keeps the key in the error anyway.
        let broker = config
            .broker()
            .map_err(|e| anyhow::anyhow!("mqtt.url: {e}"))?;
        let options = session::options(&config, &broker, &deps.device_id, WINDOW as u16)?;
        let status = Arc::new(Mutex::new(UplinkStatus {
            state: "connecting".into(),
            broker: broker.to_string(),
            client_id: options.client_id(),
            tls: broker.tls,
            ..UplinkStatus::default()
        }));
        Ok(Uplink {
            config,
            deps,
            options,
            status,
        })
    }

    pub fn handle(&self) -> UplinkHandle {
        UplinkHandle {
            status: self.status.clone(),
        }
    }

    /// Runs every uplink task until `shutdown`, then lets the connection outlive the others for
    /// the cameras' last state (bounded; see `state::run`).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let root = format!("{}/{}", self.config.prefix, self.deps.device_id);
        let discovery_prefix = self
            .config
            .discovery
            .then(|| self.config.discovery_prefix.clone());
        let (link, eventloop) = session::open(self.options, self.status, WINDOW * 2 + 512);
        let end = self
            .deps
            .outbox
            .external(events::CONSUMER, WINDOW, shutdown.clone());
        let acker = end.acker.clone();
        let (inbound_tx, inbound_rx) = mpsc::channel(256);
        let nudge = Arc::new(state::StateNudge::default());
        let tasks = TaskTracker::new();

        // The connection outlives the other tasks by the cameras' goodbye (state::run's last
        // publishes): it ends once they are done.
        let session_stop = CancellationToken::new();
        tasks.spawn(session::drive(
            link.clone(),
            eventloop,
            acker,
            inbound_tx,
            session_stop.clone(),
        ));
        tasks.spawn(events::run(
            link.clone(),
            end,
            root.clone(),
            shutdown.clone(),
        ));
        let state = tokio::spawn(state::run(
            state::StateSource {
                root: root.clone(),
                registry: self.deps.registry.clone(),
                media: self.deps.media.clone(),
                store: self.deps.store.clone(),
                outbox: self.deps.outbox.clone(),
                discovery: discovery_prefix.clone().map(|prefix| discovery::Discovery {
                    prefix,
                    root: root.clone(),
                    device_id: self.deps.device_id.clone(),
                }),
                started: Instant::now(),
                labels_per_camera: self.config.labels_per_camera as usize,
                last_live: Default::default(),
            },
            link.clone(),
            nudge.clone(),
            shutdown.clone(),
            session_stop.clone(),
        ));
        tasks.spawn(subscribe_on_connect(
            link.clone(),
            commands::filters(&root, discovery_prefix.as_deref()),
            shutdown.clone(),
        ));
        let commands = commands::Commands {
            root,
            discovery_prefix,
            config_topics: self.config.config_topics,
            device_id: self.deps.device_id.clone(),
            command_keys: self.config.command_keys.clone(),
            registry: self.deps.registry,
            media: self.deps.media,
            store: self.deps.store,
            serial: self.deps.serial,
            link,
            nudge,
        };
        tasks.spawn(commands.run(inbound_rx, shutdown.clone()));
        tasks.close();
        shutdown.cancelled().await;
        let _ = state.await;
        session_stop.cancel();
        tasks.wait().await;
        Ok(())
    }
}

/// Subscribes after every connect: a broker that lost the session has lost the subscriptions.
async fn subscribe_on_connect(
    link: Arc<session::Link>,
    filters: Vec<String>,
    shutdown: CancellationToken,
) {
    let mut connection = link.connection();
    loop {
        if connection.borrow_and_update().is_some() {
            for f in &filters {
                link.subscribe(f);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = connection.changed() => if changed.is_err() { return },
        }
    }
}
