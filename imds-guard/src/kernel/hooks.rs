//! The one table of hooks: which program of the object runs where in the
//! kernel, the number the programs give it in events and counters, and the
//! name logs, metrics and `status` use. Adding a program is adding a row
//! here and a variant to [`Hook`]; nothing else lists hooks.

use std::fmt;

use imds_guard_common::hook;

use super::sys::attach_type;

/// A place where the programs decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    Egress,
}

/// The kind of program behind a hook, which says how it is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`: judges a `connect()`/`sendmsg()`.
    SockAddr,
    /// `BPF_PROG_TYPE_CGROUP_SKB` on egress: judges a packet.
    SkbEgress,
}

/// What a hook decides, for the words of a log message.
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

/// What the loader needs to know of one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookSpec {
    pub hook: Hook,
    /// The program's name in the object file, which is also the hook's name
    /// in logs (`hook=connect4`), metrics and pins (`link_connect4`).
    pub program: &'static str,
    /// `enum bpf_attach_type`.
    pub attach_type: u32,
    /// The number the programs use for it ([`imds_guard_common::hook`]).
    pub wire: u8,
    pub kind: ProgramKind,
    pub subject: Subject,
}

/// Every hook, in the order they are attached and reported.
pub const HOOKS: [HookSpec; hook::COUNT as usize] = [
    HookSpec {
        hook: Hook::Connect4,
        program: imds_guard_common::PROGRAM_CONNECT4,
        attach_type: attach_type::CGROUP_INET4_CONNECT,
        wire: hook::CONNECT4,
        kind: ProgramKind::SockAddr,
        subject: Subject::Connection,
    },
    HookSpec {
        hook: Hook::Connect6,
        program: imds_guard_common::PROGRAM_CONNECT6,
        attach_type: attach_type::CGROUP_INET6_CONNECT,
        wire: hook::CONNECT6,
        kind: ProgramKind::SockAddr,
        subject: Subject::Connection,
    },
    HookSpec {
        hook: Hook::Sendmsg4,
        program: imds_guard_common::PROGRAM_SENDMSG4,
        attach_type: attach_type::CGROUP_UDP4_SENDMSG,
        wire: hook::SENDMSG4,
        kind: ProgramKind::SockAddr,
        subject: Subject::Datagram,
    },
    HookSpec {
        hook: Hook::Sendmsg6,
        program: imds_guard_common::PROGRAM_SENDMSG6,
        attach_type: attach_type::CGROUP_UDP6_SENDMSG,
        wire: hook::SENDMSG6,
        kind: ProgramKind::SockAddr,
        subject: Subject::Datagram,
    },
    HookSpec {
        hook: Hook::Egress,
        program: imds_guard_common::PROGRAM_EGRESS,
        attach_type: attach_type::CGROUP_INET_EGRESS,
        wire: hook::EGRESS,
        kind: ProgramKind::SkbEgress,
        subject: Subject::Packet,
    },
];

impl Hook {
    /// This hook's row of [`HOOKS`].
    pub fn spec(self) -> &'static HookSpec {
        // The rows are in declaration order; a test checks it.
        &HOOKS[self as usize]
    }

    /// Its name in logs, metrics and pins: the program's name.
    pub fn as_str(self) -> &'static str {
        self.spec().program
    }

    /// The hook a program numbered `wire`; `None` for a number no row has
    /// (a newer object than this agent), which callers report rather than
    /// file under another hook.
    pub fn from_wire(wire: u8) -> Option<Self> {
        HOOKS.iter().find(|s| s.wire == wire).map(|s| s.hook)
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
    fn rows_are_in_declaration_order_and_numbered_as_the_programs_do() {
        for (i, spec) in HOOKS.iter().enumerate() {
            assert_eq!(spec.hook as usize, i, "{:?}", spec.hook);
            assert_eq!(usize::from(spec.wire), i, "{:?}", spec.hook);
            assert_eq!(Hook::from_wire(spec.wire), Some(spec.hook));
        }
    }

    #[test]
    fn an_unknown_number_is_no_hook() {
        assert_eq!(Hook::from_wire(hook::COUNT as u8), None);
        assert_eq!(Hook::from_wire(u8::MAX), None);
    }

    #[test]
    fn names_are_the_program_names() {
        let names: Vec<_> = HOOKS.iter().map(|s| s.hook.as_str()).collect();
        assert_eq!(
            names,
            ["connect4", "connect6", "sendmsg4", "sendmsg6", "egress"]
        );
    }
}
