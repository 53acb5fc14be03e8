//! A process as the kernel programs judge it (issue 9): its real uid and
//! primary gid, the supplementary groups its credentials hold, the
//! creators of the user namespaces it runs in, and whether it is on the
//! host. And [`Policy::decide_process`], the programs' decision step by
//! step (`imds-guard-ebpf/src/decide.rs`, `evaluate`), which `check`,
//! records and tests use; the table of cases (`cases.rs`) holds the two
//! to the same decisions.

use std::{collections::BTreeMap, fmt};

use imds_guard_common::Bounds;

use super::{Action, CgroupClass, Decision, EndpointKind, IdRule, Policy, Reason, Scope};

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

/// The creator of a user namespace, as the namespace records it: the uid
/// and the effective gid it had (`user_namespace.owner`, `.group`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
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
    /// The creators of the user namespaces the process is in, innermost
    /// first, the initial one left out: empty for a process in the initial
    /// user namespace.
    pub owners: Vec<Owner>,
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
    /// endpoint: the steps of the programs (`imds-guard-ebpf/src/decide.rs`,
    /// `evaluate`), one for one and in their order, so that the two read
    /// side by side. The table of cases (`cases.rs`) holds both to it.
    ///
    /// Deny first: the uid, the primary gid, the cgroup (or an unclassified
    /// one under a policy that denies cgroups), then (when the policy has a
    /// gid rule) more supplementary groups than the programs read
    /// ([`imds_guard_common::MAX_GROUPS`] with `bpf_loop`) or the lowest denied one, then (when it has a uid
    /// or gid deny rule) the creators of the process's user namespaces.
    /// Then allow: the cgroup, then the ids (`allowed`). Then the default.
    ///
    /// At a host endpoint, as the programs built with `bpf_loop` decide
    /// ([`Bounds::LOOP`]); [`Policy::decide_process_at_within`] for a
    /// workload endpoint or the unrolled build's bounds.
    pub fn decide_process(&self, p: &Process) -> Decision {
        self.decide_process_at_within(p, EndpointKind::Host, Bounds::LOOP)
    }

    /// [`Policy::decide_process`] at an endpoint of `kind`.
    pub fn decide_process_at(&self, p: &Process, kind: EndpointKind) -> Decision {
        self.decide_process_at_within(p, kind, Bounds::LOOP)
    }

    /// [`Policy::decide_process`] by programs that read at most
    /// `bounds.groups` supplementary groups, at a host endpoint.
    pub fn decide_process_within(&self, p: &Process, bounds: Bounds) -> Decision {
        self.decide_process_at_within(p, EndpointKind::Host, bounds)
    }

    /// The decision at an endpoint of `kind`, by programs that read at
    /// most `bounds.groups` supplementary groups. (A chain of user
    /// namespaces deeper than `bounds.userns_depth` the kernel reports
    /// unreadable, which is not a decision of the policy's.) At a workload
    /// endpoint, a process in a container that nothing denies is allowed
    /// ([`Reason::Workload`]) before any allow is looked at; one on the
    /// host is decided as at a host endpoint.
    pub fn decide_process_at_within(
        &self,
        p: &Process,
        kind: EndpointKind,
        bounds: Bounds,
    ) -> Decision {
        let by_uid = self.uids.get(&p.uid).copied();
        let by_gid = self.gids.get(&p.gid).copied();
        if let Some(rule) = by_uid.filter(|r| r.action == Action::Deny) {
            return decided(Action::Deny, Reason::UidDenied, rule, p.uid);
        }
        if let Some(rule) = by_gid.filter(|r| r.action == Action::Deny) {
            return decided(Action::Deny, Reason::GidDenied, rule, p.gid);
        }
        // The cgroup's deny before the groups' and the owners': a deny
        // either way, which the programs decide before their scan.
        if let Some(denied) = self.cgroup_denial(p.cgroup) {
            return denied;
        }
        let scan = if self.scans_groups() {
            self.scan_groups(&p.groups, bounds.groups)
        } else {
            Scan::default()
        };
        let owner = if !scan.too_many && scan.deny.is_none() && self.checks_owners() {
            self.denied_owner(&p.owners)
        } else {
            None
        };
        if scan.too_many {
            return unnamed(Action::Deny, Reason::TooManyGroups);
        }
        if let Some((gid, rule)) = scan.deny {
            return decided(Action::Deny, Reason::GroupDenied, rule, gid);
        }
        if let Some((_, reason, id, rule)) = owner {
            return decided(Action::Deny, reason, rule, id);
        }
        // A workload endpoint keeps its workloads' own credentials open to
        // them: a process in a container that nothing denied.
        if kind == EndpointKind::Workload && p.place == Place::Container {
            return unnamed(Action::Allow, Reason::Workload);
        }
        // The cgroup's allow first: which allow decides changes only the
        // reason (and an allow-on-host rule alone refuses nothing then).
        if let CgroupClass::Rule {
            action: Action::Allow,
            index,
        } = p.cgroup
        {
            return Decision {
                index: Some(index),
                ..unnamed(Action::Allow, Reason::CgroupAllowed)
            };
        }
        self.allowed(p, by_uid, by_gid, &scan)
            .unwrap_or_else(|| unnamed(self.default_action, Reason::Default))
    }

    /// Nothing denies `p`: the first rule that allows it, in the order uid,
    /// primary gid, supplementary groups (`decide.rs`, `allowed`). A
    /// `[allow.host]` rule allows only a process on the host; when such
    /// rules are all that name the process, the first of them refuses it
    /// ([`Reason::HostOnly`]). `None`: no rule names it, the default
    /// decides.
    fn allowed(
        &self,
        p: &Process,
        by_uid: Option<IdRule>,
        by_gid: Option<IdRule>,
        scan: &Scan,
    ) -> Option<Decision> {
        let here = |rule: &IdRule| {
            rule.action == Action::Allow
                && (self.scope_of(rule) == Scope::Anywhere || p.place == Place::Host)
        };
        if let Some(rule) = by_uid.filter(here) {
            return Some(decided(Action::Allow, Reason::UidAllowed, rule, p.uid));
        }
        if let Some(rule) = by_gid.filter(here) {
            return Some(decided(Action::Allow, Reason::GidAllowed, rule, p.gid));
        }
        // A group allowed on the host only comes first when it is lower
        // than any allowed anywhere.
        if let Some((gid, rule)) = scan.host_first().filter(|(_, rule)| here(rule)) {
            return Some(decided(Action::Allow, Reason::GroupAllowed, rule, gid));
        }
        if let Some((gid, rule)) = scan.allow {
            return Some(decided(Action::Allow, Reason::GroupAllowed, rule, gid));
        }
        let host_only = |rule: &IdRule| self.scope_of(rule) == Scope::Host;
        if let Some(rule) = by_uid.filter(host_only) {
            return Some(decided(Action::Deny, Reason::HostOnly, rule, p.uid));
        }
        if let Some(rule) = by_gid.filter(host_only) {
            return Some(decided(Action::Deny, Reason::HostOnly, rule, p.gid));
        }
        let (gid, rule) = scan.host?;
        Some(decided(Action::Deny, Reason::HostOnly, rule, gid))
    }

    /// The refusal the cgroup makes, if it makes one: a `[deny]` pattern
    /// matches it, or it is unclassified and the policy denies cgroups (it
    /// could be one of them).
    fn cgroup_denial(&self, cgroup: CgroupClass) -> Option<Decision> {
        match cgroup {
            CgroupClass::Rule {
                action: Action::Deny,
                index,
            } => Some(Decision {
                index: Some(index),
                ..unnamed(Action::Deny, Reason::CgroupDenied)
            }),
            CgroupClass::Unclassified if self.cgroups.denies() => {
                Some(unnamed(Action::Deny, Reason::CgroupUnknown))
            }
            _ => None,
        }
    }

    /// The supplementary groups `groups` as the programs scan them
    /// (`identity.rs`, `scan_groups`): the kernel keeps them sorted
    /// (`groups_sort`), and the scan stops at the first denied one.
    fn scan_groups(&self, groups: &[u32], max_groups: u32) -> Scan {
        if groups.len() > max_groups as usize {
            return Scan {
                too_many: true,
                ..Scan::default()
            };
        }
        let mut sorted = groups.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut scan = Scan::default();
        for gid in sorted {
            let Some(&rule) = self.gids.get(&gid) else {
                continue;
            };
            let found = match (rule.action, self.scope_of(&rule)) {
                (Action::Deny, _) => {
                    scan.deny = Some((gid, rule));
                    break;
                }
                (Action::Allow, Scope::Anywhere) => &mut scan.allow,
                (Action::Allow, Scope::Host) => &mut scan.host,
            };
            found.get_or_insert((gid, rule));
        }
        scan
    }

    /// The first creator of `owners` (innermost first) that a rule denies
    /// (`identity.rs`, `owner_step`): its uid's rule, then the gid it
    /// created the namespace with, then the lowest denied group it is a
    /// member of. The creator, the reason, the denied id and its rule.
    pub(super) fn denied_owner(&self, owners: &[Owner]) -> Option<(Owner, Reason, u32, IdRule)> {
        let denied = |map: &BTreeMap<u32, IdRule>, id: u32| {
            map.get(&id).copied().filter(|r| r.action == Action::Deny)
        };
        owners.iter().find_map(|o| {
            if let Some(rule) = denied(&self.uids, o.uid) {
                return Some((*o, Reason::OwnerDenied, o.uid, rule));
            }
            if let Some(rule) = denied(&self.gids, o.gid) {
                return Some((*o, Reason::OwnerGidDenied, o.gid, rule));
            }
            let gid = *self.members.get(&o.uid)?;
            let rule = denied(&self.gids, gid)?;
            Some((*o, Reason::OwnerMemberDenied, gid, rule))
        })
    }

    /// Whether a decision reads the supplementary groups: the policy has a
    /// gid rule.
    pub fn scans_groups(&self) -> bool {
        !self.gids.is_empty()
    }

    /// Whether a decision walks the creators of the user namespaces: the
    /// policy has a uid or a gid deny rule.
    pub fn checks_owners(&self) -> bool {
        self.uids
            .values()
            .chain(self.gids.values())
            .any(|r| r.action == Action::Deny)
    }

    /// Whether any entry is `[allow.host]`.
    pub fn has_host_rules(&self) -> bool {
        self.spec.entries.iter().any(|e| e.scope == Scope::Host)
    }
}

/// What the supplementary groups say, as the programs' scan leaves it:
/// each lowest gid with its rule.
#[derive(Clone, Copy, Debug, Default)]
struct Scan {
    /// More than the programs read ([`Bounds::groups`]): not read.
    too_many: bool,
    /// The first denied group; the scan stops there.
    deny: Option<(u32, IdRule)>,
    /// The first group allowed anywhere.
    allow: Option<(u32, IdRule)>,
    /// The first group allowed on the host only.
    host: Option<(u32, IdRule)>,
}

impl Scan {
    /// The group allowed on the host only, when it is lower than any
    /// allowed anywhere.
    fn host_first(&self) -> Option<(u32, IdRule)> {
        self.host
            .filter(|&(host, _)| self.allow.is_none_or(|(allow, _)| host < allow))
    }
}

/// Decided by `rule`, the rule of `id`.
fn decided(action: Action, reason: Reason, rule: IdRule, id: u32) -> Decision {
    Decision {
        action,
        reason,
        index: Some(rule.entry()),
        id: Some(id),
    }
}

/// Decided by no id's rule.
fn unnamed(action: Action, reason: Reason) -> Decision {
    Decision {
        action,
        reason,
        index: None,
        id: None,
    }
}
