//! Cgroups classified as they are created: the `cgroup_mkdir` and
//! `cgroup_rmdir` raw tracepoints, and the lookup a decision makes.
//!
//! `cgroup_mkdir` fires inside mkdir(2), after the new cgroup is set up and
//! before `kernfs_activate()` makes its directory visible
//! (kernel/cgroup/cgroup.c, `cgroup_mkdir`): no process can enter a cgroup
//! before its entry in [`CGROUP_CLASS`] is written. The entry is computed
//! from the cgroup's own path (its kernfs names, walked up to the root) and
//! the pattern tables of both generations, never from its parent's entry:
//! while a reload rewrites the generation it is about to put in force, a
//! parent's entry for it can be stale, and a child created in that window
//! is not yet visible to the agent's listing. The agent's part is then
//! only to rewrite what existed before its tables (see
//! `imds-guard/src/kernel/classify/`).
//!
//! The tracepoints fire for every cgroup hierarchy; only cgroup v2 (the
//! hierarchy with id 0) is classified: a v1 hierarchy numbers its cgroups
//! on its own, and its ids would overwrite v2 ones.
//!
//! Both programs run under the kernel's `trace_cgroup_path_lock` with
//! interrupts off (`TRACE_CGROUP_PATH`), so runs never overlap: the per-CPU
//! scratch space is never shared, and the charge counts (`charge.rs`) are
//! read and written without atomics. They write only their own maps.
//!
//! A cgroup is stored only when its creator has room (`charge.rs`) and the
//! map has; a cgroup not stored is unclassified (fail closed) and its
//! event says why, so that the agent classifies it once there is room.
//! Events carry the cgroup's own name and its parent's id rather than the
//! path the tracepoint formats (cut at 1,023 bytes): the agent keeps the
//! hierarchy as a tree of names, so a path of any length costs it one
//! name.

use core::mem::size_of;

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, lpm_trie::Key},
    programs::RawTracePointContext,
};
use imds_guard_common::{
    CgroupEntry, CgroupEvent, CgroupOffsets, CgroupPatterns, ComponentKey, IdRule, IdRules,
    MAX_CGROUP_LEVEL, MAX_CGROUP_PATTERNS, MAX_LITERAL, MAX_NAME, MAX_PATTERN_DEPTH, Offsets,
    action, cgroup_event, cgroup_stat, cgroup_stored, charged_by, length_index,
};

use crate::{
    charge::{self, Creator},
    kernel::{read, read_ptr, read_str},
    maps::{
        CGROUP_CLASS, CGROUP_EVENTS, CGROUP_LENGTHS, CGROUP_PATTERNS, CGROUP_PREFIXES,
        CGROUP_STATS, CGROUP_SUFFIXES,
    },
};

/// Written by the agent before the programs load; not
/// [`Offsets::VALID`] in a program loaded without them, which then
/// classifies nothing (every cgroup it sees stays unknown).
#[unsafe(no_mangle)]
static CGROUP_OFFSETS: CgroupOffsets = CgroupOffsets::UNSET;

/// Room for one classification: too large for the 512-byte stack.
#[repr(C)]
pub struct Scratch {
    /// The `kernfs_node.name` pointers of the new cgroup and its
    /// ancestors, the cgroup first, the root's child last.
    names: [u64; MAX_CGROUP_LEVEL as usize],
    /// The name being matched, NUL padded.
    name: [u8; MAX_NAME + 1],
    prefix: Key<ComponentKey>,
    suffix: Key<ComponentKey>,
    /// The level being classified (see `classify`).
    level: u32,
    /// Whether the new cgroup was classified (1), into `entry`, and
    /// whether its creator could be read (1): read back from here, every
    /// way through the classification reaches the rest as one state (see
    /// `classify` for why).
    classified: u32,
    known: u32,
    entry: CgroupEntry,
    event: CgroupEvent,
}

/// One [`Scratch`] per CPU.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The action of a cgroup without an entry: no classification.
pub const UNKNOWN: u32 = u32::MAX;

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    mkdir(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    rmdir(ctx.arg::<u64>(0));
    0
}

/// The offsets, if the agent wrote them.
#[inline(always)]
fn offsets() -> Option<CgroupOffsets> {
    // SAFETY: a plain read of our own global; volatile so that LLVM reads
    // what the agent wrote rather than folding the zeros above.
    let off = unsafe { core::ptr::read_volatile(&raw const CGROUP_OFFSETS) };
    (off.valid == Offsets::VALID).then_some(off)
}

/// The id of `cgrp` when it is a cgroup v2 cgroup, with its kernfs node.
#[inline(always)]
fn v2_cgroup(cgrp: u64, off: &CgroupOffsets) -> Option<(u64, u64)> {
    let root = read_ptr(cgrp, off.cgroup_root)?;
    let hierarchy: i32 = read(root, off.root_hierarchy_id)?;
    if hierarchy != 0 {
        return None;
    }
    let kn = read_ptr(cgrp, off.cgroup_kn)?;
    Some((read(kn, off.kn_id)?, kn))
}

#[inline(always)]
fn mkdir(cgrp: u64) {
    let Some(off) = offsets() else {
        bump(cgroup_stat::UNCLASSIFIED);
        return;
    };
    let Some((id, kn)) = v2_cgroup(cgrp, &off) else {
        return;
    };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for this run, and
    // no other run can use it meanwhile (see the module's doc).
    let s = unsafe { &mut *s };
    let creator = Creator::current();
    s.event.creator = creator.uid;
    s.event.charged = creator.charged;
    s.known = u32::from(creator.known);
    s.classified = match walk(s, kn, &off).and_then(|level| classify(s, level)) {
        Some(by_generation) => {
            s.entry.rules = IdRules { by_generation };
            1
        }
        None => 0,
    };
    // SAFETY: reads of our own scratch slot (see `Scratch::classified`).
    let (classified, creator) = unsafe {
        (
            core::ptr::read_volatile(&raw const s.classified),
            Creator {
                uid: core::ptr::read_volatile(&raw const s.event.creator),
                charged: core::ptr::read_volatile(&raw const s.event.charged),
                known: core::ptr::read_volatile(&raw const s.known) != 0,
            },
        )
    };
    // No entry is the fail-closed answer: a cgroup whose path could not be
    // read or matched, or that found no room, stays unclassified, which a
    // policy with cgroup denies denies.
    let stored = if classified == 0 {
        bump(cgroup_stat::UNCLASSIFIED);
        cgroup_stored::UNCLASSIFIED
    } else {
        store(s, id, &creator)
    };
    s.event.parent = read_ptr(kn, off.kn_parent)
        .and_then(|p| read(p, off.kn_id))
        .unwrap_or(0);
    s.event.stored = stored;
    let name = read_ptr(kn, off.kn_name).unwrap_or(0);
    report(s, cgroup_event::MKDIR, id, name);
}

/// Stores the entry of cgroup `id`, classified into `s.entry`, if its
/// creator and the map have room; one of [`cgroup_stored`].
#[inline(always)]
fn store(s: &mut Scratch, id: u64, creator: &Creator) -> u8 {
    if !creator.has_room() {
        bump(cgroup_stat::OVER_QUOTA);
        return cgroup_stored::OVER_QUOTA;
    }
    s.entry.creator = creator.uid;
    s.entry.charged = u32::from(creator.charged);
    // From the scratch slot itself: no copy on the stack.
    let entry: &CgroupEntry = &s.entry;
    if CGROUP_CLASS.insert(id, entry, 0).is_err() {
        bump(cgroup_stat::NOT_STORED);
        return cgroup_stored::FULL;
    }
    if !creator.charge() {
        // No room in the charge map for another creator: nothing may
        // stay uncounted.
        let _ = CGROUP_CLASS.remove(id);
        bump(cgroup_stat::OVER_QUOTA);
        return cgroup_stored::OVER_QUOTA;
    }
    bump(cgroup_stat::CLASSIFIED);
    bump(cgroup_stat::ADDED);
    cgroup_stored::STORED
}

#[inline(always)]
fn rmdir(cgrp: u64) {
    let Some(off) = offsets() else {
        return;
    };
    let Some((id, _)) = v2_cgroup(cgrp, &off) else {
        return;
    };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `mkdir`.
    let s = unsafe { &mut *s };
    // SAFETY: a value of our own map, copied at once.
    let entry = unsafe { CGROUP_CLASS.get(id) }.copied();
    let removed = CGROUP_CLASS.remove(id).is_ok();
    s.event.parent = 0;
    s.event.stored = 0;
    s.event.charged = charged_by::NONE;
    s.event.creator = 0;
    if let (Some(entry), true) = (entry, removed) {
        bump(cgroup_stat::REMOVED);
        if entry.charged == u32::from(charged_by::PROGRAM) {
            charge::uncharge(entry.creator);
        }
        s.event.stored = 1;
        s.event.charged = entry.charged as u8;
        s.event.creator = entry.creator;
    }
    report(s, cgroup_event::RMDIR, id, 0);
}

/// Records the names from `kn` up to (not including) the root in
/// `s.names`; returns the cgroup's level (1 for a child of the root), or
/// `None` when the root is further than [`MAX_CGROUP_LEVEL`] or a read
/// fails.
#[inline(always)]
fn walk(s: &mut Scratch, kn: u64, off: &CgroupOffsets) -> Option<u32> {
    let mut node = kn;
    let mut level = 0u32;
    while level < MAX_CGROUP_LEVEL {
        // The root's parent is null; a failed read is no answer.
        let parent: u64 = read(node, off.kn_parent)?;
        if parent == 0 {
            return Some(level);
        }
        s.names[(level & (MAX_CGROUP_LEVEL - 1)) as usize] = read_ptr(node, off.kn_name)?;
        level += 1;
        node = parent;
    }
    // One more step: the root itself may be the last node read.
    let parent: u64 = read(node, off.kn_parent)?;
    (parent == 0).then_some(level)
}

/// The rule each generation's patterns give the cgroup whose names `walk`
/// recorded, at `level`; `None` when a name cannot be read.
///
/// Both generations are matched in one pass over the names, each name
/// read once. `level` goes through the scratch map first: it leaves `walk`
/// as a different constant on each of its 65 exits, and the verifier
/// would otherwise check everything below once per constant (past its
/// million instructions); read back from a map it is one unknown scalar.
#[inline(always)]
fn classify(s: &mut Scratch, level: u32) -> Option<[IdRule; 2]> {
    s.level = level;
    // SAFETY: a read of our own scratch slot (see above for why).
    let level = unsafe { core::ptr::read_volatile(&raw const s.level) };
    let first = CGROUP_PATTERNS.get_ptr(0)?;
    let second = CGROUP_PATTERNS.get_ptr(1)?;
    // SAFETY: array slots, valid for this run.
    let patterns: [&CgroupPatterns; 2] = unsafe { [&*first, &*second] };
    let mut alive = [all(patterns[0].count), all(patterns[1].count)];
    let mut matched = [
        alive[0] & patterns[0].subtree[0],
        alive[1] & patterns[1].subtree[0],
    ];
    // Only the agent classifies the root (it is never created), but the
    // two matchers stay the same.
    if level == 0 {
        matched[0] |= alive[0] & patterns[0].whole[0];
        matched[1] |= alive[1] & patterns[1].whole[0];
    }
    let mut k = 1u32;
    while k <= MAX_PATTERN_DEPTH {
        if k > level || alive[0] | alive[1] == 0 {
            break;
        }
        let name = s.names[((level - k) & (MAX_CGROUP_LEVEL - 1)) as usize];
        let len = load_name(s, name)?;
        let at = k as usize;
        for g in 0..2 {
            alive[g] &= components(s, g as u32, k, len);
            matched[g] |= alive[g] & patterns[g].subtree.get(at).copied().unwrap_or(0);
            if k == level {
                matched[g] |= alive[g] & patterns[g].whole.get(at).copied().unwrap_or(0);
            }
        }
        k += 1;
    }
    Some([
        decided(patterns[0], matched[0]),
        decided(patterns[1], matched[1]),
    ])
}

/// The rule of the lowest pattern in `matched`: a deny wins, then the
/// earliest entry.
#[inline(always)]
fn decided(patterns: &CgroupPatterns, matched: u64) -> IdRule {
    if matched == 0 {
        return IdRule {
            action: action::NONE,
            entry: 0,
        };
    }
    patterns.rules[lowest(matched) as usize & (MAX_CGROUP_PATTERNS as usize - 1)]
}

/// Reads the name at `name` into `s.name` and the lookup keys; returns its
/// length.
///
/// Nothing is cleared first, and the bytes past the name in the keys are
/// left from earlier names: no stored prefix holds a NUL, so none reaches
/// past the name's end in the prefix key; a stored suffix longer than the
/// name may match what follows it in the suffix key, but a glob needs a
/// name at least as long as its prefix and suffix together, which the
/// lengths table says, so its pattern is dropped there. Every suffix
/// within the name is a prefix of the longest one that matched, whose
/// value holds their bits too (`tables.rs`). Clearing 640 bytes a level
/// with loops the verifier walks byte by byte would cost more than the
/// rest of the program.
#[inline(always)]
fn load_name(s: &mut Scratch, name: u64) -> Option<usize> {
    let len = read_str(name, &mut s.name)? & MAX_NAME;
    s.prefix.data.bytes.copy_from_slice(&s.name[..MAX_LITERAL]);
    let mut j = 0;
    while j < MAX_LITERAL {
        // The name reversed, its last byte first.
        s.suffix.data.bytes[j] = s.name[len.wrapping_sub(1).wrapping_sub(j) & MAX_NAME];
        j += 1;
    }
    Some(len)
}

/// The patterns whose component at `level` matches the name in `s`, of
/// `len` bytes.
#[inline(always)]
fn components(s: &mut Scratch, generation: u32, level: u32, len: usize) -> u64 {
    for key in [&mut s.prefix, &mut s.suffix] {
        key.prefix_len = ComponentKey::FULL_BITS;
        key.data.generation = generation as u8;
        key.data.level = level as u8;
        key.data._pad = [0; 2];
    }
    let prefixes = CGROUP_PREFIXES.get(&s.prefix).copied().unwrap_or(0);
    let suffixes = CGROUP_SUFFIXES.get(&s.suffix).copied().unwrap_or(0);
    let lengths = CGROUP_LENGTHS
        .get(length_index(generation, level, len as u32))
        .copied()
        .unwrap_or(0);
    prefixes & suffixes & lengths
}

/// The bits of the first `count` patterns.
#[inline(always)]
fn all(count: u32) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// The index of the lowest set bit of `x` (not 0): a binary search, since
/// the BPF instruction set has no count-trailing-zeros.
#[inline(always)]
fn lowest(mut x: u64) -> u32 {
    let mut n = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        let low = (1u64 << shift) - 1;
        if x & low == 0 {
            n += shift;
            x >>= shift;
        }
    }
    n
}

/// Sends what happened to cgroup `id`, with the name at `name` (none when
/// 0), and the rest of the event as the caller filled it.
#[inline(always)]
fn report(s: &mut Scratch, kind: u8, id: u64, name: u64) {
    s.event.id = id;
    s.event.kind = kind;
    s.event._pad = 0;
    s.event._pad2 = 0;
    let len = match name {
        0 => 0,
        name => read_str(name, &mut s.event.name).unwrap_or(0) & MAX_NAME,
    };
    s.event.name_len = len as u32;
    let size = CgroupEvent::HEADER + len;
    if size > size_of::<CgroupEvent>() {
        return;
    }
    // SAFETY: the first `size` bytes of the event, which lies whole in our
    // scratch slot (checked above, which the verifier needs too).
    let bytes = unsafe { core::slice::from_raw_parts((&raw const s.event).cast::<u8>(), size) };
    if CGROUP_EVENTS.output::<[u8]>(bytes, 0).is_err() {
        bump(cgroup_stat::EVENTS_LOST);
    }
}

#[inline(always)]
fn bump(stat: u32) {
    if let Some(c) = CGROUP_STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU array slot of this CPU; runs never overlap.
        unsafe { *c += 1 };
    }
}

/// The rule of cgroup `id` in `generation`; action [`UNKNOWN`] when the
/// cgroup has no entry.
#[inline(always)]
pub fn rule(id: u64, generation: u32) -> IdRule {
    match CGROUP_CLASS.get_ptr(id) {
        // SAFETY: a non-null pointer from a hash map lookup points at a
        // value of the map's type, valid for this run; the slot index is
        // masked to the array's bounds.
        Some(p) => unsafe { (*p).rules.by_generation[(generation & 1) as usize] },
        None => IdRule {
            action: UNKNOWN,
            entry: 0,
        },
    }
}
