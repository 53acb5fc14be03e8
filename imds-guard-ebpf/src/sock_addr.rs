//! The four `cgroup/sock_addr` entry points. `connect4`/`connect6` decide
//! TCP connects (including TCP Fast Open, whose implicit connect runs the
//! same hooks), connected UDP and MPTCP; `sendmsg4`/`sendmsg6` decide
//! unconnected UDP datagrams, which never run a connect hook (UDPv6 sends to
//! an IPv4-mapped address run `sendmsg4`).
//!
//! Each entry point is one line over a v4 or a v6 helper (helpers, not a
//! macro, so that every `#[cgroup_sock_addr(..)]` stays greppable). They
//! decide by hook, address and port: never by the context's family or
//! type, which do not say what the caller can reach (connect4 runs for an
//! AF_INET address given to an AF_INET6 socket). The socket's protocol
//! says only whether the port is a TCP or a UDP one, for an endpoint that
//! protects some ports (MPTCP reports 6, TCP); `egress` judges every
//! packet from its own headers whatever a hook let through.

use aya_ebpf::{bindings::bpf_sock_addr, macros::cgroup_sock_addr, programs::SockAddrContext};
use imds_guard_common::{NO_ID, hook};

use crate::{
    caller::Caller,
    decide::{Verdict, decide},
    dst::{
        Dst, Found, active_generation, may_be_protected_v4, may_be_protected_v6, protected_v4,
        protected_v6, user_ip4, user_ip6, user_port,
    },
    kernel::address_of,
    maps::DECIDED,
    request::{judgeable, judged},
    sock_state,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    v4(&ctx, hook::CONNECT4).into()
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    v6(&ctx, hook::CONNECT6).into()
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    v4(&ctx, hook::SENDMSG4).into()
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    v6(&ctx, hook::SENDMSG6).into()
}

/// The socket's protocol (`bpf_sock_addr.protocol`), its low byte (see
/// `dst::transport_of`), read only for a destination the prefixes cover.
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: as in `user_ip4`: one aligned 4-byte load of the context.
    let p = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).protocol) };
    p as u8
}

/// An IPv4 destination (`user_ip4`). One outside the protected prefixes
/// leaves after a load of the context and a few compares.
#[inline(always)]
fn v4(ctx: &SockAddrContext, hook: u8) -> Verdict {
    let ip4 = user_ip4(ctx);
    if !may_be_protected_v4(ip4) {
        return Verdict::Allow;
    }
    let generation = active_generation();
    let port = user_port(ctx);
    let found = protected_v4(generation, ip4, protocol(ctx), port);
    if found == Found::NOT {
        return Verdict::Allow;
    }
    let mut dst = Dst::v4(ip4, port);
    dst.kind = found.kind();
    let mut caller = Caller::current().with_socket(socket(ctx));
    let decided = decide(ctx, hook, generation, &mut caller, &mut dst);
    remembered(ctx, Family::V4, generation, decided, &caller)
}

/// An IPv6 destination (`user_ip6`), IPv4-mapped ones included.
#[inline(always)]
fn v6(ctx: &SockAddrContext, hook: u8) -> Verdict {
    let ip6 = user_ip6(ctx);
    if !may_be_protected_v6(&ip6) {
        return Verdict::Allow;
    }
    let generation = active_generation();
    let port = user_port(ctx);
    let found = protected_v6(generation, &ip6, protocol(ctx), port);
    if found == Found::NOT {
        return Verdict::Allow;
    }
    let mut dst = Dst::v6(&ip6, port);
    dst.kind = found.kind();
    let mut caller = Caller::current().with_socket(socket(ctx));
    let decided = decide(ctx, hook, generation, &mut caller, &mut dst);
    remembered(ctx, Family::V6, generation, decided, &caller)
}

/// The address of the socket being connected (`bpf_sock_addr.sk`, a full
/// socket), whose network namespace is the caller's as far as the policy
/// is concerned.
#[inline(always)]
fn socket(ctx: &SockAddrContext) -> Option<u64> {
    // SAFETY: the kernel hands cgroup/sock_addr programs a valid context,
    // whose `sk` the verifier lets us read as an 8-byte load.
    let sk = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).__bindgen_anon_1.sk) };
    address_of(sk)
}

/// Remembers a socket let through to `dst` (allowed, or audited) under
/// policy `generation`, so that `egress` does not judge its packets to
/// `dst` again (by the socket's owner, who may differ from the process
/// that connected: a setuid program, a passed descriptor) until the next
/// apply: a reload, or the switch from audit to enforce, writes another
/// epoch, and the next packet is judged by the policy then in force. One
/// record per connection, not one per packet. Should the storage not be
/// had (no memory), `egress` judges its packets by the owner instead.
///
/// The state also keeps the scope of the deciding entry: a caller whose
/// requests are judged (`request.rs`) is refused here what a sockhash
/// cannot judge, and when its socket's state cannot be stored (nothing
/// would remember that its requests are judged).
///
/// This runs in a global function ([`imds_guard_remember4`],
/// [`imds_guard_remember6`]), which the verifier walks once, on its own:
/// inlined, it was walked once for every state the decision ends in, and
/// took 6.1's walk of connect4 from 144,000 instructions to 190,000. The
/// function takes scalars only (all that kernels before 5.12 take), and
/// reads the destination again from the context.
#[inline(always)]
fn remembered(
    ctx: &SockAddrContext,
    family: Family,
    generation: u32,
    (recorded, entry): (u8, u32),
    caller: &Caller,
) -> Verdict {
    // The generation (0 or 1) in the low byte, `recorded` in the next, the
    // entry in the high half.
    let query = u64::from(generation) | u64::from(recorded) << 8 | u64::from(entry) << 32;
    let ids = caller
        .ids()
        .map_or(u64::from(NO_ID) | u64::from(NO_ID) << 32, |ids| {
            u64::from(ids.uid) | u64::from(ids.gid) << 32
        });
    let answer = match family {
        Family::V4 => {
            imds_guard_remember4(ctx.sock_addr, query, ids, caller.cgroup_id, caller.tgid)
        }
        Family::V6 => {
            imds_guard_remember6(ctx.sock_addr, query, ids, caller.cgroup_id, caller.tgid)
        }
    };
    Verdict::of_answer(answer)
}

/// Which of `user_ip4` and `user_ip6` the hook reads.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// [`remembered`] for the IPv4 hooks: the context `ctx`, the `query` and
/// the caller's ids (uid in the low half, gid in the high; [`NO_ID`] for
/// none), cgroup and process as [`remembered`] packs them. 1 lets the
/// call go on, 0 refuses it. A global function (`#[no_mangle]`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_guard_remember4(
    ctx: *mut bpf_sock_addr,
    query: u64,
    ids: u64,
    cgroup_id: u64,
    tgid: u32,
) -> i32 {
    let ctx = SockAddrContext::new(ctx);
    let addr = || Dst::v4(user_ip4(&ctx), 0).stored_addr();
    remember(&ctx, addr, query, ids, cgroup_id, tgid) as i32
}

/// [`imds_guard_remember4`] for the IPv6 hooks.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_guard_remember6(
    ctx: *mut bpf_sock_addr,
    query: u64,
    ids: u64,
    cgroup_id: u64,
    tgid: u32,
) -> i32 {
    let ctx = SockAddrContext::new(ctx);
    let addr = || Dst::v6(&user_ip6(&ctx), 0).stored_addr();
    remember(&ctx, addr, query, ids, cgroup_id, tgid) as i32
}

/// The body of the global functions above.
#[inline(always)]
fn remember(
    ctx: &SockAddrContext,
    addr: impl FnOnce() -> [u8; 16],
    query: u64,
    ids: u64,
    cgroup_id: u64,
    tgid: u32,
) -> Verdict {
    let (generation, recorded, entry) = (
        (query & 0xff) as u32,
        (query >> 8) as u8,
        (query >> 32) as u32,
    );
    let Some(mut state) = sock_state::let_through_at(addr, generation, recorded) else {
        return Verdict::of(recorded);
    };
    if !sock_state::scoped(&mut state, generation, recorded, entry) {
        return Verdict::Reject;
    }
    let judged = judged(state.flags);
    if judged && !judgeable(socket(ctx), sock_type(ctx), u32::from(protocol(ctx))) {
        return Verdict::Reject;
    }
    state.uid = ids as u32;
    state.gid = (ids >> 32) as u32;
    state.cgroup_id = cgroup_id;
    state.tgid = tgid;
    // SAFETY: the helper reads the socket of the program's own context,
    // which the kernel guarantees is a full socket here; a non-null
    // result points at this socket's storage, valid for this run.
    unsafe {
        let p = DECIDED.get_or_insert_ptr_mut(ctx, Some(&mut state));
        if p.is_null() {
            if judged {
                return Verdict::Reject;
            }
        } else {
            // An existing storage (a datagram socket connected again)
            // keeps nothing of its last connect: overwritten whole.
            *p = state;
        }
    }
    Verdict::of(recorded)
}

/// The socket's type (`bpf_sock_addr.type`).
#[inline(always)]
fn sock_type(ctx: &SockAddrContext) -> u32 {
    // SAFETY: as in `protocol`: one aligned 4-byte load of the context.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).type_) }
}
