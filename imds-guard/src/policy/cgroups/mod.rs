//! Callers by cgroup: `units`, `cgroups` and `pods` in `[allow]` and
//! `[deny]`. Each becomes cgroup path patterns (`pattern.rs`): a unit the
//! subtree of its cgroup (`units.rs`), a pod the subtrees its uid names
//! (`pods.rs`). The kernel keeps the rule of every cgroup as cgroups come
//! and go; [`CgroupRules::classify`] is the same classification, for the
//! cgroups the agent lists itself, `check` and tests.
//!
//! Paths are anchored at the root of the cgroup v2 hierarchy, whatever
//! cgroup the guard is attached to: `/system.slice/sshd.service` is what
//! `/proc/PID/cgroup` shows in the host's cgroup namespace, and what
//! `systemctl show -p ControlGroup` says.

pub mod pattern;
pub mod pods;
pub mod units;

use imds_guard_common::{MAX_CGROUP_LEVEL, MAX_CGROUP_PATTERNS};

pub use self::{
    pattern::{Component, Pattern},
    pods::{PodName, PodRule, Pods},
};
use super::{Action, Diagnostic, Identity, PolicySpec, Resolver};

/// One pattern of a policy and the entry it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRule {
    pub pattern: Pattern,
    pub action: Action,
    /// Index into [`PolicySpec::entries`].
    pub index: usize,
}

/// The cgroup rules of a resolved policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupRules {
    /// Units (resolved to their cgroups) and cgroup patterns, in entry
    /// order.
    pub fixed: Vec<CgroupRule>,
    /// Pod entries (names and name patterns), each with its index: their
    /// patterns follow the pods present (see [`CgroupRules::patterns`]).
    pub pods: Vec<(PodRule, usize)>,
}

/// What a cgroup is, to a decision: its classification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CgroupClass {
    /// No pattern of the policy matches it (or the policy has none).
    #[default]
    Unmatched,
    /// This rule decides for it.
    Rule { action: Action, index: usize },
    /// It has no classification (the kernel could not store one, or it
    /// is nested deeper than the programs follow).
    Unclassified,
}

/// Pods whose patterns did not fit beside the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub pods: Vec<(PodName, String)>,
}

impl CgroupRules {
    /// Whether the policy names any cgroup (a decision then looks one up).
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.pods.is_empty()
    }

    /// Whether it denies any cgroup (an unclassified one is then denied).
    pub fn denies(&self) -> bool {
        self.fixed.iter().any(|r| r.action == Action::Deny)
    }

    /// Every pattern in force while `pods` run, in the order the kernel
    /// numbers them: denies first, then allows, each in entry order, so
    /// that the first that matches decides. A pod that several `pods`
    /// entries name (its exact name and a pattern) is allowed by the first
    /// of them in the file, once. What does not fit in
    /// [`MAX_CGROUP_PATTERNS`] (pods only: validation bounds the rest) is
    /// left out and returned: those pods are not allowed.
    pub fn patterns(&self, pods: &Pods) -> (Vec<CgroupRule>, Dropped) {
        let mut rules: Vec<CgroupRule> = self.fixed.clone();
        let mut dropped = Dropped::default();
        let mut placed = std::collections::BTreeSet::new();
        for (rule, index) in &self.pods {
            for (pod, uids) in pods.iter().filter(|(pod, _)| rule.matches(pod)) {
                for uid in uids {
                    if !placed.insert(uid) {
                        continue;
                    }
                    let for_uid = pods::patterns(uid);
                    if rules.len() + for_uid.len() > MAX_CGROUP_PATTERNS as usize {
                        dropped.pods.push((pod.clone(), uid.clone()));
                        continue;
                    }
                    rules.extend(for_uid.into_iter().map(|pattern| CgroupRule {
                        pattern,
                        action: Action::Allow,
                        index: *index,
                    }));
                }
            }
        }
        // Stable: a pod's patterns stay together, in their order.
        rules.sort_by_key(|r| (r.action == Action::Allow, r.index));
        (rules, dropped)
    }

    /// The classification of the cgroup at `path` (bytes from the cgroup2
    /// root, `/` for the root) under `patterns` (from
    /// [`CgroupRules::patterns`]): the first pattern that matches decides,
    /// as in the kernel. A cgroup nested deeper than the programs follow
    /// up to the root has none there, nor here.
    pub fn classify(patterns: &[CgroupRule], path: &[u8]) -> CgroupClass {
        let parts = pattern::components(path);
        if parts.len() > MAX_CGROUP_LEVEL as usize {
            return CgroupClass::Unclassified;
        }
        patterns
            .iter()
            .find(|r| r.pattern.matches(&parts))
            .map_or(CgroupClass::Unmatched, |r| CgroupClass::Rule {
                action: r.action,
                index: r.index,
            })
    }
}

/// Resolves the units of `spec` to their cgroups (through `resolver`) and
/// parses its cgroup patterns, reporting what does not resolve.
pub(super) fn resolve(
    spec: &PolicySpec,
    resolver: &dyn Resolver,
    diagnostics: &mut Vec<Diagnostic>,
) -> CgroupRules {
    let mut rules = CgroupRules::default();
    for (index, entry) in spec.entries.iter().enumerate() {
        let pattern = match &entry.identity {
            Identity::Unit(unit) => match resolver.unit_cgroup(unit) {
                Ok(Some(path)) => Pattern::subtree_of(&path)
                    .map_err(|why| format!("unit {unit:?} is in cgroup {path}, which: {why}")),
                Ok(None) => Err(format!("{} does not exist on this host", entry.identity)),
                Err(cause) => Err(format!("cannot look up unit {unit:?}: {cause}")),
            },
            // Validated when the file was read.
            Identity::Cgroup(text) => Pattern::parse(text),
            // Validated when the file was read.
            Identity::Pod(text) => {
                if let Ok(rule) = PodRule::parse(text) {
                    rules.pods.push((rule, index));
                }
                continue;
            }
            _ => continue,
        };
        match pattern {
            Ok(pattern) => rules.fixed.push(CgroupRule {
                pattern,
                action: entry.action,
                index,
            }),
            Err(message) => diagnostics.push(Diagnostic {
                at: entry.at,
                message,
            }),
        }
    }
    rules
}

#[cfg(test)]
pub(crate) mod test_dir {
    //! A directory of a test's own, removed on drop.

    use std::{
        path::{Path, PathBuf},
        sync::atomic::{AtomicU32, Ordering},
    };

    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("imds-guard-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("creating a test directory");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests;
