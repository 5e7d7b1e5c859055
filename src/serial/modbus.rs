//! The alarm I/O board over Modbus RTU (tokio-modbus on tokio-serial): polls discrete inputs,
//! debounces them into `alarm` outbox records, and drives relay coils, including pulses whose
//! end is persisted (`relay_pulses`) so a relay goes off on time even across a restart.
//!
//! Input and relay N are discrete input and coil address N - 1. One task owns the port; relay
//! requests reach it through a channel and are served between polls, so the bus never sees
//! two requests at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;

use super::SerialError;
use super::port::{self, BACKOFF_MIN, Counted, PortStatus, StatusCell};
use crate::config::model::SerialConfig;
use crate::config::rules::RelayOp;
use crate::outbox::{self, Kind, NewRecord, Outbox};
use crate::store::{Store, StoreError};

/// After this many requests in a row without a valid answer the port is closed and reopened
/// (after a backoff): a replaced USB adapter or pty answers only on a fresh open.
const REOPEN_AFTER_FAILURES: u32 = 5;

/// A request for the board's task.
pub enum IoRequest {
    Relay {
        relay: u16,
        op: RelayOp,
        reply: oneshot::Sender<Result<(), SerialError>>,
    },
    /// `relay_pulses` changed behind the task's back (a rule's pulse): read it again.
    SyncPulses,
}

/// An input as `heldar io status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputState {
    pub input: u16,
    pub name: Option<String>,
    /// `None` until the first reading.
    pub active: Option<bool>,
    pub changed_at: Option<DateTime<Utc>>,
}

/// A relay as `heldar io status` shows it (read back from the board).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayState {
    pub relay: u16,
    pub on: Option<bool>,
    pub pulse_until: Option<DateTime<Utc>>,
}

/// Inputs and relays, shared with the API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoState {
    pub inputs: Vec<InputState>,
    pub relays: Vec<RelayState>,
}

/// One input's debouncing, and the changes of it not yet stored.
#[derive(Clone, Debug, Default)]
struct Debounced {
    stable: Option<bool>,
    candidate: Option<(bool, Instant)>,
    /// Debounced changes waiting for the store, oldest first. The stable state moves at once
    /// (the live view shows it), so without this queue a change whose write failed would never
    /// be seen again: it leaves only when its write committed.
    unsaved: VecDeque<Edge>,
}

/// A debounced change of an input, as it will be stored.
#[derive(Clone, Copy, Debug)]
struct Edge {
    active: bool,
    ts_ms: i64,
    /// Whether it is reported as an `alarm_in` record (not for the first reading after start).
    report: bool,
}

/// Unsaved changes kept per input while the store fails; past this the oldest are dropped
/// (with an error), so a dead disk cannot grow memory without bound.
const MAX_UNSAVED_EDGES: usize = 256;

impl Debounced {
    /// Feeds a reading; returns the new stable state when it changed for good.
    fn observe(&mut self, value: bool, now: Instant, hold: Duration) -> Option<bool> {
        match self.stable {
            None => {
                self.stable = Some(value);
                self.candidate = None;
                None
            }
            Some(s) if s == value => {
                self.candidate = None;
                None
            }
            Some(_) => match self.candidate {
                Some((v, since)) if v == value && now.duration_since(since) >= hold => {
                    self.stable = Some(value);
                    self.candidate = None;
                    Some(value)
                }
                Some((v, _)) if v == value => None,
                _ => {
                    self.candidate = Some((value, now));
                    if hold.is_zero() {
                        self.stable = Some(value);
                        self.candidate = None;
                        Some(value)
                    } else {
                        None
                    }
                }
            },
        }
    }
}

/// How a request failed.
enum Failure {
    /// The slave answered with an exception: it is alive, the request was wrong.
    Exception(String),
    /// No answer in time; the port stays open.
    Failed(String),
    /// An answer that made no valid frame: tokio-modbus's framing is out of step after it, so
    /// the port is reopened at once (no backoff: the device is fine).
    Resync(String),
    /// The device itself failed: reopen after a backoff.
    PortFailed(String),
}

/// How one request (or a step made of requests) ended.
type Outcome<T> = Result<T, Failure>;

/// Why a session on an open port ended.
enum Ended {
    Shutdown,
    /// Reopen after a backoff.
    Reopen(String),
    /// Reopen now.
    Resync,
}

/// An answer of the wrong shape, filed with the unreadable ones.
fn wrong_shape(what: &str) -> tokio_modbus::Error {
    tokio_modbus::Error::Transport(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("answer to {what} does not match the request"),
    ))
}

/// Reads `count` discrete inputs or coils from address 0, checking the answer's shape here
/// (tokio-modbus only debug-asserts it, which would panic the board task on a bad slave).
async fn read_bits(
    ctx: &mut Context,
    discrete: bool,
    count: u16,
) -> Result<Result<Vec<bool>, ExceptionCode>, tokio_modbus::Error> {
    let request = if discrete {
        Request::ReadDiscreteInputs(0, count)
    } else {
        Request::ReadCoils(0, count)
    };
    match ctx.call(request).await? {
        Ok(Response::ReadDiscreteInputs(mut bits) | Response::ReadCoils(mut bits))
            if bits.len() >= usize::from(count) =>
        {
            bits.truncate(usize::from(count));
            Ok(Ok(bits))
        }
        Ok(_) => Err(wrong_shape("a read")),
        Err(exception) => Ok(Err(exception)),
    }
}

/// Writes one coil and checks the echo.
async fn write_bit(
    ctx: &mut Context,
    address: u16,
    on: bool,
) -> Result<Result<(), ExceptionCode>, tokio_modbus::Error> {
    match ctx.call(Request::WriteSingleCoil(address, on)).await? {
        Ok(Response::WriteSingleCoil(a, v)) if a == address && v == on => Ok(Ok(())),
        Ok(_) => Err(wrong_shape("a coil write")),
        Err(exception) => Ok(Err(exception)),
    }
}

/// The board's task.
pub struct IoBoard {
    pub config: SerialConfig,
    pub store: Store,
    pub outbox: Outbox,
    pub status: StatusCell,
    pub state: Arc<Mutex<IoState>>,
    pub requests: mpsc::Receiver<IoRequest>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn at(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Records a pulse end inside the caller's transaction (also used by the rules executor, whose
/// action row is marked done in the same transaction).
pub fn schedule_pulse(c: &Connection, relay: u16, until_ms: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO relay_pulses (relay, until_ms) VALUES (?1, ?2)
         ON CONFLICT (relay) DO UPDATE SET until_ms = ?2",
        params![relay, until_ms],
    )?;
    Ok(())
}

impl IoBoard {
    pub fn initial_state(config: &SerialConfig) -> IoState {
        IoState {
            inputs: (1..=config.inputs)
                .map(|n| InputState {
                    input: n,
                    name: config.input_names.get(usize::from(n) - 1).cloned(),
                    active: None,
                    changed_at: None,
                })
                .collect(),
            relays: (1..=config.relays)
                .map(|n| RelayState {
                    relay: n,
                    on: None,
                    pulse_until: None,
                })
                .collect(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut inputs = match self.load_inputs().await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(port = %self.config.name, error = %e, "cannot read the last input states");
                vec![Debounced::default(); usize::from(self.config.inputs)]
            }
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            let failure = match port::open(&self.config) {
                Ok(stream) => {
                    backoff = BACKOFF_MIN;
                    self.status.update(|s| {
                        s.state = "open".into();
                        s.opens += 1;
                    });
                    tracing::info!(port = %self.config.name, device = %self.config.device.display(), "I/O board port open");
                    let (counted, received) = Counted::new(stream);
                    let mut ctx =
                        tokio_modbus::client::rtu::attach_slave(counted, Slave(self.unit()));
                    match self
                        .session(&mut ctx, &received, &mut inputs, &shutdown)
                        .await
                    {
                        Ended::Shutdown => return,
                        Ended::Resync => continue,
                        Ended::Reopen(why) => why,
                    }
                }
                Err(e) => {
                    let message = format!("cannot open {}: {e}", self.config.device.display());
                    self.status.error(|s| &mut s.port_errors, message.clone());
                    message
                }
            };
            self.status.update(|s| s.state = "unavailable".into());
            tracing::warn!(port = %self.config.name, error = %failure, retry_in = ?backoff, "I/O board unavailable; retrying");
            let (wait, next) = port::next_backoff(backoff);
            backoff = next;
            let deadline = tokio::time::Instant::now() + wait;
            // While closed, requests are answered at once rather than left waiting.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    r = self.requests.recv() => match r {
                        Some(IoRequest::Relay { reply, .. }) => {
                            let _ = reply.send(Err(SerialError::Unavailable(format!(
                                "port {} is unavailable: {failure}", self.config.name
                            ))));
                        }
                        Some(IoRequest::SyncPulses) => {}
                        None => return,
                    },
                }
            }
        }
    }

    fn unit(&self) -> u8 {
        self.config.unit.unwrap_or(1)
    }

    async fn load_inputs(&self) -> Result<Vec<Debounced>, StoreError> {
        let n = usize::from(self.config.inputs);
        let rows: Vec<(u16, bool, i64)> = self
            .store
            .read(|c| {
                let mut stmt =
                    c.prepare("SELECT input, active, changed_at_ms FROM alarm_inputs")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok::<_, StoreError>(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        let mut inputs = vec![Debounced::default(); n];
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (input, active, changed) in rows {
            let i = usize::from(input);
            if (1..=n).contains(&i) {
                inputs[i - 1].stable = Some(active);
                state.inputs[i - 1].active = Some(active);
                state.inputs[i - 1].changed_at = at(changed);
            }
        }
        Ok(inputs)
    }

    /// The stored pulses. Rows for relays this board does not have (a smaller config) are
    /// dropped; an end more than an hour ahead (a clock that jumped back) is cut to an hour.
    async fn load_pulses(&self) -> Result<BTreeMap<u16, i64>, StoreError> {
        let relays = self.config.relays;
        let rows: Vec<(u16, i64)> = self
            .store
            .write(move |c| {
                c.execute(
                    "DELETE FROM relay_pulses WHERE relay < 1 OR relay > ?1",
                    [relays],
                )?;
                let mut stmt = c.prepare("SELECT relay, until_ms FROM relay_pulses")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok::<_, StoreError>(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        let latest = now_ms() + 3_600_000;
        Ok(rows
            .into_iter()
            .map(|(relay, until)| (relay, until.min(latest)))
            .collect())
    }

    /// Runs one request with the configured answer timeout and files its outcome.
    async fn call<T>(
        &self,
        received: &AtomicU64,
        what: &str,
        request: impl Future<Output = tokio_modbus::Result<T>>,
    ) -> Outcome<T> {
        if let Some(quiet) = port::turnaround(&self.config) {
            tokio::time::sleep(quiet).await;
        }
        let before = received.load(Ordering::Relaxed);
        let timeout = self.config.response_timeout.get();
        let bad_frame: fn(&mut PortStatus) -> &mut u64 = |s| &mut s.bad_frames;
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(Ok(v))) => {
                self.status.update(|s| s.requests_ok += 1);
                Ok(v)
            }
            Ok(Ok(Err(exception))) => {
                let m = format!("{what}: the board answered with exception {exception:?}");
                self.status.error(|s| &mut s.exceptions, m.clone());
                Err(Failure::Exception(m))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                let m = format!("{what}: answer does not match the request ({e})");
                self.status.error(bad_frame, m.clone());
                Err(Failure::Resync(m))
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                let m = format!("{what}: unreadable answer ({e})");
                self.status.error(bad_frame, m.clone());
                Err(Failure::Resync(m))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                let m = format!("{what}: device error: {e}");
                self.status.error(|s| &mut s.port_errors, m.clone());
                Err(Failure::PortFailed(m))
            }
            Err(_) if received.load(Ordering::Relaxed) > before => {
                let m = format!(
                    "{what}: no valid answer within {} (bytes came back: CRC error, garbage or a truncated frame)",
                    self.config.response_timeout
                );
                self.status.error(bad_frame, m.clone());
                Err(Failure::Failed(m))
            }
            Err(_) => {
                let m = format!(
                    "{what}: unit {} did not answer within {}",
                    self.unit(),
                    self.config.response_timeout
                );
                self.status.error(|s| &mut s.timeouts, m.clone());
                Err(Failure::Failed(m))
            }
        }
    }

    async fn session(
        &mut self,
        ctx: &mut Context,
        received: &AtomicU64,
        inputs: &mut [Debounced],
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut failures = 0u32;
        let mut pulses = Pulses::default();
        match self.load_pulses().await {
            Ok(stored) => pulses.merge(stored),
            Err(e) => return Ended::Reopen(format!("cannot read relay pulses: {e}")),
        }
        let mut poll = tokio::time::interval(self.config.poll_interval.get());
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Pulses first: an end that is due must not wait behind polls.
            let wake = pulses.next_wake();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.stop_pulses(ctx, received, &pulses).await;
                    return Ended::Shutdown;
                }
                request = self.requests.recv() => match request {
                    None => return Ended::Shutdown,
                    Some(IoRequest::SyncPulses) => match self.load_pulses().await {
                        Ok(stored) => {
                            pulses.merge(stored);
                            Ok(())
                        }
                        Err(e) => return Ended::Reopen(format!("cannot read relay pulses: {e}")),
                    },
                    Some(IoRequest::Relay { relay, op, reply }) => {
                        let (result, outcome) = self.relay(ctx, received, &mut pulses, relay, op).await;
                        let _ = reply.send(result);
                        outcome
                    }
                },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                    self.drive_pulses(ctx, received, &mut pulses).await
                }
                _ = poll.tick() => self.poll(ctx, received, inputs).await,
            };
            match outcome {
                Ok(()) | Err(Failure::Exception(_)) => failures = 0,
                Err(Failure::Failed(why)) => {
                    failures += 1;
                    if failures >= REOPEN_AFTER_FAILURES {
                        return Ended::Reopen(format!(
                            "{failures} requests in a row without a valid answer; last: {why}"
                        ));
                    }
                }
                Err(Failure::Resync(_)) => return Ended::Resync,
                Err(Failure::PortFailed(why)) => return Ended::Reopen(why),
            }
        }
    }

    /// Reads inputs (and coils, for the status), debounces, reports changes.
    async fn poll(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        inputs: &mut [Debounced],
    ) -> Outcome<()> {
        let n = self.config.inputs;
        if n > 0 {
            let values = match self
                .call(received, "reading inputs", read_bits(ctx, true, n))
                .await
            {
                Ok(v) => v,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let hold = self.config.debounce.get();
            for (i, value) in values.into_iter().take(usize::from(n)).enumerate() {
                let first = inputs[i].stable.is_none();
                let changed = inputs[i].observe(value, now, hold);
                if first || changed.is_some() {
                    let edge = Edge {
                        active: value,
                        ts_ms: now_ms(),
                        report: changed.is_some(),
                    };
                    self.show_input(i as u16 + 1, edge);
                    let unsaved = &mut inputs[i].unsaved;
                    if unsaved.len() >= MAX_UNSAVED_EDGES {
                        unsaved.pop_front();
                        tracing::error!(
                            input = i + 1,
                            "the store has failed for too long: the oldest unsaved alarm input change is dropped"
                        );
                    }
                    unsaved.push_back(edge);
                }
            }
            self.save_inputs(inputs).await;
        }
        let relays = self.config.relays;
        if relays > 0 {
            match self
                .call(received, "reading relays", read_bits(ctx, false, relays))
                .await
            {
                Ok(coils) => {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    for (r, on) in state.relays.iter_mut().zip(coils) {
                        r.on = Some(on);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shows a debounced change in the live state the API reads.
    fn show_input(&self, input: u16, edge: Edge) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = state.inputs.get_mut(usize::from(input) - 1) {
            s.active = Some(edge.active);
            s.changed_at = at(edge.ts_ms);
        }
    }

    /// Stores every unsaved change, in order; stops at the first failure and leaves the rest
    /// for the next poll, so an edge is stored once the store works again.
    async fn save_inputs(&self, inputs: &mut [Debounced]) {
        for (i, input) in inputs.iter_mut().enumerate() {
            while let Some(edge) = input.unsaved.front().copied() {
                if let Err(e) = self.store_input(i as u16 + 1, edge).await {
                    tracing::error!(input = i + 1, error = %e, "cannot store an alarm input change; retrying");
                    return;
                }
                input.unsaved.pop_front();
            }
        }
    }

    /// Persists a debounced input state; with `report`, also as an `alarm_in` outbox record in
    /// the same transaction.
    async fn store_input(&self, input: u16, edge: Edge) -> Result<(), StoreError> {
        let name = self.config.input_names.get(usize::from(input) - 1).cloned();
        let board = self.config.name.clone();
        let Edge {
            active,
            ts_ms: ts,
            report,
        } = edge;
        let result = self
            .store
            .write(move |c| {
                c.execute(
                    "INSERT INTO alarm_inputs (input, active, changed_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (input) DO UPDATE SET active = ?2, changed_at_ms = ?3",
                    params![input, active, ts],
                )?;
                if report {
                    outbox::append(
                        c,
                        &NewRecord {
                            kind: Kind::Alarm,
                            r#type: "alarm_in".into(),
                            camera_id: None,
                            ts_ms: ts,
                            payload: json!({
                                "board": board,
                                "input": input,
                                "name": name,
                                "state": if active { "on" } else { "off" },
                                "active": active,
                            }),
                        },
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .await;
        if result.is_ok() && report {
            self.outbox.appended();
            tracing::info!(port = %self.config.name, input, active, "alarm input changed");
        }
        result
    }

    async fn write_coil(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        relay: u16,
        on: bool,
    ) -> Outcome<()> {
        let what = format!("relay {relay} {}", if on { "on" } else { "off" });
        let outcome = self
            .call(received, &what, write_bit(ctx, relay - 1, on))
            .await;
        if let Ok(()) = outcome {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = state.relays.get_mut(usize::from(relay) - 1) {
                r.on = Some(on);
            }
        }
        outcome
    }

    /// Serves a relay request: the answer, and how the bus behaved.
    async fn relay(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        pulses: &mut Pulses,
        relay: u16,
        op: RelayOp,
    ) -> (Result<(), SerialError>, Outcome<()>) {
        if relay == 0 || relay > self.config.relays {
            let e = SerialError::NoSuchRelay {
                relay,
                relays: self.config.relays,
            };
            return (Err(e), Ok(()));
        }
        match op {
            RelayOp::On | RelayOp::Off => {
                // The coil first: if it fails, a running pulse keeps its end and still ends.
                let on = op == RelayOp::On;
                let outcome = self.write_coil(ctx, received, relay, on).await;
                if let Ok(()) = outcome {
                    if let Err(e) = self.forget_pulse(relay, i64::MAX).await {
                        return (Err(SerialError::Store(e)), Ok(()));
                    }
                    pulses.remove(relay);
                    self.set_pulse_state(relay, None);
                    tracing::info!(port = %self.config.name, relay, op = %op, "relay set");
                }
                (answer(&outcome), outcome)
            }
            RelayOp::Pulse(d) => {
                // The end is stored before the relay goes on: a crash in between leaves a
                // relay that is off with a pulse that ends on time, never one left on.
                let until = now_ms() + d.get().as_millis() as i64;
                let stored = self
                    .store
                    .write(move |c| Ok::<_, StoreError>(schedule_pulse(c, relay, until)?))
                    .await;
                if let Err(e) = stored {
                    return (Err(SerialError::Store(e)), Ok(()));
                }
                let outcome = self.write_coil(ctx, received, relay, true).await;
                match outcome {
                    Ok(()) => {
                        pulses.insert(relay, until, true);
                        self.set_pulse_state(relay, Some(until));
                        tracing::info!(port = %self.config.name, relay, op = %op, "relay pulse started");
                    }
                    // Not started: the caller is told, and no late pulse follows.
                    _ => {
                        if let Err(e) = self.forget_pulse(relay, until).await {
                            tracing::error!(relay, error = %e, "cannot drop a pulse that did not start");
                        }
                    }
                }
                (answer(&outcome), outcome)
            }
        }
    }

    /// Deletes the stored pulse of `relay` if it ends at or before `until`.
    async fn forget_pulse(&self, relay: u16, until: i64) -> Result<(), StoreError> {
        self.store
            .write(move |c| {
                c.execute(
                    "DELETE FROM relay_pulses WHERE relay = ?1 AND until_ms <= ?2",
                    params![relay, until],
                )?;
                Ok::<_, StoreError>(())
            })
            .await
    }

    fn set_pulse_state(&self, relay: u16, until: Option<i64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = state.relays.get_mut(usize::from(relay) - 1) {
            r.pulse_until = until.and_then(at);
        }
    }

    /// Starts pulses not yet on, ends those that are due; failures retry a second later.
    async fn drive_pulses(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        pulses: &mut Pulses,
    ) -> Outcome<()> {
        let now = Instant::now();
        let due: Vec<(u16, Pulse)> = pulses
            .0
            .iter()
            .filter(|(_, p)| p.next_try <= now && (!p.on || p.until_ms <= now_ms()))
            .map(|(r, p)| (*r, *p))
            .collect();
        for (relay, pulse) in due {
            let ending = pulse.until_ms <= now_ms();
            let outcome = self.write_coil(ctx, received, relay, !ending).await;
            match outcome {
                Ok(()) if ending => {
                    if let Err(e) = self.forget_pulse(relay, pulse.until_ms).await {
                        tracing::error!(relay, error = %e, "cannot clear a finished pulse");
                    }
                    pulses.remove(relay);
                    self.set_pulse_state(relay, None);
                    tracing::info!(port = %self.config.name, relay, "pulse ended");
                }
                Ok(()) => {
                    pulses.insert(relay, pulse.until_ms, true);
                    self.set_pulse_state(relay, Some(pulse.until_ms));
                }
                Err(Failure::Exception(m)) => {
                    // The board refuses this coil: retrying will not help.
                    tracing::error!(port = %self.config.name, relay, error = %m, "the board refuses the pulse's relay; pulse dropped");
                    if let Err(e) = self.forget_pulse(relay, pulse.until_ms).await {
                        tracing::error!(relay, error = %e, "cannot drop a refused pulse");
                    }
                    pulses.remove(relay);
                    self.set_pulse_state(relay, None);
                }
                other => {
                    pulses.retry_later(relay);
                    return other;
                }
            }
        }
        Ok(())
    }

    /// On the way out, pulsing relays go off (a siren should not sound while the daemon is
    /// down); their rows stay, so a restart before the end turns them on again.
    async fn stop_pulses(&self, ctx: &mut Context, received: &AtomicU64, pulses: &Pulses) {
        for (&relay, pulse) in &pulses.0 {
            if pulse.on {
                let _ = self.write_coil(ctx, received, relay, false).await;
            }
        }
    }
}

/// The reply to a relay request from how its coil write went.
fn answer(outcome: &Outcome<()>) -> Result<(), SerialError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(Failure::Exception(m))
        | Err(Failure::Failed(m))
        | Err(Failure::Resync(m))
        | Err(Failure::PortFailed(m)) => Err(SerialError::Device(m.clone())),
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// A running pulse.
#[derive(Clone, Copy, Debug)]
struct Pulse {
    until_ms: i64,
    /// The relay was confirmed on.
    on: bool,
    /// No bus attempt before this (a failed write waits a second).
    next_try: Instant,
}

/// The pulses the board is driving, by relay.
#[derive(Debug, Default)]
struct Pulses(BTreeMap<u16, Pulse>);

impl Pulses {
    fn insert(&mut self, relay: u16, until_ms: i64, on: bool) {
        self.0.insert(
            relay,
            Pulse {
                until_ms,
                on,
                next_try: Instant::now(),
            },
        );
    }

    fn remove(&mut self, relay: u16) {
        self.0.remove(&relay);
    }

    fn retry_later(&mut self, relay: u16) {
        if let Some(p) = self.0.get_mut(&relay) {
            p.next_try = Instant::now() + Duration::from_secs(1);
        }
    }

    /// Takes the stored pulses: new or changed ones must be (re)asserted, gone ones are dropped.
    fn merge(&mut self, stored: BTreeMap<u16, i64>) {
        self.0.retain(|relay, _| stored.contains_key(relay));
        for (relay, until_ms) in stored {
            let known = self.0.get(&relay).is_some_and(|p| p.until_ms == until_ms);
            if !known {
                self.insert(relay, until_ms, false);
            }
        }
    }

    /// When the next bus action is due.
    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let now_ms = now_ms();
        self.0
            .values()
            .map(|p| {
                let end = if p.on {
                    Instant::now()
                        + Duration::from_millis(u64::try_from(p.until_ms - now_ms).unwrap_or(0))
                } else {
                    Instant::now()
                };
                end.max(p.next_try)
            })
            .min()
            .map(tokio::time::Instant::from_std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_needs_the_new_state_to_hold() {
        let hold = Duration::from_millis(100);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounced::default();
        assert_eq!(
            d.observe(false, ms(0), hold),
            None,
            "first reading sets the state"
        );
        assert_eq!(d.observe(true, ms(10), hold), None);
        assert_eq!(d.observe(false, ms(50), hold), None, "a blip is ignored");
        assert_eq!(d.observe(true, ms(60), hold), None);
        assert_eq!(d.observe(true, ms(120), hold), None, "held 60 ms only");
        assert_eq!(d.observe(true, ms(160), hold), Some(true));
        assert_eq!(d.observe(true, ms(300), hold), None, "reported once");
        assert_eq!(d.observe(false, ms(310), hold), None);
        assert_eq!(d.observe(false, ms(410), hold), Some(false));
    }
}
