//! What wakes the run loop besides the rings and the reload: the signals
//! the agent acts on, and its clocks; and when a SIGHUP came, stamped by a
//! handler of its own (tokio says only that a signal came, when the loop
//! gets to it), so that a reload's record counts from the signal.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::time::{ClockId, clock_gettime};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Duration, Instant, Interval, MissedTickBehavior, interval_at},
};

use super::{DaemonError, pods::PODS_EVERY, policies::RETRY_NAMES, status_file};

/// The signals the agent acts on, handled from before it is ready: from
/// the moment it says it is, a signal must reach these handlers, not the
/// default action.
pub(super) struct Signals {
    pub(super) term: Signal,
    pub(super) int: Signal,
    pub(super) hup: Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Self, DaemonError> {
        let handle = |kind, what| signal(kind).map_err(|source| DaemonError::Io { what, source });
        // SAFETY: the action reads CLOCK_MONOTONIC and stores into an
        // atomic, both async-signal-safe (signal-safety(7)); it allocates
        // and locks nothing.
        unsafe { signal_hook_registry::register(libc::SIGHUP, stamp_hup) }.map_err(|source| {
            DaemonError::Io {
                what: "cannot handle SIGHUP",
                source,
            }
        })?;
        Ok(Self {
            term: handle(SignalKind::terminate(), "cannot handle SIGTERM")?,
            int: handle(SignalKind::interrupt(), "cannot handle SIGINT")?,
            hup: handle(SignalKind::hangup(), "cannot handle SIGHUP")?,
        })
    }
}

/// When the oldest SIGHUP not served yet came (CLOCK_MONOTONIC,
/// nanoseconds; 0: none).
static HUP_AT: AtomicU64 = AtomicU64::new(0);

/// The SIGHUP handler: stamps the signal unless an older one waits.
fn stamp_hup() {
    let _ = HUP_AT.compare_exchange(0, monotonic_ns().max(1), Ordering::SeqCst, Ordering::SeqCst);
}

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC never fails on Linux; a zero would only read as "now".
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// A moment on CLOCK_MONOTONIC, which the SIGHUP handler can read too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Moment(u64);

impl Moment {
    pub(super) fn now() -> Self {
        Self(monotonic_ns())
    }

    /// When the oldest SIGHUP not served yet came (it is served now), or
    /// now when none waits (a reload the agent starts itself).
    pub(super) fn of_hup() -> Self {
        match HUP_AT.swap(0, Ordering::SeqCst) {
            0 => Self::now(),
            at => Self(at),
        }
    }

    /// The time since.
    pub(super) fn elapsed(self) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(self.0))
    }
}

/// How often the ring buffer is read when nothing wakes the agent: the
/// longest a decision on a quiet host waits to be logged.
pub const POLL: Duration = Duration::from_millis(50);

/// The run loop's clocks.
pub(super) struct Timers {
    /// Counters, rate-limit windows, lost events: once a second.
    pub(super) tick: Interval,
    /// The ring buffer: every [`POLL`].
    pub(super) poll: Interval,
    /// Names that did not resolve: every [`RETRY_NAMES`].
    pub(super) names: Interval,
    /// The kubelet's pods, under a policy with `pods` rules: every
    /// [`PODS_EVERY`].
    pub(super) pods: Interval,
    /// The status file: every [`status_file::EVERY`].
    pub(super) status: Interval,
}

impl Timers {
    pub(super) fn new() -> Self {
        let every = |period| {
            let mut i = interval_at(Instant::now() + period, period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        };
        Self {
            tick: every(Duration::from_secs(1)),
            poll: every(POLL),
            names: every(RETRY_NAMES),
            pods: every(PODS_EVERY),
            status: every(status_file::EVERY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_counts_from_the_oldest_sighup_not_served() {
        let before = Moment::now();
        std::thread::sleep(Duration::from_millis(20));
        HUP_AT.store(before.0, Ordering::SeqCst);
        stamp_hup();
        let asked = Moment::of_hup();
        assert_eq!(asked, before, "the second signal does not move the stamp");
        assert!(asked.elapsed() >= Duration::from_millis(20));
        let none = Moment::of_hup();
        assert!(
            none.elapsed() < Duration::from_millis(20),
            "no signal waits: now"
        );
    }
}
