//! The contract between the eBPF programs and the agent: map names, the
//! layout of every value that crosses the boundary, and the numbers both
//! sides give to verdicts, reasons, hooks and counters.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel and
//! userspace agree on the bytes whatever the compiler does.
#![no_std]

use core::mem::size_of;

/// Name of the one-entry array holding the active policy generation (0 or
/// 1). A reload writes the other generation completely, then flips this.
pub const MAP_ACTIVE: &str = "ACTIVE";
/// Name of the hash map of protected IPv4 addresses (key: [`V4Key`];
/// value: [`Endpoint`]).
pub const MAP_PROTECTED_V4: &str = "PROTECTED_V4";
/// Name of the hash map of protected IPv6 addresses (key: [`V6Key`]).
pub const MAP_PROTECTED_V6: &str = "PROTECTED_V6";
/// Name of the hash map of per-uid rules (key: [`IdKey`]; value: [`IdRule`]).
pub const MAP_UID_RULES: &str = "UID_RULES";
/// Name of the hash map of per-gid rules (key: [`IdKey`]; value: [`IdRule`]).
pub const MAP_GID_RULES: &str = "GID_RULES";
/// Name of the two-entry array holding each generation's [`Config`].
pub const MAP_CONFIG: &str = "CONFIG";

/// Number of policy generations: the one in force and the one a reload
/// writes.
pub const GENERATIONS: u32 = 2;
/// Name of the ring buffer of [`Event`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU array of counters, indexed by [`counter_index`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Protected addresses per policy (the maps hold two generations).
pub const MAX_ENDPOINTS: u32 = 64;
/// Rules per identity map per policy (the maps hold two generations).
pub const MAX_ID_RULES: u32 = 1 << 17;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTE_SIZE: u32 = 1 << 20;

/// The names of the programs, one per hook, as the object file spells them.
pub const PROGRAM_CONNECT4: &str = "connect4";
pub const PROGRAM_CONNECT6: &str = "connect6";
pub const PROGRAM_SENDMSG4: &str = "sendmsg4";
pub const PROGRAM_SENDMSG6: &str = "sendmsg6";

/// An IPv6 address as four 32-bit words in the order and byte order of
/// `bpf_sock_addr.user_ip6`.
pub type Ipv6Key = [u32; 4];

/// Key of [`MAP_PROTECTED_V4`]: the generation and the address as the
/// kernel stores it in `user_ip4` (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V4Key {
    pub generation: u32,
    pub addr: u32,
}
const _: () = assert!(size_of::<V4Key>() == 8);

/// Key of [`MAP_PROTECTED_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Key {
    pub generation: u32,
    pub addr: Ipv6Key,
}
const _: () = assert!(size_of::<V6Key>() == 20);

/// Key of [`MAP_UID_RULES`] and [`MAP_GID_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdKey {
    pub generation: u32,
    pub id: u32,
}
const _: () = assert!(size_of::<IdKey>() == 8);

/// The value stored for a protected address. Reserved for per-endpoint
/// rules; today only its presence matters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Index of the endpoint in the policy, for explaining decisions.
    pub index: u32,
}
const _: () = assert!(size_of::<Endpoint>() == 4);

/// What a rule or a default says.
pub mod action {
    /// Let the connection through.
    pub const ALLOW: u32 = 1;
    /// Reject the connection with EPERM.
    pub const DENY: u32 = 2;
}

/// Enforcement mode.
pub mod mode {
    /// Zero: the agent has not configured the programs yet. The programs
    /// deny protected destinations in this state (fail closed).
    pub const UNCONFIGURED: u32 = 0;
    /// Denied connections fail with EPERM.
    pub const ENFORCE: u32 = 1;
    /// Denied connections go through and are recorded as audited.
    pub const AUDIT: u32 = 2;
}

/// The rule stored for one uid or gid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRule {
    /// [`action::ALLOW`] or [`action::DENY`].
    pub action: u32,
    /// Index of the policy entry that produced this rule, plus one (0: none).
    pub rule: u32,
}
const _: () = assert!(size_of::<IdRule>() == 8);

/// One generation's run-time switches, in [`MAP_CONFIG`]. The programs
/// read `mode` and `default_action`; the rest records what is in force, so
/// that `imds-guard status` reads it from the kernel rather than trusting a
/// file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// The [`action`] for identities no rule names.
    pub default_action: u32,
    /// SHA-256 of the resolved policy.
    pub digest: [u8; 32],
    /// When this generation was written (Unix seconds).
    pub applied_unix: u64,
    /// When the programs were first attached (Unix seconds).
    pub attached_unix: u64,
    /// The agent that wrote it.
    pub agent_pid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Config>() == 64);

/// The hook a decision was taken on.
pub mod hook {
    pub const CONNECT4: u8 = 0;
    pub const CONNECT6: u8 = 1;
    pub const SENDMSG4: u8 = 2;
    pub const SENDMSG6: u8 = 3;
    /// Number of hooks.
    pub const COUNT: u32 = 4;
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
}

/// Counter kinds; see [`counter_index`].
pub mod counter {
    pub const ALLOWED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const AUDITED: u32 = 2;
    /// Events dropped because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 3;
    /// Internal errors on a protected destination (each also denied).
    pub const ERRORS: u32 = 4;
    /// Number of counter kinds.
    pub const KINDS: u32 = 5;
}

/// Number of entries in [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = hook::COUNT * counter::KINDS;

/// Index into [`MAP_COUNTERS`] of counter `kind` for `hook`.
#[inline(always)]
pub const fn counter_index(hook: u8, kind: u32) -> u32 {
    hook as u32 * counter::KINDS + kind
}

/// Address family of the destination in an [`Event`].
pub mod family {
    pub const INET: u8 = 4;
    pub const INET6: u8 = 6;
}

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// One decision on a protected destination, sent through [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: nanoseconds since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Thread id (the kernel's pid).
    pub pid: u32,
    /// Thread-group id (what userspace calls the pid).
    pub tgid: u32,
    /// Real uid, as seen from the initial user namespace.
    pub uid: u32,
    /// Real gid, as seen from the initial user namespace.
    pub gid: u32,
    /// The deciding [`IdRule::rule`] (policy entry index plus one), 0 for none.
    pub rule: u32,
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
    pub _pad0: u8,
    /// Destination address in network byte order.
    pub addr: [u8; 16],
    /// The calling task's `comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    pub _pad1: [u8; 4],
}
const _: () = assert!(size_of::<Event>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, no padding the compiler adds.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IdRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IdKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
}
