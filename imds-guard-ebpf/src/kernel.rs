//! Reading kernel memory at the offsets the agent resolved (see
//! `imds_guard_common::Offsets`): every read goes through
//! `bpf_probe_read_kernel`, which fails cleanly on a bad address, and a
//! failed read means "unknown", never a guess.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{
            bpf_probe_read_kernel as bpf_probe_read_kernel_raw, bpf_probe_read_kernel_str,
        },
    },
};
use imds_guard_common::{COMM_LEN, Offsets};

/// Written by the agent before the programs load (`EbpfLoader::set_global`);
/// all zero, hence not [`Offsets::VALID`], in a program loaded without them.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::UNSET;

/// The offsets, if the agent wrote them. A reference rather than a copy:
/// the structure is larger than a program can afford to copy onto its
/// 512-byte stack at every place that reads it.
#[inline(always)]
pub fn offsets() -> Option<&'static Offsets> {
    let slot: *const Offsets = &raw const OFFSETS;
    // SAFETY: reads a local. Volatile, so that LLVM no longer knows which
    // static the pointer names and reads what the agent wrote into the
    // object rather than folding the zeros above into the code.
    let p = unsafe { core::ptr::read_volatile(&raw const slot) };
    // SAFETY: `p` is the address of our own global, valid for the program.
    let off = unsafe { &*p };
    (off.valid == Offsets::VALID).then_some(off)
}

/// A kernel pointer or value of type `T` at `addr + offset`.
#[inline(always)]
pub fn read<T>(addr: u64, offset: u32) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies into our stack and returns an
    // error instead of faulting when the address is not readable.
    unsafe { bpf_probe_read_kernel((addr + u64::from(offset)) as *const T).ok() }
}

/// A non-null kernel pointer at `addr + offset`.
#[inline(always)]
pub fn read_ptr(addr: u64, offset: u32) -> Option<u64> {
    read::<u64>(addr, offset).filter(|&p| p != 0)
}

/// Copies the NUL-terminated kernel string at `addr` into `buf` (at most
/// `buf.len()` bytes, the NUL included); returns its length without the
/// NUL. Bytes of `buf` past the NUL are left as they were.
#[inline(always)]
pub fn read_str(addr: u64, buf: &mut [u8]) -> Option<usize> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper writes at most `buf.len()` bytes into `buf` and
    // fails cleanly on an unreadable address.
    let n = unsafe {
        bpf_probe_read_kernel_str(buf.as_mut_ptr().cast(), buf.len() as u32, addr as *const _)
    };
    (n > 0).then(|| n as usize - 1)
}

/// A copy of `value` the verifier knows nothing of ([`forget`]). The verifier carries every exact value it has seen
/// into the code that follows: a decision whose outcomes differ in a
/// reason or an entry walks the event and the counters once per outcome,
/// which took the v6 programs past the million instructions 6.1 allows.
/// Laundered, every outcome is one state. `None` when the copy fails (it
/// reads our own stack, and does not), which callers treat as an internal
/// error: fail closed.
#[inline(always)]
pub fn opaque<T: Copy>(value: T) -> Option<T> {
    let mut slot = value;
    forget(&mut slot).then_some(slot)
}

/// Makes the verifier forget what it knows of `value`, in place: the
/// bytes are copied onto themselves through `bpf_probe_read_kernel`, after
/// which the verifier holds them as unknown. Every path that built a value
/// in its own way (a caller with or without a socket, an IPv4 or an IPv6
/// destination, a scan that stopped here or there) then reaches the code
/// that follows as one state, which the verifier walks once instead of
/// once per path: what keeps the programs within 6.1's million
/// instructions. `false` when the copy fails (it reads our own stack, and
/// does not); the bytes are zero then, and callers must fail closed.
#[inline(always)]
pub fn forget<T>(value: &mut T) -> bool {
    let p: *mut c_void = (value as *mut T).cast();
    // SAFETY: copies an object of ours onto itself, `size_of::<T>()` bytes
    // of our own stack; the helper fails cleanly whatever the address.
    unsafe { bpf_probe_read_kernel_raw(p, size_of::<T>() as u32, p.cast_const()) == 0 }
}

/// The running task (`struct task_struct *`).
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// The running task's `comm`, read into `dst` (left as it is when the
/// read fails). Read from the task rather than with
/// `bpf_get_current_comm`, which `cgroup_skb` programs may not call before
/// Linux 6.10, and straight into the record, with no copy on the stack.
#[inline(always)]
pub fn read_comm(dst: *mut [u8; COMM_LEN]) {
    let Some(off) = offsets() else {
        return;
    };
    let src = current_task() + u64::from(off.task_comm);
    // SAFETY: `dst` is writable memory of `COMM_LEN` bytes (the caller's
    // contract); the helper fails cleanly on an unreadable `src`.
    unsafe {
        bpf_probe_read_kernel_buf(src as *const u8, &mut *dst).ok();
    }
}

/// The address a pointer of the programs' context holds (a `struct sock *`
/// behind `bpf_sock`), as a number that can be offset: the verifier forbids
/// arithmetic on socket pointers, but lets a privileged program copy a
/// pointer's value out of its own stack.
#[inline(always)]
pub fn address_of<T>(p: *const T) -> Option<u64> {
    let slot = p;
    // SAFETY: reads the 8 bytes of `slot`, on our own stack.
    unsafe { bpf_probe_read_kernel(&raw const slot as *const u64) }
        .ok()
        .filter(|&a| a != 0)
}
