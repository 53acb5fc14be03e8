//! Bounded rate limiting of repeated log records.
//!
//! A process that hammers the metadata service must not turn the denial log
//! (or the agent's memory) into a flood: each distinct key may log `burst`
//! records per `window`; the rest are counted and reported as one summary
//! when the window ends. At most `max_keys` keys are tracked; records for
//! further keys within a window are counted as `overflow` and reported
//! without detail.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// A key's window.
struct Slot<S> {
    start: Instant,
    logged: u32,
    suppressed: u64,
    /// What to say in the summary.
    sample: S,
}

pub struct RateLimiter<K, S> {
    window: Duration,
    burst: u32,
    max_keys: usize,
    slots: HashMap<K, Slot<S>>,
    overflow: u64,
}

/// What [`RateLimiter::admit`] says of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it.
    Log,
    /// Counted in its key's summary.
    Suppressed,
    /// Its key is not tracked (too many keys): counted as overflow.
    Overflow,
}

/// A window that ended with records suppressed.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppressed<S> {
    pub sample: S,
    pub count: u64,
}

impl<K: Hash + Eq, S> RateLimiter<K, S> {
    pub fn new(window: Duration, burst: u32, max_keys: usize) -> Self {
        Self {
            window,
            burst,
            max_keys,
            slots: HashMap::new(),
            overflow: 0,
        }
    }

    /// Should a record for `key` be logged now? `sample` is kept for the
    /// summary of what gets suppressed.
    pub fn admit(&mut self, key: K, now: Instant, sample: impl FnOnce() -> S) -> Admit {
        if let Some(slot) = self.slots.get_mut(&key) {
            if now.duration_since(slot.start) < self.window {
                if slot.logged < self.burst {
                    slot.logged += 1;
                    return Admit::Log;
                }
                slot.suppressed += 1;
                return Admit::Suppressed;
            }
            // The window ended but `expire` has not run yet: the summary of
            // the old window is still owed, so count this one in it rather
            // than lose it.
            slot.suppressed += 1;
            return Admit::Suppressed;
        }
        if self.slots.len() >= self.max_keys {
            self.overflow += 1;
            return Admit::Overflow;
        }
        self.slots.insert(
            key,
            Slot {
                start: now,
                logged: 1,
                suppressed: 0,
                sample: sample(),
            },
        );
        Admit::Log
    }

    /// Ends the windows that are over: returns what they suppressed, and
    /// how many records were dropped because too many keys were tracked.
    pub fn expire(&mut self, now: Instant) -> (Vec<Suppressed<S>>, u64) {
        let mut out = Vec::new();
        for (key, slot) in std::mem::take(&mut self.slots) {
            if now.duration_since(slot.start) < self.window {
                self.slots.insert(key, slot);
            } else if slot.suppressed > 0 {
                out.push(Suppressed {
                    sample: slot.sample,
                    count: slot.suppressed,
                });
            }
        }
        (out, std::mem::take(&mut self.overflow))
    }

    /// Whether `key` is tracked now.
    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.slots.contains_key(key)
    }

    /// Number of keys tracked now (bounded by `max_keys`).
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn logs_a_burst_then_counts_and_summarises_once() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(W, 3, 16);
        let admitted = (0..10)
            .filter(|_| rl.admit("k", t0, || "sample") == Admit::Log)
            .count();
        assert_eq!(admitted, 3);
        assert_eq!(rl.expire(t0 + Duration::from_secs(1)), (vec![], 0));
        let (summaries, overflow) = rl.expire(t0 + W);
        assert_eq!(
            summaries,
            vec![Suppressed {
                sample: "sample",
                count: 7
            }]
        );
        assert_eq!(overflow, 0);
        assert_eq!(rl.tracked(), 0);
        assert_eq!(
            rl.admit("k", t0 + W, || "sample"),
            Admit::Log,
            "a new window logs again"
        );
    }

    #[test]
    fn keys_are_limited_separately() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(W, 1, 16);
        assert_eq!(rl.admit(1, t0, || ()), Admit::Log);
        assert_eq!(rl.admit(2, t0, || ()), Admit::Log);
        assert_eq!(rl.admit(1, t0, || ()), Admit::Suppressed);
    }

    #[test]
    fn a_record_after_the_window_but_before_expiry_is_counted_not_lost() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(W, 1, 16);
        assert_eq!(rl.admit("k", t0, || "s"), Admit::Log);
        assert_eq!(rl.admit("k", t0 + W + W, || "s"), Admit::Suppressed);
        let (summaries, _) = rl.expire(t0 + W + W);
        assert_eq!(
            summaries,
            vec![Suppressed {
                sample: "s",
                count: 1
            }]
        );
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(W, 1, 4);
        let admitted = (0..100u32)
            .filter(|&k| rl.admit(k, t0, || ()) == Admit::Log)
            .count();
        assert_eq!(admitted, 4);
        assert_eq!(rl.tracked(), 4);
        assert_eq!(rl.expire(t0).1, 96);
        assert_eq!(rl.expire(t0).1, 0, "overflow is reported once");
    }
}
