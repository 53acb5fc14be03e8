//! `cgroup/sendmsg4`: IPv4 destinations of unconnected UDP sends, once per
//! datagram (UDPv6 sends to an IPv4-mapped address run this hook too).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use imds_guard_common::hook;

use crate::{
    decide::{Verdict, decide},
    dst::{Dst, active_generation, protected_v4, user_ip4, user_port},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sendmsg4(&ctx).into()
}

/// Decides by hook and address only: never by the context's family, type
/// or protocol, which do not say what the caller can reach.
#[inline(always)]
fn try_sendmsg4(ctx: &SockAddrContext) -> Verdict {
    let generation = active_generation();
    let ip4 = user_ip4(ctx);
    if !protected_v4(generation, ip4) {
        return Verdict::Allow;
    }
    decide(
        ctx,
        hook::SENDMSG4,
        generation,
        &Dst::v4(ip4, user_port(ctx)),
    )
}
