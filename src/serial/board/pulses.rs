//! Relays: on, off and pulses, whose end is kept in `relay_pulses` so a relay goes off on time
//! even across a restart.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio_modbus::client::Context;

use super::wire::{Failure, Outcome};
use super::{IoBoard, at, now_ms};
use crate::config::rules::RelayOp;
use crate::serial::SerialError;
use crate::store::StoreError;

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

/// The reply to a relay request from how its coil write went.
pub(super) fn answer(outcome: &Outcome<()>) -> Result<(), SerialError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(Failure::Exception(m))
        | Err(Failure::Failed(m))
        | Err(Failure::Resync(m))
        | Err(Failure::PortFailed(m)) => Err(SerialError::Device(m.clone())),
    }
}

pub(super) fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// A running pulse.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pulse {
    pub(super) until_ms: i64,
    /// The relay was confirmed on.
    pub(super) on: bool,
    /// No bus attempt before this (a failed write waits a second).
    pub(super) next_try: Instant,
}

/// The pulses the board is driving, by relay.
#[derive(Debug, Default)]
pub(super) struct Pulses(BTreeMap<u16, Pulse>);

impl Pulses {
    pub(super) fn insert(&mut self, relay: u16, until_ms: i64, on: bool) {
        self.0.insert(
            relay,
            Pulse {
                until_ms,
                on,
                next_try: Instant::now(),
            },
        );
    }

    pub(super) fn remove(&mut self, relay: u16) {
        self.0.remove(&relay);
    }

    pub(super) fn retry_later(&mut self, relay: u16) {
        if let Some(p) = self.0.get_mut(&relay) {
            p.next_try = Instant::now() + Duration::from_secs(1);
        }
    }

    /// Takes the stored pulses: new or changed ones must be (re)asserted, gone ones are dropped.
    pub(super) fn merge(&mut self, stored: BTreeMap<u16, i64>) {
        self.0.retain(|relay, _| stored.contains_key(relay));
        for (relay, until_ms) in stored {
            let known = self.0.get(&relay).is_some_and(|p| p.until_ms == until_ms);
            if !known {
                self.insert(relay, until_ms, false);
            }
        }
    }

    /// When the next bus action is due.
    pub(super) fn next_wake(&self) -> Option<tokio::time::Instant> {
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

impl IoBoard {
    /// The stored pulses. Rows for relays this board does not have (a smaller config) are
    /// dropped; an end more than an hour ahead (a clock that jumped back) is cut to an hour.
    pub(super) async fn load_pulses(&self) -> Result<BTreeMap<u16, i64>, StoreError> {
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

    /// Serves a relay request: the answer, and how the bus behaved.
    pub(super) async fn relay(
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
    pub(super) async fn forget_pulse(&self, relay: u16, until: i64) -> Result<(), StoreError> {
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

    pub(super) fn set_pulse_state(&self, relay: u16, until: Option<i64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = state.relays.get_mut(usize::from(relay) - 1) {
            r.pulse_until = until.and_then(at);
        }
    }

    /// Starts pulses not yet on, ends those that are due; failures retry a second later.
    pub(super) async fn drive_pulses(
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
    pub(super) async fn stop_pulses(
        &self,
        ctx: &mut Context,
        received: &AtomicU64,
        pulses: &Pulses,
    ) {
        for (&relay, pulse) in &pulses.0 {
            if pulse.on {
                let _ = self.write_coil(ctx, received, relay, false).await;
            }
        }
    }
}
