//! The verdict a policy gives a process, and why, computed in userspace
//! with the same order the programs use (`imds-guard check`).

use std::net::IpAddr;

use super::{
    Action, Mode, Outcome, Place, Policy, Process,
    explain::{Context, explain_with},
};

/// What `check` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// What happens to the connection: allowed, denied, or audited (denied
    /// by the policy, let through and logged because the mode is audit).
    pub outcome: Outcome,
    pub protected: bool,
    pub why: String,
}

pub fn check(policy: &Policy, process: &Process, dst: IpAddr) -> CheckReport {
    if !policy.protects(dst) {
        return CheckReport {
            outcome: Outcome::Allow,
            protected: false,
            why: format!("{dst} is not a protected address"),
        };
    }
    let d = policy.decide_process(process);
    let outcome = match (d.action, policy.spec.mode) {
        (Action::Allow, _) => Outcome::Allow,
        (Action::Deny, Mode::Enforce) => Outcome::Deny,
        (Action::Deny, Mode::Audit) => Outcome::Audit,
    };
    CheckReport {
        outcome,
        protected: true,
        why: explain_with(
            policy,
            d.reason,
            d.index,
            &Context {
                uid: process.uid,
                gid: process.gid,
                id: d.id,
                place: Some(process.place),
                groups: u32::try_from(process.groups.len()).ok(),
                not_host: (process.place == Place::Container)
                    .then_some("--container: a namespace differs from the agent's"),
                host_unknown: false,
                owner: policy
                    .denied_owner(&process.owners)
                    .filter(|&(_, reason, ..)| reason == d.reason)
                    .map(|(owner, ..)| owner.uid),
            },
        ),
    }
}
