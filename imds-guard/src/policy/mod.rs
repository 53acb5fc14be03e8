//! The policy: what a TOML file says, checked and resolved in two steps.
//!
//! 1. [`PolicySpec::parse`] reads the TOML (`raw.rs`) and validates
//!    everything that can be checked without the host's user database:
//!    unknown keys, malformed addresses, duplicates, contradictions, a policy
//!    that decides nothing. `validate --offline` and `render` stop here, and
//!    keep names as the file spells them.
//! 2. [`PolicySpec::resolve`] turns user and group names into ids through a
//!    [`Resolver`] (NSS on a real host) and checks the result again (a name
//!    and a number for the same id, an id both allowed and denied). Only a
//!    resolved [`Policy`] reaches the kernel.
//!
//! Every error carries the position of what caused it and prints as
//! `FILE:LINE:COL: what is wrong`.
//!
//! [`Policy::decide`] is the reference for what the kernel programs do with
//! a resolved policy, so tests can state the semantics without a kernel;
//! [`cases`] is the table that holds the two to the same decisions;
//! [`check`] and [`explain`] put its decisions in words.
//!
//! Imports: nothing of this crate. `render` reads a [`PolicySpec`]; the
//! kernel side writes a [`Policy`] into its maps.

mod address;
pub mod cases;
pub mod cgroups;
mod check;
mod digest;
mod error;
mod explain;
pub mod forward;
mod layout;
mod members;
pub mod presets;
mod process;
mod raw;
pub mod requests;
mod resolve;
mod source;
mod unresolved;
mod validate;
mod warnings;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

#[cfg(test)]
pub(crate) use self::resolve::fake::FakeResolver;
pub use self::{
    cgroups::{CgroupClass, CgroupRules},
    check::{CheckReport, Destination, check},
    digest::hex,
    error::{Diagnostic, PolicyError},
    explain::{Context, explain, explain_with},
    layout::CgroupLayout,
    presets::Kind as EndpointKind,
    process::{Owner, Place, Process},
    resolve::{Resolver, SystemResolver},
    source::{ADMIN_POLICY, PACKAGED_POLICY, PolicySource},
    unresolved::Unresolved,
};

/// The default protected endpoints: the EC2 instance metadata service over
/// IPv4 and over IPv6 (Nitro).
pub const DEFAULT_ADDRESSES: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

/// A 1-based position in the policy file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: u32,
    pub col: u32,
}

impl Location {
    /// "line 3, column 10", for messages that point at a second place.
    fn in_words(self) -> String {
        format!("line {}, column {}", self.line, self.col)
    }
}

/// `LINE:COL`, the form editors jump to.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Enforce or only record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Denied connections fail with EPERM. The default when `mode` is absent.
    #[default]
    Enforce,
    /// Denied connections go through and are logged as would-deny.
    Audit,
}

impl Mode {
    /// As the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a connection to a protected address: the policy's
/// action, and the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// Denied by the policy; let through and logged because the mode is
    /// audit.
    Audit,
}

impl Outcome {
    /// The `event` field of a log record, the `verdict` of `check --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule says about an identity. `Allow` orders before `Deny`, the
/// order of the tables in [`PolicySpec::entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    /// "allowed" or "denied", for messages.
    fn done(self) -> &'static str {
        match self {
            Self::Allow => "allowed",
            Self::Deny => "denied",
        }
    }
}

/// Who a rule is about, as the policy file spells it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// `users = ["name"]`: resolved to a uid at load.
    User(String),
    /// `uids = [N]`.
    Uid(u32),
    /// `groups = ["name"]`: resolved to a gid at load.
    Group(String),
    /// `gids = [N]`.
    Gid(u32),
    /// `units = ["name.service"]`: resolved to its cgroup at load.
    Unit(String),
    /// `cgroups = ["/pattern"]`, as written.
    Cgroup(String),
    /// `pods = ["namespace/name"]` (`[allow]` only).
    Pod(String),
}

/// `user "root"`, `uid 0`, `group "imds"`, `gid 1500`: how messages name an
/// identity.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "user {name:?}"),
            Self::Uid(uid) => write!(f, "uid {uid}"),
            Self::Group(name) => write!(f, "group {name:?}"),
            Self::Gid(gid) => write!(f, "gid {gid}"),
            Self::Unit(name) => write!(f, "unit {name:?}"),
            Self::Cgroup(pattern) => write!(f, "cgroup {pattern:?}"),
            Self::Pod(pod) => write!(f, "pod {pod:?}"),
        }
    }
}

/// Where an entry applies: to every caller, or only to callers on the
/// host (`[allow.host]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `[allow]`, `[deny]`: wherever the caller runs.
    #[default]
    Anywhere,
    /// `[allow.host]`: only a caller whose pid, network and user namespaces
    /// are the agent's (see [`Place`]).
    Host,
}

/// One entry of `[allow]`, `[allow.host]` or `[deny]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub action: Action,
    pub identity: Identity,
    /// Where the entry is written.
    pub at: Location,
    /// [`Scope::Host`] for `[allow.host]`.
    pub scope: Scope,
}

impl Entry {
    /// "allowed", "allowed on the host" or "denied", for messages.
    fn done(&self) -> &'static str {
        match (self.action, self.scope) {
            (Action::Allow, Scope::Host) => "allowed on the host",
            (action, _) => action.done(),
        }
    }

    /// The table it is written in: `[allow]`, `[allow.host]`, `[deny]`.
    pub fn table(&self) -> &'static str {
        match (self.action, self.scope) {
            (Action::Allow, Scope::Anywhere) => "[allow]",
            (Action::Allow, Scope::Host) => "[allow.host]",
            (Action::Deny, _) => "[deny]",
        }
    }
}

/// A protected destination: an address, every port of it, or one port
/// (TCP, UDP or both) of it; the address's other ports stay open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    /// `None`: every port and every protocol (a bare address).
    pub port: Option<Port>,
    /// Where the address is written; `None` for the built-in default.
    pub at: Option<Location>,
}

/// One protected port of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub number: u16,
    pub protocol: Protocol,
}

/// The protocols a [`Port`] is protected for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// TCP and UDP: a port written without a protocol.
    Both,
}

impl Protocol {
    /// Whether traffic of `other` (TCP or UDP) is covered.
    pub fn covers(self, other: Protocol) -> bool {
        self == Protocol::Both || self == other
    }

    /// The protocols one by one.
    pub fn each(self) -> &'static [Protocol] {
        match self {
            Protocol::Tcp => &[Protocol::Tcp],
            Protocol::Udp => &[Protocol::Udp],
            Protocol::Both => &[Protocol::Tcp, Protocol::Udp],
        }
    }

    /// `tcp` or `udp` (`tcp,udp` for both).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "tcp,udp",
        }
    }
}

impl fmt::Display for Endpoint {
    /// As a policy file spells it: `169.254.169.254`,
    /// `169.254.170.2:80/tcp`, `[fd00:ec2::23]:80` (TCP and UDP).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(port) = self.port else {
            return write!(f, "{}", self.addr);
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", port.number)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}", port.number)?,
        }
        match port.protocol {
            Protocol::Both => Ok(()),
            p => write!(f, "/{}", p.name()),
        }
    }
}

/// A policy that passed every check that needs no user database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub mode: Mode,
    /// Non-empty, without duplicates, in file order.
    pub endpoints: Vec<Endpoint>,
    /// In file order: `[allow]` entries (`[allow.host]`'s after), then
    /// each `[requests.NAME]` table's, then `[deny]` entries, each in the
    /// order users, uids, groups, gids, units, cgroups, pods.
    pub entries: Vec<Entry>,
    /// Forwarded traffic let through (`[forward]`); none by default.
    pub forward: forward::Forward,
    /// The presets `[endpoints] presets` expanded into `endpoints`, as
    /// `name` or `name (auto: why)`, in file order.
    pub presets: Vec<String>,
    /// The protected addresses that are workload endpoints (from a
    /// workload preset: each workload's own credentials), each once; every
    /// other is a host endpoint.
    pub workload: Vec<IpAddr>,
    /// `[requests.*]`, `[imdsv2]`, `[attribution]` (issue 23); empty for a
    /// policy without them.
    pub requests: requests::Requests,
}

impl PolicySpec {
    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        validate::parse(path, text)
    }

    /// The protected endpoints as written (with their ports), in the
    /// policy's order.
    pub fn addresses(&self) -> Vec<String> {
        self.endpoints.iter().map(Endpoint::to_string).collect()
    }

    /// The protected addresses, each once, in the policy's order.
    pub fn protected_addresses(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for e in &self.endpoints {
            if !addrs.contains(&e.addr) {
                addrs.push(e.addr);
            }
        }
        addrs
    }

    /// Whose secrets `addr` hands out: [`EndpointKind::Workload`] for an
    /// address of a workload preset, [`EndpointKind::Host`] otherwise.
    pub fn kind_of(&self, addr: IpAddr) -> EndpointKind {
        if self.workload.contains(&addr) {
            EndpointKind::Workload
        } else {
            EndpointKind::Host
        }
    }

    /// The ports protected at `addr`: `None` for every port (a bare
    /// address), else each port with its protocols, in the policy's order.
    pub fn ports_of(&self, addr: IpAddr) -> Option<Vec<Port>> {
        let mut ports = Vec::new();
        for e in self.endpoints.iter().filter(|e| e.addr == addr) {
            ports.push(e.port?);
        }
        Some(ports)
    }

    /// What the policy does with an identity no entry names: deny as soon
    /// as `[allow]` has an entry, allow otherwise.
    pub fn default_action(&self) -> Action {
        if self.entries.iter().any(|e| e.action == Action::Allow) {
            Action::Deny
        } else {
            Action::Allow
        }
    }

    /// Resolves names through `resolver` and checks the result.
    pub fn resolve(self, resolver: &dyn Resolver) -> Result<Policy, PolicyError> {
        resolve::resolve(self, resolver)
    }
}

/// The rule in force for one uid or gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRule {
    pub action: Action,
    /// Index into [`PolicySpec::entries`] of the entry that made this rule
    /// ([`IdRule::entry`]): 32 bits, so that a table of 100,000 rules is a
    /// third smaller.
    pub index: u32,
}

impl IdRule {
    /// The rule entry `index` makes. No policy has 2^32 entries (its file
    /// would be gigabytes); an index past that names no entry, like a rule
    /// without one.
    pub fn new(action: Action, index: usize) -> Self {
        Self {
            action,
            index: u32::try_from(index).unwrap_or(u32::MAX),
        }
    }

    /// Index into [`PolicySpec::entries`] of the entry that made it.
    pub fn entry(self) -> usize {
        self.index as usize
    }
}

/// A resolved policy: what the kernel is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub spec: PolicySpec,
    pub default_action: Action,
    pub uids: BTreeMap<u32, IdRule>,
    pub gids: BTreeMap<u32, IdRule>,
    /// The members of denied groups in the group database, each with the
    /// lowest denied gid it is a member of: for the creators of user
    /// namespaces (`members.rs`).
    pub members: BTreeMap<u32, u32>,
    /// Units, cgroups and pods.
    pub cgroups: CgroupRules,
}

/// Why [`Policy::decide`] decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The uid has a deny rule.
    UidDenied,
    /// The gid has a deny rule (and the uid none).
    GidDenied,
    /// The uid has an allow rule, and the gid no deny rule.
    UidAllowed,
    /// The gid has an allow rule, and the uid no rule.
    GidAllowed,
    /// No rule names the uid or the gid: [`Policy::default_action`].
    Default,
    /// A supplementary group the caller holds has a deny rule.
    GroupDenied,
    /// A supplementary group the caller holds has an allow rule (and
    /// nothing denies it).
    GroupAllowed,
    /// The owner of a user namespace the caller is in has a deny rule.
    OwnerDenied,
    /// A user namespace the caller is in was created with a denied gid as
    /// its creator's effective gid.
    OwnerGidDenied,
    /// The creator of a user namespace the caller is in is a member of a
    /// denied group in the group database.
    OwnerMemberDenied,
    /// Only `[allow.host]` entries name the caller, and it is not on the
    /// host.
    HostOnly,
    /// The caller holds more supplementary groups than the guard reads
    /// ([`imds_guard_common::MAX_GROUPS`]), and the policy has gid rules.
    TooManyGroups,
    /// The cgroup matches a `[deny]` unit or cgroup pattern (and neither
    /// id has a deny rule).
    CgroupDenied,
    /// The cgroup matches an `[allow]` unit, cgroup or pod pattern, and
    /// nothing denies the caller (its ids may allow it too).
    CgroupAllowed,
    /// The cgroup has no classification and the policy denies some
    /// cgroups: it might be one of them.
    CgroupUnknown,
    /// The destination is a workload endpoint, the caller is not on the
    /// host, and nothing denies it.
    Workload,
}

/// The outcome for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
    /// Index into [`PolicySpec::entries`] of the entry that decided; `None`
    /// for [`Reason::Default`].
    pub index: Option<usize>,
    /// The id whose rule decided: the uid, the primary gid, the
    /// supplementary group, the user namespace owner, the denied group of
    /// a namespace's creator; `None` for the default and
    /// [`Reason::TooManyGroups`].
    pub id: Option<u32>,
}

impl Policy {
    /// Root on the host only (`[allow.host] uids = [0]`) on the default
    /// endpoints, in enforce mode, read from nowhere (`path` names it in
    /// messages): the agent's built-in fallback, which cannot fail to
    /// build.
    pub fn root_only(path: &Path) -> Self {
        let entry = Entry {
            action: Action::Allow,
            identity: Identity::Uid(0),
            at: Location { line: 2, col: 9 },
            scope: Scope::Host,
        };
        Self {
            spec: PolicySpec {
                path: path.to_owned(),
                mode: Mode::Enforce,
                endpoints: address::default_endpoints(),
                entries: vec![entry],
                forward: forward::Forward::default(),
                presets: Vec::new(),
                workload: Vec::new(),
                requests: requests::Requests::default(),
            },
            default_action: Action::Deny,
            uids: BTreeMap::from([(
                0,
                IdRule {
                    action: Action::Allow,
                    index: 0,
                },
            )]),
            gids: BTreeMap::new(),
            members: BTreeMap::new(),
            cgroups: CgroupRules::default(),
        }
    }

    /// What the policy does with a process of real `uid` and `gid`, on the
    /// host, with no supplementary group and in the initial user
    /// namespace, that connects to a protected endpoint:
    /// [`Policy::decide_process`] for such a process.
    pub fn decide(&self, uid: u32, gid: u32) -> Decision {
        self.decide_process(&Process::on_host(uid, gid))
    }

    /// Where the rule `rule` applies: that of the entry that made it. A
    /// rule without one (none is made so) allows on the host only, the
    /// narrower scope.
    pub fn scope_of(&self, rule: &IdRule) -> Scope {
        self.spec
            .entries
            .get(rule.entry())
            .map_or(Scope::Host, |e| e.scope)
    }

    /// Whether connections to `addr` are subject to the policy. An
    /// IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is protected when
    /// its IPv4 address is: a dual-stack IPv6 socket reaches the IPv4
    /// service that way.
    pub fn protects(&self, addr: IpAddr) -> bool {
        let addr = unmapped(addr);
        self.spec.endpoints.iter().any(|e| e.addr == addr)
    }

    /// Whether traffic to `addr` on `port` of `protocol` is subject to the
    /// policy, as the programs decide it: a bare address protects every
    /// port; a port-scoped one only its ports. `None` for the port is one
    /// that cannot be read (a fragment after the first), which counts as
    /// a protected one.
    pub fn protects_port(&self, addr: IpAddr, protocol: Protocol, port: Option<u16>) -> bool {
        let addr = unmapped(addr);
        self.spec.endpoints.iter().any(|e| {
            e.addr == addr
                && match (e.port, port) {
                    (None, _) | (Some(_), None) => true,
                    (Some(p), Some(n)) => p.number == n && p.protocol.covers(protocol),
                }
        })
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address; any other as it is.
fn unmapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests;
