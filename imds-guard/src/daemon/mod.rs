//! The agent (`imds-guard run`): load the policy, attach (or adopt the
//! pinned guard), log decisions, reload on SIGHUP, until told to stop.
//!
//! A policy that does not validate never reaches the kernel: it is parsed,
//! checked and resolved before anything is loaded, and a reload with a bad
//! file keeps the policy in force. The maps are filled before the programs
//! are attached or swapped in, so the first connect the new programs see is
//! already decided by the policy. Exiting leaves the pinned guard in place.
//!
//! Imports: `kernel` and `policy`; never `cli`, which builds a [`Config`]
//! from its arguments and calls [`run`].

pub mod events;
pub mod fallback;
mod forward;
pub mod logging;
pub mod metrics;
pub mod nflog;
pub mod notify;
pub mod ratelimit;
mod reload;

use std::{
    fs::File,
    future::pending,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use imds_guard_common::config_flags;
use tokio::{
    io::unix::{AsyncFd, AsyncFdReadyMutGuard},
    signal::unix::{Signal, SignalKind, signal},
    task::JoinHandle,
    time::{Duration, Interval, MissedTickBehavior, interval_at},
};

use self::{
    events::EventLog,
    forward::ForwardState,
    metrics::{Enforcing, Metrics},
    nflog::NflogSocket,
    reload::Policies,
};
use crate::{
    chain::Chain,
    kernel::{
        AttachReport, Guard, GuardError, Stamp,
        cgroup::{self, CgroupError},
        inspect::Status,
        pins::{PinError, Pins},
    },
    policy::{
        Mode, Policy, PolicyError, PolicySource, SystemResolver, Unresolved,
        cgroups::{Pods, pods},
        hex,
    },
};

/// The pods the kubelet lists in `dir` (none, said, when it cannot be
/// read: their patterns are then absent, which refuses them).
pub(super) fn list_pods(dir: &std::path::Path) -> Pods {
    pods::list(dir).unwrap_or_else(|e| {
        tracing::warn!("cannot list the kubelet's pods in {}: {e}", dir.display());
        Pods::new()
    })
}

/// Warns of pods whose patterns did not fit beside the others.
pub(super) fn say_dropped_pods(guard: &Guard) {
    for (pod, uid) in guard.dropped_pods() {
        tracing::warn!(
            pod = %pod,
            pod_uid = %uid,
            "pod {pod} (uid {uid}) is not allowed: the policy's cgroup patterns are full"
        );
    }
}

/// What `imds-guard run` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the policy comes from (read at start and at each reload).
    pub config: PolicySource,
    /// What to put in force when the policy cannot be used at start.
    pub fallback: fallback::Fallback,
    /// The cgroup v2 directory to attach to; the hierarchy's root if none.
    pub cgroup: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// The kubelet's pod log directories, for `pods` rules.
    pub pods_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Pin(#[from] PinError),
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

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The signals the agent acts on, handled from before it is ready: from
/// the moment it says it is, a signal must reach these handlers, not the
/// default action.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Self, DaemonError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(io_err("cannot handle SIGTERM"))?,
            int: signal(SignalKind::interrupt()).map_err(io_err("cannot handle SIGINT"))?,
            hup: signal(SignalKind::hangup()).map_err(io_err("cannot handle SIGHUP"))?,
        })
    }
}

/// The ring buffers the run loop polls.
pub(super) struct Rings {
    events: AsyncFd<RingBuf<MapData>>,
    logger: Option<AsyncFd<Logger>>,
    /// What the forward table logs (see `forward.rs`).
    nflog: Option<AsyncFd<NflogSocket>>,
    /// The reload in progress, if any.
    reload: Option<reload::Pending>,
}

/// A running agent: the guard it loaded, the policies of both generations,
/// and what it reports through.
pub struct Daemon {
    config: Config,
    cgroup: PathBuf,
    pins: Pins,
    /// The agent lock on the pin directory, held for the agent's life.
    _lock: File,
    /// The guard; lent to the reload thread while a reload runs.
    guard: Option<Guard>,
    /// The generation in force.
    generation: u32,
    policies: Policies,
    stamp: Stamp,
    /// Whether the forward table is in force.
    forward: ForwardState,
    /// The ruleset of the forward table in force, when it is.
    forward_ruleset: Option<String>,
    /// Ticks since the forward counters were last read.
    ticks: u32,
    metrics: Arc<Metrics>,
    server: Option<JoinHandle<()>>,
    log: EventLog,
    resolver: SystemResolver,
    /// `[allow]` names left out of the policy in force because they do not
    /// resolve (yet); retried every [`RETRY_NAMES`] and at every reload.
    unresolved: Vec<Unresolved>,
    /// The pods listed for the last policy put in force or tried (see
    /// [`Daemon::on_pods`]).
    pods: Pods,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let mut signals = Signals::new()?;
    let (mut daemon, report, mut rings) = Daemon::start(config)?;
    daemon.announce_ready(&report);
    // Loading freed the parse tree, both BTF copies and the verifier's
    // logs: give the pages back rather than keep them for a reload.
    trim_heap();
    daemon.serve_metrics().await;
    let mut timers = Timers::new();
    let signal_name = daemon
        .run_loop(&mut signals, &mut rings, &mut timers)
        .await?;
    daemon.shutdown(signal_name, &mut rings).await;
    Ok(())
}

impl Daemon {
    /// Loads and resolves the policy (or, when it cannot be used and
    /// nothing is pinned, the fallback), takes the pin directory, loads the
    /// programs, puts the policy in force and attaches.
    fn start(config: Config) -> Result<(Self, AttachReport, Rings), DaemonError> {
        let level = logging::ebpf_log_level();
        // Reading BTF and creating the maps, and reading the policy, take
        // about as long as each other, and neither changes anything: both
        // at once. (The verifier then runs while the policy is written.)
        std::thread::scope(|scope| {
            let loading = scope.spawn(move || Guard::open(level));
            let pins = Pins::new(&config.pin_dir);
            let chosen = fallback::choose(
                &config.config.path(),
                &config.fallback,
                &pins,
                &SystemResolver,
            )?;
            let guard = match loading.join() {
                Ok(loaded) => loaded?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let starting = Starting {
                in_fallback: chosen.fallback_for.is_some(),
                policy: chosen.policy,
                unresolved: chosen.unresolved,
                level,
            };
            let started = Self::start_with(config, pins, guard, starting);
            match started {
                Ok(started) => Ok(started),
                // The fallback could not be put in force either: the error
                // to exit with is the policy's.
                Err(e) => match chosen.fallback_for {
                    Some(policy_error) => {
                        tracing::error!(
                            "the fallback policy could not be put in force either: {}",
                            Chain(&e)
                        );
                        Err(DaemonError::Policy(policy_error))
                    }
                    None => Err(e),
                },
            }
        })
    }

    /// Puts the policy in force, attached and pinned.
    fn start_with(
        config: Config,
        pins: Pins,
        mut guard: Guard,
        starting: Starting,
    ) -> Result<(Self, AttachReport, Rings), DaemonError> {
        let Starting {
            policy,
            unresolved,
            in_fallback,
            level,
        } = starting;
        let cgroup = match &config.cgroup {
            Some(dir) => dir.clone(),
            None => cgroup::cgroup2_root()?,
        };
        // What can fail without changing anything comes first (the
        // programs loaded into the agent's own maps, which nothing runs
        // yet), so that a start that cannot succeed, a kernel or sandbox
        // refusing the programs among them, leaves not even a pin directory.
        cgroup::open(&cgroup)?;
        let logger = if level > 0 { guard.take_logger() } else { None };
        let events = guard.take_events()?;
        let attached_unix = crate::kernel::inspect::first_attached(&pins).unwrap_or_else(now_unix);
        let stamp = Stamp {
            digest: policy.digest(),
            applied_unix: now_unix(),
            attached_unix,
            agent_pid: std::process::id(),
            flags: stamp_flags(in_fallback, level > 0, !unresolved.is_empty()),
        };
        let pods = list_pods(&config.pods_dir);
        guard.set_pods(pods.clone());
        let generation = guard.load_and_apply(&policy, &stamp)?;
        say_dropped_pods(&guard);
        pins.prepare()?;
        // Two agents on one guard would each believe their maps are in force.
        let Some(lock) = pins.lock()? else {
            let pid = Status::read(&pins)
                .ok()
                .and_then(|s| s.config)
                .map_or(0, |(_, c)| c.agent_pid);
            return Err(DaemonError::AgentRunning {
                pid,
                pin_dir: pins.dir().to_owned(),
            });
        };
        let report = guard.attach(&cgroup, Some(&pins))?;
        warn_other_guards(&cgroup, &pins);
        let (forward, forward_ruleset) = ForwardState::apply(&policy.spec, None);
        let rings = Rings {
            events: pollable(events).map_err(io_err("cannot poll the event ring buffer"))?,
            logger: logger
                .map(pollable)
                .transpose()
                .map_err(io_err("cannot poll the eBPF log ring buffer"))?,
            nflog: forward::listen(),
            reload: None,
        };
        let daemon = Self {
            config,
            cgroup,
            pins,
            _lock: lock,
            guard: Some(guard),
            generation,
            policies: Policies::first(generation, policy),
            stamp,
            forward,
            forward_ruleset,
            ticks: 0,
            metrics: Arc::new(Metrics::new()),
            server: None,
            log: EventLog::default(),
            resolver: SystemResolver,
            unresolved,
            pods,
        };
        Ok((daemon, report, rings))
    }

    /// The policy in force.
    fn policy(&self) -> Option<Arc<Policy>> {
        self.policies.get(self.generation as u8)
    }

    /// Whether the fallback policy is in force, not the configured one.
    fn in_fallback(&self) -> bool {
        self.stamp.flags & config_flags::FALLBACK != 0
    }

    /// Says the guard is enforcing: the `ready=true` record, the metrics,
    /// and `READY=1` to systemd, which starts what is ordered after us only
    /// now.
    fn announce_ready(&self, report: &AttachReport) {
        let Some(policy) = self.policy() else {
            return;
        };
        let endpoints = policy.spec.addresses();
        let mode = policy.spec.mode;
        // Before `ready`: whoever waits for it sees what is left out.
        self.say_unresolved();
        let config = self.config.config.path();
        let how = if report.adopted > 0 {
            "took over the pinned guard on"
        } else {
            "attached to"
        };
        tracing::info!(
            ready = true,
            mode = mode.as_str(),
            cgroup = %self.cgroup.display(),
            config = %config.display(),
            pin_dir = %self.pins.dir().display(),
            adopted = report.adopted,
            endpoints = %endpoints.join(","),
            uid_rules = policy.uids.len(),
            gid_rules = policy.gids.len(),
            digest = %hex(&self.stamp.digest),
            forward = if self.forward == ForwardState::Guarded { "guarded" } else { "unguarded" },
            fallback = self.in_fallback(),
            "guard {how} {} in {mode} mode, protecting {}{}",
            self.cgroup.display(),
            endpoints.join(", "),
            self.forward.note()
        );
        if self.in_fallback() {
            tracing::error!(
                fallback = true,
                "the FALLBACK policy is in force ({}): {} could not be used; fix it and reload \
                 (systemctl reload imds-guard) to put it in force",
                policy.spec.path.display(),
                config.display()
            );
        }
        self.metrics.set_enforcing(Enforcing::Active(mode));
        self.metrics.set_policy_digest(&hex(&self.stamp.digest));
        self.metrics.set_fallback(self.in_fallback());
        // The table was just written, its counters at zero: no need to
        // run `nft` once more to read them.
        let guarded = self.forward == ForwardState::Guarded;
        self.metrics.set_forward(None, guarded);
        notified(notify::ready(&self.ready_status(mode, true)));
    }

    /// Says, at error level, which `[allow]` names are left out of the
    /// policy in force because they do not resolve.
    fn say_unresolved(&self) {
        for u in &self.unresolved {
            tracing::error!(
                unresolved = %u.identity,
                "[allow] {u}: left out of the policy in force (it cannot connect) until it \
                 resolves; trying again every {} s and at every reload",
                RETRY_NAMES.as_secs()
            );
        }
    }

    /// Starts the metrics server, if asked for. Only now, with the guard in
    /// force: metrics that cannot be served are worth an error record,
    /// never a reason to leave the host unguarded.
    async fn serve_metrics(&mut self) {
        let Some(addr) = self.config.metrics_listen else {
            return;
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(metrics = %addr, "serving Prometheus metrics on http://{addr}/metrics");
                self.server = Some(tokio::spawn(metrics::serve(l, Arc::clone(&self.metrics))));
            }
            Err(e) => tracing::error!(
                metrics = %addr,
                "cannot listen for metrics on {addr}: {e}{}; the guard runs without them",
                metrics::sandbox_hint(&e, addr)
            ),
        }
    }

    /// Reads events, reloads and ticks until SIGTERM or SIGINT; returns the
    /// signal's name.
    async fn run_loop(
        &mut self,
        signals: &mut Signals,
        rings: &mut Rings,
        timers: &mut Timers,
    ) -> Result<&'static str, DaemonError> {
        loop {
            tokio::select! {
                _ = signals.term.recv() => return Ok("SIGTERM"),
                _ = signals.int.recv() => return Ok("SIGINT"),
                _ = signals.hup.recv() => {
                    // The generation a reload writes may hold a policy whose
                    // decisions are still in the ring: explain them first.
                    self.drain(rings.events.get_mut());
                    self.on_hup(&mut rings.reload);
                }
                done = reloaded(&mut rings.reload) => match done {
                    Ok(done) => self.on_reloaded(done, rings),
                    Err(e) => return Err(DaemonError::Io {
                        what: "the reload thread failed",
                        source: std::io::Error::other(e),
                    }),
                },
                // The programs do not wake the agent for each event (that
                // costs the caller): read what is there every POLL, and
                // whenever the ring fills past a quarter (they wake it
                // then).
                _ = timers.poll.tick() => self.drain(rings.events.get_mut()),
                ready = rings.events.readable_mut() => {
                    let mut ready = ready.map_err(io_err("cannot poll the event ring buffer"))?;
                    self.drain(ready.get_inner_mut());
                    ready.clear_ready();
                }
                ready = readable(&mut rings.nflog) => {
                    let mut ready = ready.map_err(io_err("cannot poll the NFLOG socket"))?;
                    if let Err(e) = self.on_nflog(ready.get_inner()) {
                        tracing::warn!("cannot read NFLOG: {e}");
                    }
                    ready.clear_ready();
                }
                ready = readable(&mut rings.logger) => {
                    let mut ready = ready.map_err(io_err("cannot poll the eBPF log ring buffer"))?;
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                _ = timers.tick.tick() => self.on_tick(),
                _ = timers.pods.tick(), if self.watches_pods() => {
                    if rings.reload.is_none() && self.on_pods() {
                        self.on_hup(&mut rings.reload);
                    }
                }
                _ = timers.names.tick(), if !self.unresolved.is_empty() => {
                    if rings.reload.is_none() {
                        tracing::info!(
                            "trying again the {} [allow] name(s) that did not resolve",
                            self.unresolved.len()
                        );
                        self.on_hup(&mut rings.reload);
                    }
                }
            }
        }
    }

    /// Whether the policy in force has `pods` rules.
    fn watches_pods(&self) -> bool {
        self.policy().is_some_and(|p| !p.cgroups.pods.is_empty())
    }

    /// Lists the kubelet's pods; whether they changed since the last
    /// policy put in force (or tried), which a reload then follows.
    fn on_pods(&mut self) -> bool {
        let listed = list_pods(&self.config.pods_dir);
        if listed == self.pods {
            return false;
        }
        tracing::info!(
            pods = listed.len(),
            "the kubelet's pods changed: reloading to follow them"
        );
        self.pods = listed;
        true
    }

    /// About once a second: counters into the metrics, rate-limit windows
    /// closed, lost events reported.
    fn on_tick(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(FORWARD_COUNTERS_EVERY) {
            self.refresh_forward_counters();
        }
        // While a reload has the guard, the last counters stand.
        let counters = self.guard.as_ref().and_then(|g| g.counters().ok());
        if let Some(c) = &counters {
            self.metrics.set_counters(c);
        }
        self.log
            .tick(Instant::now(), counters.map(|c| c.events_lost));
    }

    /// Logs every decision waiting in the ring buffer.
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let now = Instant::now();
        // The paths of cgroups created since: a decision in one names it.
        if let Some(Err(e)) = self.guard.as_mut().map(Guard::drain_cgroup_events) {
            tracing::warn!("cannot read the cgroups created: {}", Chain(&e));
        }
        let guard = self.guard.as_ref();
        let places = |id: u64| {
            guard
                .and_then(|g| g.cgroup_place(id))
                .map(|(path, pod)| events::CgroupPlace {
                    path,
                    pod: pod.map(|p| p.to_string()),
                })
        };
        while let Some(item) = ring.next() {
            self.log
                .record_bytes(&item, &self.policies, &self.resolver, &places, now);
        }
    }

    /// Stops: tells systemd, drains what was decided before, and says what
    /// stays in force.
    async fn shutdown(mut self, signal_name: &str, rings: &mut Rings) {
        notified(notify::stopping());
        if let Some(server) = self.server.take() {
            server.abort();
        }
        // A reload in progress finishes (it is bounded): the guard is left
        // with one policy in force, said in the log.
        if let Some(pending) = rings.reload.take() {
            match pending.task.await {
                Ok(done) => self.on_reloaded(done, rings),
                Err(e) => tracing::error!("the reload thread failed: {e}"),
            }
        }
        // Whatever is still in the ring buffer was decided before we stop.
        self.drain(rings.events.get_mut());
        let counters = self
            .guard
            .as_ref()
            .and_then(|g| g.counters().ok())
            .unwrap_or_default();
        self.log.tick(
            Instant::now() + Duration::from_secs(3600),
            Some(counters.events_lost),
        );
        let outcome = if self.pins.any_link() {
            format!(
                "the guard stays attached to {} (pinned in {}); `{}` removes it",
                self.cgroup.display(),
                self.pins.dir().display(),
                self.pins.command("detach")
            )
        } else {
            "the guard was detached".to_owned()
        };
        tracing::info!(
            allowed = counters.allowed,
            denied = counters.denied,
            audited = counters.audited,
            events_lost = counters.events_lost,
            events_received = self.log.received(),
            errors = counters.errors,
            pin_dir = %self.pins.dir().display(),
            "{signal_name}: exiting; {outcome}"
        );
    }
}

/// The config flags an agent starts with: whether its policy is the
/// fallback, and whether allowed decisions are logged (debug level), so
/// that the programs send events for them.
fn stamp_flags(in_fallback: bool, log_allowed: bool, partial: bool) -> u32 {
    let mut flags = 0;
    if in_fallback {
        flags |= config_flags::FALLBACK;
    }
    if log_allowed {
        flags |= config_flags::LOG_ALLOWED;
    }
    if partial {
        flags |= config_flags::PARTIAL;
    }
    flags
}

/// What [`Daemon::start_with`] puts in force.
struct Starting {
    policy: Policy,
    /// `[allow]` names left out of it (they do not resolve yet).
    unresolved: Vec<Unresolved>,
    in_fallback: bool,
    /// The programs' log level (0: off).
    level: u8,
}

/// How often the kubelet's pod directories are listed under a policy with
/// `pods` rules: with the reload it starts, the longest a new pod's first
/// connects are refused (README, "Units, cgroups and pods").
pub const PODS_EVERY: Duration = Duration::from_secs(2);

/// How often names that did not resolve are tried again.
const RETRY_NAMES: Duration = Duration::from_secs(30);

/// Ticks (seconds) between two reads of the forward table's counters:
/// each is a run of `nft`.
const FORWARD_COUNTERS_EVERY: u32 = 10;

/// How often the ring buffer is read when nothing wakes the agent: the
/// longest a decision on a quiet host waits to be logged.
pub const POLL: Duration = Duration::from_millis(50);

/// The run loop's clocks.
struct Timers {
    /// Counters, rate-limit windows, lost events: once a second.
    tick: Interval,
    /// The ring buffer: every [`POLL`].
    poll: Interval,
    /// Names that did not resolve: every [`RETRY_NAMES`].
    names: Interval,
    /// The kubelet's pods, under a policy with `pods` rules: every
    /// [`PODS_EVERY`].
    pods: Interval,
}

impl Timers {
    fn new() -> Self {
        let every = |period| {
            let mut i = interval_at(tokio::time::Instant::now() + period, period);
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

/// The end of the reload in progress; never, when there is none.
async fn reloaded(
    reload: &mut Option<reload::Pending>,
) -> Result<reload::Done, tokio::task::JoinError> {
    match reload {
        Some(p) => (&mut p.task).await,
        None => pending().await,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// The one-line status systemd shows: mode and policy in force, whether
    /// the last reload was refused, and whether the forward path is open.
    fn ready_status(&self, mode: Mode, last_reload_applied: bool) -> String {
        let policy = if self.in_fallback() {
            "FALLBACK policy (the configured one could not be used)"
        } else {
            "policy"
        };
        format!(
            "{mode}, {policy} sha256 {}{}{}",
            hex(&self.stamp.digest),
            if last_reload_applied {
                ""
            } else {
                " (last reload refused)"
            },
            self.forward.note()
        )
    }
}

/// systemd notifications are best effort: without systemd they do nothing,
/// and a failure to send one is worth a line, not an exit.
fn notified(result: Result<(), notify::NotifyError>) {
    if let Err(e) = result {
        tracing::warn!("cannot notify systemd: {:#}", anyhow::Error::from(e));
    }
}

/// Registers a ring buffer (or the NFLOG socket) with the reactor.
fn pollable<T: std::os::fd::AsRawFd>(ring: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both ring buffers (`RingBuf<MapData>`, `EbpfLogger`) and the
    // NFLOG socket own their descriptor and close it only when dropped,
    // which is after the `AsyncFd` that owns them.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Readiness of an optional source (the aya-log ring buffer, NFLOG);
/// never ready when there is none.
async fn readable<T: std::os::fd::AsRawFd>(
    source: &mut Option<AsyncFd<T>>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, T>> {
    match source {
        Some(s) => s.readable_mut().await,
        None => pending().await,
    }
}

/// Says, at error level, when another guard (another agent's, pinned in
/// another directory) is attached to the same cgroup: both decide, a deny
/// from either wins, and the other one's policy is not this one's.
fn warn_other_guards(cgroup: &std::path::Path, pins: &Pins) {
    let ours = crate::kernel::inspect::pinned_prog_ids(pins);
    let Ok(others) = crate::kernel::inspect::other_guards(cgroup, &ours) else {
        return;
    };
    if others.is_empty() {
        return;
    }
    let list: Vec<String> = others
        .iter()
        .map(|o| format!("{} (program id {})", o.hook.as_str(), o.prog_id))
        .collect();
    tracing::error!(
        other_guard = true,
        "another imds-guard guard is attached to {} besides this one (pinned elsewhere than {}): \
         {}; both decide and a deny from either wins. Detach it with `imds-guard detach \
         --pin-dir ITS_DIR`, or stop the agent that runs it",
        cgroup.display(),
        pins.dir().display(),
        list.join(", ")
    );
}

/// One malloc arena for every thread. glibc gives each thread that
/// allocates its own arena and keeps what it frees there: a reload on the
/// blocking pool would leave a policy's worth of pages in an arena nobody
/// uses again. The agent's threads seldom allocate at once, so one arena
/// costs no waiting worth measuring.
pub fn one_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets a tunable; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap's free pages to the kernel. glibc keeps freed memory
/// for reuse, and what start and reload free (parse trees, BTF) is large
/// next to what the agent keeps.
pub(super) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
