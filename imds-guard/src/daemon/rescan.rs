//! Lost cgroup events: said once a second at most, and followed by a
//! listing of the hierarchy on a blocking thread (`kernel::classify`'s
//! rescan), one at a time and at most every [`RESCAN_EVERY`], so that a
//! user flooding the ring costs the run loop nothing but the replay of
//! what happened while the listing ran.

use std::{
    future::pending,
    time::{Duration, Instant},
};

use tokio::task::{JoinError, JoinHandle};

use crate::{
    chain::Chain,
    kernel::{
        Guard,
        classify::{Drained, RescanReport, Rescanned},
    },
};

/// The least time between the end of a rescan and the start of the next:
/// under a flood that loses events all the time, the agent lists the
/// hierarchy at most this often.
pub(super) const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// The rescans, and the lost events not yet said.
#[derive(Default)]
pub(super) struct Rescanner {
    running: Option<JoinHandle<Rescanned>>,
    /// Events were lost (or cgroups could not be held) since the running
    /// rescan began, or too recently after the last.
    again: bool,
    /// When the last rescan ended.
    last: Option<Instant>,
    /// Lost events not said yet, and in all.
    unsaid: u64,
    total: u64,
    /// Rescans run, for the metrics.
    rescans: u64,
}

impl Rescanner {
    /// What a drain of the cgroup events found: lost events are counted
    /// and a rescan started (or remembered).
    pub(super) fn drained(&mut self, drained: Drained, guard: &mut Guard) {
        self.unsaid += drained.lost;
        self.total += drained.lost;
        if drained.rescan {
            self.again = true;
            self.start(guard);
        }
    }

    /// Starts the rescan asked for, unless one runs or the last ended less
    /// than [`RESCAN_EVERY`] ago.
    pub(super) fn start(&mut self, guard: &mut Guard) {
        let recent = self.last.is_some_and(|t| t.elapsed() < RESCAN_EVERY);
        if !self.again || self.running.is_some() || recent {
            return;
        }
        match guard.cgroup_rescan() {
            Ok(job) => {
                self.again = false;
                self.running = Some(tokio::task::spawn_blocking(move || job.run()));
            }
            Err(e) => tracing::warn!("cannot list the cgroups again: {}", Chain(&e)),
        }
    }

    /// The end of the running rescan; never, when none runs.
    pub(super) async fn finished(&mut self) -> Result<Rescanned, JoinError> {
        match &mut self.running {
            Some(task) => task.await,
            None => pending().await,
        }
    }

    /// Puts a rescan's result in place with `guard`, and says what it
    /// changed.
    pub(super) fn done(&mut self, result: Result<Rescanned, JoinError>, guard: &mut Guard) {
        self.running = None;
        self.last = Some(Instant::now());
        self.rescans += 1;
        let rescanned = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("the cgroup listing thread failed: {e}");
                self.again = true;
                return;
            }
        };
        match guard.cgroup_rescanned(rescanned) {
            Ok(report) => self.said(&report),
            Err(e) => {
                tracing::warn!("cannot list the cgroups again: {}", Chain(&e));
                self.again = true;
            }
        }
    }

    fn said(&mut self, r: &RescanReport) {
        self.again |= r.again;
        tracing::info!(
            event = "rescan",
            cgroups = r.cgroups,
            learned = r.learned,
            forgot = r.forgot,
            waiting = r.waiting,
            millis = r.took.as_millis() as u64,
            "listed the cgroup hierarchy again after lost events: {} cgroups, {} the events \
             missed, {} gone unnoticed, {} waiting for room in the classification map",
            r.cgroups,
            r.learned,
            r.forgot,
            r.waiting
        );
    }

    /// About once a second: the lost events not said yet, in one record.
    pub(super) fn tick(&mut self) {
        if self.unsaid == 0 {
            return;
        }
        let lost = std::mem::take(&mut self.unsaid);
        tracing::warn!(
            event = "lost",
            ring = "cgroups",
            lost,
            lost_total = self.total,
            "{lost} cgroup events lost: their ring buffer was full (the kernel classified those \
             cgroups all the same); the agent lists the hierarchy again for their names"
        );
    }

    /// Rescans run so far.
    pub(super) fn rescans(&self) -> u64 {
        self.rescans
    }
}
