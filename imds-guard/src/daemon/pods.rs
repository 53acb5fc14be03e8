//! The kubelet's pods, for `pods` rules: listed at start, at every reload,
//! and every [`PODS_EVERY`] under a policy that has such rules, so that a
//! new pod's patterns are put in force by the reload its listing starts.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    kernel::Guard,
    policy::cgroups::{Pods, pods},
};

/// How often the kubelet's pod directories are listed under a policy with
/// `pods` rules: with the reload it starts, the longest a new pod's first
/// connects are refused (docs/threat-model.md, "Units, cgroups and pods").
pub const PODS_EVERY: Duration = Duration::from_secs(2);

/// The kubelet's pod directories and what was listed there last.
pub(super) struct PodWatch {
    dir: PathBuf,
    /// The pods listed for the last policy put in force or tried.
    listed: Pods,
}

impl PodWatch {
    /// Lists the pods in `dir` now.
    pub(super) fn new(dir: PathBuf) -> Self {
        let listed = list(&dir);
        Self { dir, listed }
    }

    /// What was listed last.
    pub(super) fn listed(&self) -> &Pods {
        &self.listed
    }

    /// The directory the kubelet keeps its pods' logs in.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists the kubelet's pods; whether they changed since the last
    /// policy put in force (or tried), which a reload then follows.
    pub(super) fn changed(&mut self) -> bool {
        let listed = list(&self.dir);
        if listed == self.listed {
            return false;
        }
        tracing::info!(
            pods = listed.len(),
            "the kubelet's pods changed: reloading to follow them"
        );
        self.listed = listed;
        true
    }
}

/// The pods the kubelet lists in `dir` (none, said, when it cannot be
/// read: their patterns are then absent, which refuses them).
pub(super) fn list(dir: &Path) -> Pods {
    pods::list(dir).unwrap_or_else(|e| {
        tracing::warn!("cannot list the kubelet's pods in {}: {e}", dir.display());
        Pods::new()
    })
}

/// Warns of pods whose patterns did not fit beside the others.
pub(super) fn say_dropped(guard: &Guard) {
    for (pod, uid) in guard.dropped_pods() {
        tracing::warn!(
            pod = %pod,
            pod_uid = %uid,
            "pod {pod} (uid {uid}) is not allowed: the policy's cgroup patterns are full"
        );
    }
}
