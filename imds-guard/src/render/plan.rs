//! The policy in the order the eBPF guard evaluates it, as every target
//! needs it: the entries as owner matches sorted for a first-match
//! firewall, the default, and the protected addresses by family.
//!
//! The guard decides a connection to a protected address in this order
//! (`Policy::decide`): uid denied, gid denied, uid allowed, gid allowed,
//! default. Within each step the entries keep their file order. Because
//! every rule of one step has the same verdict, any order inside a step
//! gives the same result; keeping file order only makes the output easy to
//! compare with the policy.

use std::{fmt, net::IpAddr};

use crate::policy::{Action, Identity, Location, PolicySpec, Protocol};

/// A user or group as the policy writes it: a name, or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Id<'a> {
    Name(&'a str),
    Number(u32),
}

impl<'a> Id<'a> {
    /// The name, if it is one (numbers need no quoting).
    pub(super) fn name(self) -> Option<&'a str> {
        match self {
            Self::Name(name) => Some(name),
            Self::Number(_) => None,
        }
    }
}

impl fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Number(id) => write!(f, "{id}"),
        }
    }
}

/// Whose socket a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner<'a> {
    User(Id<'a>),
    Group(Id<'a>),
}

/// One entry of the policy as a firewall rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rule<'a> {
    pub(super) action: Action,
    pub(super) owner: Owner<'a>,
    /// Where the entry is written, for warnings.
    pub(super) at: Location,
}

/// An address family: which of the policy's endpoints a target filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// What entry `index` of `spec` becomes in a firewall: its action, but a
/// `[requests.NAME]` identity is denied. A firewall sees addresses and
/// ports, not the paths the rule set judges: denying is the rendering that
/// lets through nothing the eBPF guard refuses (a warning says so).
pub(super) fn action_of(spec: &PolicySpec, index: usize) -> Action {
    if spec.requests.members.contains_key(&index) {
        return Action::Deny;
    }
    spec.entries.get(index).map_or(Action::Deny, |e| e.action)
}

/// What every target renders from.
#[derive(Clone, Debug)]
pub(super) struct Plan<'a> {
    pub(super) spec: &'a PolicySpec,
    /// First-match order: denied users, denied groups, allowed users,
    /// allowed groups.
    pub(super) rules: Vec<Rule<'a>>,
    /// What happens to an identity no rule names.
    pub(super) default: Action,
}

impl<'a> Plan<'a> {
    pub(super) fn new(spec: &'a PolicySpec) -> Self {
        let mut rules: Vec<Rule<'a>> = spec
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                let owner = match &entry.identity {
                    Identity::User(name) => Owner::User(Id::Name(name)),
                    Identity::Uid(uid) => Owner::User(Id::Number(*uid)),
                    Identity::Group(name) => Owner::Group(Id::Name(name)),
                    Identity::Gid(gid) => Owner::Group(Id::Number(*gid)),
                    // Not owners: see `cgroups.rs`.
                    Identity::Unit(_) | Identity::Cgroup(_) | Identity::Pod(_) => return None,
                };
                Some(Rule {
                    action: action_of(spec, index),
                    owner,
                    at: entry.at,
                })
            })
            .collect();
        // A stable sort keeps file order inside each step.
        rules.sort_by_key(|rule| match (rule.action, rule.owner) {
            (Action::Deny, Owner::User(_)) => 0,
            (Action::Deny, Owner::Group(_)) => 1,
            (Action::Allow, Owner::User(_)) => 2,
            (Action::Allow, Owner::Group(_)) => 3,
        });
        Self {
            spec,
            rules,
            default: spec.default_action(),
        }
    }

    /// The protected destinations of `family`, in file order: a bare
    /// address as TCP to every port (the AWS examples' form), a port as
    /// each protocol it names.
    pub(super) fn destinations(&self, family: Family) -> Vec<Dest> {
        let mut dests = Vec::new();
        for e in self
            .spec
            .endpoints
            .iter()
            .filter(|e| Family::of(e.addr) == family)
        {
            match e.port {
                None => dests.push(Dest {
                    addr: e.addr,
                    proto: Protocol::Tcp,
                    port: None,
                }),
                Some(port) => dests.extend(port.protocol.each().iter().map(|&proto| Dest {
                    addr: e.addr,
                    proto,
                    port: Some(port.number),
                })),
            }
        }
        dests
    }

    /// The destinations of both families.
    pub(super) fn all_destinations(&self) -> Vec<Dest> {
        let mut dests = self.destinations(Family::V4);
        dests.extend(self.destinations(Family::V6));
        dests
    }

    /// The addresses of `family` protected on some ports only, each once:
    /// a fragment after the first to one has no port to match, and counts
    /// as going to a protected port (each target has a rule for it).
    pub(super) fn ported(&self, family: Family) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for e in &self.spec.endpoints {
            if e.port.is_some() && Family::of(e.addr) == family && !addrs.contains(&e.addr) {
                addrs.push(e.addr);
            }
        }
        addrs
    }
}

/// One destination a target filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Dest {
    pub(super) addr: IpAddr,
    /// TCP or UDP, never both.
    pub(super) proto: Protocol,
    /// `None`: every port.
    pub(super) port: Option<u16>,
}

impl Dest {
    /// `tcp` or `udp`.
    pub(super) fn proto(&self) -> &'static str {
        self.proto.name()
    }

    pub(super) fn is_tcp(&self) -> bool {
        self.proto == Protocol::Tcp
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::{Entry, Mode, Scope};

    fn entry(action: Action, identity: Identity, line: u32) -> Entry {
        Entry {
            action,
            identity,
            at: Location { line, col: 1 },
            scope: Scope::Anywhere,
        }
    }

    #[test]
    fn rules_follow_the_guards_order_and_keep_file_order_within_a_step() {
        let spec = PolicySpec {
            path: PathBuf::from("policy.toml"),
            mode: Mode::Enforce,
            endpoints: Vec::new(),
            entries: vec![
                entry(Action::Allow, Identity::User("alice".into()), 1),
                entry(Action::Allow, Identity::Gid(10), 2),
                entry(Action::Allow, Identity::Uid(1000), 3),
                entry(Action::Deny, Identity::Group("staff".into()), 4),
                entry(Action::Deny, Identity::User("apache".into()), 5),
            ],
            forward: Default::default(),
            presets: Vec::new(),
            workload: Vec::new(),
            requests: Default::default(),
        };
        let plan = Plan::new(&spec);
        let lines: Vec<u32> = plan.rules.iter().map(|r| r.at.line).collect();
        assert_eq!(
            lines,
            [5, 4, 1, 3, 2],
            "expected denied users, denied groups, allowed users, allowed groups"
        );
        assert_eq!(
            plan.default,
            Action::Deny,
            "an [allow] entry makes the default deny"
        );
    }
}
