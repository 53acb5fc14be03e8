//! `cgroup_skb/egress`: every IP packet a local socket sends, after NAT,
//! raw headers, routing headers and options have had their say, whatever
//! the socket (TCP, UDP, UDP-Lite, raw, ICMP, SCTP, a kernel socket) and
//! whatever network namespace it lives in. A packet to a protected address
//! is judged by the policy for the socket's owner, unless a `sock_addr`
//! hook (or an earlier packet) already let that socket through to that
//! same address under the policy in force (`sock_state.rs`): after a
//! reload, or the switch from audit to enforce, the next packet of every
//! connection is judged again, and dropped when the new policy refuses it.
//!
//! The kernel runs it only for full sockets of the guarded cgroup
//! (`BPF_CGROUP_RUN_PROG_INET_EGRESS`); a packet without a local socket
//! (forwarded, from a TUN device or an `AF_PACKET` socket) never comes
//! here: the agent drops those in the forward path instead.
//!
//! A packet to an address outside the protected prefixes (`dst.rs`) leaves
//! after a load of its destination, straight from the packet, and a few
//! compares: no lookup, no helper. One to an address a prefix covers that
//! is not protected costs an array and a hash lookup more; one of a
//! connection let through under the policy in force, one storage lookup
//! and one array lookup more again.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use imds_guard_common::{event_flags, hook};

use crate::{
    backstop::{backstop, backstop_afresh},
    caller::Caller,
    decide::{Verdict, decide},
    dst::{
        Dst, Found, UNREADABLE, active_generation, may_be_protected_v4, may_be_protected_v6,
        protected_v4, protected_v6,
    },
    kernel::{address_of, opaque},
    request::judged,
    sock_state::{self, Standing},
};

/// `ETH_P_IP` and `ETH_P_IPV6` as `__sk_buff.protocol` holds them (network
/// byte order in a host-order word).
const ETH_P_IP: u32 = (0x0800u16).to_be() as u32;
const ETH_P_IPV6: u32 = (0x86ddu16).to_be() as u32;
/// IP protocols whose header starts with the ports.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_SCTP: u8 = 132;
/// The offset bits of an IPv4 header's `frag_off` (host order).
const IP_OFFSET: u16 = 0x1fff;

/// For egress, 1 lets the packet leave and 0 drops it (the sender sees
/// EPERM where it sends synchronously). One call of [`judge`] for both
/// families: inlined once per family, the decision was walked twice by the
/// verifier.
#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    let dst = match ctx.skb.protocol() {
        ETH_P_IP => v4(&ctx),
        ETH_P_IPV6 => v6(&ctx),
        _ => None,
    };
    let verdict = match dst {
        Some((mut dst, generation)) => judge(&ctx, generation, &mut dst),
        None => Verdict::Allow,
    };
    verdict.into()
}

/// The first `len` bytes of the packet (`skb->data` points at its network
/// header here), if the linear head holds them: read with direct packet
/// access, which `cgroup_skb` programs have when loaded with
/// `CAP_BPF`/`CAP_SYS_ADMIN` (`cg_skb_is_valid_access`), and costs no
/// helper. `None` when the head is shorter, and the caller reads the
/// bytes with `bpf_skb_load_bytes` instead.
#[inline(always)]
fn head(ctx: &SkBuffContext, len: usize) -> Option<usize> {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own context; the verifier turns these two
    // 4-byte loads into the packet's bounds, which it checks every read
    // against.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).data) as usize,
            core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
        )
    };
    if data + len > end { None } else { Some(data) }
}

/// The 32-bit word at byte `offset` of a head [`head`] checked to be at
/// least `offset + 4` bytes long, as the packet holds it (network byte
/// order, as `user_ip4` and the words of `user_ip6`).
///
/// # Safety
///
/// `data` must come from [`head`] with a length of at least `offset + 4`.
#[inline(always)]
unsafe fn word_at(data: usize, offset: usize) -> u32 {
    // SAFETY: within the bounds the caller checked; volatile, so that LLVM
    // makes one 4-byte load of it, which the verifier checks.
    unsafe { core::ptr::read_volatile((data + offset) as *const u32) }
}

/// The destination of an IPv4 packet, if it is protected, with the policy
/// generation it was found protected under.
#[inline(always)]
fn v4(ctx: &SkBuffContext) -> Option<(Dst, u32)> {
    // The destination is at byte 16 of the header, in network byte order,
    // as `user_ip4` holds it.
    let daddr = match head(ctx, 20) {
        // SAFETY: 20 bytes checked.
        Some(data) => unsafe { word_at(data, 16) },
        None => ctx.load::<u32>(16).ok()?,
    };
    if !may_be_protected_v4(daddr) {
        return None;
    }
    let generation = active_generation();
    let (proto, asked, port) = one_state(v4_ports(ctx));
    let found = protected_v4(generation, daddr, asked, port);
    if found == Found::NOT {
        return None;
    }
    let mut dst = Dst::v4(daddr, port);
    dst.kind = found.kind();
    dst.proto = proto;
    Some((dst, generation))
}

/// The destination of an IPv6 packet, if it is protected (its destination
/// mapped back to IPv4 when it is `::ffff:a.b.c.d`, as the `sock_addr`
/// hooks do), with the policy generation it was found protected under.
#[inline(always)]
fn v6(ctx: &SkBuffContext) -> Option<(Dst, u32)> {
    // Bytes 24..40: the destination, one 32-bit word at a time in the
    // order of `user_ip6`.
    let daddr = match head(ctx, 40) {
        // SAFETY: 40 bytes checked.
        Some(data) => unsafe {
            [
                word_at(data, 24),
                word_at(data, 28),
                word_at(data, 32),
                word_at(data, 36),
            ]
        },
        None => [
            ctx.load::<u32>(24).ok()?,
            ctx.load::<u32>(28).ok()?,
            ctx.load::<u32>(32).ok()?,
            ctx.load::<u32>(36).ok()?,
        ],
    };
    if !may_be_protected_v6(&daddr) {
        return None;
    }
    // The next header: ports only when it is the transport itself (an
    // extension header in between leaves the port unknown, and an unknown
    // port counts as a protected one).
    let proto = ctx.load::<u8>(6).unwrap_or(0);
    let (asked, port) = port_at(ctx, proto, 40);
    let (proto, asked, port) = one_state((proto, asked, port));
    let generation = active_generation();
    let found = protected_v6(generation, &daddr, asked, port);
    if found == Found::NOT {
        return None;
    }
    let mut dst = Dst::v6(&daddr, port);
    dst.kind = found.kind();
    dst.proto = proto;
    Some((dst, generation))
}

/// The protocol of an IPv4 packet, the protocol to ask the protected
/// addresses about ([`UNREADABLE`] when the port cannot be read), and its
/// destination port (0 where it has none). A fragment after the first
/// carries no transport header: its port is unreadable, as is that of a
/// packet too short to hold it.
#[inline(always)]
fn v4_ports(ctx: &SkBuffContext) -> (u8, u8, u16) {
    let Ok(proto) = ctx.load::<u8>(9) else {
        return (0, UNREADABLE, 0);
    };
    let frag = ctx.load::<u16>(6).map_or(IP_OFFSET, u16::from_be) & IP_OFFSET;
    if frag != 0 {
        return (proto, UNREADABLE, 0);
    }
    let ihl = usize::from(ctx.load::<u8>(0).unwrap_or(0) & 0x0f) * 4;
    let (asked, port) = port_at(ctx, proto, ihl);
    (proto, asked, port)
}

/// The protocol to ask about and the destination port of a transport
/// header of protocol `proto` at byte `offset`: the port of a protocol
/// that has one, [`UNREADABLE`] when it cannot be read; 0 for the others.
#[inline(always)]
fn port_at(ctx: &SkBuffContext, proto: u8, offset: usize) -> (u8, u16) {
    if !has_ports(proto) {
        return (proto, 0);
    }
    match ctx.load::<u16>(offset + 2) {
        Ok(port) => (proto, u16::from_be(port)),
        Err(_) => (UNREADABLE, 0),
    }
}

/// What the header reads found (the protocol, the protocol to ask about,
/// the port), laundered ([`opaque`]): each way of reading them (a
/// fragment, a protocol without ports, a port read or not) would
/// otherwise reach the decision as a state of its own, which 6.1's
/// verifier walked once each, past a quarter of its budget. Should the
/// copy fail, the port is unreadable: judged, fail closed.
#[inline(always)]
fn one_state(read: (u8, u8, u16)) -> (u8, u8, u16) {
    opaque(read).unwrap_or((0, UNREADABLE, 0))
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP
    )
}

/// A packet to a protected destination: let through what was let through
/// on this socket to this address under the policy in force; judge the
/// rest by the socket's owner, and remember what is let through. A socket
/// let through to this address under an earlier policy is a revocation
/// when refused now: its record says so. A socket whose caller's requests
/// are judged (issue 23) sends only what `req_msg` judged (`backstop.rs`).
#[inline(always)]
fn judge(ctx: &SkBuffContext, generation: u32, dst: &mut Dst) -> Verdict {
    let skb = ctx.skb.skb;
    let full = full_socket(ctx);
    // SAFETY: the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: null or a full socket, from `bpf_sk_fullsock`.
    match unsafe { sock_state::standing(full, dst, generation) } {
        (Standing::Current, flags) if !judged(flags) => return Verdict::Allow,
        (Standing::Current, flags) => return backstop(ctx, dst, flags),
        (Standing::Stale, _) => dst.flags = event_flags::REVOKED,
        (Standing::Unknown, _) => {}
    }
    let sk = if full.is_null() {
        None
    } else {
        address_of(full)
    };
    let mut caller = Caller::of_socket(sk, cgroup_id);
    let (recorded, entry) = decide(ctx, hook::EGRESS, generation, &mut caller, dst);
    let (lo, hi) = dst.addr_words();
    Verdict::of_answer(imds_guard_settle(
        skb,
        lo,
        hi,
        entry,
        generation | u32::from(recorded) << 8 | u32::from(dst.family) << 16,
    ))
}

/// What follows `egress`'s decision of packet `skb` to the destination
/// whose address is `lo` and `hi` ([`Dst::addr_words`]), decided as
/// `recorded` by policy `entry`; `query` holds the generation (0 or 1) in
/// its low byte, `recorded` in the next and the destination's family in
/// the third. 1 lets the packet leave, 0 drops it.
///
/// A global function (BTF linkage global, as `#[no_mangle]` makes it):
/// the verifier walks it once, on its own, with arguments it knows nothing
/// of, and `egress` sees only its answer. Inlined, this tail (the scope,
/// the store, the backstop) was walked once for every state the decision
/// ends in, and took 6.1's walk of `egress` from 149,000 instructions to
/// 297,000, past a quarter of its budget. Its arguments are the context
/// and scalars, all that kernels before 5.12 take of a global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_guard_settle(
    skb: *mut __sk_buff,
    lo: u64,
    hi: u64,
    entry: u32,
    query: u32,
) -> i32 {
    let ctx = SkBuffContext::new(skb);
    let (generation, recorded) = (query & 0xff, (query >> 8) as u8);
    let dst = Dst::from_words((query >> 16) as u8, lo, hi);
    settle(&ctx, &dst, generation, recorded, entry) as i32
}

/// [`imds_guard_settle`]'s body: a socket let through is remembered
/// (`sock_state.rs`) with the scope of the entry that let it through, and
/// a caller whose requests are judged sends only what `req_msg` judged.
#[inline(always)]
fn settle(ctx: &SkBuffContext, dst: &Dst, generation: u32, recorded: u8, entry: u32) -> Verdict {
    let Some(mut state) = sock_state::let_through(dst, generation, recorded) else {
        // A refusal leaves the state as it was: the next packet is judged
        // again (and its record rate-limited by the agent).
        return Verdict::of(recorded);
    };
    // Allowed or audited from here.
    if !sock_state::scoped(&mut state, generation, recorded, entry) {
        return Verdict::Reject;
    }
    let flags = state.flags;
    // SAFETY: null or a full socket, from `bpf_sk_fullsock`.
    let stored = unsafe { sock_state::store(full_socket(ctx), &state) };
    if judged(flags) {
        if !stored {
            return Verdict::Reject;
        }
        // Judged now, let through unjudged before (a reload, a socket
        // made before the guard): its payload leaves only once the socket
        // stands current (`backstop_afresh`).
        return backstop_afresh(ctx, dst, flags);
    }
    // Let through (allowed, or audited): `let_through` stores nothing
    // else.
    Verdict::Allow
}

/// The packet's full socket (`bpf_sk_fullsock`), or null when it has none.
#[inline(always)]
pub fn full_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own context; `sk` is this packet's socket,
    // read afresh at each call (volatile), and checked for null before
    // `bpf_sk_fullsock` as the verifier wants.
    unsafe {
        let sk = core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk);
        if sk.is_null() {
            sk
        } else {
            bpf_sk_fullsock(sk)
        }
    }
}
