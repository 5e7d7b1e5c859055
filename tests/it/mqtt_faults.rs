//! MQTT faults between the box and a real mosquitto, made by a loopback TCP proxy that
//! understands just enough MQTT 3.1.1 framing to withhold one PUBACK and then cut the
//! connection (issue 13, item 2: a packet-id collision must not wedge the uplink).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixtures::{
    Broker, BrokerSetup, Sub, daemon_with_broker, events, outbox, post_batches, uplink_cursor,
    wait_all_delivered,
};
use crate::fixtures::{Daemon, wait_for};
use crate::fixtures::{Http, token};

/// The uplink's packet-id window (`uplink::WINDOW`): rumqttc hands out ids 1..=256.
const WINDOW: usize = 256;

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const UNSUBSCRIBE: u8 = 10;

/// One MQTT control packet as it travels: fixed header and body, unchanged.
struct Frame {
    bytes: Vec<u8>,
    /// Where the variable header starts.
    body: usize,
}

impl Frame {
    fn kind(&self) -> u8 {
        self.bytes[0] >> 4
    }

    fn u16_at(&self, at: usize) -> Option<u16> {
        let b = self.bytes.get(at..at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The packet id a client-to-broker packet takes from the client's counter, with the topic
    /// of a publish.
    fn client_packet_id(&self) -> Option<(u16, Option<String>)> {
        match self.kind() {
            PUBLISH => {
                let qos = (self.bytes[0] >> 1) & 3;
                let len = self.u16_at(self.body)? as usize;
                let topic_at = self.body + 2;
                let topic = self.bytes.get(topic_at..topic_at + len)?;
                let pkid = self.u16_at(topic_at + len)?;
                (qos > 0).then(|| (pkid, Some(String::from_utf8_lossy(topic).into_owned())))
            }
            SUBSCRIBE | UNSUBSCRIBE => Some((self.u16_at(self.body)?, None)),
            _ => None,
        }
    }
}

/// Reads one packet: the type byte, the remaining length (1 to 4 bytes, 7 bits each), the rest.
fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut bytes = vec![0u8];
    r.read_exact(&mut bytes[..1])?;
    let mut remaining = 0usize;
    for shift in 0..4 {
        let mut b = [0u8];
        r.read_exact(&mut b)?;
        bytes.push(b[0]);
        remaining |= ((b[0] & 0x7f) as usize) << (7 * shift);
        if b[0] & 0x80 == 0 {
            let body = bytes.len();
            bytes.resize(body + remaining, 0);
            r.read_exact(&mut bytes[body..])?;
            return Ok(Frame { bytes, body });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "remaining length longer than 4 bytes",
    ))
}

/// What the proxy did and saw, for the test's checks and its failure messages.
#[derive(Debug, Default)]
struct Fault {
    /// Broker connections are refused (closed at once) until the test opens the proxy.
    open: bool,
    /// Withhold the PUBACK of the next `<dev>/availability` publish.
    armed: bool,
    /// `(connection, packet id)` whose PUBACK is withheld.
    held: Option<(usize, u16)>,
    /// The fault is over: nothing more is withheld.
    cleared: bool,
    /// Distinct packet ids the client took after the held one, on the held connection.
    ids_after_hold: HashSet<u16>,
    last_publish: Option<Instant>,
    /// QoS 1 publishes the client sent, per connection.
    publishes: Vec<usize>,
}

/// A loopback TCP proxy in front of a broker.
struct Proxy {
    port: u16,
    fault: Arc<Mutex<Fault>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port; connections are refused until [`Proxy::open_with_fault`].
    fn start(broker_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            fault: Arc::default(),
            streams: Arc::default(),
            stop: Arc::default(),
        };
        let (fault, streams, stop) = (
            proxy.fault.clone(),
            proxy.streams.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let conn = {
                    let mut f = fault.lock().unwrap();
                    if !f.open {
                        continue;
                    }
                    f.publishes.push(0);
                    f.publishes.len() - 1
                };
                let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) else {
                    continue;
                };
                streams
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), broker.try_clone().unwrap()]);
                let (c2b_in, c2b_out) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
                let f = fault.clone();
                std::thread::spawn(move || client_to_broker(conn, c2b_in, c2b_out, &f));
                let f = fault.clone();
                std::thread::spawn(move || broker_to_client(conn, broker, client, &f));
            }
        });
        proxy
    }

    fn open_with_fault(&self) {
        let mut f = self.fault.lock().unwrap();
        f.open = true;
        f.armed = true;
    }

    /// The client took every other packet id after the held one and has published nothing
    /// for `quiet`: its next publish collides with the withheld one.
    fn stalled_on_collision(&self, quiet: Duration) -> bool {
        let f = self.fault.lock().unwrap();
        f.ids_after_hold.len() >= WINDOW - 1 && f.last_publish.is_some_and(|t| t.elapsed() >= quiet)
    }

    /// Cuts every connection and ends the fault: from now on the proxy passes everything.
    fn cut(&self) {
        self.fault.lock().unwrap().cleared = true;
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn report(&self) -> String {
        let f = self.fault.lock().unwrap();
        format!(
            "held {:?}, {} ids taken after it, publishes per connection {:?}",
            f.held,
            f.ids_after_hold.len(),
            f.publishes
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn client_to_broker(conn: usize, mut from: TcpStream, mut to: TcpStream, fault: &Mutex<Fault>) {
    while let Ok(frame) = read_frame(&mut from) {
        if let Some((pkid, topic)) = frame.client_packet_id() {
            // Noted before forwarding, so the broker cannot answer first.
            let mut f = fault.lock().unwrap();
            let is_publish = topic.is_some();
            if is_publish {
                f.publishes[conn] += 1;
            }
            match f.held {
                None if f.armed && topic.is_some_and(|t| t.ends_with("/availability")) => {
                    f.armed = false;
                    f.held = Some((conn, pkid));
                }
                Some((c, _)) if c == conn && !f.cleared => {
                    f.ids_after_hold.insert(pkid);
                    if is_publish {
                        f.last_publish = Some(Instant::now());
                    }
                }
                _ => {}
            }
        }
        if to.write_all(&frame.bytes).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn broker_to_client(conn: usize, mut from: TcpStream, mut to: TcpStream, fault: &Mutex<Fault>) {
    while let Ok(frame) = read_frame(&mut from) {
        if frame.kind() == PUBACK {
            let f = fault.lock().unwrap();
            if !f.cleared && f.held == frame.u16_at(frame.body).map(|id| (conn, id)) {
                continue;
            }
        }
        if to.write_all(&frame.bytes).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn uplink_status(d: &Daemon) -> Value {
    let out = d.cli(&["--json", "status"]);
    serde_json::from_slice::<Value>(&out.stdout).expect("status")["mqtt"].clone()
}

/// The seqs in the order they first reached the subscriber (repeats left out).
fn first_arrivals(sub: &Sub) -> Vec<i64> {
    let mut seen = HashSet::new();
    sub.all()
        .iter()
        .filter(|g| g.topic.contains("/events/") && !g.dup)
        .filter_map(|g| g.json()["seq"].as_i64())
        .filter(|seq| seen.insert(*seq))
        .collect()
}

/// The broker acknowledges in order, except one PUBACK (of the `availability` publish) that the
/// proxy withholds. With a backlog of more than a window, rumqttc's packet-id counter wraps onto
/// the withheld id and the next publish waits for it (a collision). The proxy then cuts the
/// connection and passes everything from then on. Every record, those posted after the cut
/// included, must reach the subscriber, first arrivals in `seq` order, and the cursor must reach
/// the end (invariant O3).
#[test]
fn a_withheld_puback_and_a_cut_connection_do_not_wedge_the_uplink() {
    let broker = Broker::start(BrokerSetup {
        persistence: true,
        ..Default::default()
    });
    let sub = Sub::start(broker.port, "counter", &["heldar/test/events/#"], true);
    let proxy = Proxy::start(broker.port);
    let mut d = daemon_with_broker(&format!("url = \"mqtt://127.0.0.1:{}\"", proxy.port));
    let http = Http::new(&d);
    let worker = token(&d, "worker");
    // A backlog of several windows, queued while the broker is unreachable.
    assert_eq!(
        post_batches(&http, &worker, "before", 4 * WINDOW, 4, None).len(),
        4 * WINDOW
    );
    proxy.open_with_fault();
    assert!(
        wait_for(Duration::from_secs(60), || proxy
            .stalled_on_collision(Duration::from_secs(1))
            .then_some(()))
        .is_some(),
        "the uplink did not run into the withheld packet id: {}",
        proxy.report()
    );
    let cursor_at_cut = uplink_cursor(&d);
    let acked_at_cut = uplink_status(&d)["events_acked"].as_u64().unwrap();
    let last_seq = *outbox(&d).keys().last().unwrap();
    assert!(
        cursor_at_cut < last_seq,
        "records were left to send at the cut (cursor {cursor_at_cut}, last {last_seq})"
    );
    let delivered_at_cut = events(&sub);
    assert!(
        (1..=cursor_at_cut).all(|seq| delivered_at_cut.contains_key(&seq)),
        "the cursor moved only over records the broker acknowledged"
    );
    proxy.cut();

    assert_eq!(
        post_batches(&http, &worker, "after", WINDOW, 2, None).len(),
        WINDOW
    );
    let missing = wait_all_delivered(&d, &sub, Duration::from_secs(40));
    let status = uplink_status(&d);
    assert!(
        missing.is_empty(),
        "{} of {} records never arrived after the fault cleared, e.g. {:?}; events_acked \
         {acked_at_cut} at the cut, {} now; proxy: {}",
        missing.len(),
        outbox(&d).len(),
        missing.first(),
        status["events_acked"],
        proxy.report()
    );
    let last_seq = *outbox(&d).keys().last().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || (uplink_cursor(&d) == last_seq)
            .then_some(()))
        .is_some(),
        "the cursor reaches the last record ({} of {last_seq})",
        uplink_cursor(&d)
    );
    assert!(
        uplink_status(&d)["events_acked"].as_u64().unwrap() > acked_at_cut,
        "acknowledgements resumed after the reconnect"
    );
    let order = first_arrivals(&sub);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "every record first arrives in seq order: {order:?}"
    );
    d.stop_and_check_db();
}
