//! How long each phase of the agent's start took, given in the `ready`
//! record, in milliseconds: so that a slow start can be taken apart (the
//! bench does) without a profiler. Reading the policy and opening the
//! object (BTF, maps) run side by side, as do the verifier and the
//! policy's writes; the classification, the attachment and the forward
//! table follow one another (see `Daemon::start`).

use std::time::{Duration, Instant};

use crate::kernel::LoadTimes;

/// The phases of one start.
#[derive(Clone, Copy, Debug)]
pub(super) struct StartPhases {
    /// When the start began (`Daemon::start`).
    began: Instant,
    /// Reading, parsing, validating and resolving the policy (or choosing
    /// the fallback).
    pub parse: Duration,
    /// Reading the kernel's BTF and creating the maps (`Guard::open`).
    pub open: Duration,
    pub load: LoadTimes,
    /// Taking the pin directory, attaching (or adopting) and pinning.
    pub attach: Duration,
    /// Writing the forward table.
    pub forward: Duration,
}

impl StartPhases {
    /// A start beginning now.
    pub(super) fn begin() -> Self {
        Self {
            began: Instant::now(),
            parse: Duration::ZERO,
            open: Duration::ZERO,
            load: LoadTimes::default(),
            attach: Duration::ZERO,
            forward: Duration::ZERO,
        }
    }

    /// From the start's beginning to now.
    pub(super) fn so_far(&self) -> Duration {
        self.began.elapsed()
    }
}

/// `f()`, and how long it took.
pub(super) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

/// A duration as a record field: milliseconds, to the microsecond.
pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_given_in_milliseconds_to_the_microsecond() {
        assert_eq!(ms(Duration::from_nanos(12_345_678)), 12.346);
        assert_eq!(ms(Duration::from_secs(2)), 2_000.0);
        assert_eq!(ms(Duration::ZERO), 0.0);
    }

    #[test]
    fn timed_gives_the_result_and_a_duration_that_covers_the_call() {
        let (out, took) = timed(|| {
            std::thread::sleep(Duration::from_millis(2));
            7
        });
        assert_eq!(out, 7);
        assert!(took >= Duration::from_millis(2), "{took:?}");
    }
}
