//! The MQTT session: one rumqttc client and its event loop, and the bookkeeping that turns
//! PUBACKs into acknowledged outbox records.
//!
//! rumqttc gives no token per publish. It does emit `Outgoing::Publish(pkid)` for every QoS 1
//! publish it writes, in the order publishes were requested, and `PubAck(pkid)` when the broker
//! acknowledges. So every QoS 1 publish is requested through [`Link::publish`], which records a
//! [`Tag`] in the same order under the same lock; the event loop pairs tags with packet ids and
//! packet ids with acks.
//!
//! rumqttc also replays its unacknowledged publishes after a reconnect when the broker kept the
//! session, and silently drops them when it did not (notes/serial-mqtt.md). Neither is good enough
//! for the outbox, so after every connection loss this module drops whatever rumqttc would replay,
//! forgets the pairings, and asks the outbox dispatcher to resend from its cursor (a new
//! generation). Redelivery therefore never depends on the broker's session, and repeats are
//! limited to records that were not acknowledged. rumqttc's own connection state is replaced
//! then too (see [`recover`]): its `clean()` keeps a pending packet-id collision, which would
//! otherwise keep the new connection from sending anything (issue 13).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, MqttState,
    Outgoing, QoS, Request, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::broker::Broker;
use crate::config::model::MqttConfig;
use crate::config::secret::redact_url;
use crate::metrics::INSTRUMENTS;
use crate::outbox::Acker;

/// Largest packet accepted from the broker. Command payloads above the uplink's own limit are
/// refused with an answer; this only bounds memory.
const MAX_INCOMING_PACKET: usize = 4 << 20;
/// Largest packet sent (a snapshot of a 4K camera).
const MAX_OUTGOING_PACKET: usize = 16 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// What a QoS 1 publish was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// An outbox record: its PUBACK acknowledges `seq`.
    Record(i64),
    /// Anything else (retained state, results).
    Other,
}

/// The uplink's health as `heldar status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// `connected`, `connecting` or `disconnected`.
    pub state: String,
    /// `host:port` of the broker (never credentials).
    pub broker: String,
    pub client_id: String,
    pub tls: bool,
    pub connected_since: Option<DateTime<Utc>>,
    /// Why the last connection failed or ended; no secrets.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_puback_at: Option<DateTime<Utc>>,
    pub connects: u64,
    /// Outbox records published and acknowledged since start.
    pub events_published: u64,
    pub events_acked: u64,
}

#[derive(Default)]
struct Tracker {
    /// Tags of publishes requested and not yet written, in request order.
    queued: VecDeque<Tag>,
    /// Written and not yet acknowledged, by packet id, with when it was written.
    inflight: HashMap<u16, (Tag, Instant)>,
}

/// The publishing side of the session, shared by the uplink's tasks.
pub struct Link {
    client: AsyncClient,
    tracker: Mutex<Tracker>,
    /// `Some(n)` while connected, `n` counting connections since start; `None` while not.
    connection: watch::Sender<Option<u64>>,
    status: Arc<Mutex<UplinkStatus>>,
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
#[error("the uplink is stopping")]
pub struct Stopping;

impl Link {
    /// Requests a publish; QoS 1 publishes are tagged so their acknowledgement can be matched.
    /// Waits (briefly, repeatedly) while rumqttc's request queue is full.
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        tag: Tag,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopping> {
        loop {
            {
                let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
                let tracked = qos != QoS::AtMostOnce;
                if tracked {
                    t.queued.push_back(tag);
                }
                match self.client.try_publish(topic, qos, retain, payload.clone()) {
                    Ok(()) => {
                        if let Tag::Record(_) = tag {
                            self.with_status(|s| s.events_published += 1);
                        }
                        return Ok(());
                    }
                    Err(_) => {
                        if tracked {
                            t.queued.pop_back();
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Stopping),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    /// Waits until every publish requested so far is written and acknowledged; the caller
    /// bounds the wait.
    pub async fn settled(&self) {
        loop {
            {
                let t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
                if t.queued.is_empty() && t.inflight.is_empty() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Follows the connection: `Some(n)` while connected.
    pub fn connection(&self) -> watch::Receiver<Option<u64>> {
        self.connection.subscribe()
    }

    pub fn subscribe(&self, filter: &str) {
        if let Err(e) = self.client.try_subscribe(filter, QoS::AtMostOnce) {
            tracing::warn!(filter, error = %e, "cannot subscribe");
        }
    }

    fn with_status(&self, f: impl FnOnce(&mut UplinkStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A message from the broker on a subscribed topic.
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Delivered from the broker's retained store rather than sent just now.
    pub retain: bool,
}

/// Builds the client options for `broker` (the config's [`MqttConfig::broker`]); errors name
/// the config key.
pub fn options(
    config: &MqttConfig,
    broker: &Broker,
    device_id: &str,
    window: u16,
) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(
        format!("heldar-{device_id}"),
        broker.host.clone(),
        broker.port,
    );
    o.set_clean_session(false)
        .set_keep_alive(config.keep_alive.get().max(Duration::from_secs(5)))
        .set_inflight(window)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_last_will(LastWill::new(
            format!("{}/{device_id}/availability", config.prefix),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &config.username {
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        o.set_credentials(user.clone(), password);
    }
    if broker.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            tls_config(config)?,
        ))));
    }
    Ok(o)
}

/// rustls with ring only; roots from `ca_file`, or the system's when there is none.
fn tls_config(config: &MqttConfig) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("mqtt.ca_file: cannot read {}: {e}", path.display())
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    anyhow::anyhow!("mqtt.ca_file: {} is not PEM: {e}", path.display())
                })?;
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!("mqtt.ca_file: {}: bad certificate: {e}", path.display())
                })?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "mqtt.ca_file: {} holds no certificate",
                path.display()
            );
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "mqtt.ca_file is not set and the system has no CA certificates"
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&config.client_cert_file, &config.client_key) {
        (Some(cert_path), Some(key)) => {
            let pem = std::fs::read(cert_path).map_err(|e| {
                anyhow::anyhow!(
                    "mqtt.client_cert_file: cannot read {}: {e}",
                    cert_path.display()
                )
            })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("mqtt.client_cert_file: not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|_| anyhow::anyhow!("mqtt.client_key_file: no PEM private key in it"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| anyhow::anyhow!("mqtt.client_cert_file: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Creates the session's client and link; [`drive`] must then run the event loop.
pub fn open(
    options: MqttOptions,
    status: Arc<Mutex<UplinkStatus>>,
    queue: usize,
) -> (Arc<Link>, EventLoop) {
    let (client, eventloop) = AsyncClient::new(options, queue);
    let link = Arc::new(Link {
        client,
        tracker: Mutex::default(),
        connection: watch::channel(None).0,
        status,
    });
    (link, eventloop)
}

/// Runs the event loop until `shutdown`: connects, reconnects forever with capped backoff,
/// matches acknowledgements and hands inbound messages to `inbound`.
pub async fn drive(
    link: Arc<Link>,
    mut eventloop: EventLoop,
    acker: Acker,
    inbound: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut connections = 0u64;
    link.with_status(|s| s.state = "connecting".into());
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                connections += 1;
                backoff = BACKOFF_MIN;
                link.with_status(|s| {
                    s.state = "connected".into();
                    s.connected_since = Some(Utc::now());
                    s.connects += 1;
                });
                tracing::info!(broker = %link.status.lock().unwrap_or_else(|e| e.into_inner()).broker, "MQTT connected");
                link.connection.send_replace(Some(connections));
            }
            Ok(event) => handle(&link, &acker, &inbound, event),
            Err(e) => {
                let message = describe(&e);
                let was_connected = link.connection.send_replace(None).is_some();
                recover(&link, &mut eventloop, &acker, &inbound);
                link.with_status(|s| {
                    s.state = "disconnected".into();
                    s.connected_since = None;
                    s.last_error = Some(message.clone());
                    s.last_error_at = Some(Utc::now());
                });
                if was_connected {
                    tracing::warn!(error = %message, "MQTT connection lost; reconnecting");
                } else {
                    tracing::debug!(error = %message, retry_in = ?backoff, "MQTT connect failed");
                }
                let jitter =
                    Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 4));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    link.connection.send_replace(None);
    // A clean goodbye would make the broker drop the last will; a stopping box should announce
    // `offline`, so the connection is just closed.
    link.with_status(|s| s.state = "disconnected".into());
}

fn handle(link: &Link, acker: &Acker, inbound: &mpsc::Sender<Inbound>, event: Event) {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
            let mut t = link.tracker.lock().unwrap_or_else(|e| e.into_inner());
            match t.queued.pop_front() {
                Some(tag) => {
                    t.inflight.insert(pkid, (tag, Instant::now()));
                }
                None => {
                    tracing::error!(pkid, "MQTT publish written that the uplink did not request")
                }
            }
        }
        Event::Incoming(Incoming::PubAck(ack)) => {
            let tag = link
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .inflight
                .remove(&ack.pkid);
            if let Some((Tag::Record(seq), written)) = tag {
                acker.ack(seq);
                INSTRUMENTS.mqtt_acks.inc();
                INSTRUMENTS
                    .mqtt_publish_seconds
                    .observe(written.elapsed().as_secs_f64());
                link.with_status(|s| {
                    s.events_acked += 1;
                    s.last_puback_at = Some(Utc::now());
                });
            }
        }
        Event::Incoming(Incoming::Publish(p)) => {
            let message = Inbound {
                retain: p.retain,
                topic: p.topic,
                payload: p.payload.to_vec(),
            };
            if inbound.try_send(message).is_err() {
                tracing::warn!("MQTT command queue full; a command was dropped");
            }
        }
        _ => {}
    }
}

/// After a connection loss: settle the events rumqttc still holds, then drop everything it
/// would replay and forget the pairings; the outbox resends from its cursor.
///
/// rumqttc's connection state is replaced by a fresh one here. Its packet ids run 1..=window and
/// are shared with subscribes and with publishes that are not outbox records, so after a
/// reconnect (subscribes, retained state, a window of records) or with a broker that is slow to
/// acknowledge one publish, the next id can still be in flight: rumqttc parks that publish as a
/// "collision" and takes no more requests until the id is acknowledged. rumqttc 0.25.1 (the
/// latest release) keeps the parked publish across `clean()`, and since the uplink drops
/// rumqttc's replays, the acknowledgement that would release it never comes: the next
/// connection sends nothing, pings out after two keep-alives, and does the same again for ever.
/// Sizing the window cannot rule collisions out, because subscribes and non-record publishes
/// are not bounded by the outbox window and one withheld acknowledgement is enough; a fresh state
/// per connection makes any collision end with its connection, and nothing stale (collision,
/// packet-id counter, in-flight slots) reaches the next one.
fn recover(link: &Link, eventloop: &mut EventLoop, acker: &Acker, inbound: &mpsc::Sender<Inbound>) {
    let buffered: Vec<Event> = eventloop.state.events.drain(..).collect();
    for event in buffered {
        handle(link, acker, inbound, event);
    }
    // The parked publish was never written and was requested before everything in `pending`
    // and the request channel, so its tag leads theirs in `queued` and goes with them.
    let parked = usize::from(eventloop.state.collision.is_some());
    eventloop.state = MqttState::new(
        eventloop.mqtt_options.inflight(),
        eventloop.mqtt_options.manual_acks(),
    );
    let never_written = parked
        + eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.qos != QoS::AtMostOnce && p.pkid == 0))
            .count();
    eventloop.pending.clear();
    let mut t = link.tracker.lock().unwrap_or_else(|e| e.into_inner());
    let had_work = never_written > 0 || !t.inflight.is_empty();
    // Requests drained into `pending` are the oldest queued ones; later ones are still in the
    // request channel and will be written on the next connection, in order.
    for _ in 0..never_written.min(t.queued.len()) {
        t.queued.pop_front();
    }
    t.inflight.clear();
    if had_work {
        acker.restart();
    }
}

/// A connection error in words an operator can act on, without secrets.
fn describe(e: &ConnectionError) -> String {
    let text = match e {
        ConnectionError::ConnectionRefused(code) => {
            format!(
                "broker refused the connection: {code:?} (check mqtt.username and mqtt.password_file)"
            )
        }
        ConnectionError::Io(io) => format!("network: {io}"),
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        ConnectionError::NetworkTimeout => "network timeout while connecting".into(),
        other => other.to_string(),
    };
    redact_url(&text)
}
