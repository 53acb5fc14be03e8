//! The guard in the kernel as the agent holds it: the cgroup it is attached
//! to, the pin directory and the lock on it, and the loaded guard itself,
//! lent to the reload thread while a reload runs.

use std::path::{Path, PathBuf};

use super::{DaemonError, policies};
use crate::{
    chain::Chain,
    kernel::{
        AttachReport, Counters, Guard,
        inspect::{self, Status},
        pins::{AgentLock, Pins},
        usage::RequestCounters,
    },
};

/// The guard, attached and pinned.
pub(super) struct Attachment {
    cgroup: PathBuf,
    pins: Pins,
    /// The agent lock on the pin directory, held for the agent's life.
    _lock: AgentLock,
    /// `None` while a reload has it.
    guard: Option<Guard>,
}

/// When the guard pinned in `pins` was first attached, by this agent or
/// one before it; now if it is not attached.
pub(super) fn first_attached(pins: &Pins) -> u64 {
    inspect::first_attached(pins).unwrap_or_else(policies::now_unix)
}

impl Attachment {
    /// Which build of the programs is loaded (`bpf_loop` or `unrolled`),
    /// for the `ready` record; `None` while a reload has the guard.
    pub(super) fn programs(&self) -> Option<&'static str> {
        self.guard.as_ref().map(|g| g.build().name())
    }

    /// Takes the pin directory and attaches `guard` to `cgroup`, pinned
    /// (or adopts the pinned links of an agent that stopped).
    pub(super) fn attach(
        cgroup: PathBuf,
        pins: Pins,
        mut guard: Guard,
    ) -> Result<(Self, AttachReport), DaemonError> {
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
        let attached = Self {
            cgroup,
            pins,
            _lock: lock,
            guard: Some(guard),
        };
        Ok((attached, report))
    }

    pub(super) fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub(super) fn pin_dir(&self) -> &Path {
        self.pins.dir()
    }

    /// Runs `f` with the guard and the pins; `None` while a reload has
    /// the guard (at start, none can).
    pub(super) fn with_guard<T>(&mut self, f: impl FnOnce(&mut Guard, &Pins) -> T) -> Option<T> {
        let Self { guard, pins, .. } = self;
        guard.as_mut().map(|guard| f(guard, pins))
    }

    /// The guard, unless a reload has it.
    pub(super) fn guard_mut(&mut self) -> Option<&mut Guard> {
        self.guard.as_mut()
    }

    /// Lends the guard (to the reload thread); `None` when it is lent.
    pub(super) fn lend(&mut self) -> Option<Guard> {
        self.guard.take()
    }

    pub(super) fn give_back(&mut self, guard: Guard) {
        self.guard = Some(guard);
    }

    /// The kernel's counters; `None` while a reload has the guard (the
    /// last counters then stand) or when they cannot be read.
    pub(super) fn counters(&self) -> Option<Counters> {
        self.guard.as_ref().and_then(|g| g.counters().ok())
    }

    /// What the request programs counted, if a guard is attached.
    pub(super) fn request_counters(&self) -> Option<RequestCounters> {
        self.guard.as_ref().and_then(|g| g.request_counters().ok())
    }

    /// The pinned config says a reload was refused, for `status`, until a
    /// reload succeeds (its new config has no such flag).
    pub(super) fn mark_reload_refused(&mut self) {
        let marked = self.guard.as_mut().map(Guard::mark_reload_refused);
        if let Some(Err(e)) = marked {
            tracing::warn!("cannot record the refused reload for status: {}", Chain(&e));
        }
    }

    /// What stays in force once the agent exits.
    pub(super) fn outcome(&self) -> String {
        if self.pins.any_link() {
            format!(
                "the guard stays attached to {} (pinned in {}); `{}` removes it",
                self.cgroup.display(),
                self.pins.dir().display(),
                self.pins.command("detach")
            )
        } else {
            "the guard was detached".to_owned()
        }
    }
}

/// Says, at error level, when another guard (another agent's, pinned in
/// another directory) is attached to the same cgroup: both decide, a deny
/// from either wins, and the other one's policy is not this one's.
fn warn_other_guards(cgroup: &Path, pins: &Pins) {
    let ours = inspect::pinned_prog_ids(pins);
    let Ok(others) = inspect::other_guards(cgroup, &ours) else {
        return;
    };
    if others.is_empty() {
        return;
    }
    let list: Vec<String> = others
        .iter()
        .map(|o| format!("{} (program id {})", o.program, o.prog_id))
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
