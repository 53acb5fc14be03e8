//! Records to proposals: the would-be (audit) and actual (deny) refusals
//! of a period, grouped by the narrowest identity that explains them
//! (`origin.rs`), each with the policy entries that would let them
//! through, narrowest first, and what else each form would admit.
//!
//! - a pod, a unit, a transient scope: one `[allow]` entry naming it,
//!   which admits every process in it, whatever its uid;
//! - a uid seen only on the host (root among them): `[allow.host]`,
//!   widened to `[allow]` (the same uid in every container);
//! - a uid seen in a container: `[allow]`;
//! - several users who share a group (not root's, gid 0): the users one
//!   by one, widened to the group, which admits its other members.
//!
//! Forwarded packets, records without an identity and refusals by a
//! `[deny]` entry (which no allow overrides) are left out: a
//! forwarded packet has no owner to allow (`[forward]` lets whole
//! interfaces or prefixes through, which the policy reference advises
//! against), and nobody is nobody.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use super::{
    directory::Directory,
    origin::{Who, who, widen_scope},
    records::{Decision, Records},
    time::{Micros, format_rfc3339},
};
use crate::policy::Outcome;

/// What the records of one proposal show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub denied: u64,
    pub audited: u64,
    /// Of those, how many the rate limiter suppressed.
    pub suppressed: u64,
    pub first: Option<Micros>,
    pub last: Option<Micros>,
    pub uids: BTreeSet<u32>,
    pub comms: BTreeSet<String>,
    pub destinations: BTreeSet<String>,
    pub on_host: bool,
    pub in_container: bool,
    /// The creators of the user namespaces callers ran in.
    pub owners: BTreeSet<u32>,
    /// Names the records gave the uids.
    pub names: BTreeMap<u32, String>,
}

impl Seen {
    fn add(&mut self, d: &Decision) {
        match d.outcome {
            Some(Outcome::Deny) => self.denied += d.count(),
            Some(Outcome::Audit) => self.audited += d.count(),
            _ => {}
        }
        self.suppressed += d.suppressed;
        if let Some(at) = d.at {
            self.first = Some(self.first.map_or(at, |f| f.min(at)));
            self.last = Some(self.last.map_or(at, |l| l.max(at)));
        }
        self.uids.extend(d.uid);
        if let (Some(uid), Some(name)) = (d.uid, &d.user) {
            self.names.insert(uid, name.clone());
        }
        if let Some(comm) = &d.comm {
            self.comms.insert(crate::text::printable(comm));
        }
        if d.dst.is_some() {
            self.destinations.insert(d.destination());
        }
        // A summary standing alone does not say where its caller ran.
        match d.place.as_deref() {
            Some("host") => self.on_host = true,
            Some(_) => self.in_container = true,
            None => {}
        }
        self.owners.extend(d.userns_owner);
    }

    fn merge(&mut self, other: &Seen) {
        self.denied += other.denied;
        self.audited += other.audited;
        self.suppressed += other.suppressed;
        self.first = [self.first, other.first].into_iter().flatten().min();
        self.last = [self.last, other.last].into_iter().flatten().max();
        self.uids.extend(&other.uids);
        self.comms.extend(other.comms.iter().cloned());
        self.destinations.extend(other.destinations.iter().cloned());
        self.on_host |= other.on_host;
        self.in_container |= other.in_container;
        self.owners.extend(&other.owners);
        self.names
            .extend(other.names.iter().map(|(k, v)| (*k, v.clone())));
    }

    /// Refusals it stands for.
    pub fn total(&self) -> u64 {
        self.denied + self.audited
    }

    /// Whether every caller ran on the host.
    pub fn host_only(&self) -> bool {
        self.on_host && !self.in_container
    }

    /// `12 audits (10 suppressed), 2026-…Z to 2026-…Z, by curl`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.denied > 0 {
            parts.push(plural(self.denied, "denial", "denials"));
        }
        if self.audited > 0 {
            parts.push(plural(self.audited, "audit", "audits"));
        }
        let mut text = parts.join(", ");
        if self.suppressed > 0 {
            text.push_str(&format!(" ({} suppressed)", self.suppressed));
        }
        // To the second: within one, a single time.
        match (
            self.first.map(format_rfc3339),
            self.last.map(format_rfc3339),
        ) {
            (Some(first), Some(last)) if first != last => {
                text.push_str(&format!(", {first} to {last}"));
            }
            (Some(at), _) => text.push_str(&format!(", {at}")),
            _ => {}
        }
        if !self.comms.is_empty() {
            let comms: Vec<&str> = self.comms.iter().take(4).map(String::as_str).collect();
            let more = if self.comms.len() > 4 { ", …" } else { "" };
            text.push_str(&format!(", by {}{more}", comms.join(", ")));
        }
        text
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The policy tables a proposal writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Allow,
    AllowHost,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "[allow]",
            Self::AllowHost => "[allow.host]",
        })
    }
}

/// A key of those tables, in the order the policy reference lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Users,
    Uids,
    Groups,
    Gids,
    Units,
    Cgroups,
    Pods,
}

impl Key {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Uids => "uids",
            Self::Groups => "groups",
            Self::Gids => "gids",
            Self::Units => "units",
            Self::Cgroups => "cgroups",
            Self::Pods => "pods",
        }
    }
}

/// A value of an entry: a name or a number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Item {
    Name(String),
    Id(u32),
}

impl fmt::Display for Item {
    /// As TOML writes it (a JSON string is a valid TOML basic string).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(&serde_json::Value::String(name.clone()).to_string()),
            Self::Id(id) => write!(f, "{id}"),
        }
    }
}

/// One policy entry, and what its records were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub table: Table,
    pub key: Key,
    pub item: Item,
    /// The records it lets through, in words (a comment in the policy).
    pub comment: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} = [{}]", self.table, self.key.as_str(), self.item)
    }
}

/// One way to write a proposal, and what else it admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    pub lines: Vec<Line>,
    pub admits: String,
}

/// Who was refused, and the forms that would let them through,
/// narrowest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub who: String,
    pub seen: Seen,
    pub forms: Vec<Form>,
}

/// Records no entry can be proposed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Left {
    pub who: Who,
    pub seen: Seen,
    pub why: &'static str,
}

/// What `suggest` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suggestion {
    pub proposals: Vec<Proposal>,
    pub left: Vec<Left>,
    /// Refused destinations outside the default endpoints, for
    /// `[endpoints]`.
    pub extra_endpoints: Vec<IpAddr>,
}

/// Proposals for the refusals in `records`.
pub fn suggest(records: &Records, dir: &dyn Directory) -> Suggestion {
    let (mut by_who, mut by_deny) = (BTreeMap::new(), BTreeMap::<Who, Seen>::new());
    let mut extra = BTreeSet::new();
    for d in &records.decisions {
        if matches!(d.outcome, Some(Outcome::Deny | Outcome::Audit)) {
            let bucket = if d.by_deny { &mut by_deny } else { &mut by_who };
            bucket.entry(who(d)).or_insert_with(Seen::default).add(d);
            extra.extend(d.dst.map(unmapped).filter(|ip| !is_default_endpoint(*ip)));
        }
    }
    let mut out = Suggestion {
        extra_endpoints: extra.into_iter().collect(),
        ..Suggestion::default()
    };
    out.left.extend(by_deny.into_iter().map(|(who, seen)| Left {
        who,
        seen,
        why: "refused by a [deny] entry, which wins over any allow: change that entry if the \
              refusal is wrong",
    }));
    let mut users = BTreeMap::new();
    for (who, seen) in by_who {
        match who {
            Who::Uid(uid) => {
                users.insert(uid, seen);
            }
            Who::Forwarded(_) => out.left.push(Left {
                who,
                seen,
                why: "a forwarded packet has no owner to allow; [forward] would let its whole \
                      interface or prefix through (see the policy reference)",
            }),
            Who::Nobody => out.left.push(Left {
                who,
                seen,
                why: "nobody can be held to account for it (a kernel thread, a socket no process \
                      opened)",
            }),
            other => out.proposals.push(by_cgroup(&other, seen)),
        }
    }
    out.proposals.extend(by_groups(&mut users, dir));
    out.proposals
        .extend(users.into_iter().map(|(uid, seen)| by_uid(uid, &seen, dir)));
    out
}

/// `::ffff:169.254.169.254` as the IPv4 address it maps.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn is_default_endpoint(ip: IpAddr) -> bool {
    crate::policy::DEFAULT_ADDRESSES
        .iter()
        .any(|a| a.parse::<IpAddr>().ok() == Some(ip))
}

/// The uids a proposal's records came from, named.
fn seen_as(seen: &Seen, dir: &dyn Directory) -> String {
    let named: Vec<String> = seen.uids.iter().map(|&u| uid_words(u, seen, dir)).collect();
    named.join(", ")
}

fn user_name(uid: u32, seen: &Seen, dir: &dyn Directory) -> Option<String> {
    seen.names.get(&uid).cloned().or_else(|| dir.user_name(uid))
}

fn uid_words(uid: u32, seen: &Seen, dir: &dyn Directory) -> String {
    match user_name(uid, seen, dir) {
        Some(name) => format!("uid {uid} ({})", crate::text::printable(&name)),
        None => format!("uid {uid}"),
    }
}

/// A pod, a unit or a scope: one entry.
fn by_cgroup(who: &Who, seen: Seen) -> Proposal {
    let line = |key, item: String| Line {
        table: Table::Allow,
        key,
        item: Item::Name(item),
        comment: seen.summary(),
    };
    let whatever = "whatever its uid";
    let forms = match who {
        Who::Pod(pod) => vec![Form {
            lines: vec![line(Key::Pods, pod.clone())],
            admits: format!("every process of every container of pod {pod}, {whatever}"),
        }],
        Who::Unit(unit) => vec![Form {
            lines: vec![line(Key::Units, unit.clone())],
            admits: format!(
                "every process in {unit}'s cgroup and below it, {whatever}, on the host or in a \
                 container it runs"
            ),
        }],
        Who::Cgroup(path) => {
            let mut forms = vec![Form {
                lines: vec![line(Key::Cgroups, format!("{path}/**"))],
                admits: format!(
                    "every process in {path} and below it, {whatever}; a scope is named anew \
                     when it is made again (a container's restart)"
                ),
            }];
            forms.extend(widen_scope(path).map(|glob| Form {
                lines: vec![line(Key::Cgroups, format!("{glob}/**"))],
                admits: format!("every process in every cgroup named {glob}, and below them"),
            }));
            forms
        }
        _ => Vec::new(),
    };
    Proposal {
        who: who.to_string(),
        seen,
        forms,
    }
}

/// A user's entry: by name when it has one.
fn user_line(uid: u32, seen: &Seen, table: Table, dir: &dyn Directory) -> Line {
    let (key, item) = match user_name(uid, seen, dir) {
        Some(name) => (Key::Users, Item::Name(name)),
        None => (Key::Uids, Item::Id(uid)),
    };
    Line {
        table,
        key,
        item,
        comment: seen.summary(),
    }
}

/// One uid: on the host only, or anywhere.
fn by_uid(uid: u32, seen: &Seen, dir: &dyn Directory) -> Proposal {
    let named = uid_words(uid, seen, dir);
    let namespaces = match seen.owners.iter().next() {
        Some(&owner) => format!(
            "; an id of the user namespaces of {}",
            uid_words(owner, seen, dir)
        ),
        None => String::new(),
    };
    let anywhere = Form {
        lines: vec![user_line(uid, seen, Table::Allow, dir)],
        admits: format!(
            "{named} on the host and in every container (a container's uid {uid} is the same \
             uid){namespaces}"
        ),
    };
    let forms = if seen.host_only() {
        let host = Form {
            lines: vec![user_line(uid, seen, Table::AllowHost, dir)],
            admits: format!("{named} on the host only, not in a container"),
        };
        vec![host, anywhere]
    } else {
        vec![anywhere]
    };
    Proposal {
        who: named,
        seen: seen.clone(),
        forms,
    }
}

/// Users who share a group, several at a time: taken out of `users`.
fn by_groups(users: &mut BTreeMap<u32, Seen>, dir: &dyn Directory) -> Vec<Proposal> {
    let mut by_gid: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (&uid, seen) in users.iter() {
        // Root's group is root's in every container; a namespaced id is
        // nobody's member.
        if uid == 0 || !seen.owners.is_empty() {
            continue;
        }
        for gid in dir.groups_of(uid).unwrap_or_default() {
            if gid != 0 {
                by_gid.entry(gid).or_default().insert(uid);
            }
        }
    }
    let mut proposals = Vec::new();
    // The group of the most users seen, the lowest gid first, until no
    // group has two.
    let largest = |by_gid: &BTreeMap<u32, BTreeSet<u32>>| {
        by_gid
            .iter()
            .filter(|(_, m)| m.len() >= 2)
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(g, m)| (*g, m.clone()))
    };
    while let Some((gid, members)) = largest(&by_gid) {
        let seens: Vec<(u32, Seen)> = members
            .iter()
            .filter_map(|uid| users.remove(uid).map(|s| (*uid, s)))
            .collect();
        for set in by_gid.values_mut() {
            set.retain(|uid| !members.contains(uid));
        }
        proposals.push(by_group(gid, &seens, dir));
    }
    proposals
}

/// A group's proposal: its users seen, one by one, or the group.
fn by_group(gid: u32, members: &[(u32, Seen)], dir: &dyn Directory) -> Proposal {
    let mut seen = Seen::default();
    for (_, s) in members {
        seen.merge(s);
    }
    let group = match dir.group_name(gid) {
        Some(name) => format!("group {gid} ({})", crate::text::printable(&name)),
        None => format!("gid {gid}"),
    };
    let table_of = |s: &Seen| {
        if s.host_only() {
            Table::AllowHost
        } else {
            Table::Allow
        }
    };
    let one_by_one = Form {
        lines: members
            .iter()
            .map(|(uid, s)| user_line(*uid, s, table_of(s), dir))
            .collect(),
        admits: format!("{} only, each where it was seen", seen_as(&seen, dir)),
    };
    let (key, item) = match dir.group_name(gid) {
        Some(name) => (Key::Groups, Item::Name(name)),
        None => (Key::Gids, Item::Id(gid)),
    };
    let others = match dir.members(gid) {
        Ok(all) => {
            let rest: Vec<String> = all
                .into_iter()
                .filter(|uid| !seen.uids.contains(uid))
                .map(|uid| uid_words(uid, &seen, dir))
                .collect();
            if rest.is_empty() {
                "no other member today".to_owned()
            } else {
                format!("its other members, {}", rest.join(", "))
            }
        }
        Err(e) => format!("its other members (the group database could not say: {e})"),
    };
    let whole = Form {
        lines: vec![Line {
            table: table_of(&seen),
            key,
            item,
            comment: seen.summary(),
        }],
        admits: format!(
            "every process holding {group}: {others}, and whoever joins it (from the next reload)"
        ),
    };
    Proposal {
        who: format!("{group}: {}", seen_as(&seen, dir)),
        seen,
        forms: vec![one_by_one, whole],
    }
}
