//! The records the programs send through the `EVENTS` ring buffer, decoded
//! and typed. A record with a hook, outcome or reason this agent does not
//! know is an error, never filed under a name it does know.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imds_guard_common::{Event, NO_ID, event_flags, family, kind, ns, reason, verdict};

use super::programs::Hook;
use crate::{
    policy::{Outcome, Place, Reason},
    text::printable,
};

/// [`Outcome`] from the programs' verdict number.
fn outcome(v: u8) -> Option<Outcome> {
    match v {
        verdict::ALLOWED => Some(Outcome::Allow),
        verdict::DENIED => Some(Outcome::Deny),
        verdict::AUDITED => Some(Outcome::Audit),
        _ => None,
    }
}

/// Why the programs decided as they did: the policy's reasons, or a
/// failure to read the configuration (which denies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordReason {
    Policy(Reason),
    /// The programs could not read their configuration and failed closed.
    InternalError,
    /// No identity could be established (a kernel thread, a socket no
    /// process opened): denied.
    NoIdentity,
    /// The caller's groups or user namespaces could not be read: denied.
    Unreadable,
}

impl RecordReason {
    fn from_wire(r: u8) -> Option<Self> {
        Some(match r {
            reason::UID_DENIED => Self::Policy(Reason::UidDenied),
            reason::GID_DENIED => Self::Policy(Reason::GidDenied),
            reason::UID_ALLOWED => Self::Policy(Reason::UidAllowed),
            reason::GID_ALLOWED => Self::Policy(Reason::GidAllowed),
            reason::DEFAULT => Self::Policy(Reason::Default),
            reason::INTERNAL_ERROR => Self::InternalError,
            reason::NO_IDENTITY => Self::NoIdentity,
            reason::GROUP_DENIED => Self::Policy(Reason::GroupDenied),
            reason::GROUP_ALLOWED => Self::Policy(Reason::GroupAllowed),
            reason::OWNER_DENIED => Self::Policy(Reason::OwnerDenied),
            reason::OWNER_GID_DENIED => Self::Policy(Reason::OwnerGidDenied),
            reason::OWNER_MEMBER_DENIED => Self::Policy(Reason::OwnerMemberDenied),
            reason::HOST_ONLY => Self::Policy(Reason::HostOnly),
            reason::TOO_MANY_GROUPS => Self::Policy(Reason::TooManyGroups),
            reason::UNREADABLE => Self::Unreadable,
            reason::CGROUP_DENIED => Self::Policy(Reason::CgroupDenied),
            reason::CGROUP_ALLOWED => Self::Policy(Reason::CgroupAllowed),
            reason::CGROUP_UNKNOWN => Self::Policy(Reason::CgroupUnknown),
            reason::WORKLOAD => Self::Policy(Reason::Workload),
            _ => return None,
        })
    }
}

/// A record the agent cannot read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a record of {0} bytes is shorter than its kind of record")]
    Short(usize),
    #[error("a record names hook {0}, which this agent does not know")]
    Hook(u8),
    #[error("a record has verdict {0}, which this agent does not know")]
    Outcome(u8),
    #[error("a record has reason {0}, which this agent does not know")]
    Reason(u8),
    #[error("a record of kind {0}, which this agent does not know")]
    Kind(u8),
    #[error("a request record has version {0}, which this agent does not know")]
    Version(u8),
}

/// One decision, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRecord {
    pub outcome: Outcome,
    pub uid: u32,
    pub gid: u32,
    /// The process (thread-group) id.
    pub pid: u32,
    /// The thread id.
    pub tid: u32,
    pub comm: String,
    pub dst: IpAddr,
    pub port: u16,
    pub hook: Hook,
    pub cgroup_id: u64,
    pub reason: RecordReason,
    /// The number (1-based) of the policy entry that decided, as the
    /// programs carry it; 0 for none.
    pub entry: u32,
    /// The policy generation that decided (see `policy_maps.rs`).
    pub generation: u8,
    /// The IP protocol of a packet (`egress`); 0 for the other hooks.
    pub proto: u8,
    /// The id whose rule decided (the uid, a gid, a supplementary group,
    /// a user namespace's creator), when one did.
    pub decider: Option<u32>,
    /// How many supplementary groups the caller holds, when they were read
    /// (the policy has a group rule).
    pub groups: Option<u32>,
    /// [`ns`] bits: where the caller runs.
    pub namespaces: u8,
    /// A packet refused (or, in audit mode, that would be) on a socket
    /// let through to this address under an earlier policy: a connection
    /// cut by a reload or by the switch from audit to enforce, not a new
    /// one. Only `egress` judges packets of such sockets.
    pub revoked: bool,
    /// The creator of the user namespace whose creator decided (the
    /// `Owner*` reasons).
    pub owner: Option<u32>,
    /// The creator of the outermost user namespace the caller is in below
    /// the initial one: the user it acts for. `None` in the initial user
    /// namespace (or when the programs could not read the chain).
    pub userns_owner: Option<u32>,
}

impl DecisionRecord {
    /// Decodes a record from the ring buffer.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < size_of::<Event>() {
            return Err(RecordError::Short(bytes.len()));
        }
        // SAFETY: the length is checked; `Event` is plain old data and the
        // ring buffer gives no alignment guarantee, hence read_unaligned.
        let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_event(&ev)
    }

    pub fn from_event(ev: &Event) -> Result<Self, RecordError> {
        if ev.kind != kind::DECISION {
            return Err(RecordError::Kind(ev.kind));
        }
        let dst = if ev.family == family::INET {
            IpAddr::V4(Ipv4Addr::new(
                ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(ev.addr))
        };
        let comm_len = ev
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ev.comm.len());
        let outcome = outcome(ev.verdict).ok_or(RecordError::Outcome(ev.verdict))?;
        Ok(Self {
            outcome,
            uid: ev.uid,
            gid: ev.gid,
            pid: ev.tgid,
            tid: ev.tid,
            // A process names itself: it may put a newline in its name.
            comm: printable(&String::from_utf8_lossy(&ev.comm[..comm_len])),
            dst,
            port: ev.port,
            hook: Hook::from_wire(ev.hook).ok_or(RecordError::Hook(ev.hook))?,
            cgroup_id: ev.cgroup_id,
            reason: RecordReason::from_wire(ev.reason).ok_or(RecordError::Reason(ev.reason))?,
            entry: ev.entry,
            generation: ev.generation,
            proto: ev.proto,
            decider: (ev.decider != NO_ID).then_some(ev.decider),
            groups: (ev.ngroups != NO_ID).then_some(ev.ngroups),
            namespaces: ev.namespaces,
            // An allowed packet revokes nothing: its socket stays let
            // through.
            revoked: ev.flags & event_flags::REVOKED != 0 && outcome != Outcome::Allow,
            owner: (ev.owner != NO_ID).then_some(ev.owner),
            userns_owner: (ev.userns_owner != NO_ID).then_some(ev.userns_owner),
        })
    }

    /// Where the caller runs, when the programs could tell.
    pub fn place(&self) -> Option<Place> {
        if self.namespaces & ns::CHECKED == 0 {
            return None;
        }
        Some(if self.namespaces & ns::NOT_HOST == 0 {
            Place::Host
        } else {
            Place::Container
        })
    }

    /// Whether the caller is off the host only because the programs could
    /// not tell: no namespace is known to differ from the agent's, but one
    /// could not be read. A packet the kernel sends for a socket from
    /// another task than its owner's (a local service's reply or
    /// acknowledgement, sent while its client runs) has no pid namespace
    /// to compare. A decision treats it as off the host (fail closed); a
    /// record must not say it runs in a container.
    pub fn host_unknown(&self) -> bool {
        let bits = self.namespaces;
        bits & ns::CHECKED != 0
            && bits & ns::NOT_HOST != 0
            && bits & (ns::PID | ns::NET | ns::USER) == 0
    }

    /// Where the caller runs, as the record's `place` field says it:
    /// `host`, `container` (a namespace differs from the agent's), or
    /// `unknown` ([`DecisionRecord::host_unknown`]).
    pub fn place_name(&self) -> Option<&'static str> {
        if self.host_unknown() {
            return Some("unknown");
        }
        self.place().map(Place::as_str)
    }

    /// Why the caller is not on the host, in words: which namespaces
    /// differ from the agent's, or could not be read.
    pub fn not_host(&self) -> Option<&'static str> {
        let bits = self.namespaces;
        if bits & ns::CHECKED == 0 || bits & ns::NOT_HOST == 0 {
            return None;
        }
        Some(
            match (
                bits & (ns::PID | ns::PID_UNKNOWN),
                bits & (ns::NET | ns::NET_UNKNOWN),
                bits & (ns::USER | ns::USER_UNKNOWN),
            ) {
                (ns::PID, 0, 0) => "its pid namespace is not the agent's",
                // `egress` names no process when the task sending is not
                // the socket's owner.
                (ns::PID_UNKNOWN, 0, 0) if self.pid == 0 => {
                    "the packet was sent by another task than the socket's owner (a reply, an \
                     acknowledgement or a retransmission the kernel sent for the socket), so the \
                     owner's pid namespace is unknown"
                }
                (ns::PID_UNKNOWN, 0, 0) => "its pid namespace could not be read",
                (0, ns::NET, 0) => "its socket's network namespace is not the agent's",
                (0, 0, ns::USER) => "its user namespace is not the agent's",
                (p, n, u) if p & ns::PID != 0 || n & ns::NET != 0 || u & ns::USER != 0 => {
                    if bits & (ns::PID_UNKNOWN | ns::NET_UNKNOWN | ns::USER_UNKNOWN) != 0 {
                        "its namespaces are not the agent's, or could not be read"
                    } else {
                        "its namespaces are not the agent's"
                    }
                }
                _ => "its namespaces could not be read",
            },
        )
    }

    /// The index into the policy's entries of the entry that decided.
    pub fn entry_index(&self) -> Option<usize> {
        entry_index(self.entry)
    }

    /// The uid and gid judged, unless nobody could be.
    pub fn ids(&self) -> Option<(u32, u32)> {
        (self.reason != RecordReason::NoIdentity).then_some((self.uid, self.gid))
    }

    /// The packet's protocol in words, for the records that have one.
    pub fn proto_name(&self) -> Option<String> {
        proto_name(self.proto)
    }
}

/// An IP protocol number in words; `None` for 0 (no packet).
pub fn proto_name(proto: u8) -> Option<String> {
    Some(match proto {
        0 => return None,
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "ipv6-icmp".to_owned(),
        132 => "sctp".to_owned(),
        136 => "udplite".to_owned(),
        255 => "raw".to_owned(),
        other => format!("protocol {other}"),
    })
}

/// The entry index a wire entry number stands for (`0` is none).
pub fn entry_index(entry: u32) -> Option<usize> {
    (entry as usize).checked_sub(1)
}

/// The wire entry number of an entry index.
pub fn entry_number(index: Option<usize>) -> u32 {
    index.map_or(0, |i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use imds_guard_common::{COMM_LEN, hook};

    use super::*;

    pub(crate) fn event(verdict: u8, reason: u8, entry: u32, family: u8, addr: [u8; 16]) -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        Event {
            ts_ns: 1,
            cgroup_id: 77,
            tid: 4243,
            tgid: 4242,
            uid: 1000,
            gid: 1001,
            entry,
            port: 80,
            hook: hook::CONNECT6,
            verdict,
            reason,
            family,
            generation: 0,
            kind: 0,
            addr,
            comm,
            proto: 0,
            flags: 0,
            _pad1: [0; 2],
            decider: NO_ID,
            ngroups: NO_ID,
            namespaces: 0,
            _pad2: [0; 3],
            owner: NO_ID,
            userns_owner: NO_ID,
            _pad3: [0; 4],
        }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain old data without implicit padding.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn decodes_every_field_and_the_mapped_address() {
        let mapped: Ipv6Addr = "::ffff:169.254.169.254".parse().expect("addr");
        let ev = event(
            verdict::DENIED,
            reason::DEFAULT,
            0,
            family::INET6,
            mapped.octets(),
        );
        let d = DecisionRecord::decode(&bytes(&ev)).expect("long enough");
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!((d.uid, d.gid, d.pid, d.tid), (1000, 1001, 4242, 4243));
        assert_eq!(d.comm, "curl");
        assert_eq!(d.dst, IpAddr::V6(mapped));
        assert_eq!((d.port, d.hook, d.cgroup_id), (80, Hook::Connect6, 77));
        assert_eq!((d.owner, d.userns_owner), (None, None));
        let mut namespaced = ev;
        (namespaced.owner, namespaced.userns_owner) = (2345, 2346);
        let d = DecisionRecord::from_event(&namespaced).expect("valid");
        assert_eq!((d.owner, d.userns_owner), (Some(2345), Some(2346)));
        assert_eq!(
            DecisionRecord::decode(&bytes(&ev)[..79]),
            Err(RecordError::Short(79)),
            "short events are refused"
        );
    }

    #[test]
    fn decodes_ipv4_and_audit() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[169, 254, 169, 254]);
        let d = DecisionRecord::from_event(&event(
            verdict::AUDITED,
            reason::DEFAULT,
            0,
            family::INET,
            addr,
        ))
        .expect("valid");
        assert_eq!(d.outcome, Outcome::Audit);
        assert_eq!(d.dst, IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)));
    }

    #[test]
    fn a_refusal_of_a_socket_let_through_before_is_a_revocation_an_allow_is_not() {
        let mut ev = event(verdict::DENIED, reason::DEFAULT, 0, family::INET, [0; 16]);
        ev.hook = hook::EGRESS;
        let fresh = DecisionRecord::from_event(&ev).expect("valid");
        assert!(!fresh.revoked, "no flag, no revocation");
        ev.flags = event_flags::REVOKED;
        for (v, revoked) in [
            (verdict::DENIED, true),
            (verdict::AUDITED, true),
            (verdict::ALLOWED, false),
        ] {
            ev.verdict = v;
            let d = DecisionRecord::from_event(&ev).expect("valid");
            assert_eq!(d.revoked, revoked, "verdict {v}");
        }
    }

    #[test]
    fn unknown_hooks_verdicts_and_reasons_are_errors_not_other_names() {
        let mut ev = event(verdict::DENIED, reason::DEFAULT, 0, family::INET, [0; 16]);
        ev.hook = hook::COUNT as u8;
        assert_eq!(
            DecisionRecord::from_event(&ev),
            Err(RecordError::Hook(hook::COUNT as u8))
        );
        let ev = event(0, reason::DEFAULT, 0, family::INET, [0; 16]);
        assert_eq!(
            DecisionRecord::from_event(&ev),
            Err(RecordError::Outcome(0))
        );
        let ev = event(verdict::DENIED, 99, 0, family::INET, [0; 16]);
        assert_eq!(
            DecisionRecord::from_event(&ev),
            Err(RecordError::Reason(99))
        );
    }

    #[test]
    fn a_packet_sent_by_another_task_is_unknown_not_a_container() {
        let mut ev = event(verdict::DENIED, reason::HOST_ONLY, 1, family::INET, [0; 16]);
        ev.hook = hook::EGRESS;
        ev.tgid = 0;
        ev.tid = 0;
        let place = |bits: u8| {
            let mut ev = ev;
            ev.namespaces = bits;
            let d = DecisionRecord::from_event(&ev).expect("valid");
            (d.place_name(), d.host_unknown(), d.not_host())
        };
        let (name, unknown, why) = place(ns::CHECKED | ns::PID_UNKNOWN);
        assert_eq!((name, unknown), (Some("unknown"), true));
        assert!(
            why.is_some_and(|w| w.starts_with("the packet was sent by another task")),
            "{why:?}"
        );
        // A namespace that differs is a container, whatever else is unknown.
        let (name, unknown, _) = place(ns::CHECKED | ns::PID_UNKNOWN | ns::NET);
        assert_eq!((name, unknown), (Some("container"), false));
        assert_eq!(place(ns::CHECKED).0, Some("host"));
        assert_eq!(place(0).0, None);
    }

    #[test]
    fn entry_numbers_are_one_based_with_zero_for_none() {
        assert_eq!(entry_index(0), None);
        assert_eq!(entry_index(1), Some(0));
        assert_eq!(entry_number(None), 0);
        assert_eq!(entry_number(Some(0)), 1);
    }
}
