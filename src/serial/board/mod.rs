//! The alarm I/O board over Modbus RTU (tokio-modbus on tokio-serial): polls discrete inputs,
//! debounces them into `alarm` outbox records, and drives relay coils, including pulses whose
//! end is persisted (`relay_pulses`) so a relay goes off on time even across a restart.
//!
//! Input and relay N are discrete input and coil address N - 1. One task owns the port; relay
//! requests reach it through a channel and are served between polls, so the bus never sees
//! two requests at once.
//!
//! One job a file: [`wire`] the Modbus calls and how they fail, [`debounce`] the input
//! filter, [`pulses`] the relays and the `relay_pulses` table, [`inputs`] the `alarm_inputs`
//! table and the `alarm` records; this file the task that owns the port.

mod debounce;
mod inputs;
mod pulses;
mod wire;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::Slave;
use tokio_modbus::client::Context;
use tokio_util::sync::CancellationToken;

use super::SerialError;
use super::port::{self, BACKOFF_MIN, Counted, StatusCell};
use crate::config::model::SerialConfig;
use crate::config::rules::RelayOp;
use crate::outbox::Outbox;
use crate::store::Store;
use debounce::{Debounced, Edge, MAX_UNSAVED_EDGES};
pub use pulses::schedule_pulse;
use pulses::{Pulses, far_future};
use wire::{Failure, Outcome, read_bits};

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

/// Why a session on an open port ended.
enum Ended {
    Shutdown,
    /// Reopen after a backoff.
    Reopen(String),
    /// Reopen now.
    Resync,
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
}
