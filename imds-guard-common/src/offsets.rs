//! Where the kernel keeps what the programs read of a caller: field offsets
//! inside kernel structures, resolved by the agent from the running
//! kernel's BTF and written into the programs' read-only data before they
//! load. Rust cannot emit the BTF relocations (CO-RE) a C program would,
//! so these take their place.

use core::mem::size_of;

/// `PF_KTHREAD` in `task_struct.flags` (include/linux/sched.h): a kernel
/// thread, which acts for nobody in particular (a kworker opening an MPTCP
/// subflow, say).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Byte offsets of the fields the programs read, each from the start of
/// the structure named in its name (`task_cred` is `task_struct.cred`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// [`Offsets::VALID`] once the agent wrote the rest: a program loaded
    /// without them decides nothing by identity and denies.
    pub valid: u32,
    /// `task_struct.flags`.
    pub task_flags: u32,
    /// `task_struct.cred`: the subjective credentials, the ones
    /// `bpf_get_current_uid_gid` reads.
    pub task_cred: u32,
    /// `cred.uid` (real uid).
    pub cred_uid: u32,
    /// `cred.gid` (real gid).
    pub cred_gid: u32,
    /// `sock.sk_socket`.
    pub sock_socket: u32,
    /// `socket.file`.
    pub socket_file: u32,
    /// `file.f_cred`: the credentials of whoever opened the socket.
    pub file_cred: u32,
    /// `task_struct.pid` (the thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (what userspace calls the pid).
    pub task_tgid: u32,
    /// `task_struct.comm`. Read from the task where the program type has
    /// no `bpf_get_current_pid_tgid`/`comm` (`cgroup_skb` before 6.10).
    pub task_comm: u32,
    // Who the caller is beyond its uid and primary gid (issue 9): every
    // group it holds, the owners of its user namespaces, and whether it
    // runs in the agent's own namespaces (on the host).
    /// `cred.group_info`: the supplementary groups.
    pub cred_group_info: u32,
    /// `group_info.ngroups`.
    pub group_info_ngroups: u32,
    /// `group_info.gid`: `kgid_t[ngroups]`, sorted by the kernel.
    pub group_info_gid: u32,
    /// `cred.user_ns`: the user namespace the credentials belong to.
    pub cred_user_ns: u32,
    /// `user_namespace.parent` (NULL for the initial one).
    pub user_ns_parent: u32,
    /// `user_namespace.owner`: the kuid that created it.
    pub user_ns_owner: u32,
    /// `user_namespace.ns.inum`.
    pub user_ns_inum: u32,
    /// `task_struct.thread_pid`: the task's `struct pid`.
    pub task_thread_pid: u32,
    /// `pid.level`: how deep its active pid namespace is.
    pub pid_level: u32,
    /// `pid.numbers`: a `struct upid` per level, 0 to `level`.
    pub pid_numbers: u32,
    /// The size of `struct upid`, the stride of `pid.numbers`.
    pub upid_size: u32,
    /// `upid.ns`.
    pub upid_ns: u32,
    /// `pid_namespace.ns.inum`.
    pub pid_ns_inum: u32,
    /// `sock.__sk_common.skc_net.net`: the socket's network namespace.
    pub sock_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `user_namespace.group`: the kgid its creator had as effective gid.
    pub user_ns_group: u32,
}
const _: () = assert!(size_of::<Offsets>() == 108);

impl Offsets {
    /// The value of [`Offsets::valid`] when the offsets are resolved.
    pub const VALID: u32 = 0x1d5_0ff5;

    /// Nothing resolved: what a program loaded without the agent's offsets
    /// holds (and denies with).
    pub const UNSET: Self = Self {
        valid: 0,
        task_flags: 0,
        task_cred: 0,
        cred_uid: 0,
        cred_gid: 0,
        sock_socket: 0,
        socket_file: 0,
        file_cred: 0,
        task_pid: 0,
        task_tgid: 0,
        task_comm: 0,
        cred_group_info: 0,
        group_info_ngroups: 0,
        group_info_gid: 0,
        cred_user_ns: 0,
        user_ns_parent: 0,
        user_ns_owner: 0,
        user_ns_inum: 0,
        task_thread_pid: 0,
        pid_level: 0,
        pid_numbers: 0,
        upid_size: 0,
        upid_ns: 0,
        pid_ns_inum: 0,
        sock_net: 0,
        net_inum: 0,
        user_ns_group: 0,
    };
}
