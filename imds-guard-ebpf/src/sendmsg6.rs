//! `cgroup/sendmsg6`: IPv6 destinations of unconnected UDP sends, once per datagram.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use imds_guard_common::hook;

use crate::{
    decide::{Verdict, decide},
    dst::{Dst, active_generation, protected_v6, user_ip6, user_port},
};

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sendmsg6(&ctx).into()
}

/// Decides by hook and address only: never by the context's family, type
/// or protocol, which do not say what the caller can reach.
#[inline(always)]
fn try_sendmsg6(ctx: &SockAddrContext) -> Verdict {
    let generation = active_generation();
    let ip6 = user_ip6(ctx);
    if !protected_v6(generation, &ip6) {
        return Verdict::Allow;
    }
    decide(
        ctx,
        hook::SENDMSG6,
        generation,
        &Dst::v6(&ip6, user_port(ctx)),
    )
}
