//! A process as the kernel programs judge it (issue 9): its real uid and
//! primary gid, the supplementary groups its credentials hold, the owners
//! of the user namespaces it runs in, and whether it is on the host. And
//! [`Policy::decide_process`], the reference for the order the programs
//! decide in (`imds-guard-ebpf/src/decide.rs`, `evaluate`): keep the two
//! identical.

use std::fmt;

use imds_guard_common::MAX_GROUPS;

use super::{Action, CgroupClass, Decision, IdRule, Policy, Reason, Scope};

/// Where a process runs, as the programs tell: on the host when its pid
/// namespace, its socket's network namespace and its user namespace are
/// all the agent's; in a container when any one differs (or cannot be
/// read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Place {
    #[default]
    Host,
    Container,
}

impl Place {
    /// "host" or "container", as records and `check --json` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Container => "container",
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who calls, as far as the policy can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    /// The real uid, in the initial user namespace.
    pub uid: u32,
    /// The real primary gid.
    pub gid: u32,
    /// The supplementary groups (`cred->group_info`), in any order.
    pub groups: Vec<u32>,
    /// The owners of the user namespaces the process is in, innermost
    /// first, the initial one left out: empty for a process in the initial
    /// user namespace.
    pub owners: Vec<u32>,
    pub place: Place,
    /// What the policy's unit, cgroup and pod patterns make of its cgroup.
    pub cgroup: CgroupClass,
}

impl Process {
    /// A process on the host, in the initial user namespace, holding no
    /// supplementary group.
    pub fn on_host(uid: u32, gid: u32) -> Self {
        Self {
            uid,
            gid,
            ..Self::default()
        }
    }
}

impl Policy {
    /// What the policy does with `process` when it connects to a protected
    /// endpoint.
    ///
    /// The order mirrors the kernel programs, and any change here must be
    /// made there too. Deny first: the uid, the primary gid, the cgroup
    /// (or an unclassified one under a policy that denies cgroups), then
    /// (when the policy has a gid rule) the supplementary groups in
    /// ascending order, refused outright when there are more than
    /// [`MAX_GROUPS`], then (when it has a uid deny rule) the owners of the
    /// process's user namespaces. Then allow: the cgroup, the uid, the
    /// primary gid, the lowest supplementary group allowed; a `[allow.host]` rule allows only a
    /// process on the host, and when such rules are all that name the
    /// process, the first of them refuses it ([`Reason::HostOnly`]). Then
    /// the default.
    pub fn decide_process(&self, p: &Process) -> Decision {
        let by_uid = self.uids.get(&p.uid);
        let by_gid = self.gids.get(&p.gid);
        let decided = |action, reason, rule: &IdRule, id| Decision {
            action,
            reason,
            index: Some(rule.index),
            id: Some(id),
        };
        if let Some(rule) = by_uid.filter(|r| r.action == Action::Deny) {
            return decided(Action::Deny, Reason::UidDenied, rule, p.uid);
        }
        if let Some(rule) = by_gid.filter(|r| r.action == Action::Deny) {
            return decided(Action::Deny, Reason::GidDenied, rule, p.gid);
        }
        // Its cgroup: denied, or unclassified under a policy that denies
        // cgroups (it could be one of them). Before the groups and owners,
        // as the programs check it (a deny either way).
        match p.cgroup {
            CgroupClass::Rule {
                action: Action::Deny,
                index,
            } => {
                return Decision {
                    action: Action::Deny,
                    reason: Reason::CgroupDenied,
                    index: Some(index),
                    id: None,
                };
            }
            CgroupClass::Unclassified if self.cgroups.denies() => {
                return Decision {
                    action: Action::Deny,
                    reason: Reason::CgroupUnknown,
                    index: None,
                    id: None,
                };
            }
            _ => {}
        }
        let mut groups = Vec::new();
        if !self.gids.is_empty() {
            if p.groups.len() > MAX_GROUPS as usize {
                return Decision {
                    action: Action::Deny,
                    reason: Reason::TooManyGroups,
                    index: None,
                    id: None,
                };
            }
            groups = p.groups.clone();
            // The kernel keeps them sorted (`groups_sort`).
            groups.sort_unstable();
            groups.dedup();
            for &g in &groups {
                if let Some(rule) = self.gids.get(&g).filter(|r| r.action == Action::Deny) {
                    return decided(Action::Deny, Reason::GroupDenied, rule, g);
                }
            }
        }
        if self.uids.values().any(|r| r.action == Action::Deny) {
            for &owner in &p.owners {
                if let Some(rule) = self.uids.get(&owner).filter(|r| r.action == Action::Deny) {
                    return decided(Action::Deny, Reason::OwnerDenied, rule, owner);
                }
            }
        }
        // Nothing denies: the first rule that allows here.
        // Its cgroup's allow first (the programs check it before the ids'
        // allows: the verdict is the same, the reason the cgroup).
        if let CgroupClass::Rule {
            action: Action::Allow,
            index,
        } = p.cgroup
        {
            return Decision {
                action: Action::Allow,
                reason: Reason::CgroupAllowed,
                index: Some(index),
                id: None,
            };
        }
        let allows = |rule: &IdRule| {
            rule.action == Action::Allow
                && (self.scope_of(rule) == Scope::Anywhere || p.place == Place::Host)
        };
        if let Some(rule) = by_uid.filter(|r| allows(r)) {
            return decided(Action::Allow, Reason::UidAllowed, rule, p.uid);
        }
        if let Some(rule) = by_gid.filter(|r| allows(r)) {
            return decided(Action::Allow, Reason::GidAllowed, rule, p.gid);
        }
        for &g in &groups {
            if let Some(rule) = self.gids.get(&g).filter(|r| allows(r)) {
                return decided(Action::Allow, Reason::GroupAllowed, rule, g);
            }
        }
        // Only host-only rules name it, and it is not on the host.
        let host_only = |rule: &&IdRule| rule.action == Action::Allow;
        if let Some(rule) = by_uid.filter(host_only) {
            return decided(Action::Deny, Reason::HostOnly, rule, p.uid);
        }
        if let Some(rule) = by_gid.filter(host_only) {
            return decided(Action::Deny, Reason::HostOnly, rule, p.gid);
        }
        for &g in &groups {
            if let Some(rule) = self.gids.get(&g).filter(host_only) {
                return decided(Action::Deny, Reason::HostOnly, rule, g);
            }
        }
        Decision {
            action: self.default_action,
            reason: Reason::Default,
            index: None,
            id: None,
        }
    }

    /// Whether a decision reads the supplementary groups: the policy has a
    /// gid rule.
    pub fn scans_groups(&self) -> bool {
        !self.gids.is_empty()
    }

    /// Whether a decision walks the owners of the user namespaces: the
    /// policy has a uid deny rule.
    pub fn checks_owners(&self) -> bool {
        self.uids.values().any(|r| r.action == Action::Deny)
    }

    /// Whether any entry is `[allow.host]`.
    pub fn has_host_rules(&self) -> bool {
        self.spec.entries.iter().any(|e| e.scope == Scope::Host)
    }
}
