//! Input debouncing: a new state counts once it held for `debounce`, and its change waits in a
//! queue until the store took it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One input's debouncing, and the changes of it not yet stored.
#[derive(Clone, Debug, Default)]
pub(super) struct Debounced {
    pub(super) stable: Option<bool>,
    pub(super) candidate: Option<(bool, Instant)>,
    /// Debounced changes waiting for the store, oldest first. The stable state moves at once
    /// (the live view shows it), so without this queue a change whose write failed would never
    /// be seen again: it leaves only when its write committed.
    pub(super) unsaved: VecDeque<Edge>,
}

/// A debounced change of an input, as it will be stored.
#[derive(Clone, Copy, Debug)]
pub(super) struct Edge {
    pub(super) active: bool,
    pub(super) ts_ms: i64,
    /// Whether it is reported as an `alarm_in` record (not for the first reading after start).
    pub(super) report: bool,
}

/// Unsaved changes kept per input while the store fails; past this the oldest are dropped
/// (with an error), so a dead disk cannot grow memory without bound.
pub(super) const MAX_UNSAVED_EDGES: usize = 256;

impl Debounced {
    /// Feeds a reading; returns the new stable state when it changed for good.
    pub(super) fn observe(&mut self, value: bool, now: Instant, hold: Duration) -> Option<bool> {
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
