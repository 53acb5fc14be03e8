//! Who is calling: the only place that reads an identity. The decision
//! (`decide.rs`) is handed a [`Caller`] and reads nothing of the task
//! itself, so the same decision serves the process calling `connect()`
//! and the owner of a socket whose packet is leaving.
//!
//! Where no identity can be established (a kernel thread, a socket no
//! process opened, a read that fails), there is no [`Caller`], and the
//! decision denies.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_get_current_cgroup_id,
};
use imds_guard_common::{Offsets, PF_KTHREAD};

use crate::kernel::{current_task, offsets, read, read_ptr};

/// The identity a decision is about, and what its record says of it.
pub struct Caller {
    /// Whom the policy judges, if anyone can be held to account: see
    /// [`Caller::ids`].
    who: Who,
    /// Thread id (the kernel's pid); 0 when the acting process is unknown.
    pub tid: u32,
    /// Thread-group id (what userspace calls the pid); 0 when unknown.
    pub tgid: u32,
    /// The cgroup v2 id: the task's, or the socket's.
    pub cgroup_id: u64,
    /// The credentials judged (`struct cred *`): the task's, or those of
    /// the socket's file; 0 when unknown. `identity.rs` reads the groups
    /// and user namespaces there.
    pub cred: u64,
    /// The socket (`struct sock *`) whose network namespace counts; 0 when
    /// unknown.
    pub sk: u64,
    /// Whether the running task is the caller itself, so that its pid
    /// namespace and its `comm` (read straight into the record, not kept
    /// here: the programs are short of stack) are the caller's.
    pub own_task: bool,
}

/// [`Caller::ids`] as plain integers, every byte written: a `Result`
/// leaves the ids of its `Err` undefined, and LLVM stores whatever register
/// it likes for them, a pointer too, which the verifier refuses ("invalid
/// size of register spill") once a decision copies the caller
/// (`kernel::forget`).
#[derive(Clone, Copy)]
struct Who {
    /// [`Who::IDS`]: the ids below; [`Who::NO_OFFSETS`]; anything else:
    /// unknown. Bytes a failed copy zeroed are unknown, never root.
    state: u32,
    uid: u32,
    gid: u32,
}

impl Who {
    const IDS: u32 = 0x4944_5321;
    const NO_OFFSETS: u32 = 1;
    const UNKNOWN: u32 = 0;

    #[inline(always)]
    fn of(ids: Result<Ids, NoCaller>) -> Self {
        match ids {
            Ok(ids) => Self {
                state: Self::IDS,
                uid: ids.uid,
                gid: ids.gid,
            },
            Err(NoCaller::NoOffsets) => Self {
                state: Self::NO_OFFSETS,
                uid: 0,
                gid: 0,
            },
            Err(NoCaller::Unknown) => Self {
                state: Self::UNKNOWN,
                uid: 0,
                gid: 0,
            },
        }
    }
}

/// The ids the policy judges.
#[derive(Clone, Copy)]
pub struct Ids {
    /// The real uid, as the initial user namespace sees it.
    pub uid: u32,
    /// The real primary gid, as the initial user namespace sees it.
    pub gid: u32,
}

/// Why a [`Caller`] has no [`Ids`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NoCaller {
    /// The agent did not hand the programs their offsets: an internal
    /// error.
    NoOffsets,
    /// Nobody can be held to account: a kernel thread, a socket without a
    /// file, or a read that failed.
    Unknown,
}

impl Caller {
    /// The task running the program: for `sock_addr` hooks, the process
    /// calling `connect()`/`sendmsg()`. A kernel thread (a kworker opening
    /// an MPTCP subflow for a peer's ADD_ADDR, say) acts for nobody: its
    /// credentials are root's, which must not count.
    #[inline(always)]
    pub fn current() -> Self {
        let pid_tgid = bpf_get_current_pid_tgid();
        let ids = current_ids();
        // `bpf_get_current_uid_gid` reads `current->cred`; its groups and
        // user namespace are read from the same object.
        let cred = match (ids, offsets()) {
            (Ok(_), Some(off)) => read_ptr(current_task(), off.task_cred).unwrap_or(0),
            _ => 0,
        };
        Self {
            who: Who::of(ids),
            tid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            cgroup_id: current_cgroup_id(),
            cred,
            sk: 0,
            own_task: true,
        }
    }

    /// Whom the policy judges, or why nobody: a state the agent never
    /// wrote (none can arise) is nobody.
    #[inline(always)]
    pub fn ids(&self) -> Result<Ids, NoCaller> {
        match self.who.state {
            Who::IDS => Ok(Ids {
                uid: self.who.uid,
                gid: self.who.gid,
            }),
            Who::NO_OFFSETS => Err(NoCaller::NoOffsets),
            _ => Err(NoCaller::Unknown),
        }
    }

    /// The same caller, acting on the socket at `sk` (a `struct sock *`),
    /// whose network namespace is the one that counts.
    #[inline(always)]
    pub fn with_socket(mut self, sk: Option<u64>) -> Self {
        self.sk = sk.unwrap_or(0);
        self
    }

    /// The owner of the socket at `sk` (a `struct sock *`): the
    /// credentials of whoever opened it (`sk->sk_socket->file->f_cred`),
    /// which is what firewalls' owner matches read too. A socket without a
    /// file (a kernel socket: an MPTCP subflow, a tunnel's, the stack's
    /// own) has no owner.
    ///
    /// The acting process is named only when the running task is the
    /// owner itself (same credentials object, so the same process): a
    /// packet may leave from a timer or another CPU's softirq.
    #[inline(always)]
    pub fn of_socket(sk: Option<u64>, cgroup_id: u64) -> Self {
        let mut caller = Self {
            who: Who::of(Err(NoCaller::Unknown)),
            tid: 0,
            tgid: 0,
            cgroup_id,
            cred: 0,
            sk: sk.unwrap_or(0),
            own_task: false,
        };
        let Some(off) = offsets() else {
            caller.who = Who::of(Err(NoCaller::NoOffsets));
            return caller;
        };
        let Some(cred) = sk.and_then(|sk| socket_cred(sk, off)) else {
            return caller;
        };
        // Both read before `ids` is set: an `Err` built half-way leaves the
        // gid undefined, and LLVM stored an uninitialised register for it,
        // which the verifier refuses (`R2 !read_ok`).
        let (Some(uid), Some(gid)) = (read(cred, off.cred_uid), read(cred, off.cred_gid)) else {
            return caller;
        };
        caller.who = Who::of(Ok(Ids { uid, gid }));
        caller.cred = cred;
        // Read from the task itself: `cgroup_skb` programs may not call
        // `bpf_get_current_pid_tgid` or `bpf_get_current_comm` before
        // Linux 6.10.
        let task = current_task();
        if read_ptr(task, off.task_cred) == Some(cred) {
            caller.own_task = true;
            caller.tid = read(task, off.task_pid).unwrap_or(0);
            caller.tgid = read(task, off.task_tgid).unwrap_or(0);
        }
        caller
    }
}

/// The running task's ids, unless it is a kernel thread.
#[inline(always)]
fn current_ids() -> Result<Ids, NoCaller> {
    let off = offsets().ok_or(NoCaller::NoOffsets)?;
    let flags: u32 = read(current_task(), off.task_flags).ok_or(NoCaller::Unknown)?;
    if flags & PF_KTHREAD != 0 {
        return Err(NoCaller::Unknown);
    }
    // `bpf_get_current_uid_gid` reads the same fields of the task's
    // credentials, mapped into the initial user namespace.
    let uid_gid = bpf_get_current_uid_gid();
    Ok(Ids {
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
    })
}

/// `sk->sk_socket->file->f_cred`.
#[inline(always)]
fn socket_cred(sk: u64, off: &Offsets) -> Option<u64> {
    let socket = read_ptr(sk, off.sock_socket)?;
    let file = read_ptr(socket, off.socket_file)?;
    read_ptr(file, off.file_cred)
}

#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: a helper without preconditions, allowed in every program
    // type that attaches to a cgroup.
    unsafe { bpf_get_current_cgroup_id() }
}
