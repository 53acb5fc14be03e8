//! Who is calling: the only place that reads the calling task's identity.
//! The decision (`decide.rs`) is handed a [`Caller`] and reads nothing of
//! the task itself, so a program that judges someone else (a packet's
//! socket owner) can reuse it.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::bpf_get_current_cgroup_id,
};
use imds_guard_common::COMM_LEN;

/// The identity a decision is about, and what its record says of it.
pub struct Caller {
    /// The real uid, mapped into the initial user namespace.
    pub uid: u32,
    /// The real primary gid, mapped into the initial user namespace.
    pub gid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Thread-group id (what userspace calls the pid).
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    /// The cgroup v2 id.
    pub cgroup_id: u64,
}

impl Caller {
    /// The task running the program: for `sock_addr` hooks, the process
    /// calling `connect()`/`sendmsg()`.
    #[inline(always)]
    pub fn current() -> Self {
        // `bpf_get_current_uid_gid` reads the real ids of the task's
        // credentials, mapped into the initial user namespace.
        let uid_gid = bpf_get_current_uid_gid();
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: a helper without preconditions, allowed in every program
        // type that attaches to a cgroup.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        Self {
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            tid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
            cgroup_id,
        }
    }
}
