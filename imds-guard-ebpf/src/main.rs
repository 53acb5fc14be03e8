//! The eBPF side of imds-guard. This file only wires the modules up; one
//! module per program type (`sock_addr.rs`: the four `cgroup/sock_addr`
//! entry points; `skb.rs`: `cgroup_skb/egress`), `caller.rs` reads who is
//! calling and `identity.rs` its groups, user namespaces and whether it is
//! on the host (both through `kernel.rs`, the only reader of kernel memory),
//! `dst.rs` the destination and whether it is protected, `decide.rs` what
//! the policy says, `rules.rs` the rule lookups it shares with
//! `identity.rs`, `sock_state.rs` what a socket was let through to and
//! under which policy, `maps.rs` every map. `classify.rs` keeps the rule
//! of every cgroup as cgroups come and go (raw tracepoints), within each
//! creator's share of the map (`charge.rs`). `netfilter.rs` drops
//! forwarded packets to protected addresses at netfilter's forward hook
//! (a netfilter program the agent loads itself). `walk.rs` runs the walks
//! over groups and user namespaces: `bpf_loop`, or, built with the
//! `unrolled` feature for kernels without it, a bounded loop.
//! `request.rs` and `judge.rs` judge the requests of callers the policy
//! allows only some requests (`sock_ops` and `sk_msg`), `backstop.rs` is
//! `egress`'s part of it, and `judged_bytes.rs` keeps what was judged so
//! that `egress` sends nothing else.
#![no_std]
#![no_main]

mod backstop;
mod caller;
mod charge;
mod classify;
mod decide;
mod dst;
mod identity;
#[cfg(not(feature = "unrolled"))]
mod judge;
#[cfg(not(feature = "unrolled"))]
mod judged_bytes;
mod kernel;
mod maps;
mod netfilter;
mod req_record;
mod request;
mod rules;
mod skb;
mod sock_addr;
mod sock_state;
mod walk;

// Only for the BPF target: a host build of this crate (clippy over the
// workspace) unifies features with the agent, pulls in `std` through aya,
// and gets its panic handler from there.
#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel only runs programs that declare a license; the helpers used
/// here are not GPL-only, but the ring buffer output is friendlier to debug
/// with a GPL-compatible one.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
