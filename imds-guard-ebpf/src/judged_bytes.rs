//! What leaves a judged socket is what was judged, byte for byte (issue
//! 23): `req_msg` keeps a copy of each head it lets through, by stream
//! position, in [`REQ_BYTES`], and `egress` lets a payload byte of the
//! socket leave only if it is the byte kept at that position.
//!
//! The judged range (`[base_seq, judged_end)`, `sock_state.rs`) says how
//! far the stream was judged, not what was judged: the kernel does not
//! always queue what the verdict saw. A push that fails (`tcp_bpf_push`
//! returning an error: `send(MSG_FASTOPEN)` on an established socket,
//! `MSG_ZEROCOPY` over the caller's locked-memory limit, a non-blocking
//! push that ran out of buffer half way) leaves the verdict in force
//! (`tcp_bpf_send_verdict` resets `psock->eval` only after a push that
//! succeeded), so the next message is pushed without `req_msg` running,
//! into the range the failed one left judged. A push that waits for memory
//! releases the socket lock inside the range, where a thread that loaded
//! `sk_prot` before the socket entered the sockhash writes through the
//! plain `tcp_sendmsg`. Comparing the bytes closes both, and whatever else
//! puts other bytes at a judged position: they never leave, and the
//! connection stalls. Identical bytes are judged bytes.
//!
//! Every byte let through and not yet acknowledged must be kept, the
//! retransmissions' too: `req_msg` refuses a head that would not fit in
//! the [`JUDGED_RING`] bytes past the first unacknowledged one.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_probe_read_kernel, bpf_skb_load_bytes},
};
use imds_guard_common::{HEAD_MAX, JUDGED_RING, JudgedBytes};

use crate::{
    kernel::opaque,
    maps::REQ_BYTES,
    sock_state::{CREATE, storage_of},
};

/// Bytes of payload compared per step of the loop.
const CHUNK: u32 = 64;
/// A ring position from a stream offset.
const RING_MASK: u32 = JUDGED_RING - 1;
const _: () = assert!(JUDGED_RING.is_power_of_two() && HEAD_MAX as u32 <= JUDGED_RING);

/// The kept bytes of the full socket `sk`, made when `create`; null when
/// it has none (or cannot have them).
///
/// # Safety
/// `sk` is a full socket.
#[inline(always)]
unsafe fn kept(sk: *mut bpf_sock, create: bool) -> *mut JudgedBytes {
    let flags = if create { CREATE } else { 0 };
    // SAFETY: as the caller says.
    unsafe { storage_of(&REQ_BYTES, sk, flags) }
}

/// Keeps the `size` bytes at `head` (1..=[`HEAD_MAX`], a copy of what
/// `req_msg` judged), which go into the stream of `sk` at offset `at`
/// from the judged range's start. `false` when they cannot be kept: the
/// head must then be refused.
///
/// # Safety
/// `sk` is a full socket; `head` holds `size` readable bytes.
#[inline(always)]
pub unsafe fn keep(sk: *mut bpf_sock, at: u32, head: *const u8, size: u32) -> bool {
    // SAFETY: as the caller says.
    let ring = unsafe { kept(sk, true) };
    if ring.is_null() || size == 0 || size > HEAD_MAX as u32 {
        return false;
    }
    // For 1..=HEAD_MAX the identity, bounded where the helper takes it,
    // through `opaque`: LLVM knows the mask changes nothing and drops it,
    // and 6.1's verifier loses the bound of a spilled value.
    let Some(size) = opaque(size) else {
        return false;
    };
    let size = (size.wrapping_sub(1) & (HEAD_MAX as u32 - 1)) + 1;
    let pos = at & RING_MASK;
    // SAFETY: `ring` is this socket's storage, `JUDGED_RING + HEAD_MAX`
    // bytes: `pos + size` stays inside; the helper reads `size` bytes of
    // `head` or fails.
    let whole = unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*ring).bytes)
                .cast::<u8>()
                .add(pos as usize)
                .cast(),
            size,
            head.cast::<c_void>(),
        )
    };
    if whole != 0 {
        return false;
    }
    let end = pos + size;
    if end <= JUDGED_RING {
        return true;
    }
    // Ran past the ring's end: the part past it again at the start. Both
    // lengths bounded where the helper takes them, through `opaque` as
    // above.
    let (Some(over), Some(from)) = (opaque(end - JUDGED_RING), opaque(JUDGED_RING - pos)) else {
        return false;
    };
    let over = (over.wrapping_sub(1) & (HEAD_MAX as u32 - 1)) + 1;
    let from = from & (HEAD_MAX as u32 - 1);
    // SAFETY: as above; `over` is at most `HEAD_MAX` bytes at the ring's
    // start, read from `head` past the `from` bytes that fitted.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*ring).bytes).cast(),
            over,
            head.add(from as usize).cast::<c_void>(),
        ) == 0
    }
}

/// What [`step`] is handed: on `same`'s stack, where `bpf_loop` wants it,
/// and where a run that interrupts this one on the same CPU (a softirq's
/// `egress` for another judged socket) cannot touch it, as it could a
/// per-CPU value.
#[repr(C)]
struct Compare {
    skb: *mut __sk_buff,
    ring: *const JudgedBytes,
    /// The payload's offset in the packet.
    at: u32,
    /// Its length.
    len: u32,
    /// Its first byte's offset from the judged range's start.
    pos: u32,
    /// Cleared at the first byte that differs (or cannot be read).
    same: u32,
}

/// Whether the `len` bytes of payload at offset `at` of packet `skb`, of
/// the full socket `sk`, are the bytes kept at offset `pos` (and on) from
/// its judged range's start. The caller has checked they lie inside the
/// range, which holds at most [`JUDGED_RING`] bytes not acknowledged.
///
/// # Safety
/// `sk` is the packet's full socket; `skb` the program's context.
#[inline(always)]
pub unsafe fn same(skb: *mut __sk_buff, sk: *mut bpf_sock, at: u32, len: u32, pos: u32) -> bool {
    // SAFETY: as the caller says.
    let ring = unsafe { kept(sk, false) };
    if ring.is_null() || len > JUDGED_RING {
        return false;
    }
    let mut c = Compare {
        skb,
        ring,
        at,
        len,
        pos,
        same: 1,
    };
    let steps = len.div_ceil(CHUNK);
    // SAFETY: `step` has the callback's signature; `c` lives on this frame
    // for the whole loop.
    let ran = unsafe { bpf_loop(steps, step as *mut c_void, (&raw mut c).cast(), 0) };
    ran >= 0 && c.same == 1
}

/// One chunk of [`same`]: 1 (stop) at the first difference. Its buffer is
/// on its own stack: `egress` (272 bytes), `imds_guard_backstop` and this
/// frame stay within the 512 bytes 6.1 allows together (the decision's
/// tail, `imds_guard_settle`, is never above it: `backstop_afresh`).
extern "C" fn step(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Compare` on `same`'s frame.
    let c = unsafe { &mut *ctx.cast::<Compare>() };
    let off = index.wrapping_mul(CHUNK);
    if off >= c.len || off >= JUDGED_RING {
        return 1;
    }
    let n = (c.len - off).min(CHUNK);
    let n = ((n - 1) & (CHUNK - 1)) + 1;
    let mut buf = [0u8; CHUNK as usize];
    // SAFETY: the packet of the program's context; `n` bytes into `buf`.
    let read = unsafe { bpf_skb_load_bytes(c.skb.cast(), c.at + off, buf.as_mut_ptr().cast(), n) };
    if read != 0 {
        c.same = 0;
        return 1;
    }
    let base = c.pos.wrapping_add(off);
    let mut k = 0;
    while k < CHUNK {
        if k >= n {
            break;
        }
        let at = (base.wrapping_add(k) & RING_MASK) as usize;
        // SAFETY: `ring` is the socket's storage, valid for this run; `at`
        // is inside its first `JUDGED_RING` bytes.
        let kept = unsafe { (*c.ring).bytes[at] };
        if kept != buf[(k & (CHUNK - 1)) as usize] {
            c.same = 0;
            return 1;
        }
        k += 1;
    }
    0
}
