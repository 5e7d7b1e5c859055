//! `[[rules]]`: zone and alarm events driving relays and PTZ presets, exactly once per event.
//!
//! Two halves. The *consumer* is a local outbox consumer: for each record it writes one
//! `rule_actions` row per matching rule in the transaction that advances its cursor, so a record
//! decides its actions exactly once whatever crashes. The *executor* carries out pending rows:
//! a relay pulse is marked done in the same transaction that stores the pulse's end (the I/O
//! board then drives the relay from `relay_pulses`), so a pulse is never given twice; on, off
//! and PTZ goto are idempotent, so the one repeat a crash between doing and marking can cause
//! changes nothing.
//!
//! An action that fails for a reason that may pass (the adapter unplugged, the device not
//! answering, the store busy) stays pending and is retried with backoff until it succeeds or is
//! older than [`MAX_ACTION_AGE`]; its last error is kept in `result` meanwhile, and the final
//! outcome (`ok`, `error: …`, `expired after N attempts: …`) when it is done. A pulse is only
//! scheduled while the board's port is open, so it is not counted as given while nobody can give
//! it. An action that can never work (a relay the board lacks) is done at once with its error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::board::schedule_pulse;
use super::pelco::PtzCommand;
use super::record::{ALARM_IN, AlarmInput};
use super::{Serial, SerialError};
use crate::config::model::RuleConfig;
use crate::config::rules::{Action, RelayOp, Trigger};
use crate::outbox::{ConsumeError, Kind, LocalConsumer, PayloadError, Record};
use crate::store::{Store, StoreError};
use crate::zones::record::ZoneEvent;

pub const CONSUMER: &str = "rules";

/// Events older than this fire nothing: a siren for what happened ten minutes ago (records
/// replayed after rules were switched back on, a worker's late backlog) helps nobody.
const MAX_EVENT_AGE: Duration = Duration::from_secs(600);
/// A pending action still failing this long after it was decided is given up: a relay that
/// clicks minutes after its event would mislead more than it helps.
const MAX_ACTION_AGE: Duration = Duration::from_secs(120);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A rule as the config wrote it, parsed (validation already refused bad ones).
#[derive(Clone, Debug)]
struct Rule {
    trigger: Trigger,
    action: String,
}

fn parse(rules: &[RuleConfig]) -> Vec<Rule> {
    rules
        .iter()
        .filter_map(|r| {
            Some(Rule {
                trigger: r.on.parse().ok()?,
                action: r.action.clone(),
            })
        })
        .collect()
}

fn matches(trigger: &Trigger, r: &Record) -> Result<bool, PayloadError> {
    Ok(match trigger {
        Trigger::Zone { zone, event } => {
            r.kind == Kind::Zone
                && r.r#type == event.as_str()
                && r.payload::<ZoneEvent>()?.zone == *zone
        }
        Trigger::Alarm { input, active } => {
            r.kind == Kind::Alarm && r.r#type == ALARM_IN && {
                let change = r.payload::<AlarmInput>()?;
                change.input == *input && change.active == *active
            }
        }
    })
}

/// The consumer half.
pub struct RulesConsumer {
    rules: Vec<Rule>,
    wake: Arc<Notify>,
}

impl RulesConsumer {
    pub fn new(rules: &[RuleConfig], wake: Arc<Notify>) -> RulesConsumer {
        RulesConsumer {
            rules: parse(rules),
            wake,
        }
    }
}

impl LocalConsumer for RulesConsumer {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn apply(&self, c: &Connection, records: &[Record]) -> Result<(), ConsumeError> {
        let now = chrono::Utc::now().timestamp_millis();
        let oldest = now - MAX_EVENT_AGE.as_millis() as i64;
        for r in records.iter().filter(|r| r.ts_ms >= oldest) {
            for (i, rule) in self.rules.iter().enumerate() {
                if matches(&rule.trigger, r).map_err(|e| ConsumeError::Malformed(e.to_string()))? {
                    c.execute(
                        "INSERT OR IGNORE INTO rule_actions (record_seq, rule, action, created_at_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![r.seq, i as i64, rule.action, now],
                    )
                    ?;
                }
            }
        }
        Ok(())
    }

    fn committed(&self) {
        self.wake.notify_one();
    }
}

struct Pending {
    id: i64,
    action: String,
    created_at_ms: i64,
}

/// Attempts so far and when the next one is due, per pending action that failed.
struct Retry {
    attempts: u32,
    next: tokio::time::Instant,
}

/// Whether a failure may pass: those are retried, the others are final.
fn transient(e: &SerialError) -> bool {
    matches!(
        e,
        SerialError::Unavailable(_) | SerialError::Device(_) | SerialError::Store(_)
    )
}

/// The executor half.
pub struct RulesExecutor {
    pub store: Store,
    pub serial: Serial,
    pub wake: Arc<Notify>,
}

impl RulesExecutor {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retries: HashMap<i64, Retry> = HashMap::new();
        loop {
            match self.pending().await {
                Ok(pending) => {
                    let now = tokio::time::Instant::now();
                    retries.retain(|id, _| pending.iter().any(|p| p.id == *id));
                    for p in pending {
                        if retries.get(&p.id).is_some_and(|r| r.next > now) {
                            continue;
                        }
                        self.execute(p, &mut retries).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read pending rule actions"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        self.store
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, action, created_at_ms FROM rule_actions WHERE done_at_ms IS NULL ORDER BY id LIMIT 100",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(Pending {
                        id: r.get(0)?,
                        action: r.get(1)?,
                        created_at_ms: r.get(2)?,
                    })
                })?;
                Ok::<_, StoreError>(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Records an action's outcome: final (`done`), or its last error while it stays pending.
    async fn record(&self, id: i64, result: String, done: bool) {
        let written = self
            .store
            .write(move |c| {
                let done_at = done.then(|| chrono::Utc::now().timestamp_millis());
                c.execute(
                    "UPDATE rule_actions SET done_at_ms = ?1, result = ?2 WHERE id = ?3 AND done_at_ms IS NULL",
                    params![done_at, result, id],
                )?;
                Ok::<_, StoreError>(())
            })
            .await;
        if let Err(e) = written {
            tracing::error!(id, done, error = %e, "cannot record a rule action's outcome");
        }
    }

    async fn execute(&self, p: Pending, retries: &mut HashMap<i64, Retry>) {
        let action: Action = match p.action.parse() {
            Ok(a) => a,
            Err(e) => {
                self.record(p.id, format!("error: {e}"), true).await;
                return;
            }
        };
        let result = match action {
            Action::Relay {
                relay,
                op: RelayOp::Pulse(d),
            } => {
                if let Err(e) = self
                    .serial
                    .check_relay(relay)
                    .and_then(|()| self.serial.board_open())
                {
                    Err(e)
                } else {
                    // Done and the pulse's end in one transaction: given once, crash or not.
                    let until = chrono::Utc::now().timestamp_millis() + d.get().as_millis() as i64;
                    let id = p.id;
                    let stored = self
                        .store
                        .write(move |c| {
                            let changed = c.execute(
                                "UPDATE rule_actions SET done_at_ms = ?1, result = 'ok' WHERE id = ?2 AND done_at_ms IS NULL",
                                params![chrono::Utc::now().timestamp_millis(), id],
                            )?;
                            if changed == 1 {
                                schedule_pulse(c, relay, until)?;
                            }
                            Ok::<_, StoreError>(())
                        })
                        .await;
                    match stored {
                        Ok(()) => {
                            self.serial.sync_pulses().await;
                            tracing::info!(action = %p.action, "rule fired");
                            return;
                        }
                        Err(e) => Err(SerialError::Store(e)),
                    }
                }
            }
            Action::Relay { relay, op } => self.serial.relay(relay, op).await,
            Action::PtzGoto { camera, preset } => {
                self.serial.ptz(&camera, PtzCommand::Goto { preset }).await
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(action = %p.action, "rule fired");
                self.record(p.id, "ok".into(), true).await;
            }
            Err(e) if transient(&e) => {
                let retry = retries.entry(p.id).or_insert(Retry {
                    attempts: 0,
                    next: tokio::time::Instant::now(),
                });
                retry.attempts += 1;
                let age = chrono::Utc::now().timestamp_millis() - p.created_at_ms;
                if age > MAX_ACTION_AGE.as_millis() as i64 {
                    tracing::warn!(action = %p.action, attempts = retry.attempts, error = %e, "rule action given up");
                    let result = format!("expired after {} attempts: {e}", retry.attempts);
                    self.record(p.id, result, true).await;
                    return;
                }
                let wait = (RETRY_MIN * 2u32.saturating_pow(retry.attempts - 1)).min(RETRY_MAX);
                retry.next = tokio::time::Instant::now() + wait;
                tracing::warn!(action = %p.action, attempt = retry.attempts, error = %e, "rule action failed; retrying");
                self.record(p.id, format!("retrying: {e}"), false).await;
            }
            Err(e) => {
                tracing::warn!(action = %p.action, error = %e, "rule action failed");
                self.record(p.id, format!("error: {e}"), true).await;
            }
        }
    }
}

/// Deletes up to `limit` finished rule actions decided before `before_ms`: metadata retention by
/// age. A pending action is never deleted: its row is what makes it run exactly once. Rows are
/// looked at in the order they were decided, so the pass reads what it deletes.
pub fn prune_older(c: &Connection, before_ms: i64, limit: u64) -> Result<u64, StoreError> {
    Ok(c.prepare_cached(
        "DELETE FROM rule_actions WHERE id IN (
           SELECT id FROM (SELECT id, done_at_ms, created_at_ms FROM rule_actions ORDER BY id LIMIT ?2)
            WHERE done_at_ms IS NOT NULL AND created_at_ms < ?1)",
    )?
    .execute(params![before_ms, limit as i64])? as u64)
}

/// Deletes the `limit` finished rule actions decided first: the database size cap.
pub fn prune_oldest(c: &Connection, limit: u64) -> Result<u64, StoreError> {
    crate::store::prune::first_stored(c, "rule_actions", "done_at_ms IS NOT NULL", limit)
}
