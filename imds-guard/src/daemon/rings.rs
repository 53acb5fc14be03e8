//! The ring buffers the run loop polls: the programs' decisions, and their
//! aya-log diagnostics when debug records are wanted; and how any such
//! descriptor (the NFLOG socket too) is registered with the reactor.

use std::{future::pending, io, os::fd::AsRawFd, time::Instant};

use aya::maps::{MapData, RingBuf};
use tokio::io::{
    Interest,
    unix::{AsyncFd, AsyncFdReadyGuard, AsyncFdReadyMutGuard},
};

use super::{
    DaemonError,
    events::{CgroupPlace, EventLog},
    policies::Policies,
};
use crate::{kernel::Guard, policy::SystemResolver};

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The decision ring and the log ring, polled apart.
pub(super) struct Rings {
    pub(super) events: EventRing,
    pub(super) logger: LogRing,
}

/// The programs' decisions.
pub(super) struct EventRing(AsyncFd<RingBuf<MapData>>);

/// The programs' aya-log diagnostics, when they log.
pub(super) struct LogRing(Option<AsyncFd<Logger>>);

impl Rings {
    /// Takes the rings from `guard`: the log ring only when the programs
    /// log (`level` above 0).
    pub(super) fn take(guard: &mut Guard, level: u8) -> Result<Self, DaemonError> {
        let logger = if level > 0 { guard.take_logger() } else { None };
        let events = guard.take_events()?;
        let io_err = |what| move |source| DaemonError::Io { what, source };
        Ok(Self {
            events: EventRing(
                pollable(events).map_err(io_err("cannot poll the event ring buffer"))?,
            ),
            logger: LogRing(
                logger
                    .map(pollable)
                    .transpose()
                    .map_err(io_err("cannot poll the eBPF log ring buffer"))?,
            ),
        })
    }
}

impl EventRing {
    /// The ring, to read whether or not it woke the agent.
    pub(super) fn get(&mut self) -> &mut RingBuf<MapData> {
        self.0.get_mut()
    }

    /// Readiness of the ring (the programs wake the agent when it fills
    /// past a quarter).
    pub(super) async fn ready(
        &mut self,
    ) -> Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>, DaemonError> {
        self.0
            .readable_mut()
            .await
            .map_err(|source| DaemonError::Io {
                what: "cannot poll the event ring buffer",
                source,
            })
    }
}

impl LogRing {
    /// Waits for the ring, and writes what it holds to the log; never
    /// returns when the programs do not log.
    pub(super) async fn flush(&mut self) -> Result<(), DaemonError> {
        let Some(logger) = &mut self.0 else {
            return pending().await;
        };
        let mut ready = logger
            .readable_mut()
            .await
            .map_err(|source| DaemonError::Io {
                what: "cannot poll the eBPF log ring buffer",
                source,
            })?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
        Ok(())
    }
}

/// Decisions one drain logs at most: a run-loop turn's share, after which
/// the loop serves signals, reloads and timers before it reads on.
pub(super) const DECISIONS_PER_DRAIN: usize = 1024;

/// Decisions the ring holds at most: what a drain reads when every
/// decision made under a policy must be explained before that policy is
/// let go (around a reload), and no more (tens of milliseconds).
pub(super) const RING_DECISIONS: usize =
    imds_guard_common::EVENTS_BYTE_SIZE as usize / (size_of::<imds_guard_common::Event>() + 8);

/// Logs the decisions waiting in `ring`, up to `limit`, explained with the
/// policy of their generation in `policies`, naming the caller's cgroup as
/// `guard` knows it; whether more are waiting.
pub(super) fn drain(
    ring: &mut RingBuf<MapData>,
    log: &mut EventLog,
    policies: &Policies,
    guard: Option<&Guard>,
    limit: usize,
) -> bool {
    let now = Instant::now();
    let places = |id: u64| {
        guard
            .and_then(|g| g.cgroup_place(id))
            .map(|(path, pod)| CgroupPlace {
                path,
                pod: pod.map(|p| p.to_string()),
            })
    };
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return false;
        };
        log.record_bytes(&item, policies, &SystemResolver, &places, now);
    }
    true
}

/// Registers a ring buffer (or the NFLOG socket, or the policy file's
/// inotify descriptor) with the reactor.
pub(super) fn pollable<T: AsRawFd>(ring: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: both ring buffers (`RingBuf<MapData>`, `EbpfLogger`), the
    // NFLOG socket and the inotify descriptor own their descriptor and
    // close it only when dropped, which is after the `AsyncFd` that owns
    // them.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Readiness of an optional source (the NFLOG socket); never ready when
/// there is none.
pub(super) async fn readable<T: AsRawFd>(
    source: Option<&AsyncFd<T>>,
) -> io::Result<AsyncFdReadyGuard<'_, T>> {
    match source {
        Some(s) => s.readable().await,
        None => pending().await,
    }
}
