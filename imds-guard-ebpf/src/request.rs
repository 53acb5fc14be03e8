//! Request-level judgement (issue 23, docs/design/request-level.md): a
//! caller whose deciding policy entry allows only some requests (its scope
//! has [`entry_flags::JUDGE`]) has each request it sends to a protected
//! address judged before it leaves.
//!
//! - `connect4/6` (`sock_addr.rs`) refuse, for such a caller, what a
//!   sockhash cannot judge ([`judgeable`]): anything but a TCP stream,
//!   a socket with a ULP (MPTCP subflows, kTLS), TCP Fast Open data.
//! - [`req_sockops`] puts its socket into [`REQ_SOCKS`] when the
//!   handshake completes, and starts the judged range at `write_seq`.
//! - `req_msg` (`judge.rs`, not in the build for kernels without
//!   `bpf_loop`), attached to [`REQ_SOCKS`], judges every message the
//!   socket sends and moves the judged range past what it lets through.
//! - `egress` (`backstop.rs`) drops any payload of such a socket outside
//!   the judged range: whatever reached TCP some other way never leaves.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext,
};
use imds_guard_common::{RequestOffsets, SockState, entry_flags, req_hook, req_reason, stage};

use crate::{
    dst::{may_be_protected_v4, may_be_protected_v6},
    kernel::{address_of, read},
    maps::REQ_SOCKS,
    req_record::{At, Dst, Judgement, settle_to},
    sock_state::state_of,
};

/// Written by the agent before the programs load; all zero (not
/// [`RequestOffsets::VALID`]) without them, and then nothing is judged
/// and nothing of a judged caller leaves.
#[unsafe(no_mangle)]
static REQUEST_OFFSETS: RequestOffsets = RequestOffsets::UNSET;

/// `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB` (include/uapi/linux/bpf.h).
const ACTIVE_ESTABLISHED: u32 = 4;
/// `AF_INET`, `AF_INET6`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `BPF_NOEXIST`: a socket is inserted once.
const NOEXIST: u64 = 1;
/// `SOCK_STREAM`, `IPPROTO_TCP`.
pub const SOCK_STREAM: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;

/// Whether a socket whose scope has `flags` has its requests judged: a
/// rule set, or IMDSv2 required (which needs the head parsed too).
#[inline(always)]
pub fn judged(flags: u8) -> bool {
    flags & (entry_flags::JUDGE | entry_flags::V2_REQUIRED) != 0
}

/// The offsets, if the agent wrote them.
#[inline(always)]
pub fn request_offsets() -> Option<&'static RequestOffsets> {
    let slot: *const RequestOffsets = &raw const REQUEST_OFFSETS;
    // SAFETY: reads a local; volatile, so that LLVM reads what the agent
    // wrote into the object rather than folding the zeros above (as
    // `kernel::offsets`).
    let p = unsafe { core::ptr::read_volatile(&raw const slot) };
    // SAFETY: the address of our own global.
    let off = unsafe { &*p };
    (off.valid == RequestOffsets::VALID).then_some(off)
}

/// Whether the socket at `sk` (a `struct sock *`), of type `sock_type`
/// and protocol `protocol`, can have its requests judged: a TCP stream
/// with no ULP (an MPTCP subflow, kTLS: `sk_psock_init` refuses those),
/// no Fast Open data waiting to go with the SYN (`sendto(MSG_FASTOPEN)`'s
/// `fastopen_req`, or `TCP_FASTOPEN_CONNECT`'s deferred connect: `sk_msg`
/// never sees it), not in `TCP_REPAIR` mode (which sets the stream's
/// sequence numbers by hand). Anything unreadable cannot.
#[inline(always)]
pub fn judgeable(sk: Option<u64>, sock_type: u32, protocol: u32) -> bool {
    if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP {
        return false;
    }
    let (Some(sk), Some(off)) = (sk, request_offsets()) else {
        return false;
    };
    let ulp = read::<u64>(sk, off.icsk_ulp_ops);
    let fastopen = read::<u64>(sk, off.tcp_fastopen_req);
    let repair = read::<u8>(sk, off.tcp_repair).map(|b| u32::from(b) & off.tcp_repair_mask);
    let deferred = read::<u8>(sk, off.tcp_fastopen_connect)
        .map(|b| u32::from(b) & off.tcp_fastopen_connect_mask);
    matches!(
        (ulp, fastopen, repair, deferred),
        (Some(0), Some(0), Some(0), Some(0))
    )
}

/// `cgroup/sock_ops` on the guarded cgroup: at the end of an active
/// handshake to a protected address, a socket whose caller is judged goes
/// into [`REQ_SOCKS`] (which installs `req_msg` on its send path), with
/// its judged range starting, empty, at `write_seq`. Every other callback,
/// and every other destination, leaves after a compare. A socket that
/// cannot go in (the map full, a writer already waiting in `connect`)
/// keeps an empty range: `egress` drops its payload. Always returns 1
/// (the return value of a `sock_ops` program only matters to the
/// callbacks that ask for a reply).
#[sock_ops]
pub fn req_sockops(ctx: SockOpsContext) -> u32 {
    // The build for kernels without `bpf_loop` judges no requests (the
    // agent refuses a policy with request rules there): it attaches the
    // program all the same, so that both builds guard with the same links.
    if !cfg!(feature = "unrolled") && ctx.op() == ACTIVE_ESTABLISHED {
        established(&ctx);
    }
    1
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let protected = match ctx.family() {
        AF_INET => may_be_protected_v4(ctx.remote_ip4()),
        AF_INET6 => may_be_protected_v6(&ctx.remote_ip6()),
        _ => false,
    };
    if !protected {
        return;
    }
    // SAFETY: the program's own context; `sk` is a full socket or null
    // (`is_fullsock`), checked before the helper as the verifier wants.
    let sk = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return;
    }
    // SAFETY: a full socket (a TCP socket at establishment).
    let state = unsafe { state_of(sk, 0) };
    if state.is_null() {
        return;
    }
    // SAFETY: checked for null; this socket's storage, valid for this run.
    let flags = unsafe { (*state).flags };
    if !judged(flags) && flags & entry_flags::ATTRIBUTE == 0 {
        return;
    }
    let addr = address_of(sk);
    let (Some(addr), Some(off)) = (addr, request_offsets()) else {
        refused(ctx, state, req_reason::NOT_IN_SOCKHASH);
        return;
    };
    // A writer sleeping in `sk_stream_wait_connect` is already inside the
    // plain `tcp_sendmsg`: its bytes would go past `sk_msg`.
    let pending = read::<i32>(addr, off.sk_write_pending);
    let write_seq = read::<u32>(addr, off.tcp_write_seq);
    let write_seq = match (pending, write_seq) {
        (Some(0), Some(seq)) => seq,
        (Some(p), Some(_)) if p != 0 => {
            refused(ctx, state, req_reason::WRITE_PENDING);
            return;
        }
        _ => {
            refused(ctx, state, req_reason::NOT_IN_SOCKHASH);
            return;
        }
    };
    // SAFETY: as above.
    unsafe {
        (*state).base_seq = write_seq;
        (*state).judged_end = write_seq;
    }
    // SAFETY: the program's own context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the program's own context, which the helper takes.
    let inserted = REQ_SOCKS.update(&mut cookie, unsafe { &mut *ctx.ops }, NOEXIST);
    match inserted {
        // SAFETY: as above.
        Ok(()) => unsafe { (*state).stage |= stage::IN_SOCKHASH },
        // The sockhash full (`sock_hash_alloc_elem`), a ULP the psock
        // refuses (`sk_psock_init`), anything else.
        Err(E2BIG) => refused(ctx, state, req_reason::SOCKHASH_FULL),
        Err(EINVAL) => refused(ctx, state, req_reason::ULP),
        Err(_) => refused(ctx, state, req_reason::NOT_IN_SOCKHASH),
    }
}

/// `-E2BIG`, `-EINVAL` as `bpf_sock_hash_update` returns them.
const E2BIG: i32 = -7;
const EINVAL: i32 = -22;

/// The socket of `state` could not go into [`REQ_SOCKS`] for `reason`:
/// its payload never leaves (`egress` drops it), and the refusal is
/// counted and recorded as a request refusal of the `sockops` hook.
#[inline(always)]
fn refused(ctx: &SockOpsContext, state: *mut SockState, reason: u8) {
    // SAFETY: the caller's non-null storage pointer, valid for this run.
    let s = unsafe {
        (*state).stage |= stage::REFUSED;
        *state
    };
    let ops = ctx.ops;
    // SAFETY: the program's own context, one field at a time at its own
    // offset (the verifier refuses a load through a moved context
    // pointer, which reading the array whole can compile to).
    let dst = unsafe {
        Dst::of(
            core::ptr::read_volatile(&raw const (*ops).family),
            core::ptr::read_volatile(&raw const (*ops).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*ops).remote_port),
        )
    };
    let at = At {
        dst,
        hook: req_hook::SOCKOPS,
        sender: 0,
    };
    settle_to(&at, &s, 0, &Judgement::refused(reason), core::ptr::null());
}
