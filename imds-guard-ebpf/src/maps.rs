//! Every map the programs use. Names and value layouts are the contract in
//! `imds-guard-common`; the agent fills the maps before it attaches.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use imds_guard_common::{
    COUNTERS_LEN, Config, Decided, EVENTS_BYTE_SIZE, GENERATIONS, IdRules, MAX_ENDPOINTS,
    MAX_ID_RULES, Resolved, V4Key, V6Key,
};

/// `BPF_F_NO_PREALLOC`: allocate entries on insert. Memory then follows the
/// policy's size rather than the maps' capacity, and a deleted entry is
/// freed after an RCU grace period instead of being reused at once.
const NO_PREALLOC: u32 = 1;

/// The generation (0 or 1) of every other map that is in force. Read once
/// per decision, so a decision never mixes two policies.
#[map]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Protected IPv4 destinations, keyed by generation and the address as the
/// kernel stores it in `user_ip4` (network byte order); the value is
/// [`imds_guard_common::PROTECTED`]. Consulted on every connect on the
/// host, so it is a hash map: one lookup whatever its size.
#[map]
pub static PROTECTED_V4: HashMap<V4Key, u32> =
    HashMap::with_max_entries(MAX_ENDPOINTS * GENERATIONS, 0);

/// Protected IPv6 destinations, keyed by generation and the four words of
/// `user_ip6`. IPv4-mapped forms are not stored here: `connect6`/`sendmsg6`
/// map them back to IPv4 and consult [`PROTECTED_V4`].
#[map]
pub static PROTECTED_V6: HashMap<V6Key, u32> =
    HashMap::with_max_entries(MAX_ENDPOINTS * GENERATIONS, 0);

/// Rules by real uid, one per generation. A uid has at most one rule per
/// policy (the agent refuses contradictions), so each slot carries its
/// action.
#[map]
pub static UID_RULES: HashMap<u32, IdRules> =
    HashMap::with_max_entries(MAX_ID_RULES * GENERATIONS, NO_PREALLOC);

/// Rules by real primary gid, one per generation.
#[map]
pub static GID_RULES: HashMap<u32, IdRules> =
    HashMap::with_max_entries(MAX_ID_RULES * GENERATIONS, NO_PREALLOC);

/// Each generation's [`Config`]: mode and default action. Zeroed
/// (unconfigured) until the agent writes it, and the programs deny
/// protected destinations while it is.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(GENERATIONS, 0);

/// The offsets and host namespaces the programs were loaded with, as the
/// agent resolved them. Never read here (the programs read their own
/// globals, which cost no lookup): it is pinned so that `imds-guard
/// status` can say what the running programs use.
#[map]
pub static RESOLVED: Array<Resolved> = Array::with_max_entries(1, 0);

/// One [`imds_guard_common::Event`] per decision on a protected destination.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTE_SIZE, 0);

/// Per-CPU counters, indexed by [`imds_guard_common::counter_index`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Sockets whose traffic to a protected address was let through already,
/// in storage of the socket itself: by the `sock_addr` hooks (a connect, a
/// datagram) or by `egress` (the owner's first packet). `egress` lets their
/// packets to that same address go without judging them again. The kernel
/// frees it with the socket: nothing to evict, nothing shared between CPUs
/// to lock (an LRU map by socket cookie cost an allowed connect 800 ns).
#[btf_map]
pub static DECIDED: SkStorage<Decided> = SkStorage::new();
