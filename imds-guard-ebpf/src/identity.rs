//! Who the caller is beyond its uid and primary gid (issue 9), read from
//! its credentials (`cred.rs` of the kernel) at the offsets the agent
//! resolved: the supplementary groups it holds, the owners of its user
//! namespaces, and whether its namespaces are the agent's (on the host).
//!
//! Each is read only when the decision needs it: the groups when the policy
//! has a gid rule, the namespaces when an allow-on-host rule names the
//! caller (or a record is written). The owners are walked for every
//! decision, for whom the caller acts for, and looked up in the rules when
//! the policy has a uid or gid deny rule.
//! Every walk is bounded by a constant, and a read that fails makes the
//! answer "unknown", which denies: never a guess.

use aya_ebpf::cty::c_void;
use imds_guard_common::{
    HostNamespaces, IdRule, MAX_PID_NS_LEVEL, NO_ID, Offsets, action, ns, reason,
};

use crate::{
    caller::Caller,
    kernel::{current_task, opaque, read, read_ptr},
    maps::{GID_RULES, UID_RULES},
    rules::{denies, membership, rule},
    walk::{self, BOUNDS},
};

/// Written by the agent before the programs load (`EbpfLoader::set_global`):
/// the namespaces it runs in. All zero, hence not
/// [`HostNamespaces::VALID`], in a program loaded without them: then no
/// caller is on the host.
#[unsafe(no_mangle)]
static HOST: HostNamespaces = HostNamespaces::UNSET;

/// What the caller's supplementary groups say, in one register (64 bits
/// the decision keeps from the scan to the verdict).
///
/// Bits 0-31: how many groups the caller holds ([`NO_ID`]: not read);
/// 32-39, 40-47, 48-55: the index (among the groups read) of the first
/// denied group, the first group allowed anywhere, the first allowed on the
/// host only ([`Scan::NONE`] for none); 56-63: [`Scan::TOO_MANY`],
/// [`Scan::UNREADABLE`] or 0. The gid and rule at an index are read again
/// by [`group_at`] when they decide.
#[derive(Clone, Copy)]
pub struct Scan(u64);

impl Scan {
    /// No group at this index.
    pub const NONE: u8 = 0xff;
    /// More groups than [`BOUNDS`] reads: those past the bound are unknown.
    pub const TOO_MANY: u8 = 1;
    /// The groups could not be read.
    pub const UNREADABLE: u8 = 2;
    /// Not read: the policy has no gid rule.
    pub const UNREAD: Self = Self::new(NO_ID, 0);

    #[inline(always)]
    const fn new(held: u32, status: u8) -> Self {
        Self(held as u64 | 0x00ff_ffff << 32 | (status as u64) << 56)
    }

    #[inline(always)]
    pub fn held(self) -> u32 {
        self.0 as u32
    }

    #[inline(always)]
    pub fn status(self) -> u8 {
        (self.0 >> 56) as u8
    }

    #[inline(always)]
    pub fn deny(self) -> u8 {
        (self.0 >> 32) as u8
    }

    #[inline(always)]
    pub fn allow(self) -> u8 {
        (self.0 >> 40) as u8
    }

    #[inline(always)]
    pub fn host(self) -> u8 {
        (self.0 >> 48) as u8
    }

    #[inline(always)]
    fn with(self, shift: u32, index: u32) -> Self {
        Self(self.0 & !(0xff << shift) | u64::from(index) << shift)
    }
}

/// Reads the supplementary groups of the credentials at `cred`
/// (`cred->group_info`) and looks each up in the gid rules of
/// `generation`, at most [`BOUNDS`]`.groups` of them. The kernel keeps them
/// sorted (`groups_sort`), so the first match is the lowest gid. The scan
/// stops at the first denied group: deny wins.
///
/// The loop is `bpf_loop` (Linux 5.17) with [`group_step`] as its body:
/// the verifier checks the body once rather than once per group and per
/// state, which an unrolled or open-coded loop of 64 lookups took past
/// its million instructions on 6.1. Kernels without it get the unrolled
/// build ([`walk`]), with a bound of 16. A loop that ends early without a
/// reason, or a helper that fails, leaves the groups unreadable: deny.
#[inline(never)]
pub fn scan_groups(cred: u64, off: &Offsets, generation: u32) -> Scan {
    let info = read_ptr(cred, off.cred_group_info);
    let held = info.and_then(|info| read::<i32>(info, off.group_info_ngroups));
    let (Some(info), Some(held)) = (info, held.filter(|n| *n >= 0)) else {
        return Scan::new(NO_ID, Scan::UNREADABLE);
    };
    let held = held as u32;
    if held > BOUNDS.groups {
        return Scan::new(held, Scan::TOO_MANY);
    }
    let mut walk = GroupWalk {
        info,
        gid_off: off.group_info_gid,
        generation,
        held,
        stopped: 0,
        scan: Scan::new(held, 0).0,
    };
    // `group_step` reads and writes only `walk`, which lives on this frame
    // for the whole walk.
    let ran = walk::run(held, BOUNDS.groups, group_step, (&raw mut walk).cast());
    if ran < 0 || (walk.stopped == 0 && ran as u64 != u64::from(held)) {
        return Scan::new(held, Scan::UNREADABLE);
    }
    Scan(walk.scan)
}

/// What [`group_step`] reads and writes, on the stack of [`scan_groups`].
#[repr(C)]
struct GroupWalk {
    info: u64,
    gid_off: u32,
    generation: u32,
    held: u32,
    /// Non-zero when a step ended the loop (a deny or a failed read).
    stopped: u32,
    scan: u64,
}

/// One group of [`scan_groups`]: the `bpf_loop` callback for `index`.
/// Returns 1 to stop the loop, 0 to go on.
#[inline(never)]
extern "C" fn group_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `GroupWalk` that `scan_groups` passed.
    let walk = unsafe { &mut *ctx.cast::<GroupWalk>() };
    let i = index as u32 & 0xff;
    // Laundered (`opaque`): a verifier that checks the callback once
    // (before 6.7) would see only the first step's findings, none, and
    // rewrite the test for "found already" as never true.
    let Some(bits) = opaque(walk.scan) else {
        walk.scan = Scan::new(walk.held, Scan::UNREADABLE).0;
        walk.stopped = 1;
        return 1;
    };
    let scan = Scan(bits);
    let Some(gid) = read::<u32>(walk.info, walk.gid_off + i * 4) else {
        walk.scan = Scan::new(walk.held, Scan::UNREADABLE).0;
        walk.stopped = 1;
        return 1;
    };
    let action = rule(&GID_RULES, gid, walk.generation).action;
    if denies(action) {
        walk.scan = scan.with(32, i).0;
        walk.stopped = 1;
        return 1;
    }
    if action == action::ALLOW && scan.allow() == Scan::NONE {
        walk.scan = scan.with(40, i).0;
    } else if action == action::ALLOW_ON_HOST && scan.host() == Scan::NONE {
        walk.scan = scan.with(48, i).0;
    }
    0
}

/// The gid at `index` of the groups of the credentials at `cred`, and its
/// rule in `generation`: what [`scan_groups`] found there.
#[inline(always)]
pub fn group_at(cred: u64, off: &Offsets, index: u8, generation: u32) -> (u32, IdRule) {
    let gid = read_ptr(cred, off.cred_group_info)
        .and_then(|info| read::<u32>(info, off.group_info_gid + u32::from(index) * 4));
    match gid {
        Some(gid) => (gid, rule(&GID_RULES, gid, generation)),
        // Read a moment ago: a failure now leaves a rule that denies.
        None => (
            NO_ID,
            IdRule {
                action: action::DENY,
                entry: 0,
            },
        ),
    }
}

/// What the walk up the caller's user namespaces found: whether a rule
/// on a namespace's creator denies it, and whom it acts for. Every field
/// written on every path (see `caller.rs`, `Who`), so that the decision
/// can launder it whole (`forget`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owners {
    /// [`Owners::CLEAR`], [`Owners::UNREADABLE`], or the `reason` that
    /// denies: `OWNER_DENIED` (the creator's uid),
    /// `OWNER_GID_DENIED` (the gid it created the namespace with),
    /// `OWNER_MEMBER_DENIED` (a denied group it is a member of).
    pub found: u32,
    /// The denied id: the creator's uid, or the gid.
    pub decider: u32,
    /// The entry that denies it.
    pub entry: u32,
    /// The creator of the namespace where it was found.
    pub owner: u32,
    /// The creator of the outermost namespace below the initial one (the
    /// user the caller acts for); [`NO_ID`] for a caller in the initial
    /// one, or a chain that could not be read.
    pub top: u32,
}

impl Owners {
    /// No rule denies a creator (or the caller is in the initial
    /// namespace, or the walk did not run).
    pub const CLEAR: u32 = 0;
    /// The chain could not be read: deny.
    pub const UNREADABLE: u32 = reason::UNREADABLE as u32;

    /// A walk that did not run: nothing found, nobody known.
    #[inline(always)]
    pub const fn not_walked() -> Self {
        Self {
            found: Self::CLEAR,
            decider: NO_ID,
            entry: 0,
            owner: NO_ID,
            top: NO_ID,
        }
    }

    /// A chain that could not be read: it denies when the creators are
    /// `checked`, and names nobody either way.
    #[inline(always)]
    pub const fn unreadable(checked: bool) -> Self {
        Self {
            found: if checked {
                Self::UNREADABLE
            } else {
                Self::CLEAR
            },
            ..Self::not_walked()
        }
    }
}

/// Walks from the user namespace of the credentials at `cred` up to the
/// initial one. A user with subordinate ids (rootless podman) whose
/// processes run as uid 100000 in a namespace it created is still that
/// user, and a namespace keeps none of its creator's supplementary
/// groups, only its uid and effective gid (`owner`, `group`): so with
/// `check`, each creator is looked up in the uid rules of `generation`,
/// the gid it created the namespace with in the gid rules, and the
/// creator again among the members of denied groups ([`MEMBERS`]), and
/// the first denial, innermost first, is what is found. Without, only
/// whom the caller acts for is (for its record). The walk goes on to the
/// initial namespace either way: the outermost creator is the user the
/// caller acts for. The initial namespace itself is not looked at: it has
/// no parent, and its owner field (root) names nobody who created it.
///
/// A `bpf_loop` of [`owner_step`], as [`scan_groups`] is (unrolled, to a
/// depth of 8, where the kernel has none): a walk that does not reach the
/// initial namespace within the bound, or a helper that fails, leaves the
/// chain unreadable ([`Owners::unreadable`]).
///
/// [`MEMBERS`]: crate::maps::MEMBERS
#[inline(never)]
pub fn walk_owners(cred: u64, off: &Offsets, generation: u32, check: bool) -> Owners {
    let Some(userns) = read_ptr(cred, off.cred_user_ns) else {
        return Owners::unreadable(check);
    };
    let mut walk = OwnerWalk {
        userns,
        parent_off: off.user_ns_parent,
        owner_off: off.user_ns_owner,
        group_off: off.user_ns_group,
        generation,
        check: u32::from(check),
        // Until a step reaches the initial namespace: deeper than the
        // kernel nests is not a chain this understands.
        reached: 0,
        owners: Owners::not_walked(),
    };
    // One more step than the deepest namespace has owners, to reach the
    // initial one. As in `scan_groups`, for `owner_step` and `walk`.
    let steps = BOUNDS.userns_depth + 1;
    let ran = walk::run(steps, steps, owner_step, (&raw mut walk).cast());
    if ran < 0 || walk.reached == 0 {
        return Owners::unreadable(check);
    }
    walk.owners
}

/// What [`owner_step`] reads and writes, on the stack of [`walk_owners`].
#[repr(C)]
struct OwnerWalk {
    userns: u64,
    parent_off: u32,
    owner_off: u32,
    group_off: u32,
    generation: u32,
    /// Non-zero: look the creators up in the rules.
    check: u32,
    /// Non-zero once a step reached the initial namespace.
    reached: u32,
    owners: Owners,
}

/// One user namespace of [`walk_owners`]: the `bpf_loop` callback.
/// Returns 1 to stop the loop, 0 to go on to the parent.
#[inline(never)]
extern "C" fn owner_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `OwnerWalk` that `walk_owners` passed.
    let walk = unsafe { &mut *ctx.cast::<OwnerWalk>() };
    let Some(parent) = read::<u64>(walk.userns, walk.parent_off) else {
        walk.owners = Owners::unreadable(walk.check != 0);
        return 1;
    };
    if parent == 0 {
        walk.reached = 1;
        return 1;
    }
    let (Some(uid), Some(gid)) = (
        read::<u32>(walk.userns, walk.owner_off),
        read::<u32>(walk.userns, walk.group_off),
    ) else {
        walk.owners = Owners::unreadable(walk.check != 0);
        return 1;
    };
    // The outermost so far.
    walk.owners.top = uid;
    // Laundered (`opaque`), as in `group_step`: a verifier that checks the
    // callback once would see only the first step's finding, none, and
    // rewrite the test for "found already" as never true.
    let Some(found) = opaque(walk.owners.found) else {
        walk.owners = Owners::unreadable(walk.check != 0);
        return 1;
    };
    if walk.check != 0 && found == Owners::CLEAR {
        let by_uid = rule(&UID_RULES, uid, walk.generation);
        let by_gid = rule(&GID_RULES, gid, walk.generation);
        let member = membership(uid, walk.generation);
        let denied = if denies(by_uid.action) {
            Some((reason::OWNER_DENIED, uid, by_uid.entry))
        } else if denies(by_gid.action) {
            Some((reason::OWNER_GID_DENIED, gid, by_gid.entry))
        } else if member.entry != 0 {
            Some((reason::OWNER_MEMBER_DENIED, member.gid, member.entry))
        } else {
            None
        };
        if let Some((why, decider, entry)) = denied {
            walk.owners.found = u32::from(why);
            walk.owners.decider = decider;
            walk.owners.entry = entry;
            walk.owners.owner = uid;
        }
    }
    walk.userns = parent;
    0
}

/// [`imds_guard_common::ns`] bits for `caller`: which of its namespaces
/// are not the agent's, and which could not be read. Always has
/// [`ns::CHECKED`], so that 0 can mean "not read yet".
#[inline(never)]
pub fn namespaces(caller: &Caller, off: &Offsets) -> u8 {
    // SAFETY: a plain read of our own global; volatile so that LLVM reads
    // what the agent wrote rather than the zeros above.
    let host = unsafe { core::ptr::read_volatile(&raw const HOST) };
    if host.valid != HostNamespaces::VALID {
        return ns::CHECKED | ns::PID_UNKNOWN | ns::NET_UNKNOWN | ns::USER_UNKNOWN;
    }
    let pid = if caller.own_task { pid_ns(off) } else { None };
    let net = read_ptr(caller.sk, off.sock_net).and_then(|net| read::<u32>(net, off.net_inum));
    let user = read_ptr(caller.cred, off.cred_user_ns)
        .and_then(|userns| read::<u32>(userns, off.user_ns_inum));
    ns::CHECKED
        | compare(pid, host.pid, ns::PID, ns::PID_UNKNOWN)
        | compare(net, host.net, ns::NET, ns::NET_UNKNOWN)
        | compare(user, host.user, ns::USER, ns::USER_UNKNOWN)
}

#[inline(always)]
fn compare(inum: Option<u32>, host: u32, differs: u8, unknown: u8) -> u8 {
    match inum {
        Some(inum) if inum == host => 0,
        Some(_) => differs,
        None => unknown,
    }
}

/// The inode number of the running task's active pid namespace
/// (`task_active_pid_ns`: `thread_pid->numbers[thread_pid->level].ns`),
/// which is what `/proc/PID/ns/pid` names. `bpf_get_ns_current_pid_tgid`
/// would answer "is it this one" directly, but 6.1 does not offer it to
/// cgroup programs.
#[inline(always)]
fn pid_ns(off: &Offsets) -> Option<u32> {
    let pid = read_ptr(current_task(), off.task_thread_pid)?;
    let level = read::<u32>(pid, off.pid_level)?;
    if level > MAX_PID_NS_LEVEL {
        return None;
    }
    let upid = off.pid_numbers + level * off.upid_size;
    let pid_ns = read_ptr(pid, upid + off.upid_ns)?;
    read::<u32>(pid_ns, off.pid_ns_inum)
}
