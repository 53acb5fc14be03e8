//! Every map the programs use. Names and value layouts are the contract in
//! `imds-guard-common`; the agent fills the maps before it attaches.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, SockHash},
};
use imds_guard_common::{
    Budget, BudgetKey, CGROUP_EVENTS_BYTE_SIZE, COUNTERS_LEN, CgroupEntry, CgroupPatterns,
    ComponentKey, Config, EVENTS_BYTE_SIZE, EntryFlags, EntryKey, FORWARD_EVENTS_BYTE_SIZE,
    FORWARD_SOURCES, ForwardState, GENERATIONS, IdRules, InterfaceKey, JudgedBytes, LENGTHS_LEN,
    MAX_CGROUP_PATTERNS, MAX_CGROUPS, MAX_CREATORS, MAX_ENDPOINTS, MAX_ENTRY_FLAGS,
    MAX_FORWARD_EXCEPTIONS, MAX_ID_RULES, MAX_PATTERN_DEPTH, MAX_REQUEST_RULES, Memberships, Ports,
    ReqKey, ReqRule, Resolved, SockState, Source4Key, Source6Key, USAGE_ENTRIES, Usage, UsageKey,
    V4Key, V6Key, cgroup_stat, forward_counter, req_counter,
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
/// kernel stores it in `user_ip4` (network byte order); the value is the
/// address's [`Ports`] (which ports and protocols are protected). Consulted for every connect to an
/// address the protected prefixes cover (`dst.rs`), so it is a hash map:
/// one lookup whatever its size.
#[map]
pub static PROTECTED_V4: HashMap<V4Key, Ports> =
    HashMap::with_max_entries(MAX_ENDPOINTS * GENERATIONS, 0);

/// Protected IPv6 destinations, keyed by generation and the four words of
/// `user_ip6`. IPv4-mapped forms are not stored here: `connect6`/`sendmsg6`
/// map them back to IPv4 and consult [`PROTECTED_V4`].
#[map]
pub static PROTECTED_V6: HashMap<V6Key, Ports> =
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

/// Users who are members of a denied group in the group database (their
/// primary group, or a group that lists them), by uid, one membership per
/// generation: the creator of a user namespace may be one of them, and
/// its namespace holds none of its supplementary groups. Read as the
/// owners of the caller's user namespaces are walked.
#[map]
pub static MEMBERS: HashMap<u32, Memberships> =
    HashMap::with_max_entries(MAX_ID_RULES * GENERATIONS, NO_PREALLOC);

/// Each generation's [`Config`]: mode, default action and epoch. Zeroed
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

/// What each socket was let through to, and under which policy epoch
/// ([`SockState`]), in storage of the socket itself: written by the
/// `sock_addr` hooks (a connect, a datagram) and by `egress` (a packet
/// judged). `egress` lets a packet go without judging it only when its
/// destination and the epoch in force match (`sock_state.rs`). The kernel
/// frees it with the socket: nothing to evict, nothing shared between CPUs
/// to lock (an LRU map by socket cookie cost an allowed connect 800 ns).
#[btf_map]
pub static DECIDED: SkStorage<SockState> = SkStorage::new();

/// What each judged socket let through, by stream position (issue 23):
/// `req_msg` copies each head it lets through here before it moves the
/// judged range past it, and `egress` lets a payload byte of the socket
/// leave only if it is the byte kept at that position. Created for a
/// judged socket only.
#[btf_map]
pub static REQ_BYTES: SkStorage<JudgedBytes> = SkStorage::new();

/// The scope of each allowing policy entry, per generation (issue 23):
/// an entry it does not hold allows the whole service, as before request
/// rules. Read once per connect that is allowed, after the decision.
#[map]
pub static ENTRY_FLAGS: HashMap<EntryKey, EntryFlags> =
    HashMap::with_max_entries(MAX_ENTRY_FLAGS, NO_PREALLOC);

/// The request rules of every rule set, per generation (issue 23): one
/// LPM lookup of the parsed path finds the longest rule that allows it
/// (`imds_guard_common::ReqKey`).
#[map]
pub static REQ_RULES: LpmTrie<ReqKey, ReqRule> =
    LpmTrie::with_max_entries(MAX_REQUEST_RULES * GENERATIONS, 0);

/// The sockets whose requests are judged, by socket cookie: `req_sockops`
/// puts them here as they are established, and `req_msg`, attached to
/// this map, judges each message they send. Pinned by the agent, so that
/// `req_msg` stays attached with the agent gone.
#[map]
pub static REQ_SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// Who sent which kind of request, and how `req_msg` judged it (issue 23's
/// census: which units and users still use IMDSv1): one atomic add per
/// judged request to this CPU's value (per-CPU: no atomic, no lock; the
/// Debian toolchain's `core` has no atomic add for BPF either). LRU: with
/// more callers than entries, the one seen least recently is forgotten
/// (`imds-guard report imdsv1` says when it is full). Pinned, so that the
/// census outlives the agent.
#[map]
pub static REQ_USAGE: LruPerCpuHashMap<UsageKey, Usage> =
    LruPerCpuHashMap::with_max_entries(USAGE_ENTRIES, 0);

/// Per-CPU request counters, indexed as [`req_counter`] says: by version
/// and verdict, refusals by reason, records lost.
#[map]
pub static REQ_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(req_counter::LEN, 0);

/// Every cgroup v2 cgroup by id, with the rule each generation's patterns
/// give its path (`imds_guard_common::cgroups`) and who it is charged to.
/// Written by `cgroup_mkdir` as a cgroup is created and by the agent for
/// those that existed before or found no room; deleted by `cgroup_rmdir`.
/// A decision on a protected destination looks the caller's cgroup up
/// once, when the policy names cgroups. The agent may load it smaller
/// (for tests).
#[map]
pub static CGROUP_CLASS: HashMap<u64, CgroupEntry> =
    HashMap::with_max_entries(MAX_CGROUPS, NO_PREALLOC);

/// Entries of [`CGROUP_CLASS`] by creator, as the programs charged them
/// (`charge.rs`), and their total at `imds_guard_common::CHARGE_TOTAL`. A
/// creator's key is deleted when its count falls to 0.
#[map]
pub static CGROUP_CHARGES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_CREATORS, NO_PREALLOC);

/// The same for the entries the agent wrote and charged: only the agent
/// writes it (the programs cannot add to a count the agent writes without
/// a race), the programs read both.
#[map]
pub static AGENT_CHARGES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_CREATORS, NO_PREALLOC);

/// Pattern components by literal prefix: the longest stored prefix of a
/// name answers with every component (a bit per pattern) whose prefix the
/// name starts with. Keyed by generation and level, so a reload writes the
/// other generation's beside the ones in force.
#[map]
pub static CGROUP_PREFIXES: LpmTrie<ComponentKey, u64> =
    LpmTrie::with_max_entries(MAX_CGROUP_PATTERNS * MAX_PATTERN_DEPTH * GENERATIONS, 0);

/// Pattern components by literal suffix: as [`CGROUP_PREFIXES`], over the
/// name reversed.
#[map]
pub static CGROUP_SUFFIXES: LpmTrie<ComponentKey, u64> =
    LpmTrie::with_max_entries(MAX_CGROUP_PATTERNS * MAX_PATTERN_DEPTH * GENERATIONS, 0);

/// Pattern components by the length of a name they can match (a literal:
/// its own; a glob: at least its prefix and suffix together), at
/// `imds_guard_common::length_index`.
#[map]
pub static CGROUP_LENGTHS: Array<u64> = Array::with_max_entries(LENGTHS_LEN, 0);

/// Each generation's [`CgroupPatterns`]: where patterns end, what each
/// decides.
#[map]
pub static CGROUP_PATTERNS: Array<CgroupPatterns> = Array::with_max_entries(GENERATIONS, 0);

/// Every cgroup created or removed, with its path
/// ([`imds_guard_common::CgroupEvent`]).
#[map]
pub static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(CGROUP_EVENTS_BYTE_SIZE, 0);

/// Per-CPU classification counters ([`cgroup_stat`]).
#[map]
pub static CGROUP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(cgroup_stat::COUNT, 0);

/// `[forward]`'s interfaces, by generation and name (an LPM trie: a name
/// ending in `*` is stored without its NUL and matches every name it
/// starts; see [`imds_guard_common::InterfaceKey`]). Read by `forward`.
#[map(name = "FWD_IFACES")]
pub static FORWARD_INTERFACES: LpmTrie<InterfaceKey, u32> =
    LpmTrie::with_max_entries(MAX_FORWARD_EXCEPTIONS * GENERATIONS, 0);

/// `[forward]`'s IPv4 source prefixes, by generation and prefix.
#[map(name = "FWD_SOURCES_V4")]
pub static FORWARD_SOURCES_V4: LpmTrie<Source4Key, u32> =
    LpmTrie::with_max_entries(MAX_FORWARD_EXCEPTIONS * GENERATIONS, 0);

/// `[forward]`'s IPv6 source prefixes, by generation and prefix.
#[map(name = "FWD_SOURCES_V6")]
pub static FORWARD_SOURCES_V6: LpmTrie<Source6Key, u32> =
    LpmTrie::with_max_entries(MAX_FORWARD_EXCEPTIONS * GENERATIONS, 0);

/// One [`imds_guard_common::ForwardEvent`] per forwarded packet to a
/// protected address, within its source's budget ([`FORWARD_BUDGETS`]).
#[map(name = "FWD_EVENTS")]
pub static FORWARD_EVENTS: RingBuf = RingBuf::with_byte_size(FORWARD_EVENTS_BYTE_SIZE, 0);

/// Each source's record budget in the current window. LRU: a source that
/// stops sending is forgotten, and a flood of spoofed sources evicts
/// entries, which only gives the evicted a fresh budget (more records,
/// never fewer).
#[map(name = "FWD_BUDGETS")]
pub static FORWARD_BUDGETS: LruHashMap<BudgetKey, Budget> =
    LruHashMap::with_max_entries(FORWARD_SOURCES, 0);

/// Per-CPU counters of `forward` ([`forward_counter`]).
#[map(name = "FWD_COUNTERS")]
pub static FORWARD_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(forward_counter::LEN, 0);

/// What the agent records of the forward path in force
/// ([`imds_guard_common::ForwardState`]). Never read here: it is pinned
/// for `imds-guard status`.
#[map(name = "FWD_STATE")]
pub static FORWARD_STATE: Array<ForwardState> = Array::with_max_entries(1, 0);
