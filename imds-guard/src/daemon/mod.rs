//! The agent (`imds-guard run`): load the policy, attach (or adopt the
//! pinned guard), log decisions, reload on SIGHUP, until told to stop.
//!
//! A policy that does not validate never reaches the kernel: it is parsed,
//! checked and resolved before anything is loaded, and a reload with a bad
//! file keeps the policy in force. The maps are filled before the programs
//! are attached or swapped in, so the first connect the new programs see is
//! already decided by the policy. Exiting leaves the pinned guard in place.
//!
//! The [`Daemon`] is made of parts that each own their state: the guard as
//! attached (`attach.rs`), the policies in force and tried (`policies.rs`),
//! the forward path (`forward.rs`), the reload in progress (`reload.rs`),
//! the kubelet's pods (`pods.rs`), the decision log (`events.rs`), the
//! metrics (`metrics/`) and the status file a monitor reads
//! (`status_file.rs`). This file composes them: start (timed phase by phase
//! for the `ready` record, `phases.rs`), the run loop, shutdown. The parts
//! do not call back into it.
//!
//! Imports: `kernel` and `policy`; never `cli`, which builds a [`Config`]
//! from its arguments and calls [`run`].

mod attach;
pub mod events;
pub mod fallback;
mod forward;
mod heap;
pub mod logging;
pub mod metrics;
pub mod nflog;
pub mod notify;
mod phases;
mod pods;
mod policies;
pub mod ratelimit;
mod reload;
mod rescan;
mod rings;
pub mod status_file;
mod wake;
mod warnings;
mod watch;

use std::{net::SocketAddr, path::PathBuf};

use aya::maps::{MapData, RingBuf};
use tokio::time::Duration;

use self::{
    attach::Attachment,
    events::EventLog,
    forward::ForwardPath,
    metrics::{Enforcing, Exporter, ReloadOutcome},
    phases::{StartPhases, ms, timed},
    pods::PodWatch,
    policies::{FirstStamp, InForce},
    reload::{Done, Reloader, Tried},
    rescan::Rescanner,
    rings::Rings,
    status_file::{StatusFile, Why},
    wake::{Moment, Signals, Timers},
    watch::PolicyWatch,
};
pub use self::{forward::Choice as ForwardChoice, heap::one_heap, pods::PODS_EVERY, wake::POLL};
use crate::{
    chain::Chain,
    kernel::{
        AttachReport, Guard, GuardError,
        cgroup::{self, CgroupError},
        memlock::{self, Memlock},
        pins::{PinError, Pins},
        place::{NetNs, Placement},
    },
    policy::{Policy, PolicyError, PolicySource, SystemResolver, Unresolved},
};

/// What `imds-guard run` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the policy comes from (read at start and at each reload).
    pub config: PolicySource,
    /// What to put in force when the policy cannot be used at start.
    pub fallback: fallback::Fallback,
    /// Where the guard goes (the cgroup, its hierarchy, the namespaces),
    /// settled before the runtime started ([`place::establish`]).
    pub place: Placement,
    pub pin_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// The kubelet's pod log directories, for `pods` rules.
    pub pods_dir: PathBuf,
    /// What holds the forward path.
    pub forward: ForwardChoice,
    /// Where to write the status file, if anywhere.
    pub status_file: status_file::Target,
    /// Reload when the policy file changes (`--watch-config`).
    pub watch_config: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The policy cannot be used and nothing was attached.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy cannot be used, and a guard is pinned at `pin_dir`: its
    /// programs keep enforcing the policy last put in force.
    #[error("{source}")]
    PolicyKept {
        source: PolicyError,
        pin_dir: PathBuf,
    },
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

/// A running agent: its parts.
pub struct Daemon {
    attached: Attachment,
    /// Where the guard is, and what "the host" is to it.
    place: Placement,
    policies: InForce,
    forward: ForwardPath,
    reloader: Reloader,
    rescanner: Rescanner,
    pods: PodWatch,
    log: EventLog,
    exporter: Exporter,
    status: StatusFile,
    /// The policy file's watch (`--watch-config`).
    watch: PolicyWatch,
    /// The last turn stopped at a bound with events still waiting: the
    /// next reads on, after the loop has served whatever else is ready.
    backlog: bool,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let mut signals = Signals::new()?;
    raise_memlock();
    let listen = config.metrics_listen;
    // Before the policy is first read: a change meanwhile is not missed.
    let watch = watch(&config);
    let (mut daemon, report, mut rings, phases) = Daemon::start(config)?;
    daemon.watch = watch;
    daemon.announce_ready(&report, &phases);
    // Loading freed the parse tree, both BTF copies and the verifier's
    // logs: give the pages back rather than keep them for a reload.
    heap::trim();
    // Only now, with the guard in force.
    daemon.exporter.serve(listen).await;
    let mut timers = Timers::new();
    let signal_name = daemon
        .run_loop(&mut signals, &mut rings, &mut timers)
        .await?;
    daemon.shutdown(signal_name, &mut rings).await;
    Ok(())
}

/// Raises the locked-memory limit that kernels before 5.11 charge the maps
/// against; says so when it could not go past the hard limit.
fn raise_memlock() {
    match memlock::raise() {
        Ok(Memlock::Unlimited | Memlock::Raised) => {}
        // From 5.11 the memory cgroup is charged instead: nothing to say.
        Ok(Memlock::ToHard(_)) if !memlock::charged() => {}
        Ok(Memlock::ToHard(bytes)) => tracing::warn!(
            "RLIMIT_MEMLOCK raised to its hard limit only ({bytes} bytes), which this kernel \
             charges the maps against (before 5.11): give the agent CAP_SYS_RESOURCE or an \
             unlimited LimitMEMLOCK if loading fails"
        ),
        Err(e) => tracing::warn!("cannot raise RLIMIT_MEMLOCK: {e}"),
    }
}

/// The policy file's watch `config` asks for. One that cannot be set up is
/// said as an error, and the agent goes on without it: the guard enforces
/// the policy it has, and a reload by hand still works, where refusing to
/// start would leave the host unguarded over a watch.
fn watch(config: &Config) -> PolicyWatch {
    if !config.watch_config {
        return PolicyWatch::off(config.config.clone());
    }
    PolicyWatch::new(config.config.clone()).unwrap_or_else(|e| {
        tracing::error!(
            "cannot watch {} for changes, reload it by hand: {}",
            config.config.path().display(),
            Chain(&e)
        );
        PolicyWatch::off(config.config.clone())
    })
}

/// What [`Daemon::start_with`] puts in force.
struct Starting {
    policy: Policy,
    /// `[allow]` names left out of it (they do not resolve yet).
    unresolved: Vec<Unresolved>,
    in_fallback: bool,
    /// The programs' log level (0: off).
    level: u8,
    /// How long the start took so far, phase by phase.
    phases: StartPhases,
}

/// A started agent: its parts, what attaching did, its ring buffers, and
/// how long each phase of the start took.
type Started = (Daemon, AttachReport, Rings, StartPhases);

impl Daemon {
    /// Loads and resolves the policy (or, when it cannot be used and
    /// nothing is pinned, the fallback), takes the pin directory, loads the
    /// programs, puts the policy in force and attaches.
    fn start(config: Config) -> Result<Started, DaemonError> {
        let mut phases = StartPhases::begin();
        let level = logging::ebpf_log_level();
        // Reading BTF and creating the maps, and reading the policy, take
        // about as long as each other, and neither changes anything: both
        // at once. (The verifier then runs while the policy is written.)
        std::thread::scope(|scope| {
            let loading = scope.spawn(move || timed(|| Guard::open(level)));
            let pins = Pins::new(&config.pin_dir);
            let (chosen, parse) = timed(|| {
                fallback::choose(
                    &config.config.path(),
                    &config.fallback,
                    &pins,
                    &SystemResolver,
                    config.place.layout(),
                )
            });
            phases.parse = parse;
            let chosen = chosen.map_err(|source| {
                if pins.any_link() {
                    DaemonError::PolicyKept {
                        source,
                        pin_dir: config.pin_dir.clone(),
                    }
                } else {
                    DaemonError::Policy(source)
                }
            })?;
            let guard = match loading.join() {
                Ok((loaded, open)) => {
                    phases.open = open;
                    loaded?
                }
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let starting = Starting {
                in_fallback: chosen.fallback_for.is_some(),
                policy: chosen.policy,
                unresolved: chosen.unresolved,
                level,
                phases,
            };
            match Self::start_with(config, pins, guard, starting) {
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
    ) -> Result<Started, DaemonError> {
        let Starting {
            policy,
            unresolved,
            in_fallback,
            level,
            mut phases,
        } = starting;
        // What can fail without changing anything comes first (the
        // programs loaded into the agent's own maps, which nothing runs
        // yet), so that a start that cannot succeed, a kernel or sandbox
        // refusing the programs among them, leaves not even a pin directory.
        let cgroup = config.place.cgroup.clone();
        cgroup::open(&cgroup)?;
        let rings = Rings::take(&mut guard, level)?;
        let stamp = FirstStamp {
            attached_unix: attach::first_attached(&pins),
            in_fallback,
            log_allowed: level > 0,
            partial: !unresolved.is_empty(),
        }
        .stamp(&policy);
        let pods = PodWatch::new(config.pods_dir);
        guard.set_pods(pods.listed().clone());
        let (generation, load) = guard.load_and_apply(&policy, &stamp)?;
        phases.load = load;
        pods::say_dropped(&guard);
        let (attached, attach) = timed(|| Attachment::attach(cgroup, pins, guard));
        let (mut attached, report) = attached?;
        phases.attach = attach;
        let (forward, took) = timed(|| {
            attached.with_guard(|guard, pins| {
                ForwardPath::start(&policy.spec, guard, pins, config.forward)
            })
        });
        phases.forward = took;
        let forward = forward.ok_or_else(|| DaemonError::Io {
            what: "the guard was lent away before the forward path was put in force",
            source: std::io::Error::other("no guard"),
        })?;
        let status = StatusFile::start(&config.status_file, &config.pin_dir, &config.place);
        let daemon = Self {
            attached,
            forward,
            policies: InForce::first(generation, policy, stamp, unresolved),
            watch: PolicyWatch::off(config.config.clone()),
            reloader: Reloader::new(config.config, config.place.layout()),
            place: config.place,
            rescanner: Rescanner::default(),
            pods,
            log: EventLog::default(),
            exporter: Exporter::default(),
            status,
            backlog: false,
        };
        Ok((daemon, report, rings, phases))
    }

    /// Says the guard is enforcing: the `ready=true` record (with how long
    /// each phase of the start took), the metrics, and `READY=1` to
    /// systemd, which starts what is ordered after us only now.
    fn announce_ready(&self, report: &AttachReport, phases: &StartPhases) {
        let Some(policy) = self.policies.policy() else {
            return;
        };
        let endpoints = policy.spec.addresses();
        let mode = policy.spec.mode;
        // Before `ready`: whoever waits for it sees what is left out.
        self.policies.say_unresolved();
        let config = self.reloader.config();
        let how = if report.adopted > 0 {
            "took over the pinned guard on"
        } else {
            "attached to"
        };
        let table = self.forward.table();
        self.say_place();
        let place = &self.place;
        tracing::info!(
            ready = true,
            mode = mode.as_str(),
            cgroup = %self.attached.cgroup().display(),
            cgroup_root = place.at_root(),
            hierarchy = place.hierarchy_name(),
            cgroup_mount = %place.mount().map(|m| m.display().to_string()).unwrap_or_default(),
            cgroup_ns = place.cgroup_ns_name(),
            cgroup_layout = place.layout().as_str(),
            pid_ns = place.pid_ns,
            net_ns = place.net_ns,
            config = %config.display(),
            pin_dir = %self.attached.pin_dir().display(),
            adopted = report.adopted,
            retired = report.retired,
            programs = self.attached.programs().unwrap_or("unknown"),
            endpoints = %endpoints.join(","),
            presets = %policy.spec.presets.join(","),
            uid_rules = policy.uids.len(),
            gid_rules = policy.gids.len(),
            digest = %self.policies.digest(),
            forward = if table.is_guarded() { "guarded" } else { "unguarded" },
            forward_mechanism = table.mechanism(),
            fallback = self.policies.in_fallback(),
            watch_config = self.watch.on(),
            parse_ms = ms(phases.parse),
            open_ms = ms(phases.open),
            verifier_ms = ms(phases.load.verifier),
            maps_ms = ms(phases.load.maps),
            classify_ms = ms(phases.load.classify),
            attach_ms = ms(phases.attach),
            forward_ms = ms(phases.forward),
            start_ms = ms(phases.so_far()),
            "guard {how} {} in {mode} mode, protecting {}{}",
            self.attached.cgroup().display(),
            endpoints.join(", "),
            table.note()
        );
        if self.policies.in_fallback() {
            tracing::error!(
                fallback = true,
                "the FALLBACK policy is in force ({}): {} could not be used; fix it and reload \
                 (systemctl reload imds-guard) to put it in force",
                policy.spec.path.display(),
                config.display()
            );
        }
        let metrics = self.exporter.metrics();
        metrics.set_enforcing(Enforcing::Active(mode));
        metrics.set_policy_digest(&self.policies.digest());
        metrics.set_fallback(self.policies.in_fallback());
        // The table was just written, its counters at zero: no need to
        // run `nft` once more to read them.
        metrics.set_forward(None, table.is_guarded());
        notify::best_effort(notify::ready(
            &self.policies.ready_status(true, table.note()),
        ));
        self.status.write(Why::Started);
    }

    /// Says where the guard is and what "the host" is to it, before
    /// `ready`; warns when "the host" is not pid 1's network namespace.
    fn say_place(&self) {
        let place = &self.place;
        tracing::info!(
            event = "placement",
            "the guard is attached to {}; \"the host\" of [allow.host] is {}",
            place.describe(),
            place.host()
        );
        if let NetNs::NotPid1s { pid1 } = place.net {
            tracing::warn!(
                event = "placement",
                "the agent's network namespace net:[{}] is not pid 1's (net:[{pid1}]): \
                 [allow.host] means a caller in this namespace, and the forward table guards \
                 this namespace's forwarding, not the host's (a DaemonSet needs hostNetwork: \
                 true)",
                place.net_ns
            );
        }
    }

    /// Reads events, reloads and ticks until SIGTERM or SIGINT; returns the
    /// signal's name.
    ///
    /// No turn of the loop does more than a bounded amount of work: the
    /// drains stop at [`rings::DECISIONS_PER_DRAIN`] decisions and
    /// `kernel::classify::EVENTS_PER_DRAIN` cgroup events, the NFLOG read
    /// at `forward::READS_PER_TURN` messages, and listings run on blocking
    /// threads. A signal, a reload's end or a tick thus waits at most a few
    /// turns whatever the programs report: `select!` picks among the ready
    /// branches at random, and what a drain left is read on in a later
    /// turn.
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
                    self.drain(rings.events.get(), rings::RING_DECISIONS);
                    self.on_hup();
                }
                () = self.watch.changed() => {
                    tracing::info!(
                        config = %self.watch.path().display(),
                        "{} changed: reloading",
                        self.watch.path().display()
                    );
                    self.drain(rings.events.get(), rings::RING_DECISIONS);
                    self.on_hup();
                }
                done = self.reloader.finished() => match done {
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
                _ = timers.poll.tick() => {
                    self.drain(rings.events.get(), rings::DECISIONS_PER_DRAIN);
                }
                // Yields first: whatever else is ready is served before.
                () = tokio::task::yield_now(), if self.backlog => {
                    self.drain(rings.events.get(), rings::DECISIONS_PER_DRAIN);
                }
                ready = rings.events.ready() => {
                    let mut ready = ready?;
                    if !self.drain(ready.get_inner_mut(), rings::DECISIONS_PER_DRAIN) {
                        ready.clear_ready();
                    }
                }
                ready = self.forward.ready() => {
                    let ready = ready.map_err(|source| DaemonError::Io {
                        what: "cannot poll the forward path's records or nf_tables",
                        source,
                    })?;
                    self.forward.on_ready(ready, &mut self.log, self.policies.mode());
                    self.forward_changed();
                }
                done = self.rescanner.finished(), if self.attached.guard_mut().is_some() => {
                    if let Some(guard) = self.attached.guard_mut() {
                        self.rescanner.done(done, guard);
                    }
                }
                flushed = rings.logger.flush() => flushed?,
                _ = timers.tick.tick() => self.on_tick(),
                _ = timers.status.tick(), if self.status.enabled() => {
                    self.status.write(Why::Periodic);
                }
                _ = timers.pods.tick(), if self.policies.watches_pods() => {
                    if !self.reloader.busy() && self.pods.changed() {
                        self.on_hup();
                    }
                }
                _ = timers.names.tick(), if self.policies.unresolved() > 0 => {
                    if !self.reloader.busy() {
                        tracing::info!(
                            "trying again the {} [allow] name(s) that did not resolve",
                            self.policies.unresolved()
                        );
                        self.on_hup();
                    }
                }
            }
        }
    }

    /// Reads a bounded slice of the cgroup events (the names records give;
    /// lost events are said and the hierarchy listed again) and logs up to
    /// `limit` decisions waiting in `ring`; whether either left some, which
    /// the next turn reads.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, limit: usize) -> bool {
        let mut more = false;
        if let Some(guard) = self.attached.guard_mut() {
            match guard.drain_cgroup_events() {
                Ok(drained) => {
                    more = drained.more;
                    self.rescanner.drained(drained, guard);
                }
                Err(e) => tracing::warn!("cannot read the cgroups created: {}", Chain(&e)),
            }
        }
        let guard = self.attached.guard_mut().map(|g| &*g);
        more |= rings::drain(
            ring,
            &mut self.log,
            self.policies.generations(),
            guard,
            limit,
        );
        self.backlog = more;
        more
    }

    /// About once a second: counters into the metrics, rate-limit windows
    /// closed, lost events reported.
    fn on_tick(&mut self) {
        self.forward.tick(self.exporter.metrics());
        // While a reload has the guard, the last counters stand.
        let counters = self.attached.counters();
        if let Some(c) = &counters {
            self.exporter.metrics().set_counters(c);
        }
        if let Some(c) = self.attached.request_counters() {
            self.exporter.metrics().set_request_counters(&c);
        }
        self.log
            .tick(std::time::Instant::now(), counters.map(|c| c.events_lost));
        self.forward_changed();
        self.rescanner.tick();
        if let Some(guard) = self.attached.guard_mut() {
            self.rescanner.start(guard);
            match guard.cgroup_fill() {
                Ok(fill) => self
                    .exporter
                    .metrics()
                    .set_cgroups(fill, self.rescanner.rescans()),
                Err(e) => tracing::debug!("cannot read the cgroup counters: {}", Chain(&e)),
            }
        }
    }

    /// A forward path repaired, or found open, is written to the status
    /// file now rather than at the next period.
    fn forward_changed(&mut self) {
        if self.forward.take_changed() {
            self.status.write(Why::ForwardChanged);
        }
    }

    /// SIGHUP: starts a reload, or remembers to run one more after the
    /// reload in progress.
    fn on_hup(&mut self) {
        if self.reloader.busy() {
            self.reloader.again();
            return;
        }
        // From the signal that asked, if one did: what the record counts.
        let requested = Moment::of_hup();
        let Some(guard) = self.attached.lend() else {
            return;
        };
        notify::best_effort(notify::reloading());
        let tried = Tried {
            stamp: self.policies.stamp(),
            policies: self.policies.generations().clone(),
            forward: self.forward.lend(),
            pods_dir: self.pods.dir().to_owned(),
            requested,
        };
        self.reloader.start(guard, tried);
    }

    /// The reload thread's result: the guard back, the outcome said.
    fn on_reloaded(&mut self, done: Done, rings: &mut Rings) {
        self.attached.give_back(done.guard);
        let outcome = match done.outcome {
            Ok(applied) => {
                applied.announce();
                self.forward.adopt(applied.forward);
                self.policies
                    .replace(applied.generation, applied.stamp, applied.unresolved);
                ReloadOutcome::Applied
            }
            Err(outcome) => {
                self.attached.mark_reload_refused();
                self.forward.keep();
                outcome
            }
        };
        // A flip waited out every decision made under the replaced policy,
        // so all of them are in the ring: explain them, then let go of
        // every policy but the one in force and of what parsing it freed.
        self.drain(rings.events.get(), rings::RING_DECISIONS);
        self.policies.forget_others();
        heap::trim();
        let metrics = self.exporter.metrics();
        metrics.reload(outcome);
        let applied = outcome == ReloadOutcome::Applied;
        notify::best_effort(notify::ready(
            &self
                .policies
                .ready_status(applied, self.forward.table().note()),
        ));
        self.status.write(if applied {
            Why::Reloaded
        } else {
            Why::ReloadRefused
        });
        if applied {
            metrics.set_policy_digest(&self.policies.digest());
            metrics.set_enforcing(Enforcing::Active(self.policies.mode()));
            metrics.set_fallback(false);
        }
        if self.reloader.finish() {
            self.on_hup();
        }
    }

    /// Stops: tells systemd, drains what was decided before, and says what
    /// stays in force.
    async fn shutdown(mut self, signal_name: &'static str, rings: &mut Rings) {
        notify::best_effort(notify::stopping());
        self.exporter.stop();
        // A reload in progress finishes (it is bounded): the guard is left
        // with one policy in force, said in the log.
        match self.reloader.wait().await {
            Some(Ok(done)) => self.on_reloaded(done, rings),
            Some(Err(e)) => tracing::error!("the reload thread failed: {e}"),
            None => {}
        }
        // Whatever is still in the ring buffer was decided before we stop.
        self.drain(rings.events.get(), rings::RING_DECISIONS);
        let counters = self.attached.counters().unwrap_or_default();
        self.log.tick(
            std::time::Instant::now() + Duration::from_secs(3600),
            Some(counters.events_lost),
        );
        tracing::info!(
            allowed = counters.allowed,
            denied = counters.denied,
            audited = counters.audited,
            events_lost = counters.events_lost,
            events_received = self.log.received(),
            errors = counters.errors,
            pin_dir = %self.attached.pin_dir().display(),
            "{signal_name}: exiting; {}",
            self.attached.outcome()
        );
        // Last: the file says the agent stopped, and what it left in force.
        self.status.stop(signal_name);
    }
}
