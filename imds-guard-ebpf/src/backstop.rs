//! The per-packet backstop of request-level judgement (design §3): a
//! packet of a socket whose caller is judged (`request::judged`)
//! leaves only if it carries no payload, or payload that `req_msg`
//! judged and let through: inside `[base_seq, judged_end)`, and byte for
//! byte what was judged at that position (`judged_bytes.rs`). What
//! reached TCP by any other path (Fast Open data, a socket the sockhash
//! refused, a writer that raced the insertion, `req_msg` detached, MPTCP)
//! is outside the range; what the kernel pushed without a verdict inside
//! it (after a push that failed or waited) differs from the bytes kept;
//! anything that is not a TCP stream (a raw socket, a packet built with
//! `IP_HDRINCL`, UDP) is dropped whole.
//!
//! It does not trust the sockhash: only `req_msg` moves the range's end
//! and keeps the bytes, only `req_sockops` sets its start.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    programs::SkBuffContext,
};
use imds_guard_common::{family, stage};

use crate::{
    decide::Verdict,
    dst::Dst,
    request::{IPPROTO_TCP, SOCK_STREAM, judged},
    skb::full_socket,
    sock_state::state_of,
};

/// `IPPROTO_TCP` in a packet's header.
const TCP: u8 = 6;
/// An IPv4 header's `frag_off` bits: more fragments, and the offset.
const IP_MF_OFFSET: u16 = 0x3fff;

/// Whether the packet in `ctx` to `dst` may leave, for a socket whose
/// stored scope has `flags`: every packet of a socket not judged may; of a
/// judged one, see the module ([`imds_guard_backstop`]).
#[inline(always)]
pub fn backstop(ctx: &SkBuffContext, dst: &Dst, flags: u8) -> Verdict {
    if !judged(flags) {
        return Verdict::Allow;
    }
    Verdict::of_answer(imds_guard_backstop(ctx.skb.skb, u32::from(dst.family)))
}

/// The backstop for the packet `skb` of `family` ([`family`]), whose
/// socket's caller is judged: 1 lets it leave, 0 drops it.
///
/// A global function (BTF linkage global, as `#[no_mangle]` makes it),
/// as `skb::imds_guard_settle` is: the verifier walks it once, on its
/// own, with arguments it knows nothing of, and the caller only sees an
/// unknown answer. Its arguments are the context and a scalar, all that
/// kernels before 5.12 take of a global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_guard_backstop(skb: *mut __sk_buff, family: u32) -> i32 {
    check::<true>(skb, family)
}

/// [`backstop`] for a packet whose judged socket `egress` has just decided
/// again (`skb::imds_guard_settle`: after a reload, or a socket it had no
/// state of): it leaves only without payload. What it carried is sent
/// again (TCP retransmits it) once the socket stands current, and is
/// compared then. `imds_guard_settle` is a frame deeper than `egress`,
/// and 6.1's verifier counts the comparison's loop callback as a frame
/// below where its address is taken: the four would pass the 512 bytes of
/// stack it allows.
#[inline(always)]
pub fn backstop_afresh(ctx: &SkBuffContext, dst: &Dst, flags: u8) -> Verdict {
    if !judged(flags) {
        return Verdict::Allow;
    }
    Verdict::of_answer(imds_guard_backstop_afresh(
        ctx.skb.skb,
        u32::from(dst.family),
    ))
}

/// [`backstop_afresh`]'s global function, as [`imds_guard_backstop`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_guard_backstop_afresh(skb: *mut __sk_buff, family: u32) -> i32 {
    check::<false>(skb, family)
}

/// The backstop's body; payload inside the judged range leaves only when
/// `COMPARE`, and then only if it is what was judged there.
#[inline(always)]
fn check<const COMPARE: bool>(skb: *mut __sk_buff, family: u32) -> i32 {
    let ctx = SkBuffContext::new(skb);
    let sk = full_socket(&ctx);
    if sk.is_null() {
        return Verdict::Reject as i32;
    }
    // SAFETY: a full socket, from `bpf_sk_fullsock`: the verifier lets a
    // program read these fields of one.
    let (sock_type, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).type_),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP {
        return Verdict::Reject as i32;
    }
    let Some((seq, len, at)) = tcp_payload(&ctx, family) else {
        return Verdict::Reject as i32;
    };
    if len == 0 {
        // The handshake, acknowledgements, FIN, RST, keep-alive and
        // zero-window probes without data.
        return Verdict::Allow as i32;
    }
    // SAFETY: a full socket.
    let state = unsafe { state_of(sk, 0) };
    if state.is_null() {
        return Verdict::Reject as i32;
    }
    // SAFETY: checked for null; this socket's storage, valid for this run.
    let (st, base, end) = unsafe { ((*state).stage, (*state).base_seq, (*state).judged_end) };
    if st & stage::IN_SOCKHASH == 0 || st & stage::TAINTED != 0 {
        return Verdict::Reject as i32;
    }
    // Serial-number arithmetic (mod 2^32): base <= seq and seq + len <= end.
    let last = seq.wrapping_add(len);
    if (seq.wrapping_sub(base) as i32) < 0 || (end.wrapping_sub(last) as i32) < 0 {
        return Verdict::Reject as i32;
    }
    if COMPARE && same_as_judged(skb, sk, at, len, seq.wrapping_sub(base)) {
        Verdict::Allow as i32
    } else {
        Verdict::Reject as i32
    }
}

/// Whether the payload is what `req_msg` kept at its position
/// (`judged_bytes.rs`).
#[cfg(not(feature = "unrolled"))]
#[inline(always)]
fn same_as_judged(skb: *mut __sk_buff, sk: *mut bpf_sock, at: u32, len: u32, pos: u32) -> bool {
    // SAFETY: `sk` is this packet's full socket, `skb` our context.
    unsafe { crate::judged_bytes::same(skb, sk, at, len, pos) }
}

/// The build without `bpf_loop` judges no requests, so it keeps nothing
/// to compare with: payload of a judged socket never leaves (there is
/// none: such policies are refused there).
#[cfg(feature = "unrolled")]
#[inline(always)]
fn same_as_judged(_: *mut __sk_buff, _: *mut bpf_sock, _: u32, _: u32, _: u32) -> bool {
    false
}

/// The sequence number, payload length and the payload's offset of a TCP
/// packet of `family` (the whole of a GSO super-packet: `len` is the
/// skb's); `None` when the
/// packet is not TCP straight after the IP header (an IPv6 extension
/// header, a fragment), or cannot be read: dropped.
#[inline(always)]
fn tcp_payload(ctx: &SkBuffContext, fam: u32) -> Option<(u32, u32, u32)> {
    let (l3, proto) = if fam == u32::from(family::INET) {
        let frag = u16::from_be(ctx.load::<u16>(6).ok()?);
        if frag & IP_MF_OFFSET != 0 {
            return None;
        }
        let ihl = u32::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
        (ihl, ctx.load::<u8>(9).ok()?)
    } else {
        (40, ctx.load::<u8>(6).ok()?)
    };
    if proto != TCP || l3 < 20 {
        return None;
    }
    let seq = u32::from_be(ctx.load::<u32>(l3 as usize + 4).ok()?);
    let doff = u32::from(ctx.load::<u8>(l3 as usize + 12).ok()? >> 4) * 4;
    let total = ctx.len();
    let headers = l3 + doff;
    if doff < 20 || total < headers {
        return None;
    }
    Some((seq, total - headers, headers))
}
