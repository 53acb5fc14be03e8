//! The verdict a policy gives a process, and why, computed in userspace
//! with the same order the programs use (`imds-guard check`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use imds_guard_common::Bounds;

use super::{
    Action, Decision, Mode, Outcome, Place, Policy, Process, Protocol,
    explain::{Context, explain_with},
    unmapped,
};

/// What `check` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// What happens to the connection: allowed, denied, or audited (denied
    /// by the policy, let through and logged because the mode is audit).
    pub outcome: Outcome,
    pub protected: bool,
    pub why: String,
    /// The decision at connect, for a protected destination (what
    /// `check --request` judges a request under).
    pub decision: Option<Decision>,
}

/// A destination `check` decides for: an address, and optionally a port
/// and its protocol (`169.254.169.254`, `169.254.170.2:80`,
/// `[fd00:ec2::23]:80/tcp`, `169.254.169.254:53/udp`; TCP when a port is
/// given without one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub protocol: Protocol,
}

impl From<IpAddr> for Destination {
    fn from(addr: IpAddr) -> Self {
        Self {
            addr,
            port: None,
            protocol: Protocol::Tcp,
        }
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Protocol::Tcp),
            Some((rest, "udp")) => (rest, Protocol::Udp),
            _ => (text, Protocol::Tcp),
        };
        if let Ok(addr) = rest.parse::<IpAddr>() {
            return Ok(Self {
                addr,
                port: None,
                protocol,
            });
        }
        match rest.parse::<SocketAddr>() {
            Ok(s) => Ok(Self {
                addr: s.ip(),
                port: Some(s.port()),
                protocol,
            }),
            Err(_) => Err(format!(
                "{text:?} is not ADDR, ADDR:PORT or [ADDR]:PORT, with an optional /tcp or /udp"
            )),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.addr) {
            (None, addr) => return write!(f, "{addr}"),
            (Some(p), IpAddr::V4(a)) => write!(f, "{a}:{p}")?,
            (Some(p), IpAddr::V6(a)) => write!(f, "[{a}]:{p}")?,
        }
        write!(f, "/{}", self.protocol.name())
    }
}

/// `bounds`: those of the build of the programs the kernel loads
/// (`kernel::features::Build`).
pub fn check(policy: &Policy, process: &Process, dst: &Destination, bounds: Bounds) -> CheckReport {
    if !policy.protects(dst.addr) {
        return CheckReport {
            outcome: Outcome::Allow,
            protected: false,
            why: format!("{} is not a protected address", dst.addr),
            decision: None,
        };
    }
    // Without a port: whatever the address protects (the decision does
    // not depend on which port).
    if dst.port.is_some() && !policy.protects_port(dst.addr, dst.protocol, dst.port) {
        let ports: Vec<String> = policy
            .spec
            .endpoints
            .iter()
            .filter(|e| policy.protects(e.addr) && e.addr == unmapped(dst.addr))
            .map(ToString::to_string)
            .collect();
        return CheckReport {
            outcome: Outcome::Allow,
            protected: false,
            why: format!(
                "{dst} is not a protected port (the policy protects {})",
                ports.join(", ")
            ),
            decision: None,
        };
    }
    let kind = policy.spec.kind_of(unmapped(dst.addr));
    let d = policy.decide_process_at_within(process, kind, bounds);
    // A caller whose requests are judged gets TCP only (issue 23): a
    // datagram to the endpoint carries no request the programs could read.
    let scope = policy.spec.requests.scope(d.index);
    if d.action == Action::Allow
        && (scope.set.is_some() || scope.v2_required)
        && dst.port.is_some()
        && dst.protocol == Protocol::Udp
    {
        return CheckReport {
            outcome: match policy.spec.mode {
                Mode::Enforce => Outcome::Deny,
                Mode::Audit => Outcome::Audit,
            },
            protected: true,
            why: "its requests are judged (a [requests.*] table or [imdsv2]), which is done \
                  on TCP only: UDP to a protected endpoint is refused"
                .to_owned(),
            decision: Some(d),
        };
    }
    let outcome = match (d.action, policy.spec.mode) {
        (Action::Allow, _) => Outcome::Allow,
        (Action::Deny, Mode::Enforce) => Outcome::Deny,
        (Action::Deny, Mode::Audit) => Outcome::Audit,
    };
    let mut why = explain_with(
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
    );
    if d.action == Action::Allow {
        why.push_str(&policy.spec.requests.scope_words(scope));
    }
    CheckReport {
        outcome,
        protected: true,
        why,
        decision: Some(d),
    }
}
