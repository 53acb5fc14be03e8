//! The verdict a policy gives a process, and why, computed in userspace
//! with the same order the programs use (`imds-guard check`).

use std::net::IpAddr;

use super::{Action, CgroupClass, Mode, Outcome, Policy, explain::explain};

/// What `check` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// What happens to the connection: allowed, denied, or audited (denied
    /// by the policy, let through and logged because the mode is audit).
    pub outcome: Outcome,
    pub protected: bool,
    pub why: String,
}

/// The verdict for a process of `uid` and `gid`, in a cgroup of class
/// `cgroup`, connecting to `dst`.
pub fn check(policy: &Policy, uid: u32, gid: u32, cgroup: CgroupClass, dst: IpAddr) -> CheckReport {
    if !policy.protects(dst) {
        return CheckReport {
            outcome: Outcome::Allow,
            protected: false,
            why: format!("{dst} is not a protected address"),
        };
    }
    let d = policy.decide(uid, gid, cgroup);
    let outcome = match (d.action, policy.spec.mode) {
        (Action::Allow, _) => Outcome::Allow,
        (Action::Deny, Mode::Enforce) => Outcome::Deny,
        (Action::Deny, Mode::Audit) => Outcome::Audit,
    };
    CheckReport {
        outcome,
        protected: true,
        why: explain(policy, d.reason, d.index, uid, gid),
    }
}
