//! What a socket was let through to, and under which policy: its
//! [`SockState`] in [`DECIDED`], written where a protected destination is
//! let through (a `sock_addr` hook, or `egress` after judging a packet)
//! and read by `egress`, which lets a packet go unjudged only when the
//! state names its destination and the epoch in force. Every apply (a
//! reload, the switch from audit to enforce) writes a new epoch, so the
//! next packet of a connection let through before it is judged by the
//! policy now in force: refused, it is dropped and recorded.
//!
//! The storage is created only for a protected destination let through,
//! never for other traffic, which leaves the hooks before any of this.
//!
//! For a caller the policy allows only some requests (issue 23) the same
//! state carries the scope of the deciding entry ([`scope`]) and how far
//! its byte stream was judged: `sock_ops` (`request.rs`) sets `base_seq`,
//! `sk_msg` moves `judged_end`, and `egress` lets payload leave only
//! inside that range. A re-decision by `egress` merges ([`store`]): it
//! never loses the range.

use aya_ebpf::{bindings::bpf_sock, btf_maps::SkStorage, helpers::generated::bpf_sk_storage_get};
use imds_guard_common::{ENTRY_ANY, EntryFlags, EntryKey, SockState, sock_state, verdict};

use crate::{
    dst::Dst,
    kernel::opaque,
    maps::{CONFIG, DECIDED, ENTRY_FLAGS},
};

/// `BPF_SK_STORAGE_GET_F_CREATE` (include/uapi/linux/bpf.h).
pub const CREATE: u64 = 1;

/// The epoch of policy `generation`: `None` while its config is not
/// written (0), when nothing may be let through unjudged.
#[inline(always)]
pub fn epoch(generation: u32) -> Option<u32> {
    CONFIG.get(generation).map(|c| c.epoch).filter(|&e| e != 0)
}

/// What to store for a destination let through with `recorded` (one of
/// [`verdict`]) under `generation`: `None` for a denial (nothing is
/// stored, and the next packet is judged again), or when the epoch cannot
/// be read.
#[inline(always)]
pub fn let_through(dst: &Dst, generation: u32, recorded: u8) -> Option<SockState> {
    let_through_at(|| dst.stored_addr(), generation, recorded)
}

/// [`let_through`] for the destination whose stored address `addr` gives
/// ([`Dst::stored_addr`]), asked for after the epoch's lookup: an address
/// read before it is kept across the helper call, 16 bytes spilled one
/// to a stack slot, which took `connect6` and the function that remembers
/// its sockets together past the 512 bytes of stack 6.1 allows.
#[inline(always)]
pub fn let_through_at(
    addr: impl FnOnce() -> [u8; 16],
    generation: u32,
    recorded: u8,
) -> Option<SockState> {
    let verdict = match recorded {
        verdict::ALLOWED => sock_state::ALLOWED,
        verdict::AUDITED => sock_state::AUDITED,
        _ => return None,
    };
    let epoch = epoch(generation)?;
    Some(SockState {
        addr: addr(),
        epoch,
        verdict,
        ..SockState::default()
    })
}

/// Gives `state`, of a destination let through as `recorded` under
/// `generation` by policy entry `entry`, that entry's scope ([`scope`];
/// none for an audited refusal), laundered so that what follows is one
/// state for the verifier whatever the decision was (see `opaque`).
/// `false` when the copy fails (it reads our own stack, and does not):
/// the caller refuses.
#[inline(always)]
pub fn scoped(state: &mut SockState, generation: u32, recorded: u8, entry: u32) -> bool {
    let found = if recorded == verdict::ALLOWED {
        scope(generation, entry)
    } else {
        EntryFlags::default()
    };
    let Some(found) = opaque(found) else {
        return false;
    };
    state.flags = found.flags;
    state.ruleset = found.ruleset;
    state.entry = entry;
    true
}

/// The scope of policy entry `entry` of `generation` for a caller it
/// allowed: the entry's own row, else the generation's default row
/// ([`ENTRY_ANY`]: IMDSv2 required, or attribution, for everyone), else
/// the whole service (no flags).
#[inline(always)]
pub fn scope(generation: u32, entry: u32) -> EntryFlags {
    let own = EntryKey { generation, entry };
    let any = EntryKey {
        generation,
        entry: ENTRY_ANY,
    };
    // SAFETY: hash map values, copied out at once.
    unsafe { ENTRY_FLAGS.get(own).or_else(|| ENTRY_FLAGS.get(any)) }
        .copied()
        .unwrap_or_default()
}

/// How a packet's socket stands with its destination.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Let through to this destination under the policy in force: the
    /// packet goes unjudged.
    Current,
    /// Let through to this destination under an earlier policy: judged
    /// again, and its record says so.
    Stale,
    /// Nothing let through to this destination (no state, another address,
    /// or no full socket).
    Unknown,
}

/// Where the state of full socket `sk` stands with `dst` under
/// `generation`, and the [`SockState::flags`] it holds (0 without one).
/// The hot path of an allowed connection: one storage lookup, one array
/// lookup.
///
/// # Safety
///
/// `sk` must be null or a full socket (`bpf_sk_fullsock`).
#[inline(always)]
pub unsafe fn standing(sk: *mut bpf_sock, dst: &Dst, generation: u32) -> (Standing, u8) {
    if sk.is_null() {
        return (Standing::Unknown, 0);
    }
    // SAFETY: a full socket, by the caller's contract.
    let state = unsafe { state_of(sk, 0) };
    if state.is_null() {
        return (Standing::Unknown, 0);
    }
    // SAFETY: checked for null; the socket's own storage, valid for this
    // run.
    let (addr, stored, flags) = unsafe { ((*state).addr, (*state).epoch, (*state).flags) };
    if addr != dst.stored_addr() {
        return (Standing::Unknown, 0);
    }
    match epoch(generation) {
        Some(e) if e == stored => (Standing::Current, flags),
        _ => (Standing::Stale, flags),
    }
}

/// Stores `state` in full socket `sk`'s storage, creating it; returns
/// whether it is stored. An existing storage keeps what only the request
/// programs write (the stage, the judged range, the request count and the
/// connector): a re-decision moves the epoch and the scope, never the
/// range. A socket whose storage cannot be had (no memory) keeps what it
/// had, or nothing: its next packet is judged again.
///
/// # Safety
///
/// `sk` must be null or a full socket (`bpf_sk_fullsock`).
#[inline(always)]
pub unsafe fn store(sk: *mut bpf_sock, state: &SockState) -> bool {
    if sk.is_null() {
        return false;
    }
    // SAFETY: a full socket, by the caller's contract; a non-null result
    // points at its storage, valid for this run (zeroed when created, so
    // a merge into it is the whole state).
    unsafe {
        let p = state_of(sk, CREATE);
        if p.is_null() {
            return false;
        }
        (*p).addr = state.addr;
        (*p).epoch = state.epoch;
        (*p).verdict = state.verdict;
        (*p).flags = state.flags;
        (*p).ruleset = state.ruleset;
        (*p).entry = state.entry;
        true
    }
}

/// The socket's [`DECIDED`] storage, created (zeroed) with [`CREATE`];
/// null when it has none or none can be had. aya's `SkStorage` takes a
/// `sock_addr` context only; this is the same helper on any full socket.
///
/// # Safety
///
/// `sk` must be a full socket (`bpf_sk_fullsock`), as the helper requires.
#[inline(always)]
pub unsafe fn state_of(sk: *mut bpf_sock, flags: u64) -> *mut SockState {
    // SAFETY: as the caller says.
    unsafe { storage_of(&DECIDED, sk, flags) }
}

/// The value of socket storage `map` for `sk` (made with [`CREATE`] in
/// `flags`), null when it has none or none can be had: [`state_of`] for
/// any of the programs' socket storages.
///
/// # Safety
///
/// `sk` must be a full socket, as the helper requires.
#[inline(always)]
pub unsafe fn storage_of<T>(map: &SkStorage<T>, sk: *mut bpf_sock, flags: u64) -> *mut T {
    let map = core::ptr::from_ref(map).cast_mut().cast();
    // SAFETY: the map is the program's own (its address is what the loader
    // relocates); `sk` is a full socket by the caller's contract.
    unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) }.cast()
}
