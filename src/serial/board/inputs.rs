//! Input persistence: the last debounced state of each input (`alarm_inputs`), and an `alarm`
//! outbox record for each change, in one transaction.

use rusqlite::params;

use super::debounce::{Debounced, Edge};
use super::{IoBoard, at};
use crate::outbox::{self, NewRecord};
use crate::serial::record::{ALARM_IN, AlarmInput};
use crate::store::StoreError;

impl IoBoard {
    pub(super) async fn load_inputs(&self) -> Result<Vec<Debounced>, StoreError> {
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

    /// Shows a debounced change in the live state the API reads.
    pub(super) fn show_input(&self, input: u16, edge: Edge) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = state.inputs.get_mut(usize::from(input) - 1) {
            s.active = Some(edge.active);
            s.changed_at = at(edge.ts_ms);
        }
    }

    /// Stores every unsaved change, in order; stops at the first failure and leaves the rest
    /// for the next poll, so an edge is stored once the store works again.
    pub(super) async fn save_inputs(&self, inputs: &mut [Debounced]) {
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
    pub(super) async fn store_input(&self, input: u16, edge: Edge) -> Result<(), StoreError> {
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
                    let change = AlarmInput {
                        board,
                        input,
                        name,
                        state: if active { "on" } else { "off" }.into(),
                        active,
                    };
                    outbox::append(c, &NewRecord::new(ALARM_IN, None, ts, &change)?)?;
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
}
