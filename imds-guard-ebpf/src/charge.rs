//! Who made a new cgroup, and whether that creator has room left in the
//! classification map: one user with a delegated subtree (every user with
//! a systemd session) can make cgroups as fast as the kernel allows, and
//! without a bound would fill the map, leaving every cgroup made after it
//! unclassified, systemd's units included.
//!
//! A creator is the uid of the task calling mkdir(2), as the initial user
//! namespace sees it; a task in a user namespace is charged to whoever
//! created the outermost one (its `owner`), so that a user's subordinate
//! uids share the user's share, unless root created it (a container
//! runtime), when the task's own uid is charged. Root on the host (uid 0
//! in the initial user namespace) is charged nothing: its creations always
//! have room, within the map itself.
//!
//! Both classification programs run one at a time (`classify.rs`), so the
//! counts are read and written here without atomics; the agent never
//! writes [`CGROUP_CHARGES`], only its own [`AGENT_CHARGES`].

use aya_ebpf::{cty::c_void, helpers::bpf_get_current_uid_gid};
use imds_guard_common::{CHARGE_TOTAL, CgroupLimits, Offsets, charged_by};

use crate::{
    kernel::{current_task, offsets, read, read_ptr},
    maps::{AGENT_CHARGES, CGROUP_CHARGES},
    walk::{self, BOUNDS},
};

/// Written by the agent before the programs load, from the map's size.
#[unsafe(no_mangle)]
static CGROUP_LIMITS: CgroupLimits = CgroupLimits::UNSET;

/// `BPF_NOEXIST`: insert only a key not there yet.
const NOEXIST: u64 = 1;

/// Who a new cgroup is charged to.
#[derive(Clone, Copy)]
pub struct Creator {
    /// The uid charged (0 for root on the host, which is not).
    pub uid: u32,
    /// [`charged_by::NONE`] for root on the host, [`charged_by::PROGRAM`]
    /// otherwise.
    pub charged: u8,
    /// Whether it could be read: one that could not has no room.
    pub known: bool,
}

impl Creator {
    /// Named [`CHARGE_TOTAL`] in events, which no task is.
    const UNKNOWN: Self = Self {
        uid: CHARGE_TOTAL,
        charged: charged_by::PROGRAM,
        known: false,
    };

    /// The task running the program: the one calling mkdir(2).
    #[inline(always)]
    pub fn current() -> Self {
        let uid = bpf_get_current_uid_gid() as u32;
        let Some(off) = offsets() else {
            return Self::UNKNOWN;
        };
        let Some(userns) =
            read_ptr(current_task(), off.task_cred).and_then(|c| read_ptr(c, off.cred_user_ns))
        else {
            return Self::UNKNOWN;
        };
        match outermost(userns, off) {
            None => Self::UNKNOWN,
            Some(0) if uid == 0 => Self {
                uid,
                charged: charged_by::NONE,
                known: true,
            },
            Some(0) => Self::charged(uid),
            Some(top) => match read::<u32>(top, off.user_ns_owner) {
                Some(0) => Self::charged(uid),
                Some(owner) => Self::charged(owner),
                None => Self::UNKNOWN,
            },
        }
    }

    #[inline(always)]
    fn charged(uid: u32) -> Self {
        Self {
            uid,
            charged: charged_by::PROGRAM,
            known: true,
        }
    }

    /// Whether the creator may hold one more entry: its own count and the
    /// total over every creator, the program's and the agent's charges
    /// together, below the limits. Root on the host always may.
    #[inline(always)]
    pub fn has_room(&self) -> bool {
        if self.charged == charged_by::NONE {
            return true;
        }
        if !self.known {
            return false;
        }
        let Some(limits) = limits() else {
            return false;
        };
        let count = |key: u32| {
            // SAFETY: hash map values of our own maps, read at once.
            let ours = unsafe { CGROUP_CHARGES.get(key) }.copied().unwrap_or(0);
            let agent = unsafe { AGENT_CHARGES.get(key) }.copied().unwrap_or(0);
            ours.saturating_add(agent)
        };
        count(self.uid) < limits.quota && count(CHARGE_TOTAL) < limits.shared
    }

    /// Counts one more entry against the creator; `false` (nothing
    /// counted) when the charge map has no room for another creator.
    #[inline(always)]
    pub fn charge(&self) -> bool {
        if self.charged == charged_by::NONE {
            return true;
        }
        add(self.uid) && add(CHARGE_TOTAL)
    }
}

/// Takes back one entry charged to `uid` by the programs.
#[inline(always)]
pub fn uncharge(uid: u32) {
    for key in [uid, CHARGE_TOTAL] {
        if let Some(count) = CGROUP_CHARGES.get_ptr_mut(key) {
            // SAFETY: a value of our own map; the programs never run at
            // once (see the module's doc).
            let n = unsafe { *count };
            if n <= 1 && key != CHARGE_TOTAL {
                let _ = CGROUP_CHARGES.remove(key);
            } else {
                // SAFETY: as above.
                unsafe { *count = n.saturating_sub(1) };
            }
        }
    }
}

/// One more at `key`, a new key counting 1.
#[inline(always)]
fn add(key: u32) -> bool {
    match CGROUP_CHARGES.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: as in `uncharge`.
            unsafe { *count += 1 };
            true
        }
        None => CGROUP_CHARGES.insert(key, 1, NOEXIST).is_ok(),
    }
}

/// The limits, if the agent wrote them.
#[inline(always)]
fn limits() -> Option<CgroupLimits> {
    // SAFETY: a plain read of our own global; volatile so that LLVM reads
    // what the agent wrote rather than folding the zeros above.
    let limits = unsafe { core::ptr::read_volatile(&raw const CGROUP_LIMITS) };
    (limits.valid == Offsets::VALID).then_some(limits)
}

/// The outermost user namespace above the initial one on the way up from
/// `userns` (0 when `userns` is the initial one); `None` when the chain
/// cannot be read or is deeper than the build's bound (the kernel's own
/// with `bpf_loop`).
///
/// A `bpf_loop` of [`ns_step`] (as `identity.rs` walks owners): the
/// verifier checks the body once.
#[inline(never)]
fn outermost(userns: u64, off: &Offsets) -> Option<u64> {
    let mut walk = NsWalk {
        userns,
        top: 0,
        parent_off: off.user_ns_parent,
        reached: 0,
    };
    // `ns_step` reads and writes only `walk`, which lives on this frame for
    // the whole walk.
    let steps = BOUNDS.userns_depth + 1;
    let ran = walk::run(steps, steps, ns_step, (&raw mut walk).cast());
    (ran >= 0 && walk.reached == 1).then_some(walk.top)
}

/// What [`ns_step`] reads and writes, on the stack of [`outermost`].
#[repr(C)]
struct NsWalk {
    userns: u64,
    /// The last namespace below the initial one met so far.
    top: u64,
    parent_off: u32,
    /// 1 once the initial namespace is reached; 2 when a read failed.
    reached: u32,
}

/// One user namespace of [`outermost`]: the `bpf_loop` callback. Returns 1
/// to stop the loop, 0 to go on to the parent.
#[inline(never)]
extern "C" fn ns_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `NsWalk` that `outermost` passed.
    let walk = unsafe { &mut *ctx.cast::<NsWalk>() };
    let Some(parent) = read::<u64>(walk.userns, walk.parent_off) else {
        walk.reached = 2;
        return 1;
    };
    if parent == 0 {
        walk.reached = 1;
        return 1;
    }
    walk.top = walk.userns;
    walk.userns = parent;
    0
}
