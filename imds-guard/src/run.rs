//! `imds-guard run`: load the policy, attach (or adopt the pinned guard),
//! log decisions, reload on SIGHUP, until told to stop.
//!
//! A policy that does not validate never reaches the kernel: it is parsed,
//! checked and resolved before anything is loaded, and a reload with a bad
//! file keeps the policy in force. The maps are filled before the programs
//! are attached or swapped in, so the first connect the new programs see is
//! already decided by the policy. Exiting leaves the pinned guard in place.

use std::{
    future::pending,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

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
    guard::{Guard, GuardError, Stamp},
    logging,
    metrics::{self, Enforcing, Metrics, ReloadOutcome},
    notify,
    pins::Pins,
    policy::{Mode, Policy, PolicyError, PolicySpec, SystemResolver, hex},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(
        "another imds-guard agent (pid {pid}) runs the guard pinned in {pin_dir}; stop it first \
         (a restarted agent takes over the pins of one that stopped or died)"
    )]
    AgentRunning { pid: u32, pin_dir: PathBuf },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The policy of each generation, for explaining the decisions made under
/// it (events still in flight after a reload carry the old generation).
struct Policies([Option<Arc<Policy>>; 2]);

impl Policies {
    fn get(&self, generation: u8) -> Option<&Policy> {
        self.0[usize::from(generation & 1)].as_deref()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let io = |what| move |source| RunError::Io { what, source };
    // Before anything else: from the moment we say we are ready, a signal
    // must reach these handlers, not the default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io("cannot handle SIGHUP"))?;
    let resolver = SystemResolver;
    let policy = PolicySpec::load(&args.config)?.resolve(&resolver)?;
    let cgroup: PathBuf = match &args.cgroup {
        Some(dir) => dir.clone(),
        None => cgroup::cgroup2_root()?,
    };
    let pins = Pins::new(&args.pin_dir);
    pins.prepare()?;
    // Two agents on one guard would each believe their maps are in force.
    let Some(_lock) = pins.lock()? else {
        let pid = crate::status::Status::read(&pins)
            .ok()
            .and_then(|s| s.config)
            .map_or(0, |(_, c)| c.agent_pid);
        return Err(RunError::AgentRunning {
            pid,
            pin_dir: pins.dir().to_owned(),
        });
    };
    let metrics = Arc::new(Metrics::new());

    let level = logging::ebpf_log_level();
    let mut guard = Guard::load(level)?;
    let logger = if level > 0 { guard.take_logger() } else { None };
    let events = guard.take_events()?;
    let attached_unix = now_unix();
    let mut stamp = Stamp {
        digest: policy.digest(),
        applied_unix: attached_unix,
        attached_unix,
        agent_pid: std::process::id(),
    };
    let generation = guard.apply(&policy, &stamp)?;
    let report = guard.attach(&cgroup, Some(&pins))?;

    let endpoints: Vec<String> = policy
        .spec
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    let mode = mode_name(policy.spec.mode);
    let how = if report.adopted > 0 {
        "took over the pinned guard on"
    } else {
        "attached to"
    };
    tracing::info!(
        ready = true,
        mode,
        cgroup = %cgroup.display(),
        config = %args.config.display(),
        pin_dir = %pins.dir().display(),
        adopted = report.adopted,
        endpoints = %endpoints.join(","),
        uid_rules = policy.uids.len(),
        gid_rules = policy.gids.len(),
        digest = %hex(&stamp.digest),
        "guard {how} {} in {mode} mode, protecting {}",
        cgroup.display(),
        endpoints.join(", ")
    );

    metrics.set_enforcing(Enforcing::Active(policy.spec.mode));
    metrics.set_policy_digest(&hex(&stamp.digest));
    // systemd (Type=notify) starts what is ordered after us only now: the
    // programs are attached with the policy in force.
    notified(notify::ready(&ready_status(
        policy.spec.mode,
        &stamp.digest,
        true,
    )));
    // Only now, with the guard in force: metrics that cannot be served are
    // worth an error record, never a reason to leave the host unguarded.
    let server = match args.metrics_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(metrics = %addr, "serving Prometheus metrics on http://{addr}/metrics");
                Some(tokio::spawn(metrics::serve(
                    l,
                    Arc::clone(&metrics),
                    |_| {},
                )))
            }
            Err(e) => {
                tracing::error!(
                    metrics = %addr,
                    "cannot listen for metrics on {addr}: {e}; the guard runs without them"
                );
                None
            }
        },
        None => None,
    };

    let mut policies = Policies([None, None]);
    policies.0[generation as usize] = Some(Arc::new(policy));

    let mut events = pollable(events).map_err(io("cannot poll the event ring buffer"))?;
    let mut logger = logger
        .map(pollable)
        .transpose()
        .map_err(io("cannot poll the eBPF log ring buffer"))?;
    let mut tick = interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut log = EventLog::default();

    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                // Decisions made under the policy in force are explained
                // with it: drain them before it can change.
                drain(events.get_mut(), &mut log, &policies, &resolver);
                notified(notify::reloading());
                let outcome = reload(&mut guard, &args.config, &mut policies, &mut stamp);
                metrics.reload(outcome);
                let mode = policies
                    .get(guard.active_generation().unwrap_or(0) as u8)
                    .map_or(Mode::Enforce, |p| p.spec.mode);
                let applied = outcome == ReloadOutcome::Applied;
                notified(notify::ready(&ready_status(mode, &stamp.digest, applied)));
                if applied {
                    metrics.set_policy_digest(&hex(&stamp.digest));
                    metrics.set_enforcing(Enforcing::Active(mode));
                }
            }
            ready = events.readable_mut() => {
                let mut ready = ready.map_err(io("cannot poll the event ring buffer"))?;
                drain(ready.get_inner_mut(), &mut log, &policies, &resolver);
                ready.clear_ready();
            }
            ready = logger_readable(&mut logger) => {
                let mut ready = ready.map_err(io("cannot poll the eBPF log ring buffer"))?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = tick.tick() => {
                let counters = guard.counters().ok();
                if let Some(c) = &counters {
                    metrics.set_counters(c);
                }
                log.tick(Instant::now(), counters.map(|c| c.events_lost));
            }
        }
    };

    notified(notify::stopping());
    if let Some(server) = server {
        server.abort();
    }
    // Whatever is still in the ring buffer was decided before we stop.
    drain(events.get_mut(), &mut log, &policies, &resolver);
    let counters = guard.counters().ok().unwrap_or_default();
    log.tick(
        Instant::now() + Duration::from_secs(3600),
        Some(counters.events_lost),
    );
    let outcome = if pins.any_link() {
        format!(
            "the guard stays attached to {} (pinned in {}); `imds-guard detach` removes it",
            cgroup.display(),
            pins.dir().display()
        )
    } else {
        "the guard was detached".to_owned()
    };
    tracing::info!(
        allowed = counters.allowed,
        denied = counters.denied,
        audited = counters.audited,
        events_lost = counters.events_lost,
        events_received = log.received(),
        errors = counters.errors,
        pin_dir = %pins.dir().display(),
        "{signal_name}: exiting; {outcome}"
    );
    Ok(())
}

/// The one-line status systemd shows: mode and policy in force, and
/// whether the last reload was refused.
fn ready_status(mode: Mode, digest: &[u8], last_reload_applied: bool) -> String {
    format!(
        "{}, policy sha256 {}{}",
        mode_name(mode),
        hex(digest),
        if last_reload_applied {
            ""
        } else {
            " (last reload refused)"
        }
    )
}

/// systemd notifications are best effort: without systemd they do nothing,
/// and a failure to send one is worth a line, not an exit.
fn notified(result: Result<(), notify::NotifyError>) {
    if let Err(e) = result {
        tracing::warn!("cannot notify systemd: {:#}", anyhow::Error::from(e));
    }
}

/// Re-reads the policy file and puts it in force, or keeps the policy in
/// force and says why not.
fn reload(
    guard: &mut Guard,
    config: &Path,
    policies: &mut Policies,
    stamp: &mut Stamp,
) -> ReloadOutcome {
    let started = Instant::now();
    let policy = match PolicySpec::load(config).and_then(|s| s.resolve(&SystemResolver)) {
        Ok(policy) => policy,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::warn!(event = "reload", outcome = "invalid", "{line}");
            }
            tracing::warn!(
                event = "reload",
                outcome = "invalid",
                "reload refused: {} does not validate; the policy in force is unchanged",
                config.display()
            );
            return ReloadOutcome::Invalid;
        }
    };
    let new_stamp = Stamp {
        digest: policy.digest(),
        applied_unix: now_unix(),
        ..*stamp
    };
    match guard.apply(&policy, &new_stamp) {
        Ok(generation) => {
            *stamp = new_stamp;
            let mode = mode_name(policy.spec.mode);
            tracing::info!(
                event = "reload",
                outcome = "applied",
                mode,
                generation,
                digest = %hex(&stamp.digest),
                micros = started.elapsed().as_micros() as u64,
                "reloaded {}: {mode} mode, {} uid and {} gid rules",
                config.display(),
                policy.uids.len(),
                policy.gids.len()
            );
            policies.0[generation as usize] = Some(Arc::new(policy));
            ReloadOutcome::Applied
        }
        Err(e) => {
            tracing::error!(
                event = "reload",
                outcome = "failed",
                "reload failed, the policy in force is unchanged: {:#}",
                anyhow::Error::from(e)
            );
            ReloadOutcome::Failed
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    log: &mut EventLog,
    policies: &Policies,
    resolver: &SystemResolver,
) {
    let now = Instant::now();
    while let Some(item) = ring.next() {
        match Decision::decode(&item) {
            Some(d) => match policies.get(d.generation) {
                Some(policy) => log.record(&d, policy, resolver, now),
                None => tracing::error!(
                    generation = d.generation,
                    "event from a generation with no policy"
                ),
            },
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
