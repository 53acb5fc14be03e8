//! Reloading on SIGHUP: re-read, validate and resolve the policy file, and
//! put it in force in the generation not in use, or keep the policy in
//! force and say why not.
//!
//! The work (parsing and resolving a large file, writing the maps, two RCU
//! grace periods, the forward table) runs on a blocking thread, with the
//! guard lent to it, so that the run loop keeps reading events and NFLOG
//! meanwhile. A SIGHUP during a reload is remembered and served after it.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use imds_guard_common::config_flags;
use tokio::task::JoinHandle;

use super::{
    Daemon, Rings,
    forward::ForwardState,
    metrics::{Enforcing, ReloadOutcome},
    notified, notify, now_unix,
};
use crate::{
    chain::Chain,
    kernel::{Guard, GuardError, Stamp},
    policy::{Mode, Policy, PolicySpec, SystemResolver, Unresolved, hex},
};

/// The policy of each generation, for explaining the decisions made under
/// it (events still in flight after a reload carry the old generation).
/// Shared with the reload thread, which names the new generation's policy
/// before it flips to it.
#[derive(Clone, Default)]
pub(super) struct Policies(Arc<Mutex<[Option<Arc<Policy>>; 2]>>);

impl Policies {
    /// The first policy, in force in `generation`.
    pub(super) fn first(generation: u32, policy: Policy) -> Self {
        let policies = Self::default();
        policies.set(generation, Arc::new(policy));
        policies
    }

    /// The policy of `generation`, if one was written there.
    pub fn get(&self, generation: u8) -> Option<Arc<Policy>> {
        self.slots()[usize::from(generation & 1)].clone()
    }

    fn set(&self, generation: u32, policy: Arc<Policy>) {
        self.slots()[(generation & 1) as usize] = Some(policy);
    }

    /// Drops the policy of `generation`, once nothing in the ring can name
    /// it.
    fn forget(&self, generation: u32) {
        let forgotten = self.slots()[(generation & 1) as usize].take();
        // Freed here, outside the lock.
        drop(forgotten);
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, [Option<Arc<Policy>>; 2]> {
        // Plain data: a panic elsewhere cannot leave it half written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reload running on its thread, with the guard.
pub(super) struct Pending {
    pub(super) task: JoinHandle<Done>,
    /// Another SIGHUP came meanwhile.
    again: bool,
}

/// What the reload thread hands back.
pub(super) struct Done {
    guard: Guard,
    outcome: Result<Applied, ReloadOutcome>,
}

/// A policy put in force.
struct Applied {
    generation: u32,
    stamp: Stamp,
    policy: Arc<Policy>,
    forward: ForwardState,
    forward_ruleset: Option<String>,
    unresolved: Vec<Unresolved>,
    micros: u64,
}

impl Daemon {
    /// SIGHUP: starts a reload, or remembers to run one more after the
    /// reload in progress.
    pub(super) fn on_hup(&mut self, pending: &mut Option<Pending>) {
        if let Some(pending) = pending {
            pending.again = true;
            return;
        }
        let Some(guard) = self.guard.take() else {
            return;
        };
        notified(notify::reloading());
        // Looked up again: a policy dropped in /etc since the start is
        // read now.
        let config = self.config.config.path();
        let stamp = self.stamp;
        let policies = self.policies.clone();
        let forward = self.forward_ruleset.clone();
        let pods_dir = self.config.pods_dir.clone();
        let task = tokio::task::spawn_blocking(move || {
            let pods = super::list_pods(&pods_dir);
            reload(guard, &config, stamp, &policies, forward.as_deref(), pods)
        });
        *pending = Some(Pending { task, again: false });
    }

    /// The reload thread's result: the guard back, the outcome said.
    pub(super) fn on_reloaded(&mut self, done: Done, rings: &mut Rings) {
        self.guard = Some(done.guard);
        let outcome = match done.outcome {
            Ok(applied) => {
                self.announce_reload(&applied);
                self.generation = applied.generation;
                self.stamp = applied.stamp;
                self.forward = applied.forward;
                self.forward_ruleset = applied.forward_ruleset;
                let was = std::mem::replace(&mut self.unresolved, applied.unresolved);
                if self.unresolved.is_empty() && !was.is_empty() {
                    tracing::info!("every [allow] name resolves now");
                }
                self.say_unresolved();
                ReloadOutcome::Applied
            }
            Err(outcome) => {
                // The pinned config says so, for `status`, until a reload
                // succeeds (its new config has no such flag).
                let marked = self.guard.as_mut().map(|g| g.mark_reload_refused(true));
                if let Some(Err(e)) = marked {
                    tracing::warn!("cannot record the refused reload for status: {}", Chain(&e));
                }
                outcome
            }
        };
        // A flip waited out every decision made under the replaced policy,
        // so all of them are in the ring: explain them, then let go of
        // every policy but the one in force (the replaced one, or one a
        // failed reload named but never put in force) and of what parsing
        // it freed.
        self.drain(rings.events.get_mut());
        self.policies.forget(self.generation ^ 1);
        super::trim_heap();
        self.metrics.reload(outcome);
        let mode = self.policy().map_or(Mode::Enforce, |p| p.spec.mode);
        let applied = outcome == ReloadOutcome::Applied;
        notified(notify::ready(&self.ready_status(mode, applied)));
        if applied {
            self.metrics.set_policy_digest(&hex(&self.stamp.digest));
            self.metrics.set_enforcing(Enforcing::Active(mode));
            self.metrics.set_fallback(false);
        }
        if rings.reload.take().is_some_and(|p| p.again) {
            self.on_hup(&mut rings.reload);
        }
    }

    fn announce_reload(&self, a: &Applied) {
        let mode = a.policy.spec.mode;
        tracing::info!(
            event = "reload",
            outcome = "applied",
            config = %a.policy.spec.path.display(),
            mode = mode.as_str(),
            generation = a.generation,
            digest = %hex(&a.stamp.digest),
            micros = a.micros,
            "reloaded {}: {mode} mode, {} uid and {} gid rules{}",
            a.policy.spec.path.display(),
            a.policy.uids.len(),
            a.policy.gids.len(),
            a.forward.note()
        );
    }
}

/// On the reload thread: the policy at `config` put in force with `guard`
/// (and the forward table, unless `forward` is its ruleset already).
fn reload(
    mut guard: Guard,
    config: &Path,
    stamp: Stamp,
    policies: &Policies,
    forward: Option<&str>,
    pods: super::Pods,
) -> Done {
    let started = Instant::now();
    let Some((policy, unresolved)) = load(config) else {
        return Done {
            guard,
            outcome: Err(ReloadOutcome::Invalid),
        };
    };
    let policy = Arc::new(policy);
    let partial = if unresolved.is_empty() {
        0
    } else {
        config_flags::PARTIAL
    };
    let stamp = Stamp {
        digest: policy.digest(),
        applied_unix: now_unix(),
        // The configured policy, in force at last; names left out said.
        flags: (stamp.flags & !(config_flags::FALLBACK | config_flags::PARTIAL)) | partial,
        ..stamp
    };
    // Named before the flip, so that the first decision under it is
    // explained with it. The generation written is not in force until
    // then; should the apply fail, it never is.
    let generation = guard.next_generation();
    policies.set(generation, Arc::clone(&policy));
    guard.set_pods(pods);
    let generation = match guard.apply(&policy, &stamp) {
        Ok(generation) => {
            super::say_dropped_pods(&guard);
            generation
        }
        Err(e) => {
            failed(&e);
            return Done {
                guard,
                outcome: Err(ReloadOutcome::Failed),
            };
        }
    };
    let (forward, forward_ruleset) = ForwardState::apply(&policy.spec, forward);
    // In force: what the record's `micros` measures.
    let micros = started.elapsed().as_micros() as u64;
    // Every decision under the replaced policy is in the ring buffer once
    // this returns, so the daemon can explain them and let it go. Should
    // the wait fail, the next apply waits instead.
    if let Err(e) = guard.settle() {
        tracing::warn!(
            "could not wait out the replaced policy's last decisions: {}",
            Chain(&e)
        );
    }
    let outcome = Ok(Applied {
        generation,
        stamp,
        forward,
        forward_ruleset,
        unresolved,
        policy,
        micros,
    });
    Done { guard, outcome }
}

fn failed(e: &GuardError) {
    tracing::error!(
        event = "reload",
        outcome = "failed",
        "reload failed, the policy in force is unchanged: {}",
        Chain(e)
    );
}

/// The policy at `config`, resolved as far as names resolve; `None`, with
/// every problem logged, when it does not validate.
fn load(config: &Path) -> Option<(Policy, Vec<Unresolved>)> {
    match PolicySpec::load(config).and_then(|s| s.resolve_available(&SystemResolver)) {
        Ok(loaded) => Some(loaded),
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
            None
        }
    }
}
