//! The contract between the eBPF programs and the agent: map names, the
//! layout of every value that crosses the boundary, and the numbers both
//! sides give to verdicts, reasons, hooks and counters.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel and
//! userspace agree on the bytes whatever the compiler does.
#![no_std]

mod addr;
mod cgroups;
mod counters;
mod event;
mod forward;
mod identity;
mod names;
mod offsets;
mod policy;
mod prefix;
mod request;

pub use self::{
    addr::Ipv6Key,
    cgroups::{
        CGROUP_EVENTS_BYTE_SIZE, CHARGE_TOTAL, CgroupEntry, CgroupEvent, CgroupLimits,
        CgroupOffsets, CgroupPatterns, ComponentKey, LENGTHS_LEN, MAX_CGROUP_LEVEL,
        MAX_CGROUP_PATTERNS, MAX_CGROUPS, MAX_CREATORS, MAX_LITERAL, MAX_NAME, MAX_PATTERN_DEPTH,
        cgroup_event, cgroup_stat, cgroup_stored, charged_by, length_index,
    },
    counters::{COUNTERS_LEN, counter, counter_index},
    event::{COMM_LEN, Event, NO_ID, event_flags, family, hook, kind, reason, verdict},
    forward::{
        Budget, BudgetKey, FORWARD_BUDGET_WINDOW_NS, FORWARD_EVENTS_BYTE_SIZE, FORWARD_PRIORITIES,
        FORWARD_RECORD_BURST, FORWARD_SOURCES, ForwardEvent, ForwardOffsets, ForwardState,
        GENERATION_BITS, IFNAME_LEN, InterfaceKey, MAX_FORWARD_EXCEPTIONS, Source4Key, Source6Key,
        forward_counter, forward_flags, forward_verdict, fragment, mechanism, nfproto,
    },
    identity::{
        Bounds, HostNamespaces, MAX_GROUPS, MAX_PID_NS_LEVEL, MAX_USERNS_DEPTH, Resolved, ns,
    },
    names::*,
    offsets::{Offsets, PF_KTHREAD},
    policy::{
        Config, GENERATIONS, IdRule, IdRules, MAX_ENDPOINTS, MAX_ID_RULES, MAX_PORTS, Membership,
        Memberships, PortRule, Ports, RequestOffsets, SockState, V4Key, V6Key, action,
        config_flags, endpoint_kind, mode, proto_bits, sock_state, stage, transport,
    },
    prefix::{Prefix4, Prefix6, Prefixes, V4_SLOTS, V6_SLOTS},
    request::{
        ENTRY_ANY, EntryFlags, EntryKey, Finish, HEAD_MAX, HEADER_LINE_MAX, HEADERS_MAX, Head,
        JUDGED_RING, JudgedBytes, KEY_HEAD_LEN, KEY_PATH_LEN, LINE_MAX, MAX_ENTRY_FLAGS,
        MAX_REQUEST_RULES, MAX_RULE_SETS, PATH_MAX, Parser, RECORDED_PER_SOCKET, ReqKey, ReqLookup,
        ReqRule, RequestEvent, Step, TOKEN_HEADER, USAGE_ENTRIES, Usage, UsageKey, entry_flags,
        req_counter, req_hook, req_method, req_reason, req_version,
    },
};

/// Size of the event ring buffer in bytes (a power of two, a multiple of
/// the page size).
pub const EVENTS_BYTE_SIZE: u32 = 1 << 20;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, no padding the compiler adds.
    unsafe impl aya::Pod for super::IdRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::V6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ports {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IdRules {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Memberships {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RequestOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostNamespaces {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Resolved {}
    unsafe impl aya::Pod for super::ComponentKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupPatterns {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupLimits {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForwardOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForwardEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForwardState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InterfaceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Source4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Source6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Prefixes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ReqKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ReqRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EntryKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EntryFlags {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RequestEvent {}
    // SAFETY: repr(C) integers, padding explicit.
    unsafe impl aya::Pod for super::UsageKey {}
    // SAFETY: repr(C) integers, no padding.
    unsafe impl aya::Pod for super::Usage {}
}
