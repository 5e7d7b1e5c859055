//! The alarm I/O board over Modbus RTU (tokio-modbus on tokio-serial): polls discrete inputs,
//! debounces them into `alarm` outbox records, and drives relay coils, including pulses whose
//! end is persisted (`relay_pulses`) so a relay goes off on time even across a restart.
//!
//! Input and relay N are discrete input and coil address N - 1. One task owns the port; relay
//! requests reach it through a channel and are served between polls, so the bus never sees
//! two requests at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::*;
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

/// One input's debouncing.
#[derive(Clone, Copy, Debug, Default)]
struct Debounced {
    stable: Option<bool>,
    candidate: Option<(bool, Instant)>,
}

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

/// How one request ended.
enum Outcome<T> {
    Ok(T),
    /// The slave answered with an exception: it is alive, the request was wrong.
    Exception(String),
    /// No valid answer (timeout or bad frame); the port stays open.
    Failed(String),
    /// The device itself failed: reopen.
    PortFailed(String),
}

/// Why a session on an open port ended.
enum Ended {
    Shutdown,
    Reopen(String),
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

    async fn load_pulses(&self) -> Result<BTreeMap<u16, i64>, StoreError> {
        self.store
            .read(|c| {
                let mut stmt = c.prepare("SELECT relay, until_ms FROM relay_pulses")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok::<_, StoreError>(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Runs one request with the configured answer timeout and files its outcome.
    async fn call<T>(
        &self,
        received: &AtomicU64,
        what: &str,
        request: impl Future<Output = tokio_modbus::Result<T>>,
    ) -> Outcome<T> {
        let before = received.load(Ordering::Relaxed);
        let timeout = self.config.response_timeout.get();
        let bad_frame: fn(&mut PortStatus) -> &mut u64 = |s| &mut s.bad_frames;
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(Ok(v))) => {
                self.status.update(|s| s.requests_ok += 1);
                Outcome::Ok(v)
            }
            Ok(Ok(Err(exception))) => {
                let m = format!("{what}: the board answered with exception {exception:?}");
                self.status.error(|s| &mut s.exceptions, m.clone());
                Outcome::Exception(m)
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                let m = format!("{what}: answer does not match the request ({e})");
                self.status.error(bad_frame, m.clone());
                Outcome::Failed(m)
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                let m = format!("{what}: unreadable answer ({e})");
                self.status.error(bad_frame, m.clone());
                Outcome::Failed(m)
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                let m = format!("{what}: device error: {e}");
                self.status.error(|s| &mut s.port_errors, m.clone());
                Outcome::PortFailed(m)
            }
            Err(_) if received.load(Ordering::Relaxed) > before => {
                let m = format!(
                    "{what}: no valid answer within {} (bytes came back: CRC error, garbage or a truncated frame)",
                    self.config.response_timeout
                );
                self.status.error(bad_frame, m.clone());
                Outcome::Failed(m)
            }
            Err(_) => {
                let m = format!(
                    "{what}: unit {} did not answer within {}",
                    self.unit(),
                    self.config.response_timeout
                );
                self.status.error(|s| &mut s.timeouts, m.clone());
                Outcome::Failed(m)
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
        let mut pulses = self.load_pulses().await.unwrap_or_default();
        // Pulses that ended while the daemon was down end now; running ones are asserted again.
        if let Err(why) = self.assert_pulses(ctx, received, &mut pulses).await {
            return Ended::Reopen(why);
        }
        let mut poll = tokio::time::interval(self.config.poll_interval.get());
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_pulse_end = pulses.values().min().copied();
            let until_pulse = next_pulse_end
                .map(|end| Duration::from_millis(u64::try_from(end - now_ms()).unwrap_or(0)));
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                request = self.requests.recv() => match request {
                    None => return Ended::Shutdown,
                    Some(IoRequest::SyncPulses) => {
                        pulses = self.load_pulses().await.unwrap_or(pulses);
                        if let Err(why) = self.assert_pulses(ctx, received, &mut pulses).await {
                            return Ended::Reopen(why);
                        }
                    }
                    Some(IoRequest::Relay { relay, op, reply }) => {
                        let (result, port_failed) = self.relay(ctx, received, &mut pulses, relay, op).await;
                        let _ = reply.send(result);
                        if let Some(why) = port_failed {
                            return Ended::Reopen(why);
                        }
                    }
                },
                _ = tokio::time::sleep(until_pulse.unwrap_or(Duration::from_secs(3600))), if until_pulse.is_some() => {
                    if let Err(why) = self.end_due_pulses(ctx, received, &mut pulses).await {
                        return Ended::Reopen(why);
                    }
                }
                _ = poll.tick() => {
                    match self.poll(ctx, received, inputs).await {
                        Outcome::Ok(()) | Outcome::Exception(_) => failures = 0,
                        Outcome::Failed(why) => {
                            failures += 1;
                            if failures >= REOPEN_AFTER_FAILURES {
                                return Ended::Reopen(format!("{failures} requests in a row without a valid answer; last: {why}"));
                            }
                        }
                        Outcome::PortFailed(why) => return Ended::Reopen(why),
                    }
                }
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
                .call(received, "reading inputs", ctx.read_discrete_inputs(0, n))
                .await
            {
                Outcome::Ok(v) => v,
                Outcome::Exception(m) => return Outcome::Exception(m),
                Outcome::Failed(m) => return Outcome::Failed(m),
                Outcome::PortFailed(m) => return Outcome::PortFailed(m),
            };
            let now = Instant::now();
            let hold = self.config.debounce.get();
            for (i, value) in values.into_iter().take(usize::from(n)).enumerate() {
                let first = inputs[i].stable.is_none();
                let changed = inputs[i].observe(value, now, hold);
                if first || changed.is_some() {
                    self.input_changed(i as u16 + 1, value, changed.is_some())
                        .await;
                }
            }
        }
        let relays = self.config.relays;
        if relays > 0 {
            match self
                .call(received, "reading relays", ctx.read_coils(0, relays))
                .await
            {
                Outcome::Ok(coils) => {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    for (r, on) in state.relays.iter_mut().zip(coils) {
                        r.on = Some(on);
                    }
                }
                Outcome::Exception(m) => return Outcome::Exception(m),
                Outcome::Failed(m) => return Outcome::Failed(m),
                Outcome::PortFailed(m) => return Outcome::PortFailed(m),
            }
        }
        Outcome::Ok(())
    }

    /// Persists a debounced input state; with `report`, also as an `alarm_in` outbox record in
    /// the same transaction.
    async fn input_changed(&self, input: u16, active: bool, report: bool) {
        let name = self.config.input_names.get(usize::from(input) - 1).cloned();
        let board = self.config.name.clone();
        let ts = now_ms();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = state.inputs.get_mut(usize::from(input) - 1) {
                s.active = Some(active);
                s.changed_at = at(ts);
            }
        }
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
        match result {
            Ok(()) if report => {
                self.outbox.appended();
                tracing::info!(port = %self.config.name, input, active, "alarm input changed");
            }
            Ok(()) => {}
            Err(e) => tracing::error!(input, error = %e, "cannot store an alarm input change"),
        }
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
            .call(received, &what, ctx.write_single_coil(relay - 1, on))
            .await;
        if let Outcome::Ok(()) = outcome {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = state.relays.get_mut(usize::from(relay) - 1) {
                r.on = Some(on);
            }
        }
        outcome
    }

    /// Serves a relay request. Returns the answer, and `Some(why)` when the port must reopen.
    async fn relay(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        pulses: &mut BTreeMap<u16, i64>,
        relay: u16,
        op: RelayOp,
    ) -> (Result<(), SerialError>, Option<String>) {
        if relay == 0 || relay > self.config.relays {
            return (
                Err(SerialError::NoSuchRelay {
                    relay,
                    relays: self.config.relays,
                }),
                None,
            );
        }
        // The pulse's end is stored before the relay goes on: a crash in between leaves a
        // relay that is off with a pulse that ends on time, never one that stays on.
        let until = match op {
            RelayOp::Pulse(d) => Some(now_ms() + d.get().as_millis() as i64),
            RelayOp::On | RelayOp::Off => None,
        };
        let persisted = self
            .store
            .write(move |c| {
                match until {
                    Some(until) => schedule_pulse(c, relay, until)?,
                    None => {
                        c.execute("DELETE FROM relay_pulses WHERE relay = ?1", [relay])?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await;
        if let Err(e) = persisted {
            return (Err(SerialError::Store(e)), None);
        }
        match until {
            Some(u) => pulses.insert(relay, u),
            None => pulses.remove(&relay),
        };
        self.set_pulse_state(relay, until);
        let on = !matches!(op, RelayOp::Off);
        match self.write_coil(ctx, received, relay, on).await {
            Outcome::Ok(()) => {
                tracing::info!(port = %self.config.name, relay, op = %op, "relay set");
                (Ok(()), None)
            }
            Outcome::Exception(m) | Outcome::Failed(m) => (Err(SerialError::Device(m)), None),
            Outcome::PortFailed(m) => (Err(SerialError::Device(m.clone())), Some(m)),
        }
    }

    fn set_pulse_state(&self, relay: u16, until: Option<i64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = state.relays.get_mut(usize::from(relay) - 1) {
            r.pulse_until = until.and_then(at);
        }
    }

    /// Ends pulses whose time has come and (re)asserts the running ones.
    async fn assert_pulses(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        pulses: &mut BTreeMap<u16, i64>,
    ) -> Result<(), String> {
        self.end_due_pulses(ctx, received, pulses).await?;
        for (&relay, &until) in pulses.iter() {
            self.set_pulse_state(relay, Some(until));
            if let Outcome::PortFailed(m) = self.write_coil(ctx, received, relay, true).await {
                return Err(m);
            }
        }
        Ok(())
    }

    async fn end_due_pulses(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        pulses: &mut BTreeMap<u16, i64>,
    ) -> Result<(), String> {
        let now = now_ms();
        let due: Vec<(u16, i64)> = pulses
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(r, u)| (*r, *u))
            .collect();
        for (relay, until) in due {
            match self.write_coil(ctx, received, relay, false).await {
                Outcome::Ok(()) => {
                    // Only an ended pulse's row: a newer pulse of the same relay keeps its own.
                    let done = self
                        .store
                        .write(move |c| {
                            c.execute(
                                "DELETE FROM relay_pulses WHERE relay = ?1 AND until_ms <= ?2",
                                params![relay, now.max(until)],
                            )?;
                            Ok::<_, StoreError>(())
                        })
                        .await;
                    if let Err(e) = done {
                        tracing::error!(relay, error = %e, "cannot clear a finished pulse");
                    }
                    pulses.remove(&relay);
                    self.set_pulse_state(relay, None);
                    tracing::info!(port = %self.config.name, relay, "pulse ended");
                }
                Outcome::PortFailed(m) => return Err(m),
                // Retried at the next wake-up (the pulse stays due).
                Outcome::Exception(_) | Outcome::Failed(_) => {
                    pulses.insert(relay, now + 200);
                }
            }
        }
        Ok(())
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
