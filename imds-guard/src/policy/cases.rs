//! One table of cases for the decision the programs take
//! (`imds-guard-ebpf/src/decide.rs`) and its twin,
//! [`Policy::decide_process`]: a policy, a caller (uid, gid, supplementary
//! groups, owners of its user namespaces, host or container, where its
//! cgroup is), and the decision expected of both, with its reason, entry
//! and deciding id. Written once: the unit tests (`cases/tests.rs`) run
//! every case through the twin, and `e2e/tests/decide.rs` through the
//! loaded programs, comparing each record's reason, entry and decider. A
//! reason a record can carry and no case expects fails the unit tests,
//! unless [`KERNEL_ONLY`] says where it is tested and why not here.
//!
//! The group database is [`MEMBERS`]: who is a member of which group, as
//! the policies are resolved with it on both sides (the programs are given
//! the memberships the policy resolved, as the agent gives them).
//!
//! Cgroups are given by where they are, not by their class: the policies
//! name them below `{base}` (the guarded cgroup, which the e2e test makes),
//! and each side classifies them as it does (the twin with
//! [`CgroupRules::classify`], the programs as cgroups are listed and made).
//! Ids are numbers, so no policy needs a user database.

mod requests;
mod table;
#[cfg(test)]
mod tests;

use std::path::Path;

use imds_guard_common::{MAX_CGROUP_LEVEL, reason};

pub use self::{
    requests::{REQUEST_CASES, REQUESTS, RequestCase},
    table::{
        ALLOWED_CGROUPS, CASES, DENY_LIST, GROUP_DENY, HOST, MEMBERS, MIXED, UIDS_ONLY, WORKLOAD,
    },
};
use super::{
    Action, CgroupRules, Decision, EndpointKind, Owner, Place, Policy, PolicyError, PolicySpec,
    Process, Reason, Resolver, cgroups::Pods,
};

/// Where a caller's cgroup is, from the guarded cgroup (`{base}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupAt {
    /// The guarded cgroup itself.
    Guarded,
    /// A cgroup below it, by its path from there (`allowed/inner`).
    Below(&'static str),
    /// [`MAX_CGROUP_LEVEL`] cgroups `d` nested below it: with the guarded
    /// cgroup a child of the root, deeper than the programs classify.
    TooDeep,
}

impl CgroupAt {
    /// Its path from the cgroup2 root, the guarded cgroup's being `base`.
    pub fn path(self, base: &str) -> String {
        match self {
            Self::Guarded => base.to_owned(),
            Self::Below(rel) => format!("{base}/{rel}"),
            Self::TooDeep => format!("{base}{}", "/d".repeat(MAX_CGROUP_LEVEL as usize)),
        }
    }
}

/// Who connects: a [`Process`] with its cgroup given by where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Real uid and primary gid, as the initial user namespace sees them.
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, in the order given to `setgroups`.
    pub groups: &'static [u32],
    /// Creators of the user namespaces it is in, innermost first, as
    /// (uid, effective gid); empty for the initial one. A user namespace
    /// of its own is not the host's: such a caller is in a container.
    pub owners: &'static [(u32, u32)],
    pub place: Place,
    pub cgroup: CgroupAt,
    /// The kind of endpoint it connects to: a host endpoint is the
    /// metadata address (169.254.169.254:80), a workload one
    /// [`WORKLOAD_ENDPOINT`] (the policy must protect it, as [`WORKLOAD`]
    /// does).
    pub to: EndpointKind,
}

/// The workload endpoint the cases connect to: ECS's task credentials
/// (the `aws-ecs` preset's).
pub const WORKLOAD_ENDPOINT: (std::net::Ipv4Addr, u16) =
    (std::net::Ipv4Addr::new(169, 254, 170, 2), 80);

/// A caller on the host, in the guarded cgroup, holding no supplementary
/// group, connecting to a host endpoint.
pub const fn host(uid: u32, gid: u32) -> Caller {
    Caller {
        uid,
        gid,
        groups: &[],
        owners: &[],
        place: Place::Host,
        cgroup: CgroupAt::Guarded,
        to: EndpointKind::Host,
    }
}

/// [`host`], in a container.
pub const fn container(uid: u32, gid: u32) -> Caller {
    Caller {
        place: Place::Container,
        ..host(uid, gid)
    }
}

impl Caller {
    #[must_use]
    pub const fn groups(self, groups: &'static [u32]) -> Self {
        Self { groups, ..self }
    }

    #[must_use]
    pub const fn owners(self, owners: &'static [(u32, u32)]) -> Self {
        Self { owners, ..self }
    }

    #[must_use]
    pub const fn cgroup(self, cgroup: CgroupAt) -> Self {
        Self { cgroup, ..self }
    }

    /// Connecting to [`WORKLOAD_ENDPOINT`].
    #[must_use]
    pub const fn to_workload(self) -> Self {
        Self {
            to: EndpointKind::Workload,
            ..self
        }
    }
}

/// What both sides must decide, as a record carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub action: Action,
    pub reason: Reason,
    /// The deciding entry's number (1-based), 0 for none.
    pub entry: u32,
    /// The id whose rule decided.
    pub id: Option<u32>,
}

impl Expected {
    /// As [`Policy::decide_process`] gives it.
    pub fn decision(self) -> Decision {
        Decision {
            action: self.action,
            reason: self.reason,
            index: (self.entry as usize).checked_sub(1),
            id: self.id,
        }
    }
}

pub(super) const fn allow(reason: Reason, entry: u32, id: Option<u32>) -> Expected {
    Expected {
        action: Action::Allow,
        reason,
        entry,
        id,
    }
}

pub(super) const fn deny(reason: Reason, entry: u32, id: Option<u32>) -> Expected {
    Expected {
        action: Action::Deny,
        reason,
        entry,
        id,
    }
}

/// One case of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub name: &'static str,
    /// TOML; `{base}` is the guarded cgroup's path.
    pub policy: &'static str,
    pub caller: Caller,
    pub expected: Expected,
}

impl Case {
    /// The policy, resolved, with `base` for the guarded cgroup's path.
    pub fn policy(&self, base: &str) -> Result<Policy, PolicyError> {
        let text = self.policy.replace("{base}", base);
        PolicySpec::parse(Path::new("cases.toml"), &text)?.resolve(&NoNames)
    }

    /// What both sides decide of the caller under `policy` (the twin's
    /// answer, at the kind of endpoint the caller connects to).
    pub fn decide(&self, policy: &Policy, base: &str) -> Decision {
        policy.decide_process_at(&self.process(policy, base), self.caller.to)
    }

    /// The caller as [`Policy::decide_process`] takes it under `policy`:
    /// its cgroup classified by `policy`'s patterns.
    pub fn process(&self, policy: &Policy, base: &str) -> Process {
        let c = &self.caller;
        let (patterns, _) = policy.cgroups.patterns(&Pods::new());
        let path = c.cgroup.path(base);
        Process {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.to_vec(),
            owners: c
                .owners
                .iter()
                .map(|&(uid, gid)| Owner { uid, gid })
                .collect(),
            place: c.place,
            cgroup: CgroupRules::classify(&patterns, path.as_bytes()),
        }
    }
}

/// Resolves no name: the cases' policies name ids only. Its group
/// database is [`MEMBERS`].
struct NoNames;

impl Resolver for NoNames {
    fn user_id(&self, _: &str) -> Result<Option<u32>, String> {
        Ok(None)
    }
    fn group_id(&self, _: &str) -> Result<Option<u32>, String> {
        Ok(None)
    }
    fn user_name(&self, _: u32) -> Option<String> {
        None
    }
    fn unit_cgroup(&self, _: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
    fn members(&self, gids: &[u32]) -> Result<Vec<(u32, u32)>, String> {
        Ok(MEMBERS
            .iter()
            .copied()
            .filter(|(_, gid)| gids.contains(gid))
            .collect())
    }
}

/// Where a reason only the programs give is tested, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tested {
    /// By this test function of this file (from the workspace root).
    By {
        file: &'static str,
        test: &'static str,
    },
    /// Nowhere: why no test can make the programs give it.
    Not(&'static str),
}

/// The reasons a record can carry that no policy decides, so that no case
/// can expect them, with where each is tested.
pub const KERNEL_ONLY: [(u8, Tested); 3] = [
    (
        reason::INTERNAL_ERROR,
        Tested::By {
            file: "e2e/tests/kernel.rs",
            test: "attached_before_its_config_is_written_the_guard_denies_everyone",
        },
    ),
    (
        reason::NO_IDENTITY,
        Tested::By {
            file: "e2e/tests/packet_path.rs",
            test: "an_mptcp_subflow_a_kworker_opens_has_no_identity_and_is_refused",
        },
    ),
    (
        reason::UNREADABLE,
        Tested::Not(
            "only a read of kernel memory that fails (the caller's groups, a user namespace) \
             gives it, or a chain of user namespaces longer than the walk, whose bound is one \
             more than the kernel nests: no process can make either happen",
        ),
    ),
];
