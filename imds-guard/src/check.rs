//! `imds-guard check`: the verdict a policy gives a process, and why,
//! computed in userspace with the same order the programs use.

use std::net::IpAddr;

use imds_guard_common::reason;
use serde_json::json;

use crate::{
    cli::CheckArgs,
    events::explain,
    policy::{Action, Mode, Policy, Reason},
};

/// The outcome of `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `allow`, `deny`, or `audit` (denied by the policy, let through and
    /// logged because the mode is audit).
    pub verdict: &'static str,
    pub protected: bool,
    pub why: String,
}

pub fn check(policy: &Policy, uid: u32, gid: u32, dst: IpAddr) -> Verdict {
    if !policy.protects(dst) {
        return Verdict {
            verdict: "allow",
            protected: false,
            why: format!("{dst} is not a protected address"),
        };
    }
    let d = policy.decide(uid, gid);
    let denied = d.action == Action::Deny;
    let audit = policy.spec.mode == Mode::Audit;
    let reason = match d.reason {
        Reason::UidDenied => reason::UID_DENIED,
        Reason::GidDenied => reason::GID_DENIED,
        Reason::UidAllowed => reason::UID_ALLOWED,
        Reason::GidAllowed => reason::GID_ALLOWED,
        Reason::Default => reason::DEFAULT,
    };
    let rule = d.entry.map_or(0, |e| e as u32 + 1);
    Verdict {
        verdict: match (denied, audit) {
            (false, _) => "allow",
            (true, false) => "deny",
            (true, true) => "audit",
        },
        protected: true,
        why: explain(policy, reason, rule, uid, gid),
    }
}

impl Verdict {
    pub fn to_text(&self, args: &CheckArgs, uid: u32, gid: u32) -> String {
        let what = match self.verdict {
            "allow" => "allowed",
            "deny" => "denied",
            _ => "denied by the policy, but let through and logged (audit mode)",
        };
        let groups = if args.groups.is_empty() {
            String::new()
        } else {
            " (supplementary groups do not count)".to_owned()
        };
        format!(
            "{what}: uid {uid} gid {gid}{groups} to {}: {}",
            args.dst, self.why
        )
    }

    pub fn to_json(&self, uid: u32, gid: u32, dst: IpAddr) -> serde_json::Value {
        json!({
            "verdict": self.verdict,
            "protected": self.protected,
            "uid": uid,
            "gid": gid,
            "dst": dst.to_string(),
            "reason": self.why,
        })
    }
}
