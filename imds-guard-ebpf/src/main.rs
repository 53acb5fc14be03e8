//! The eBPF side of imds-guard: one `cgroup/sock_addr` program per hook.
//!
//! `connect4`/`connect6` decide TCP connects (including TCP Fast Open, whose
//! implicit connect runs the same hooks), connected UDP, and MPTCP;
//! `sendmsg4`/`sendmsg6` decide unconnected UDP datagrams, which never run a
//! connect hook. The decision itself lives in `decide.rs`; each hook module
//! only reads its destination.
#![no_std]
#![no_main]

mod connect4;
mod connect6;
mod decide;
mod dst;
mod maps;
mod sendmsg4;
mod sendmsg6;

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
