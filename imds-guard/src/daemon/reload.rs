//! Reloading on SIGHUP: re-read, validate and resolve the policy file, and
//! put it in force in the generation not in use, or keep the policy in
//! force and say why not.

use std::{path::Path, sync::Arc, time::Instant};

use aya::maps::{MapData, RingBuf};

use super::{
    Daemon,
    forward::ForwardState,
    metrics::{Enforcing, ReloadOutcome},
    notified, notify, now_unix,
};
use crate::{
    chain::Chain,
    kernel::{Guard, Stamp},
    policy::{Mode, Policy, PolicySpec, SystemResolver, hex},
};

/// The policy of each generation, for explaining the decisions made under
/// it (events still in flight after a reload carry the old generation).
pub(super) struct Policies([Option<Arc<Policy>>; 2]);

impl Policies {
    /// The first policy, in force in `generation`.
    pub(super) fn first(generation: u32, policy: Policy) -> Self {
        let mut policies = Self([None, None]);
        policies.set(generation, policy);
        policies
    }

    /// The policy of `generation`, if one was written there.
    pub fn get(&self, generation: u8) -> Option<&Policy> {
        self.0[usize::from(generation & 1)].as_deref()
    }

    /// The policy of the generation in force.
    pub(super) fn in_force(&self, guard: &Guard) -> Option<&Policy> {
        guard.active_generation().and_then(|g| self.get(g as u8))
    }

    fn set(&mut self, generation: u32, policy: Policy) {
        self.0[(generation & 1) as usize] = Some(Arc::new(policy));
    }
}

impl Daemon {
    /// SIGHUP: reload, and tell systemd and the metrics how it went.
    pub(super) fn on_hup(&mut self, events: &mut RingBuf<MapData>) {
        // Decisions made under the policy in force are explained with it:
        // drain them before it can change.
        self.drain(events);
        notified(notify::reloading());
        let outcome = self.reload();
        self.metrics.reload(outcome);
        let mode = self.policy().map_or(Mode::Enforce, |p| p.spec.mode);
        let applied = outcome == ReloadOutcome::Applied;
        notified(notify::ready(&self.ready_status(mode, applied)));
        if applied {
            self.metrics.set_policy_digest(&hex(&self.stamp.digest));
            self.metrics.set_enforcing(Enforcing::Active(mode));
            self.metrics.set_fallback(false);
        }
    }

    /// Re-reads the policy file and puts it in force, or keeps the policy
    /// in force and says why not.
    fn reload(&mut self) -> ReloadOutcome {
        let started = Instant::now();
        let config = self.config.config.clone();
        let Some(policy) = load(&config) else {
            return ReloadOutcome::Invalid;
        };
        let stamp = Stamp {
            digest: policy.digest(),
            applied_unix: now_unix(),
            // The configured policy, in force at last.
            flags: 0,
            ..self.stamp
        };
        match self.guard.apply(&policy, &stamp) {
            Ok(generation) => {
                self.stamp = stamp;
                self.forward = ForwardState::apply(&policy.spec);
                let mode = policy.spec.mode;
                tracing::info!(
                    event = "reload",
                    outcome = "applied",
                    mode = mode.as_str(),
                    generation,
                    digest = %hex(&stamp.digest),
                    micros = started.elapsed().as_micros() as u64,
                    "reloaded {}: {mode} mode, {} uid and {} gid rules",
                    config.display(),
                    policy.uids.len(),
                    policy.gids.len()
                );
                self.policies.set(generation, policy);
                ReloadOutcome::Applied
            }
            Err(e) => {
                tracing::error!(
                    event = "reload",
                    outcome = "failed",
                    "reload failed, the policy in force is unchanged: {}",
                    Chain(&e)
                );
                ReloadOutcome::Failed
            }
        }
    }
}

/// The policy at `config`, resolved; `None`, with every problem logged,
/// when it does not validate.
fn load(config: &Path) -> Option<Policy> {
    match PolicySpec::load(config).and_then(|s| s.resolve(&SystemResolver)) {
        Ok(policy) => Some(policy),
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
