//! The records the programs send through [`crate::MAP_EVENTS`], and the
//! numbers they give hooks, verdicts and reasons.

use core::mem::size_of;

/// The hook a decision was taken on.
pub mod hook {
    pub const CONNECT4: u8 = 0;
    pub const CONNECT6: u8 = 1;
    pub const SENDMSG4: u8 = 2;
    pub const SENDMSG6: u8 = 3;
    /// `cgroup_skb/egress`: a packet a local socket sends, whatever built it.
    pub const EGRESS: u8 = 4;
    /// Number of hooks.
    pub const COUNT: u32 = 5;
}

/// The verdict recorded in an [`Event`].
pub mod verdict {
    pub const ALLOWED: u8 = 1;
    pub const DENIED: u8 = 2;
    /// Would have been denied; let through because the mode is audit.
    pub const AUDITED: u8 = 3;
}

/// Why a decision came out as it did.
pub mod reason {
    /// The caller's uid is in the deny list.
    pub const UID_DENIED: u8 = 1;
    /// The caller's gid is in the deny list.
    pub const GID_DENIED: u8 = 2;
    /// The caller's uid is in the allow list.
    pub const UID_ALLOWED: u8 = 3;
    /// The caller's gid is in the allow list.
    pub const GID_ALLOWED: u8 = 4;
    /// No rule names the caller; the policy's default decided.
    pub const DEFAULT: u8 = 5;
    /// The programs could not read their configuration (fail closed).
    pub const INTERNAL_ERROR: u8 = 6;
    /// Nobody can be held to account for it: a kernel thread, or a socket
    /// no process opened (fail closed).
    pub const NO_IDENTITY: u8 = 7;
    // 8..=15: who the caller is beyond its uid and primary gid (issue 9);
    // `Event::decider` names the group or owner.
    /// A supplementary group the caller holds is in the deny list.
    pub const GROUP_DENIED: u8 = 8;
    /// A supplementary group the caller holds is in the allow list (on
    /// the host, for an allow-on-host rule).
    pub const GROUP_ALLOWED: u8 = 9;
    /// The owner of a user namespace the caller is in (up to the initial
    /// one) is in the uid deny list.
    pub const OWNER_DENIED: u8 = 10;
    /// Only an allow-on-host rule names the caller, and it is not on the
    /// host (`Event::namespaces` says which namespace differs).
    pub const HOST_ONLY: u8 = 11;
    /// The caller holds more supplementary groups than the programs read
    /// (`crate::MAX_GROUPS`) and the policy has group rules (fail closed).
    pub const TOO_MANY_GROUPS: u8 = 12;
    /// The caller's groups or user namespaces could not be read (fail
    /// closed).
    pub const UNREADABLE: u8 = 13;
    /// A user namespace the caller is in (up to the initial one) was
    /// created with a denied gid as its creator's effective gid
    /// (`user_namespace.group`); `Event::owner` names the creator.
    pub const OWNER_GID_DENIED: u8 = 14;
    /// The creator of a user namespace the caller is in (up to the initial
    /// one) is a member of a denied group in the group database, as read
    /// when the policy was loaded; `Event::owner` names the creator.
    pub const OWNER_MEMBER_DENIED: u8 = 15;
    // 16..=23: the caller's cgroup (units, cgroups, pods).
    /// The caller's cgroup matches a `[deny]` unit or cgroup pattern.
    pub const CGROUP_DENIED: u8 = 16;
    /// The caller's cgroup matches an `[allow]` unit, cgroup or pod
    /// pattern (and nothing denies it).
    pub const CGROUP_ALLOWED: u8 = 17;
    /// The caller's cgroup has no classification, and the policy denies
    /// some cgroups: it might be one of them (fail closed).
    pub const CGROUP_UNKNOWN: u8 = 18;
    // 24..: the destination.
    /// The destination is a workload endpoint (each workload's own
    /// credentials), the caller is not on the host (`Event::namespaces`
    /// says which namespace differs) and nothing denies it.
    pub const WORKLOAD: u8 = 24;
}

/// What kind of record an [`Event`] is: room for record kinds other than
/// decisions, which an older agent then refuses rather than misreads.
pub mod kind {
    /// A decision on a protected destination.
    pub const DECISION: u8 = 0;
    /// A judged request ([`crate::RequestEvent`]).
    pub const REQUEST: u8 = 1;
}

/// Bits of [`Event::flags`]: what a record says beyond the decision.
pub mod event_flags {
    /// `egress` judged a packet of a socket let through to this same
    /// address under an earlier policy (before a reload, or in audit mode
    /// before the switch to enforce): a denial cuts a connection that was
    /// open, an audit says it would.
    pub const REVOKED: u8 = 1;
}

/// Address family of the destination in an [`Event`].
pub mod family {
    pub const INET: u8 = 4;
    pub const INET6: u8 = 6;
}

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// One decision on a protected destination, sent through
/// [`crate::MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: nanoseconds since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Thread-group id (what userspace calls the pid).
    pub tgid: u32,
    /// Real uid, as seen from the initial user namespace.
    pub uid: u32,
    /// Real gid, as seen from the initial user namespace.
    pub gid: u32,
    /// The number (1-based) of the policy entry that decided; 0 for none.
    pub entry: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// One of [`hook`].
    pub hook: u8,
    /// One of [`verdict`].
    pub verdict: u8,
    /// One of [`reason`].
    pub reason: u8,
    /// One of [`family`]: 4 puts the address in `addr[..4]`.
    pub family: u8,
    /// The policy generation that decided.
    pub generation: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// Destination address in network byte order.
    pub addr: [u8; 16],
    /// The calling task's `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// The IP protocol of a packet (`egress`), 0 where the hook does not
    /// look at one.
    pub proto: u8,
    /// [`event_flags`] bits.
    pub flags: u8,
    pub _pad1: [u8; 2],
    /// The id whose rule decided: the uid (`UID_*`), the primary gid
    /// (`GID_*`), the supplementary group (`GROUP_*`), the owner of a user
    /// namespace (`OWNER_DENIED`), the denied group of a user namespace's
    /// creator (`OWNER_GID_DENIED`, `OWNER_MEMBER_DENIED`), the id of the
    /// host-only rule (`HOST_ONLY`); [`NO_ID`] for none.
    pub decider: u32,
    /// The supplementary groups the caller holds, as read; [`NO_ID`] when
    /// they were not read (the policy has no group rule).
    pub ngroups: u32,
    /// [`crate::ns`] bits: which of the caller's namespaces are not the
    /// agent's, and which could not be read.
    pub namespaces: u8,
    pub _pad2: [u8; 3],
    /// The creator (uid) of the user namespace whose owner decided
    /// (`OWNER_*` reasons); [`NO_ID`] for the other reasons.
    pub owner: u32,
    /// The creator (uid) of the outermost user namespace the caller is in
    /// below the initial one: the user it acts for, whatever ids it runs
    /// as inside (a rootless container's 65,536 subordinate ids are one
    /// user's). [`NO_ID`] for a caller in the initial user namespace, or
    /// when the chain could not be read.
    pub userns_owner: u32,
    pub _pad3: [u8; 4],
}
const _: () = assert!(size_of::<Event>() == 104);

/// `(uid_t)-1`, which no process runs as: "no id" in an [`Event`].
pub const NO_ID: u32 = u32::MAX;
