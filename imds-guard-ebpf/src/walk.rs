//! The bounded walks over a caller's groups and user namespaces, in the
//! two builds of the programs (`build.rs` of the agent builds both): with
//! `bpf_loop` (Linux 5.17), whose body the verifier checks once, and,
//! with the `unrolled` feature, a plain loop for kernels without it (5.10
//! to 5.16), whose every step the verifier walks, so within smaller
//! bounds ([`BOUNDS`]). A walk past its bound fails closed in the caller
//! either way.

use aya_ebpf::cty::c_void;
use imds_guard_common::Bounds;

/// How far this build's walks go.
#[cfg(not(feature = "unrolled"))]
pub const BOUNDS: Bounds = Bounds::LOOP;
/// How far this build's walks go.
#[cfg(feature = "unrolled")]
pub const BOUNDS: Bounds = Bounds::UNROLLED;

/// The signature of a step: called with the index and `ctx`, returns 1 to
/// stop, 0 to go on (`bpf_loop`'s callback).
pub type Step = extern "C" fn(u64, *mut c_void) -> i64;

/// Runs `step` for indexes `0..n` until it returns non-zero; returns how
/// many steps ran (the stopping one included), or a negative error, as
/// `bpf_loop` does. `n` must be at most `bound`, a constant: the
/// unrolled build's loop is bounded by it for the verifier.
#[cfg(not(feature = "unrolled"))]
#[inline(always)]
pub fn run(n: u32, _bound: u32, step: Step, ctx: *mut c_void) -> i64 {
    // SAFETY: `step` has the callback's signature; `ctx` is the caller's
    // walk state, live on its frame for the whole call.
    unsafe { aya_ebpf::helpers::generated::bpf_loop(n, step as *mut c_void, ctx, 0) }
}

/// Runs `step` for indexes `0..n` until it returns non-zero; returns how
/// many steps ran (the stopping one included), as `bpf_loop` does. `n`
/// must be at most `bound`, a constant: the loop is bounded by it for the
/// verifier. Inlined, so that `step` is a direct call (BPF has no
/// indirect one).
#[cfg(feature = "unrolled")]
#[inline(always)]
pub fn run(n: u32, bound: u32, step: Step, ctx: *mut c_void) -> i64 {
    let mut i = 0u32;
    while i < n && i < bound {
        let stop = step(u64::from(i), ctx);
        i += 1;
        if stop != 0 {
            break;
        }
    }
    i64::from(i)
}
