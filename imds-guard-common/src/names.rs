//! One source of truth for names both sides use: maps and programs, as
//! the object file spells them.

/// The one-entry array holding the active policy generation (0 or 1). A
/// reload writes the other generation completely, then flips this.
pub const MAP_ACTIVE: &str = "ACTIVE";
/// The hash map of protected IPv4 addresses (key: [`crate::V4Key`]).
pub const MAP_PROTECTED_V4: &str = "PROTECTED_V4";
/// The hash map of protected IPv6 addresses (key: [`crate::V6Key`]).
pub const MAP_PROTECTED_V6: &str = "PROTECTED_V6";
/// The hash map of per-uid rules (key: the uid; value:
/// [`crate::IdRules`]).
pub const MAP_UID_RULES: &str = "UID_RULES";
/// The hash map of per-gid rules (key: the gid; value:
/// [`crate::IdRules`]).
pub const MAP_GID_RULES: &str = "GID_RULES";
/// The hash map of users who are members of a denied group (key: the
/// uid; value: [`crate::Memberships`]), for the creators of user
/// namespaces.
pub const MAP_MEMBERS: &str = "MEMBERS";
/// The two-entry array holding each generation's [`crate::Config`].
pub const MAP_CONFIG: &str = "CONFIG";
/// The ring buffer of [`crate::Event`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// The per-CPU array of counters, indexed by [`crate::counter_index`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// The socket storage of sockets whose traffic to a protected address was
/// let through, and under which policy (value: [`crate::SockState`]).
pub const MAP_DECIDED: &str = "DECIDED";
/// The sockhash of sockets whose requests are judged (key: the socket
/// cookie), which the `sk_msg` program is attached to. Pinned: the
/// program stays attached only while the map has a user reference.
pub const MAP_REQ_SOCKS: &str = "REQ_SOCKS";
/// The socket storage of what each judged socket let through, by stream
/// position (value: [`crate::JudgedBytes`]), which `egress` compares its
/// payload with.
pub const MAP_REQ_BYTES: &str = "REQ_BYTES";
/// The section, and the one-entry array aya makes of it, holding the
/// programs' [`crate::Prefixes`]: a global the programs read with a load
/// (no lookup), which the agent writes at every apply.
pub const MAP_PREFIXES: &str = ".data.prefixes";

/// The one-entry array holding the [`crate::Resolved`] offsets and
/// namespaces the programs were loaded with. The programs never read it:
/// `imds-guard status` does, from its pin.
pub const MAP_RESOLVED: &str = "RESOLVED";

/// The hash map of cgroups by id (value: [`crate::IdRules`], the rule
/// each generation's patterns give the cgroup's path).
pub const MAP_CGROUP_CLASS: &str = "CGROUP_CLASS";
/// The LPM trie of pattern components by literal prefix (key:
/// [`crate::ComponentKey`]; value: a mask of patterns).
pub const MAP_CGROUP_PREFIXES: &str = "CGROUP_PREFIXES";
/// The LPM trie of pattern components by literal suffix, reversed.
pub const MAP_CGROUP_SUFFIXES: &str = "CGROUP_SUFFIXES";
/// The array of pattern masks by name length, at
/// [`crate::length_index`].
pub const MAP_CGROUP_LENGTHS: &str = "CGROUP_LENGTHS";
/// The two-entry array of each generation's [`crate::CgroupPatterns`].
pub const MAP_CGROUP_PATTERNS: &str = "CGROUP_PATTERNS";
/// The ring buffer of [`crate::CgroupEvent`]s.
pub const MAP_CGROUP_EVENTS: &str = "CGROUP_EVENTS";
/// The hash map of how many classification entries each creator holds,
/// as the `cgroup_mkdir` program charged them (key: the creator's uid, or
/// [`crate::CHARGE_TOTAL`]; value: a count).
pub const MAP_CGROUP_CHARGES: &str = "CGROUP_CHARGES";
/// The same, as the agent charged the entries it wrote; only the agent
/// writes it, the programs read both.
pub const MAP_CGROUP_AGENT_CHARGES: &str = "AGENT_CHARGES";
/// The per-CPU array of classification counters
/// ([`crate::cgroup_stat`]).
pub const MAP_CGROUP_STATS: &str = "CGROUP_STATS";

/// The forward program's maps (`forward.rs`): its records (ring
/// buffer of [`crate::ForwardEvent`]), its per-source record budgets, its
/// per-CPU counters ([`crate::forward_counter`]), `[forward]`'s interfaces
/// and source prefixes per generation (LPM tries), and what the agent
/// records of the mechanism in force ([`crate::ForwardState`]). At most
/// 15 bytes each: the kernel keeps no more of a map's name.
pub const MAP_FORWARD_EVENTS: &str = "FWD_EVENTS";
pub const MAP_FORWARD_BUDGETS: &str = "FWD_BUDGETS";
pub const MAP_FORWARD_COUNTERS: &str = "FWD_COUNTERS";
pub const MAP_FORWARD_INTERFACES: &str = "FWD_IFACES";
pub const MAP_FORWARD_SOURCES_V4: &str = "FWD_SOURCES_V4";
pub const MAP_FORWARD_SOURCES_V6: &str = "FWD_SOURCES_V6";
pub const MAP_FORWARD_STATE: &str = "FWD_STATE";

/// The LPM trie of request rules (key: [`crate::ReqKey`]; value:
/// [`crate::ReqRule`]), both generations.
pub const MAP_REQ_RULES: &str = "REQ_RULES";
/// The hash map of what each deciding entry lets its callers send (key:
/// [`crate::EntryKey`]; value: [`crate::EntryFlags`]), both generations.
pub const MAP_ENTRY_FLAGS: &str = "ENTRY_FLAGS";
/// The LRU hash map of who sent which kind of request, and how it was
/// judged (key: [`crate::UsageKey`]; value: [`crate::Usage`]): the census
/// `imds-guard report imdsv1` reads from its pin.
pub const MAP_REQ_USAGE: &str = "REQ_USAGE";
/// The per-CPU array of request counters, indexed as [`crate::req_counter`]
/// says.
pub const MAP_REQ_COUNTERS: &str = "REQ_COUNTERS";

/// The names of the programs, one per hook, as the object file spells them.
pub const PROGRAM_CONNECT4: &str = "connect4";
pub const PROGRAM_CONNECT6: &str = "connect6";
pub const PROGRAM_SENDMSG4: &str = "sendmsg4";
pub const PROGRAM_SENDMSG6: &str = "sendmsg6";
pub const PROGRAM_EGRESS: &str = "egress";

/// The request-level programs (issue 23): `cgroup/sock_ops` puts the
/// sockets of callers allowed some requests into [`MAP_REQ_SOCKS`] as they
/// are established; `sk_msg`, attached to that map, judges each request.
pub const PROGRAM_REQ_SOCKOPS: &str = "req_sockops";
pub const PROGRAM_REQ_MSG: &str = "req_msg";

/// The programs that classify cgroups as they come and go (raw
/// tracepoints of the same names).
pub const PROGRAM_CGROUP_MKDIR: &str = "cgroup_mkdir";
pub const PROGRAM_CGROUP_RMDIR: &str = "cgroup_rmdir";

/// The netfilter program at the forward hook (`BPF_PROG_TYPE_NETFILTER`,
/// Linux 6.4), which the agent loads itself: aya 0.14 has no such type.
pub const PROGRAM_FORWARD: &str = "forward";
