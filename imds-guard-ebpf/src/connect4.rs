//! `cgroup/connect4`: IPv4 destinations of connect(): TCP, TCP Fast Open, connected UDP,
//! MPTCP, and an AF_INET address given to an AF_INET6 socket.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use imds_guard_common::hook;

use crate::{
    decide::{Verdict, decide},
    dst::{Dst, active_generation, protected_v4, user_ip4, user_port},
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx).into()
}

/// Decides by hook and address only: never by the context's family, type
/// or protocol, which do not say what the caller can reach.
#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Verdict {
    let generation = active_generation();
    let ip4 = user_ip4(ctx);
    if !protected_v4(generation, ip4) {
        return Verdict::Allow;
    }
    decide(
        ctx,
        hook::CONNECT4,
        generation,
        &Dst::v4(ip4, user_port(ctx)),
    )
}
