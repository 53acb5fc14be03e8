//! The one table of what the agent handles by name in the eBPF object:
//! every program, with where it attaches, and every map whose pin outlives
//! the agent. Loading, attaching or adopting, pinning, detaching, `status`
//! and the counters walk [`TABLE`]; adding a program is adding a row here
//! (and the program in `imds-guard-ebpf`). A program that decides is also a
//! [`Hook`], the subset records, counters and metrics number.
//!
//! A row's pin is `link_NAME` for a program and `map_NAME` for a map, in
//! the pin directory (`pins.rs`).

use std::fmt;

use aya_obj::generated::{NFPROTO_IPV4, NFPROTO_IPV6, bpf_attach_type};
use imds_guard_common::{self as common, hook};

/// What a row is: how it is loaded, attached, pinned and let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`, attached to the guarded cgroup at
    /// this attach type. Its pinned link is adopted by the next agent
    /// (`BPF_LINK_UPDATE`) and detached by `imds-guard detach`.
    SockAddr(bpf_attach_type),
    /// `BPF_PROG_TYPE_CGROUP_SKB` on the guarded cgroup's egress; pinned,
    /// adopted and detached as a sock_addr program is.
    SkbEgress,
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT` at the tracepoint of this name, for
    /// the whole host. A later agent pins its own link in its place; a
    /// raw tracepoint's link cannot be detached, only let go.
    RawTracepoint(&'static str),
    /// The `forward` program (`BPF_PROG_TYPE_NETFILTER`, Linux 6.4), linked
    /// at netfilter's forward hook of the agent's network namespace for
    /// this protocol family (`NFPROTO_IPV4`, `NFPROTO_IPV6`: there is no
    /// `NFPROTO_INET` for BPF links). One program for both rows, loaded by
    /// the agent itself (`kernel/netfilter/`: aya 0.14 has no such type);
    /// the row's name is its link's. A link's program cannot be replaced
    /// (`BPF_LINK_UPDATE` is `EOPNOTSUPP`): a later agent links its own
    /// first, at another priority, then detaches this one.
    Netfilter(u32),
    /// `BPF_PROG_TYPE_SOCK_OPS` on the guarded cgroup (`req_sockops`):
    /// pinned, adopted and detached as a sock_addr program is.
    SockOps,
    /// `BPF_PROG_TYPE_SK_MSG`, attached (`BPF_SK_MSG_VERDICT`) to the
    /// sockhash of this name, which is pinned: the attachment lasts as
    /// long as the map has a user (its pin, or an agent). Only in the
    /// build with `bpf_loop`.
    SkMsg(&'static str),
    /// A map pinned for `status` to read the guard from the kernel.
    Map,
}

impl Kind {
    /// Where a program of this kind attaches to the guarded cgroup
    /// (`enum bpf_attach_type`); `None` for one that does not.
    pub const fn cgroup_attach_type(self) -> Option<bpf_attach_type> {
        match self {
            Self::SockAddr(attach_type) => Some(attach_type),
            Self::SkbEgress => Some(bpf_attach_type::BPF_CGROUP_INET_EGRESS),
            Self::SockOps => Some(bpf_attach_type::BPF_CGROUP_SOCK_OPS),
            Self::RawTracepoint(_) | Self::Netfilter(_) | Self::SkMsg(_) | Self::Map => None,
        }
    }

    /// Whether aya loads it (the netfilter program, aya cannot).
    pub const fn aya_loads(self) -> bool {
        matches!(
            self,
            Self::SockAddr(_)
                | Self::SkbEgress
                | Self::RawTracepoint(_)
                | Self::SockOps
                | Self::SkMsg(_)
        )
    }

    /// Whether only the build with `bpf_loop` has it.
    pub const fn loop_only(self) -> bool {
        matches!(self, Self::SkMsg(_))
    }

    pub const fn is_program(self) -> bool {
        !matches!(self, Self::Map)
    }
}

/// One program or pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Its name in the object file. A hook's is also its name in logs
    /// (`hook=connect4`), metrics and `status`.
    pub name: &'static str,
    pub kind: Kind,
    /// For a program that decides: its hook, and what it judges.
    pub decides: Option<Decides>,
}

/// What a deciding program is to records, counters and log messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decides {
    pub hook: Hook,
    pub subject: Subject,
}

/// What a hook judges, for the words of a log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Connection,
    Datagram,
    Packet,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Datagram => "datagram",
            Self::Packet => "packet",
        }
    }
}

const fn decides(hook: Hook, subject: Subject) -> Option<Decides> {
    Some(Decides { hook, subject })
}

const fn sock_addr(name: &'static str, at: bpf_attach_type, d: Option<Decides>) -> Row {
    Row {
        name,
        kind: Kind::SockAddr(at),
        decides: d,
    }
}

const fn map(name: &'static str) -> Row {
    Row {
        name,
        kind: Kind::Map,
        decides: None,
    }
}

/// Every program, in the order they are attached and reported, then every
/// pinned map.
pub const TABLE: &[Row] = &[
    sock_addr(
        common::PROGRAM_CONNECT4,
        bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        decides(Hook::Connect4, Subject::Connection),
    ),
    sock_addr(
        common::PROGRAM_CONNECT6,
        bpf_attach_type::BPF_CGROUP_INET6_CONNECT,
        decides(Hook::Connect6, Subject::Connection),
    ),
    sock_addr(
        common::PROGRAM_SENDMSG4,
        bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG,
        decides(Hook::Sendmsg4, Subject::Datagram),
    ),
    sock_addr(
        common::PROGRAM_SENDMSG6,
        bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG,
        decides(Hook::Sendmsg6, Subject::Datagram),
    ),
    Row {
        name: common::PROGRAM_EGRESS,
        kind: Kind::SkbEgress,
        decides: decides(Hook::Egress, Subject::Packet),
    },
    // Request-level judgement (issue 23): `req_sockops` puts the sockets
    // of callers allowed some requests into `REQ_SOCKS` as they are
    // established; `req_msg`, attached to that map, judges each request.
    Row {
        name: common::PROGRAM_REQ_SOCKOPS,
        kind: Kind::SockOps,
        decides: None,
    },
    Row {
        name: common::PROGRAM_REQ_MSG,
        kind: Kind::SkMsg(common::MAP_REQ_SOCKS),
        decides: None,
    },
    // The cgroup classifier (`classify/`): each a raw tracepoint of its
    // own name.
    Row {
        name: common::PROGRAM_CGROUP_MKDIR,
        kind: Kind::RawTracepoint(common::PROGRAM_CGROUP_MKDIR),
        decides: None,
    },
    Row {
        name: common::PROGRAM_CGROUP_RMDIR,
        kind: Kind::RawTracepoint(common::PROGRAM_CGROUP_RMDIR),
        decides: None,
    },
    // The forward path, where the kernel has netfilter programs: one link
    // per family, pinned as `link_forward4` and `link_forward6`.
    Row {
        name: "forward4",
        kind: Kind::Netfilter(NFPROTO_IPV4),
        decides: None,
    },
    Row {
        name: "forward6",
        kind: Kind::Netfilter(NFPROTO_IPV6),
        decides: None,
    },
    map(common::MAP_ACTIVE),
    map(common::MAP_CONFIG),
    map(common::MAP_COUNTERS),
    map(common::MAP_RESOLVED),
    // The protected endpoints, for `status`: what is protected now.
    map(common::MAP_PROTECTED_V4),
    map(common::MAP_PROTECTED_V6),
    // The uid and gid rules, for `status --rules`: who is allowed now.
    map(common::MAP_UID_RULES),
    map(common::MAP_GID_RULES),
    map(common::MAP_CGROUP_CLASS),
    map(common::MAP_CGROUP_PATTERNS),
    map(common::MAP_CGROUP_STATS),
    map(common::MAP_CGROUP_CHARGES),
    map(common::MAP_CGROUP_AGENT_CHARGES),
    map(common::MAP_FORWARD_COUNTERS),
    map(common::MAP_FORWARD_STATE),
    // The judged sockets: pinned so that `req_msg` stays attached to it
    // with the agent gone.
    map(common::MAP_REQ_SOCKS),
    // What `req_msg` counted: the census of who sends which kind of
    // request (`report imdsv1` reads it with the agent gone), and the
    // counters by version, verdict and reason.
    map(common::MAP_REQ_USAGE),
    map(common::MAP_REQ_COUNTERS),
];

/// Every program.
pub fn programs() -> impl Iterator<Item = &'static Row> {
    TABLE.iter().filter(|row| row.kind.is_program())
}

/// The programs aya loads, by their names in the object.
pub fn aya_loaded() -> impl Iterator<Item = &'static Row> {
    TABLE.iter().filter(|row| row.kind.aya_loads())
}

/// The forward program's links, with their protocol families.
pub fn netfilter_links() -> impl Iterator<Item = (&'static Row, u32)> {
    TABLE.iter().filter_map(|row| match row.kind {
        Kind::Netfilter(pf) => Some((row, pf)),
        _ => None,
    })
}

/// The programs attached to the guarded cgroup, with their attach types.
pub fn guarding() -> impl Iterator<Item = (&'static Row, bpf_attach_type)> {
    TABLE
        .iter()
        .filter_map(|row| Some((row, row.kind.cgroup_attach_type()?)))
}

/// The `sk_msg` programs, with the sockhashes they attach to.
pub fn sk_msgs() -> impl Iterator<Item = (&'static Row, &'static str)> {
    TABLE.iter().filter_map(|row| match row.kind {
        Kind::SkMsg(map) => Some((row, map)),
        _ => None,
    })
}

/// The raw tracepoint programs, with their tracepoints.
pub fn tracepoints() -> impl Iterator<Item = (&'static Row, &'static str)> {
    TABLE.iter().filter_map(|row| match row.kind {
        Kind::RawTracepoint(tracepoint) => Some((row, tracepoint)),
        _ => None,
    })
}

/// The maps pinned for `status`.
pub fn pinned_maps() -> impl Iterator<Item = &'static str> {
    TABLE
        .iter()
        .filter(|row| row.kind == Kind::Map)
        .map(|row| row.name)
}

/// How many programs attach to the guarded cgroup: a guard with fewer live
/// links does not enforce.
pub const GUARDING: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < TABLE.len() {
        if TABLE[i].kind.cgroup_attach_type().is_some() {
            n += 1;
        }
        i += 1;
    }
    n
};

/// A place where the programs decide; its value is the number the programs
/// give it in records and counters ([`imds_guard_common::hook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Hook {
    Connect4 = hook::CONNECT4,
    Connect6 = hook::CONNECT6,
    Sendmsg4 = hook::SENDMSG4,
    Sendmsg6 = hook::SENDMSG6,
    Egress = hook::EGRESS,
}

const HOOKS: usize = hook::COUNT as usize;

/// For each hook, by number: the index of its row in [`TABLE`], and what
/// the row says it decides. Worked out as the agent is built: a hook
/// without a row, or with two, does not build.
const HOOK_ROWS: [(usize, Decides); HOOKS] = {
    let none = Decides {
        hook: Hook::Connect4,
        subject: Subject::Connection,
    };
    let mut rows = [(usize::MAX, none); HOOKS];
    let mut i = 0;
    while i < TABLE.len() {
        if let Some(d) = TABLE[i].decides {
            let wire = d.hook as usize;
            assert!(rows[wire].0 == usize::MAX, "two rows decide for one hook");
            rows[wire] = (i, d);
        }
        i += 1;
    }
    let mut wire = 0;
    while wire < HOOKS {
        assert!(rows[wire].0 != usize::MAX, "a hook has no row");
        wire += 1;
    }
    rows
};

impl Hook {
    /// Every hook, by number (the order the programs count them in).
    pub const ALL: [Self; HOOKS] = {
        let mut all = [Self::Connect4; HOOKS];
        let mut wire = 0;
        while wire < HOOKS {
            all[wire] = HOOK_ROWS[wire].1.hook;
            wire += 1;
        }
        all
    };

    /// This hook's row of [`TABLE`].
    pub fn row(self) -> &'static Row {
        &TABLE[HOOK_ROWS[self as usize].0]
    }

    /// The number the programs give it.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// Its name in logs, metrics and `status`: its program's name.
    pub fn as_str(self) -> &'static str {
        self.row().name
    }

    /// What it judges.
    pub fn subject(self) -> Subject {
        HOOK_ROWS[self as usize].1.subject
    }

    /// The hook the programs numbered `wire`; `None` for a number no row
    /// has (a newer object than this agent), which callers report rather
    /// than file under another hook.
    pub fn from_wire(wire: u8) -> Option<Self> {
        Self::ALL.get(usize::from(wire)).copied()
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_numbered_as_the_programs_do_and_each_has_its_row() {
        for (wire, hook) in Hook::ALL.iter().enumerate() {
            assert_eq!(usize::from(hook.wire()), wire, "{hook:?}");
            assert_eq!(Hook::from_wire(hook.wire()), Some(*hook));
            assert_eq!(hook.row().decides.map(|d| d.hook), Some(*hook));
        }
    }

    #[test]
    fn an_unknown_number_is_no_hook() {
        assert_eq!(Hook::from_wire(hook::COUNT as u8), None);
        assert_eq!(Hook::from_wire(u8::MAX), None);
    }

    #[test]
    fn names_are_the_program_names() {
        let names: Vec<_> = Hook::ALL.iter().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            ["connect4", "connect6", "sendmsg4", "sendmsg6", "egress"]
        );
        assert_eq!(Hook::Sendmsg6.subject(), Subject::Datagram);
    }

    #[test]
    fn every_name_is_one_row_and_every_hook_guards_the_cgroup() {
        let mut names: Vec<_> = TABLE.iter().map(|row| row.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "a name in two rows");
        for row in TABLE {
            if row.decides.is_some() {
                assert!(row.kind.cgroup_attach_type().is_some(), "{row:?}");
            }
        }
        // Every hook, and `req_sockops`, which decides nothing itself.
        assert_eq!(GUARDING, Hook::ALL.len() + 1);
        assert_eq!(guarding().count(), GUARDING);
        assert_eq!(
            programs().count(),
            GUARDING + tracepoints().count() + netfilter_links().count() + sk_msgs().count()
        );
        assert_eq!(
            aya_loaded().count(),
            GUARDING + tracepoints().count() + sk_msgs().count()
        );
        for (_, map) in sk_msgs() {
            assert!(pinned_maps().any(|m| m == map), "{map} must be pinned");
        }
    }
}
