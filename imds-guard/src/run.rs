//! `imds-guard run`: load the policy, attach, log decisions until told to
//! stop.
//!
//! A policy that does not validate never reaches the kernel: it is parsed,
//! checked and resolved before anything is loaded. The maps are filled
//! before the programs are attached, so the first connect the guard sees is
//! already decided by the policy.

use std::{future::pending, path::PathBuf, time::Instant};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Duration, MissedTickBehavior, interval},
};

use crate::{
    cgroup::{self, CgroupError},
    cli::RunArgs,
    events::{Decision, EventLog},
    guard::{Guard, GuardError},
    logging,
    policy::{Mode, PolicyError, PolicySpec, SystemResolver},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let resolver = SystemResolver;
    let policy = PolicySpec::load(&args.config)?.resolve(&resolver)?;
    let cgroup: PathBuf = match args.cgroup {
        Some(dir) => dir,
        None => cgroup::cgroup2_root()?,
    };

    let level = logging::ebpf_log_level();
    let mut guard = Guard::load(level)?;
    let logger = if level > 0 { guard.take_logger() } else { None };
    let events = guard.take_events()?;
    guard.apply(&policy)?;
    guard.attach(&cgroup)?;

    let endpoints: Vec<String> = policy
        .spec
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    let mode = match policy.spec.mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    };
    tracing::info!(
        ready = true,
        mode,
        cgroup = %cgroup.display(),
        config = %args.config.display(),
        endpoints = %endpoints.join(","),
        uid_rules = policy.uids.len(),
        gid_rules = policy.gids.len(),
        "guard attached to {} in {mode} mode, protecting {}",
        cgroup.display(),
        endpoints.join(", ")
    );

    let io = |what| move |source| RunError::Io { what, source };
    let mut events = pollable(events).map_err(io("cannot poll the event ring buffer"))?;
    let mut logger = logger
        .map(pollable)
        .transpose()
        .map_err(io("cannot poll the eBPF log ring buffer"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?;
    let mut tick = interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut log = EventLog::default();

    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => tracing::warn!(
                "SIGHUP: this version does not reload its policy; the policy in force is \
                 unchanged (restart the agent to change it)"
            ),
            ready = events.readable_mut() => {
                let mut ready = ready.map_err(io("cannot poll the event ring buffer"))?;
                drain(ready.get_inner_mut(), &mut log, &policy, &resolver);
                ready.clear_ready();
            }
            ready = logger_readable(&mut logger) => {
                let mut ready = ready.map_err(io("cannot poll the eBPF log ring buffer"))?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = tick.tick() => {
                let lost = guard.counters().ok().map(|c| c.events_lost);
                log.tick(Instant::now(), lost);
            }
        }
    };

    // Whatever is still in the ring buffer was decided before we stop.
    drain(events.get_mut(), &mut log, &policy, &resolver);
    let counters = guard.counters().ok().unwrap_or_default();
    log.tick(
        Instant::now() + Duration::from_secs(3600),
        Some(counters.events_lost),
    );
    tracing::info!(
        allowed = counters.allowed,
        denied = counters.denied,
        audited = counters.audited,
        events_lost = counters.events_lost,
        errors = counters.errors,
        "{signal_name}: detaching the guard from {} and exiting",
        cgroup.display()
    );
    drop(guard);
    Ok(())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    log: &mut EventLog,
    policy: &crate::policy::Policy,
    resolver: &SystemResolver,
) {
    let now = Instant::now();
    while let Some(item) = ring.next() {
        match Decision::decode(&item) {
            Some(d) => log.record(&d, policy, resolver, now),
            None => tracing::error!(len = item.len(), "malformed event from the programs"),
        }
    }
}

/// Registers a ring buffer with the reactor.
fn pollable<T: std::os::fd::AsRawFd>(ring: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both ring buffers (`RingBuf<MapData>`, `EbpfLogger`) own their
    // map's descriptor and close it only when dropped, which is after the
    // `AsyncFd` that owns them.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Readiness of the aya-log ring buffer; never ready when logging is off.
async fn logger_readable(
    logger: &mut Option<AsyncFd<Logger>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, Logger>> {
    match logger {
        Some(l) => l.readable_mut().await,
        None => pending().await,
    }
}
