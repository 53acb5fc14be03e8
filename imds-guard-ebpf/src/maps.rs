//! Every map the programs use. Names and value layouts are the contract in
//! `imds-guard-common`; the agent fills the maps before it attaches.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use imds_guard_common::{
    COUNTERS_LEN, Config, EVENTS_BYTE_SIZE, Endpoint, IdRule, Ipv6Key, MAX_ENDPOINTS, MAX_ID_RULES,
};

/// Protected IPv4 destinations, keyed by the address exactly as the kernel
/// stores it in `user_ip4` (network byte order). Consulted first on every
/// connect on the host, so it is a hash map: one lookup whatever its size.
#[map]
pub static PROTECTED_V4: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Protected IPv6 destinations, keyed by the four words of `user_ip6`.
/// IPv4-mapped forms are not stored here: `connect6`/`sendmsg6` map them
/// back to IPv4 and consult [`PROTECTED_V4`].
#[map]
pub static PROTECTED_V6: HashMap<Ipv6Key, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Rules by real uid. A uid has at most one rule (the agent refuses
/// contradictions), so the value carries its action.
#[map]
pub static UID_RULES: HashMap<u32, IdRule> = HashMap::with_max_entries(MAX_ID_RULES, 0);

/// Rules by real primary gid.
#[map]
pub static GID_RULES: HashMap<u32, IdRule> = HashMap::with_max_entries(MAX_ID_RULES, 0);

/// The single [`Config`]: mode and default action. Zeroed (unconfigured)
/// until the agent writes it, and the programs deny protected destinations
/// while it is.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// One [`imds_guard_common::Event`] per decision on a protected destination.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTE_SIZE, 0);

/// Per-CPU counters, indexed by [`imds_guard_common::counter_index`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
