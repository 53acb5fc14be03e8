//! Reloading on SIGHUP: re-read, validate and resolve the policy file, and
//! put it in force in the generation not in use, or keep the policy in
//! force and say why not.
//!
//! The work (parsing and resolving a large file, writing the maps, two RCU
//! grace periods, the forward table) runs on a blocking thread, with the
//! guard lent to it, so that the run loop keeps reading events and NFLOG
//! meanwhile. A SIGHUP during a reload is remembered and served after it.

use std::{
    future::pending,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::task::{JoinError, JoinHandle};

use super::{
    forward::ForwardTable, metrics::ReloadOutcome, pods, policies, policies::Policies, wake::Moment,
};
use crate::{
    chain::Chain,
    kernel::{Guard, GuardError, Stamp},
    policy::{
        CgroupLayout, Policy, PolicySource, PolicySpec, SystemResolver, Unresolved, cgroups::Pods,
        hex,
    },
};

/// Runs reloads, one at a time.
pub(super) struct Reloader {
    /// Where the policy comes from: looked up again at every reload, so
    /// that a policy dropped in /etc since the start is read then.
    source: PolicySource,
    /// The reload in progress, if any.
    pending: Option<Pending>,
    /// The cgroup layout the guard attaches in: a policy that needs one it
    /// lacks is refused.
    layout: CgroupLayout,
}

/// A reload running on its thread, with the guard.
struct Pending {
    task: JoinHandle<Done>,
    /// Another SIGHUP came meanwhile.
    again: bool,
}

/// What the reload thread is given besides the guard: the policy in force
/// and what is known of it.
pub(super) struct Tried {
    pub stamp: Stamp,
    /// Where the new policy is named before the flip.
    pub policies: Policies,
    /// The forward table in force.
    pub forward: ForwardTable,
    /// The kubelet's pod directories, listed again.
    pub pods_dir: PathBuf,
    /// When the reload was asked for: its SIGHUP, or the moment the agent
    /// started it itself.
    pub requested: Moment,
}

/// What the reload thread hands back.
pub(super) struct Done {
    pub guard: Guard,
    pub outcome: Result<Applied, ReloadOutcome>,
}

/// A policy put in force.
pub(super) struct Applied {
    pub generation: u32,
    pub stamp: Stamp,
    pub policy: Arc<Policy>,
    pub forward: ForwardTable,
    pub unresolved: Vec<Unresolved>,
    /// From the request to the policy in force, and to the reload's start.
    micros: u64,
    waited_micros: u64,
}

impl Reloader {
    pub(super) fn new(source: PolicySource, layout: CgroupLayout) -> Self {
        Self {
            source,
            pending: None,
            layout,
        }
    }

    /// Where the policy is read from now.
    pub(super) fn config(&self) -> PathBuf {
        self.source.path()
    }

    /// Whether a reload runs now.
    pub(super) fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Remembers to run one more reload after the one in progress.
    pub(super) fn again(&mut self) {
        if let Some(pending) = &mut self.pending {
            pending.again = true;
        }
    }

    /// Starts a reload with `guard`, on the blocking pool.
    pub(super) fn start(&mut self, guard: Guard, tried: Tried) {
        let config = self.source.path();
        let layout = self.layout;
        let task = tokio::task::spawn_blocking(move || {
            let pods = pods::list(&tried.pods_dir);
            guard_reload(guard, &config, layout, tried, pods)
        });
        self.pending = Some(Pending { task, again: false });
    }

    /// The end of the reload in progress; never, when there is none. Its
    /// result is kept until [`Reloader::finish`].
    pub(super) async fn finished(&mut self) -> Result<Done, JoinError> {
        match &mut self.pending {
            Some(p) => (&mut p.task).await,
            None => pending().await,
        }
    }

    /// Forgets the reload that finished; whether another SIGHUP came
    /// meanwhile.
    pub(super) fn finish(&mut self) -> bool {
        self.pending.take().is_some_and(|p| p.again)
    }

    /// Waits for the reload in progress, if any (it is bounded).
    pub(super) async fn wait(&mut self) -> Option<Result<Done, JoinError>> {
        let pending = self.pending.take()?;
        Some(pending.task.await)
    }
}

impl Applied {
    /// The `reload` record of a policy put in force; `forward` says whether
    /// the forward path is open.
    pub(super) fn announce(&self) {
        let mode = self.policy.spec.mode;
        tracing::info!(
            event = "reload",
            outcome = "applied",
            config = %self.policy.spec.path.display(),
            mode = mode.as_str(),
            generation = self.generation,
            digest = %hex(&self.stamp.digest),
            micros = self.micros,
            waited_micros = self.waited_micros,
            "reloaded {}: {mode} mode, {} uid and {} gid rules{}",
            self.policy.spec.path.display(),
            self.policy.uids.len(),
            self.policy.gids.len(),
            self.forward.note()
        );
    }
}

/// On the reload thread: the policy at `config` put in force with `guard`
/// (and the forward table, unless its ruleset is in force already).
fn guard_reload(
    mut guard: Guard,
    config: &Path,
    layout: CgroupLayout,
    tried: Tried,
    pods: Pods,
) -> Done {
    let waited_micros = tried.requested.elapsed().as_micros() as u64;
    // Before the file is read: `imds-guard reload` then knows whether the
    // answer to come read the file as it is now.
    if let Err(e) = guard.mark_reloading() {
        tracing::warn!(
            "cannot record the reload in progress for imds-guard reload: {}",
            Chain(&e)
        );
    }
    let Some((policy, unresolved)) = load(config, layout) else {
        return Done {
            guard,
            outcome: Err(ReloadOutcome::Invalid),
        };
    };
    let policy = Arc::new(policy);
    let stamp = policies::reloaded(tried.stamp, &policy, !unresolved.is_empty());
    // Named before the flip, so that the first decision under it is
    // explained with it. The generation written is not in force until
    // then; should the apply fail, it never is.
    tried
        .policies
        .set(guard.next_generation(), Arc::clone(&policy));
    guard.set_pods(pods);
    let generation = match guard.apply(&policy, &stamp) {
        Ok(generation) => {
            pods::say_dropped(&guard);
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
    let forward = tried.forward.apply(&policy.spec);
    // In force: what the record's `micros` measures, from the signal.
    let micros = tried.requested.elapsed().as_micros() as u64;
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
        policy,
        forward,
        unresolved,
        micros,
        waited_micros,
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
/// every problem logged, when it does not validate (in the cgroup `layout`
/// the guard attaches in, too).
fn load(config: &Path, layout: CgroupLayout) -> Option<(Policy, Vec<Unresolved>)> {
    let loaded = PolicySpec::load(config)
        .and_then(|s| s.for_layout(layout))
        .and_then(|s| s.resolve_available(&SystemResolver));
    match loaded {
        Ok(loaded) => {
            super::warnings::say(&loaded.0, &SystemResolver);
            Some(loaded)
        }
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
