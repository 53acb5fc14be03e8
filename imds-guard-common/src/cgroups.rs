//! Cgroups by path: what the classification programs and the agent share.
//!
//! Every cgroup v2 cgroup on the host has an entry in
//! [`crate::MAP_CGROUP_CLASS`], keyed by its id (its directory's inode
//! number, what `bpf_get_current_cgroup_id()` returns), holding the rule its
//! path gets in each policy generation ([`crate::IdRules`]). The
//! `cgroup_mkdir` program writes it inside mkdir(2), before the cgroup can
//! hold a process, from the cgroup's own path and the pattern tables below;
//! the agent writes it for the cgroups that existed before, and rewrites the
//! generation a reload puts in force. A cgroup without an entry is
//! unclassified, which the decision treats as unknown (fail closed).
//!
//! A pattern is a list of components from the cgroup2 root, each a literal
//! or `prefix*suffix`, optionally followed by `**` (the cgroup and every
//! descendant). The programs match a component with three lookups: the
//! longest stored prefix of the name ([`crate::MAP_CGROUP_PREFIXES`]), the
//! longest stored suffix ([`crate::MAP_CGROUP_SUFFIXES`], the name
//! reversed), and the name's length ([`crate::MAP_CGROUP_LENGTHS`]). Each
//! answers with the set of patterns (a bit each) whose component at that
//! level it allows; a pattern's component matches when all three do.

use core::mem::size_of;

use crate::{IdRule, IdRules};

/// Patterns per policy generation: one bit each in a `u64`.
pub const MAX_CGROUP_PATTERNS: u32 = 64;
/// Components of a pattern, not counting a final `**`.
pub const MAX_PATTERN_DEPTH: u32 = 16;
/// Bytes of the literal prefix, or suffix, of a component.
pub const MAX_LITERAL: usize = 128;
/// Longest cgroup name (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Nesting the programs follow from a new cgroup up to the root; a deeper
/// cgroup is left unclassified.
pub const MAX_CGROUP_LEVEL: u32 = 64;
/// Cgroups the classification map holds (its `max_entries`; the agent may
/// load it smaller for tests, see [`CgroupLimits::for_capacity`]).
pub const MAX_CGROUPS: u32 = 1 << 17;
/// Creators with cgroups charged to them at once (the charge maps'
/// `max_entries`): a creator past it has no room.
pub const MAX_CREATORS: u32 = 1 << 16;
/// The key of the charge maps' total over every creator: `(uid_t)-1`,
/// which the kernel never gives a task (`INVALID_UID`).
pub const CHARGE_TOTAL: u32 = u32::MAX;
/// Size of the [`crate::MAP_CGROUP_EVENTS`] ring buffer.
pub const CGROUP_EVENTS_BYTE_SIZE: u32 = 1 << 19;

/// What a component lookup is keyed by: the generation and level it is
/// for, then name bytes (from the start for prefixes, from the end for
/// suffixes), zero padded. Stored keys count only the literal's bytes in
/// their prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentKey {
    pub generation: u8,
    /// 1 for a component directly below the root.
    pub level: u8,
    pub _pad: [u8; 2],
    pub bytes: [u8; MAX_LITERAL],
}
const _: () = assert!(size_of::<ComponentKey>() == 4 + MAX_LITERAL);

impl ComponentKey {
    /// Bits of the prefix length that the header takes.
    pub const HEADER_BITS: u32 = 32;
    /// Bits a lookup key matches on: the whole key.
    pub const FULL_BITS: u32 = 8 * size_of::<Self>() as u32;

    pub const fn new(generation: u8, level: u8) -> Self {
        Self {
            generation,
            level,
            _pad: [0; 2],
            bytes: [0; MAX_LITERAL],
        }
    }
}

/// The index of `(generation, level, len)` in [`crate::MAP_CGROUP_LENGTHS`]:
/// the patterns whose component at `level` (1-based) a name of `len` bytes
/// can match.
pub const fn length_index(generation: u32, level: u32, len: u32) -> u32 {
    ((generation & 1) * MAX_PATTERN_DEPTH + (level - 1)) * (MAX_NAME as u32 + 1) + len
}

/// Entries of [`crate::MAP_CGROUP_LENGTHS`].
pub const LENGTHS_LEN: u32 = length_index(1, MAX_PATTERN_DEPTH, MAX_NAME as u32) + 1;

/// One generation's patterns as a whole, in [`crate::MAP_CGROUP_PATTERNS`]:
/// which patterns end where, and what each decides. Patterns are numbered
/// denies first, each kind in policy order, so that the lowest pattern that
/// matches is the rule: a deny wins, then the earliest entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPatterns {
    /// Patterns in this generation; 0 when it has none.
    pub count: u32,
    pub _pad: u32,
    /// By level: the patterns of exactly that many components, which match
    /// a cgroup at that level whose components all matched.
    pub whole: [u64; MAX_PATTERN_DEPTH as usize + 1],
    /// By level: the patterns of that many components then `**`, which
    /// match a cgroup at that level and every descendant.
    pub subtree: [u64; MAX_PATTERN_DEPTH as usize + 1],
    /// What each pattern decides.
    pub rules: [IdRule; MAX_CGROUP_PATTERNS as usize],
}
const _: () = assert!(
    size_of::<CgroupPatterns>()
        == 8 + 2 * 8 * (MAX_PATTERN_DEPTH as usize + 1) + 8 * MAX_CGROUP_PATTERNS as usize
);

impl CgroupPatterns {
    /// No pattern: every cgroup gets no rule.
    pub const EMPTY: Self = Self {
        count: 0,
        _pad: 0,
        whole: [0; MAX_PATTERN_DEPTH as usize + 1],
        subtree: [0; MAX_PATTERN_DEPTH as usize + 1],
        rules: [IdRule {
            action: 0,
            entry: 0,
        }; MAX_CGROUP_PATTERNS as usize],
    };
}

impl Default for CgroupPatterns {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// What a [`CgroupEvent`] reports.
pub mod cgroup_event {
    /// A cgroup was created; [`super::CgroupEvent::stored`] says whether
    /// its entry was written ([`super::cgroup_stored`]).
    pub const MKDIR: u8 = 1;
    /// A cgroup was removed; [`super::CgroupEvent::stored`] is 1 when an
    /// entry went with it (room was freed).
    pub const RMDIR: u8 = 2;
}

/// Whether the `cgroup_mkdir` program stored a new cgroup's entry, and why
/// not: a cgroup without an entry is unclassified (fail closed) until the
/// agent classifies it.
pub mod cgroup_stored {
    /// Classified and stored.
    pub const STORED: u8 = 0;
    /// Its path could not be read or is deeper than
    /// [`crate::MAX_CGROUP_LEVEL`].
    pub const UNCLASSIFIED: u8 = 1;
    /// The classification map is full.
    pub const FULL: u8 = 2;
    /// Its creator holds its share of the map already
    /// ([`super::CgroupLimits`]), or who created it could not be read.
    pub const OVER_QUOTA: u8 = 3;
}

/// Who counts a cgroup's entry against its creator's share
/// ([`CgroupEntry::charged`]).
pub mod charged_by {
    /// Nobody: root's creations on the host, which always have room.
    pub const NONE: u8 = 0;
    /// The `cgroup_mkdir` program, in [`crate::MAP_CGROUP_CHARGES`]; the
    /// `cgroup_rmdir` program takes it back.
    pub const PROGRAM: u8 = 1;
    /// The agent, in [`crate::MAP_CGROUP_AGENT_CHARGES`]; the agent takes
    /// it back when the cgroup goes.
    pub const AGENT: u8 = 2;
}

/// A cgroup created or removed, sent through [`crate::MAP_CGROUP_EVENTS`]
/// with only the first `name_len` bytes of `name`: the agent learns the
/// cgroups it did not list as a tree of names (a path of any length costs
/// one name), which cgroups to classify again when there is room, and
/// which a reload rewrites.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    pub id: u64,
    /// The parent cgroup's id (for [`cgroup_event::MKDIR`]).
    pub parent: u64,
    /// One of [`cgroup_event`].
    pub kind: u8,
    /// For [`cgroup_event::MKDIR`] one of [`cgroup_stored`]; for
    /// [`cgroup_event::RMDIR`] 1 when an entry was removed.
    pub stored: u8,
    /// One of [`charged_by`]: who charged (or, for a cgroup not stored,
    /// would have charged) `creator`.
    pub charged: u8,
    pub _pad: u8,
    /// The creator's uid as the initial user namespace sees it (see the
    /// programs' `charge.rs`).
    pub creator: u32,
    /// Bytes of `name` sent, without the terminating NUL.
    pub name_len: u32,
    pub _pad2: u32,
    /// The cgroup's own name (its directory's), for
    /// [`cgroup_event::MKDIR`].
    pub name: [u8; crate::MAX_NAME + 1],
}
const _: () = assert!(size_of::<CgroupEvent>() == 32 + crate::MAX_NAME + 1);

impl CgroupEvent {
    /// Bytes before `name`.
    pub const HEADER: usize = 32;
}

/// A cgroup's value in [`crate::MAP_CGROUP_CLASS`]: the rule each
/// generation's patterns give its path, and who it is charged to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEntry {
    pub rules: IdRules,
    /// The creator's uid (see [`CgroupEvent::creator`]).
    pub creator: u32,
    /// One of [`charged_by`].
    pub charged: u32,
}
const _: () = assert!(size_of::<CgroupEntry>() == 24);

/// How much of the classification map cgroups not made by root on the host
/// may take: each creator at most `quota`, all of them together at most
/// `shared`, so that root's creations (systemd's units, container
/// runtimes' cgroups) always find room. Set by the agent from the map's
/// size before the programs load; unset (not [`crate::Offsets::VALID`]),
/// no creator but root has room: fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub valid: u32,
    pub quota: u32,
    pub shared: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CgroupLimits>() == 16);

impl CgroupLimits {
    /// What a program loaded without the agent's limits holds.
    pub const UNSET: Self = Self {
        valid: 0,
        quota: 0,
        shared: 0,
        _pad: 0,
    };

    /// The limits of a map of `capacity` entries: a creator may hold a
    /// sixteenth of it (8,192 of 131,072), every creator but root half.
    pub const fn for_capacity(capacity: u32) -> Self {
        Self {
            valid: crate::Offsets::VALID,
            quota: capacity / 16,
            shared: capacity / 2,
            _pad: 0,
        }
    }
}

/// Indexes of [`crate::MAP_CGROUP_STATS`], a per-CPU array.
pub mod cgroup_stat {
    /// Cgroups the mkdir program classified and stored.
    pub const CLASSIFIED: u32 = 0;
    /// Cgroups it could not classify: deeper than
    /// [`crate::MAX_CGROUP_LEVEL`], or a read of the kernel's structures
    /// failed.
    pub const UNCLASSIFIED: u32 = 1;
    /// Classifications it could not store (the map is full).
    pub const NOT_STORED: u32 = 2;
    /// Events the ring buffer had no room for.
    pub const EVENTS_LOST: u32 = 3;
    /// Classifications it did not store because the creator held its
    /// share ([`super::CgroupLimits`]) or could not be read.
    pub const OVER_QUOTA: u32 = 4;
    /// Entries the programs added and removed (the agent counts its own):
    /// what the map holds, without walking it.
    pub const ADDED: u32 = 5;
    pub const REMOVED: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
}

/// Byte offsets of the kernel fields the classification programs read,
/// resolved by the agent from the running kernel's BTF, like
/// [`crate::Offsets`] (kept apart: only the tracepoint programs read them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupOffsets {
    /// [`crate::Offsets::VALID`] once the agent wrote the rest: a program
    /// loaded without them classifies nothing.
    pub valid: u32,
    /// `cgroup.kn`: the cgroup's directory.
    pub cgroup_kn: u32,
    /// `cgroup.root`: its hierarchy.
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id`: 0 for cgroup v2.
    pub root_hierarchy_id: u32,
    /// `kernfs_node.parent`, `__parent` since Linux 6.15.
    pub kn_parent: u32,
    /// `kernfs_node.name`.
    pub kn_name: u32,
    /// `kernfs_node.id`: the cgroup id.
    pub kn_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CgroupOffsets>() == 32);

impl CgroupOffsets {
    /// Nothing resolved: what a program loaded without the agent's offsets
    /// holds.
    pub const UNSET: Self = Self {
        valid: 0,
        cgroup_kn: 0,
        cgroup_root: 0,
        root_hierarchy_id: 0,
        kn_parent: 0,
        kn_name: 0,
        kn_id: 0,
        _pad: 0,
    };
}
