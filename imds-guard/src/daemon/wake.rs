//! What wakes the run loop besides the rings and the reload: the signals
//! the agent acts on, and its clocks.

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Duration, Instant, Interval, MissedTickBehavior, interval_at},
};

use super::{DaemonError, pods::PODS_EVERY, policies::RETRY_NAMES};

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
        Ok(Self {
            term: handle(SignalKind::terminate(), "cannot handle SIGTERM")?,
            int: handle(SignalKind::interrupt(), "cannot handle SIGINT")?,
            hup: handle(SignalKind::hangup(), "cannot handle SIGHUP")?,
        })
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
        }
    }
}
