//! What the kernel's maps and ring hold for request-level judgement: the
//! compiled rules ([`ReqKey`], [`ReqRule`]) in an LPM trie, what each
//! deciding entry lets its callers send ([`EntryKey`], [`EntryFlags`]), and
//! the record of a judged request ([`RequestEvent`]).

use core::mem::size_of;

use super::PATH_MAX;

/// Request rules a policy may hold; the rule map holds twice as many (two
/// generations).
pub const MAX_REQUEST_RULES: u32 = 1024;
/// Rule sets (`[requests.NAME]` tables) a policy may hold; set numbers are
/// 1-based, 0 is none.
pub const MAX_RULE_SETS: u32 = 255;
/// Rows of [`crate::MAP_ENTRY_FLAGS`]: entries with flags of their own in
/// two generations, plus each generation's [`ENTRY_ANY`] row.
pub const MAX_ENTRY_FLAGS: u32 = 1 << 14;
/// The [`EntryKey::entry`] of a generation's default flags: those of every
/// deciding entry without a row of its own (including entry 0, the
/// policy's default action).
pub const ENTRY_ANY: u32 = u32::MAX;

/// Bits of [`EntryFlags::flags`].
pub mod entry_flags {
    /// Paths are judged against [`super::EntryFlags::ruleset`] (a
    /// `[requests.NAME]` entry).
    pub const JUDGE: u8 = 1;
    /// A request without the token header (other than the token `PUT`) is
    /// refused.
    pub const V2_REQUIRED: u8 = 2;
    /// Every request is recorded, though the caller has the whole service.
    pub const ATTRIBUTE: u8 = 4;
}

/// Key of [`crate::MAP_ENTRY_FLAGS`]: a generation and a deciding entry (as
/// [`crate::IdRule::entry`] numbers it, 0 for the default), or
/// [`ENTRY_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    pub generation: u32,
    pub entry: u32,
}
const _: () = assert!(size_of::<EntryKey>() == 8);

/// Value of [`crate::MAP_ENTRY_FLAGS`]: what the deciding entry lets its
/// callers send. No row (and no [`ENTRY_ANY`] row): the whole service, no
/// record of requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryFlags {
    /// The rule set (1-based) for [`entry_flags::JUDGE`]; 0 otherwise.
    pub ruleset: u16,
    /// [`entry_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<EntryFlags>() == 4);

/// Bytes of [`ReqKey::path`]: [`PATH_MAX`], the terminator, room to spare.
pub const KEY_PATH_LEN: usize = 248;
/// Bytes of a [`ReqKey`] before the path.
pub const KEY_HEAD_LEN: u32 = 4;

/// The data of a key of [`crate::MAP_REQ_RULES`], an LPM trie (aya's
/// `lpm_trie::Key<ReqKey>` adds the prefix length in bits before it). A
/// stored subtree rule's prefix covers the head and the path bytes; an
/// exact rule's covers a `0x00` after the path too; a lookup's covers the
/// path and the `0x00`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqKey {
    pub generation: u8,
    /// The rule set, big-endian (the trie compares bytes in order).
    pub ruleset: [u8; 2],
    /// [`super::req_method`].
    pub method: u8,
    /// The path, then `0x00` for exact rules and lookups; the rest is not
    /// covered by the prefix and may hold anything.
    pub path: [u8; KEY_PATH_LEN],
}
const _: () = assert!(size_of::<ReqKey>() == 252);

impl Default for ReqKey {
    fn default() -> Self {
        Self::ZERO
    }
}

impl ReqKey {
    pub const ZERO: Self = Self {
        generation: 0,
        ruleset: [0; 2],
        method: 0,
        path: [0; KEY_PATH_LEN],
    };

    /// The key of a stored rule, with its prefix length in bits: a subtree
    /// when `path` ends in `/`, otherwise exact. `None` for a path that
    /// does not fit (longer than [`PATH_MAX`]) or is empty. The path is not
    /// checked here: the agent checks every rule with [`super::Parser`] first.
    pub fn rule(generation: u8, ruleset: u16, method: u8, path: &[u8]) -> Option<(u32, Self)> {
        let len = path.len();
        if len == 0 || len > PATH_MAX as usize {
            return None;
        }
        let mut key = Self::ZERO;
        key.generation = generation;
        key.ruleset = ruleset.to_be_bytes();
        key.method = method;
        key.path[..len].copy_from_slice(path);
        let covered = if path[len - 1] == b'/' { len } else { len + 1 };
        Some(((KEY_HEAD_LEN + covered as u32) * 8, key))
    }

    /// The key the kernel looks a request up with: `path` and its `0x00`.
    /// `None` when it does not fit.
    pub fn lookup(generation: u8, ruleset: u16, method: u8, path: &[u8]) -> Option<(u32, Self)> {
        let len = path.len();
        if len > PATH_MAX as usize {
            return None;
        }
        let mut key = Self::ZERO;
        key.generation = generation;
        key.ruleset = ruleset.to_be_bytes();
        key.method = method;
        key.path[..len].copy_from_slice(path);
        Some(((KEY_HEAD_LEN + len as u32 + 1) * 8, key))
    }

    /// Whether a stored rule `(prefix_len, self)` matches the lookup
    /// `(lookup_len, key)`, as the LPM trie decides it: the rule's prefix
    /// is no longer than the lookup's and their first `prefix_len` bits
    /// agree (every prefix here is whole bytes).
    pub fn covers(&self, prefix_len: u32, lookup_len: u32, key: &Self) -> bool {
        if prefix_len > lookup_len || prefix_len & 7 != 0 {
            return false;
        }
        let n = (prefix_len / 8) as usize;
        let a = self.as_bytes();
        let b = key.as_bytes();
        n <= a.len() && a[..n] == b[..n]
    }

    /// The key's bytes, as the trie compares them.
    pub fn as_bytes(&self) -> &[u8; size_of::<ReqKey>()] {
        // SAFETY: `ReqKey` is `#[repr(C)]` of `u8`s only (alignment 1, no
        // padding, size asserted above), so it is exactly this many
        // initialised bytes.
        unsafe { &*(self as *const Self).cast::<[u8; size_of::<ReqKey>()]>() }
    }
}

/// Value of [`crate::MAP_REQ_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqRule {
    /// The rule's number in the policy (1-based, in file order over every
    /// rule set), for records.
    pub rule: u32,
    /// 0 for now (room for audit-only rules).
    pub flags: u32,
}
const _: () = assert!(size_of::<ReqRule>() == 8);

/// A [`ReqKey`] with its prefix length: the same bytes as aya's
/// `lpm_trie::Key<ReqKey>` (a `u32`, then the data), so a program can hand
/// the parser's own key to the trie without copying it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqLookup {
    pub prefix_len: u32,
    pub key: ReqKey,
}
const _: () = assert!(size_of::<ReqLookup>() == 256);

/// Hooks of a [`RequestEvent`] (after [`crate::hook`]'s).
pub mod req_hook {
    /// The `sk_msg` verdict program judged a message.
    pub const REQUEST: u8 = 5;
    /// The `sock_ops` program could not put the socket in the sockhash.
    pub const SOCKOPS: u8 = 6;
}

/// One judged request (or a socket that could not be judged), sent through
/// [`crate::MAP_EVENTS`]. Its first 60 bytes are laid out as
/// [`crate::Event`]'s (so `kind`, at the same offset, tells them apart):
/// the connector's identity as the socket's state kept it, then the
/// request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestEvent {
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// The cgroup v2 id of the task that connected.
    pub cgroup_id: u64,
    /// Thread id of the sender.
    pub tid: u32,
    /// Thread-group id of the task that connected.
    pub tgid: u32,
    /// Real uid of the task that connected (initial user namespace).
    pub uid: u32,
    /// Real gid of the task that connected.
    pub gid: u32,
    /// The policy entry (1-based) that decided at connect; 0 the default.
    pub entry: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// One of [`req_hook`].
    pub hook: u8,
    /// One of [`crate::verdict`].
    pub verdict: u8,
    /// One of [`super::req_reason`].
    pub reason: u8,
    /// One of [`crate::family`].
    pub family: u8,
    /// The policy generation that judged.
    pub generation: u8,
    /// [`crate::kind::REQUEST`].
    pub kind: u8,
    /// Destination address, network byte order.
    pub addr: [u8; 16],
    /// [`super::req_method`].
    pub method: u8,
    /// [`super::req_version`].
    pub version: u8,
    /// 0 for `HTTP/1.0`, 1 for `HTTP/1.1`, `0xff` not parsed.
    pub http_minor: u8,
    /// [`crate::ns`] bits of the connector, as kept at connect.
    pub namespaces: u8,
    /// The matching rule (1-based, [`ReqRule::rule`]); 0 for none.
    pub rule: u32,
    /// Thread-group id of the sender (may differ from the connector's).
    pub sender_tgid: u32,
    /// The rule set the caller's entry names; 0 for none.
    pub ruleset: u16,
    /// Bytes of `path` that hold the path (as read, up to the refusal).
    pub path_len: u16,
    /// The path, never a header value (so never a token).
    pub path: [u8; PATH_MAX as usize],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<RequestEvent>() == 320);

/// Allowed requests of one socket that are recorded ([`RequestEvent`]);
/// the later ones are only counted. Refusals are always recorded (at most
/// one per socket: a refusal is sticky).
pub const RECORDED_PER_SOCKET: u16 = 4;

/// Entries of [`crate::MAP_REQ_USAGE`]: distinct callers, kinds and
/// verdicts a host keeps; the least recently seen is forgotten first.
pub const USAGE_ENTRIES: u32 = 4096;

/// Key of [`crate::MAP_REQ_USAGE`]: who sent (the connector's cgroup, uid
/// and deciding entry), what kind of request ([`super::req_version`]) and
/// how it was judged ([`crate::verdict`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub cgroup_id: u64,
    pub uid: u32,
    pub entry: u32,
    pub version: u8,
    pub verdict: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<UsageKey>() == 24);

/// Value of [`crate::MAP_REQ_USAGE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests counted (one atomic add each).
    pub count: u64,
    /// `bpf_ktime_get_ns()` of the last one (CLOCK_MONOTONIC).
    pub last_ns: u64,
}
const _: () = assert!(size_of::<Usage>() == 16);

/// Indexes of [`crate::MAP_REQ_COUNTERS`]: every judged request counted
/// by version and verdict, every refusal by reason, and the records the
/// ring had no room for.
pub mod req_counter {
    /// Versions ([`super::super::req_version`]) counted: `UNPARSED` to
    /// `TOKEN_PUT`.
    pub const VERSIONS: u32 = 4;
    /// Verdicts counted per version: allowed (0), refused (1).
    pub const VERDICTS: u32 = 2;
    /// The first reason counter; a refusal for reason `r` counts at
    /// `REASONS + r`.
    pub const REASONS: u32 = VERSIONS * VERDICTS;
    /// Reasons counted (`req_reason` values are below it).
    pub const REASON_COUNT: u32 = 128;
    /// Request records the ring had no room for.
    pub const RECORDS_LOST: u32 = REASONS + REASON_COUNT;
    /// Entries of the map.
    pub const LEN: u32 = RECORDS_LOST + 1;

    /// The counter of requests of `version` let through (`refused`
    /// false) or refused.
    #[inline(always)]
    pub const fn by_version(version: u8, refused: bool) -> u32 {
        (version as u32 & (VERSIONS - 1)) * VERDICTS + refused as u32
    }

    /// The counter of refusals for `reason`.
    #[inline(always)]
    pub const fn by_reason(reason: u8) -> u32 {
        REASONS + (reason as u32 & (REASON_COUNT - 1))
    }
}
