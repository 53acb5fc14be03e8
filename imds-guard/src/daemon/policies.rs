//! The policies the agent knows: the one in force (its generation, its
//! stamp, the `[allow]` names left out of it), and the policy of each
//! generation, kept for explaining the decisions made under it.
//!
//! Events still in flight after a reload carry the old generation, so the
//! replaced policy is kept until the flip has waited them out; a policy a
//! failed reload named but never put in force is dropped the same way.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use imds_guard_common::config_flags;

use crate::{
    kernel::Stamp,
    policy::{Mode, Policy, Unresolved, hex},
};

/// How often names that did not resolve are tried again.
pub const RETRY_NAMES: Duration = Duration::from_secs(30);

/// The policy of each generation. Shared with the reload thread, which
/// names the new generation's policy before it flips to it.
#[derive(Clone, Default)]
pub(super) struct Policies(Arc<Mutex<[Option<Arc<Policy>>; 2]>>);

impl Policies {
    /// The policy of `generation`, if one was written there.
    pub fn get(&self, generation: u8) -> Option<Arc<Policy>> {
        self.slots()[usize::from(generation & 1)].clone()
    }

    pub(super) fn set(&self, generation: u32, policy: Arc<Policy>) {
        self.slots()[(generation & 1) as usize] = Some(policy);
    }

    /// Drops the policy of `generation`, once nothing in the ring can name
    /// it.
    fn forget(&self, generation: u32) {
        let forgotten = self.slots()[(generation & 1) as usize].take();
        // Freed here, outside the lock.
        drop(forgotten);
    }

    fn slots(&self) -> MutexGuard<'_, [Option<Arc<Policy>>; 2]> {
        // Plain data: a panic elsewhere cannot leave it half written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The policy in force, and the policies decisions are explained with.
pub(super) struct InForce {
    generations: Policies,
    generation: u32,
    stamp: Stamp,
    /// `[allow]` names left out of the policy in force because they do not
    /// resolve (yet); retried every [`RETRY_NAMES`] and at every reload.
    unresolved: Vec<Unresolved>,
}

impl InForce {
    /// The first policy, in force in `generation`.
    pub(super) fn first(
        generation: u32,
        policy: Policy,
        stamp: Stamp,
        unresolved: Vec<Unresolved>,
    ) -> Self {
        let generations = Policies::default();
        generations.set(generation, Arc::new(policy));
        Self {
            generations,
            generation,
            stamp,
            unresolved,
        }
    }

    /// The policy in force.
    pub(super) fn policy(&self) -> Option<Arc<Policy>> {
        self.generations.get(self.generation as u8)
    }

    /// The mode of the policy in force (enforce when there is none).
    pub(super) fn mode(&self) -> Mode {
        self.policy().map_or(Mode::Enforce, |p| p.spec.mode)
    }

    /// Whether the policy in force has `pods` rules.
    pub(super) fn watches_pods(&self) -> bool {
        self.policy().is_some_and(|p| !p.cgroups.pods.is_empty())
    }

    /// Whether the fallback policy is in force, not the configured one.
    pub(super) fn in_fallback(&self) -> bool {
        self.stamp.flags & config_flags::FALLBACK != 0
    }

    pub(super) fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The digest of the policy in force, as records and metrics show it.
    pub(super) fn digest(&self) -> String {
        hex(&self.stamp.digest)
    }

    /// The policy of each generation, for explaining decisions and for the
    /// reload thread.
    pub(super) fn generations(&self) -> &Policies {
        &self.generations
    }

    /// How many `[allow]` names are left out of the policy in force.
    pub(super) fn unresolved(&self) -> usize {
        self.unresolved.len()
    }

    /// A reload put a policy in force in `generation`.
    pub(super) fn replace(&mut self, generation: u32, stamp: Stamp, unresolved: Vec<Unresolved>) {
        self.generation = generation;
        self.stamp = stamp;
        let was = std::mem::replace(&mut self.unresolved, unresolved);
        if self.unresolved.is_empty() && !was.is_empty() {
            tracing::info!("every [allow] name resolves now");
        }
        self.say_unresolved();
    }

    /// Lets go of every policy but the one in force: the replaced one, or
    /// one a failed reload named but never put in force.
    pub(super) fn forget_others(&self) {
        self.generations.forget(self.generation ^ 1);
    }

    /// Says, at error level, which `[allow]` names are left out of the
    /// policy in force because they do not resolve.
    pub(super) fn say_unresolved(&self) {
        for u in &self.unresolved {
            tracing::error!(
                unresolved = %u.identity,
                "[allow] {u}: left out of the policy in force (it cannot connect) until it \
                 resolves; trying again every {} s and at every reload",
                RETRY_NAMES.as_secs()
            );
        }
    }

    /// The one-line status systemd shows: mode and policy in force, whether
    /// the last reload was refused, and `forward` (whether the forward path
    /// is open).
    pub(super) fn ready_status(&self, last_reload_applied: bool, forward: &str) -> String {
        let policy = if self.in_fallback() {
            "FALLBACK policy (the configured one could not be used)"
        } else {
            "policy"
        };
        format!(
            "{}, {policy} sha256 {}{}{forward}",
            self.mode(),
            self.digest(),
            if last_reload_applied {
                ""
            } else {
                " (last reload refused)"
            },
        )
    }
}

/// What the config of the first policy an agent puts in force records.
pub(super) struct FirstStamp {
    /// When the guard was first attached (by this agent or one before it).
    pub attached_unix: u64,
    pub in_fallback: bool,
    /// Whether allowed decisions are logged (debug level), so that the
    /// programs send events for them.
    pub log_allowed: bool,
    /// Whether `[allow]` names were left out.
    pub partial: bool,
}

impl FirstStamp {
    pub(super) fn stamp(&self, policy: &Policy) -> Stamp {
        let mut flags = 0;
        if self.in_fallback {
            flags |= config_flags::FALLBACK;
        }
        if self.log_allowed {
            flags |= config_flags::LOG_ALLOWED;
        }
        if self.partial {
            flags |= config_flags::PARTIAL;
        }
        Stamp {
            digest: policy.digest(),
            applied_unix: now_unix(),
            attached_unix: self.attached_unix,
            agent_pid: std::process::id(),
            flags,
        }
    }
}

/// The stamp of `policy` put in force by a reload after `stamp`'s: the
/// configured policy, in force at last (no longer the fallback), with the
/// `[allow]` names left out said by `partial`.
pub(super) fn reloaded(stamp: Stamp, policy: &Policy, partial: bool) -> Stamp {
    let partial = if partial { config_flags::PARTIAL } else { 0 };
    Stamp {
        digest: policy.digest(),
        applied_unix: now_unix(),
        flags: (stamp.flags & !(config_flags::FALLBACK | config_flags::PARTIAL)) | partial,
        ..stamp
    }
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
