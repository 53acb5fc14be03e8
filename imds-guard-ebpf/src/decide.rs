//! The decision for a protected destination: what the policy says of the
//! caller, the event and the counters. Only protected destinations get
//! here; everything else was allowed by the hook after one map lookup.
//! Generic over the program's context, with the caller handed in: it reads
//! nothing of the running task itself (`caller.rs` does).

use aya_ebpf::{EbpfContext, helpers::generated::bpf_ktime_get_ns};
use aya_log_ebpf::error;
use imds_guard_common::{
    COMM_LEN, Config, EVENTS_BYTE_SIZE, Event, IdRule, NO_ID, Offsets, action, config_flags,
    counter, counter_index, endpoint_kind, kind, mode, ns, reason, verdict,
};

use crate::{
    caller::{Caller, Ids, NoCaller},
    classify,
    dst::Dst,
    identity::{Owners, Scan, group_at, namespaces, scan_groups, walk_owners},
    kernel::{forget, offsets, opaque, read_comm},
    maps::{CONFIG, COUNTERS, EVENTS, GID_RULES, UID_RULES},
    rules::{NO_RULE, denies, rule},
};

/// `bpf_ringbuf_submit` flags and `bpf_ringbuf_query`'s "bytes not yet
/// consumed" (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes past which an event wakes the agent.
const WAKEUP_AT: u32 = EVENTS_BYTE_SIZE / 4;

/// What a `cgroup/sock_addr` program returns: for the connect and sendmsg
/// hooks, 1 lets the call go on and 0 makes it fail with EPERM.
#[repr(i32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reject = 0,
    Allow = 1,
}

impl From<Verdict> for i32 {
    #[inline(always)]
    fn from(v: Verdict) -> i32 {
        v as i32
    }
}

impl Verdict {
    /// What the answer of one of our global functions says (1 lets
    /// through, anything else refuses). Read back (volatile) first, so that
    /// LLVM, which knows what the function can answer, cannot hand that
    /// value on as the program's own: the verifier knows nothing of a
    /// global function's answer, and refuses a program whose return value
    /// it cannot bound.
    #[inline(always)]
    pub fn of_answer(answer: i32) -> Self {
        // SAFETY: a local of ours.
        let answer = unsafe { core::ptr::read_volatile(&raw const answer) };
        if answer == Self::Allow as i32 {
            Self::Allow
        } else {
            Self::Reject
        }
    }

    /// What the hook returns for a decision recorded as `recorded` (one of
    /// [`verdict`]): allowed and audited go on; denied, or a value no
    /// decision records, is rejected.
    #[inline(always)]
    pub fn of(recorded: u8) -> Self {
        if recorded == verdict::ALLOWED || recorded == verdict::AUDITED {
            Self::Allow
        } else {
            Self::Reject
        }
    }
}

/// The outcome of looking the caller up in the policy.
#[derive(Clone, Copy)]
struct Outcome {
    action: u32,
    reason: u8,
    /// The deciding entry's number (1-based), 0 for none.
    entry: u32,
    /// The id whose rule decided ([`NO_ID`] for none): see
    /// `Event::decider`.
    decider: u32,
    /// Supplementary groups held, [`NO_ID`] when not read.
    ngroups: u32,
    /// [`ns`] bits, 0 when the namespaces were not read.
    namespaces: u8,
    /// The creator of the namespace whose rule decided (`OWNER_*`), else
    /// [`NO_ID`].
    owner: u32,
    /// Whom the caller acts for ([`Owners::top`]).
    top: u32,
}

impl Outcome {
    #[inline(always)]
    fn new(action: u32, reason: u8, entry: u32, decider: u32) -> Self {
        Self {
            action,
            reason,
            entry,
            decider,
            ngroups: NO_ID,
            namespaces: 0,
            owner: NO_ID,
            top: NO_ID,
        }
    }

    #[inline(always)]
    fn deny(reason: u8, entry: u32, decider: u32) -> Self {
        Self::new(action::DENY, reason, entry, decider)
    }

    #[inline(always)]
    fn allow(reason: u8, entry: u32, decider: u32) -> Self {
        Self::new(action::ALLOW, reason, entry, decider)
    }
}

/// Decides a connection (or datagram, or packet) by `caller` to the
/// protected destination `dst`, under policy `generation`; returns what
/// its record says, one of [`verdict`] ([`Verdict::of`] makes it the
/// hook's answer), and the deciding entry (1-based, 0 for none), whose
/// scope (`scope.rs`) says whether the caller's requests are judged.
#[inline(always)]
pub fn decide<C: EbpfContext>(
    ctx: &C,
    hook: u8,
    generation: u32,
    caller: &mut Caller,
    dst: &mut Dst,
) -> (u8, u32) {
    // One state from here on, however the caller and the destination were
    // found (see `forget`). A copy that fails leaves nothing to judge or
    // record: denied, and counted as an error.
    if !forget(caller) || !forget(dst) {
        bump(hook, counter::DENIED);
        bump(hook, counter::ERRORS);
        return (verdict::DENIED, 0);
    }
    let (caller, dst) = (&*caller, &*dst);
    let internal_error = Outcome::deny(reason::INTERNAL_ERROR, 0, NO_ID);
    let (outcome, audit) = match (CONFIG.get(generation), caller.ids()) {
        // Unconfigured (the agent has not written the config yet), a value
        // we never write, or no offsets to read identities with: fail
        // closed, and say so.
        (None, _) | (_, Err(NoCaller::NoOffsets)) => {
            error!(ctx, "imds-guard: no valid configuration; denying");
            (internal_error, false)
        }
        (Some(cfg), _) if cfg.mode != mode::ENFORCE && cfg.mode != mode::AUDIT => {
            error!(ctx, "imds-guard: no valid configuration; denying");
            (internal_error, false)
        }
        // Nobody to judge: deny (or, in audit mode, record the would-deny).
        (Some(cfg), Err(NoCaller::Unknown)) => (
            Outcome::deny(reason::NO_IDENTITY, 0, NO_ID),
            cfg.mode == mode::AUDIT,
        ),
        // One state from here on, whatever the outcome (see `opaque`); a
        // copy that fails denies.
        (Some(cfg), Ok(ids)) => {
            let owners = creators(caller, generation, cfg);
            let mut outcome = evaluate(generation, caller, ids, cfg, &owners, dst.kind);
            outcome.top = owners.top;
            (
                opaque(outcome).unwrap_or(internal_error),
                cfg.mode == mode::AUDIT,
            )
        }
    };

    let (v, kind) = if outcome.action == action::ALLOW {
        (verdict::ALLOWED, counter::ALLOWED)
    } else if audit {
        (verdict::AUDITED, counter::AUDITED)
    } else {
        (verdict::DENIED, counter::DENIED)
    };
    bump(hook, kind);
    if outcome.reason == reason::INTERNAL_ERROR {
        bump(hook, counter::ERRORS);
    }
    // An allowed decision is an event only when the agent logs them (debug
    // level): the counter above is what counts it.
    let log_allowed = CONFIG
        .get(generation)
        .is_some_and(|c| c.flags & config_flags::LOG_ALLOWED != 0);
    if v != verdict::ALLOWED || log_allowed {
        emit(hook, v, &outcome, caller, generation, dst);
    }

    (v, outcome.entry)
}

/// The creators of the user namespaces `caller` is in ([`walk_owners`]),
/// looked up in the rules when the policy has a deny on a uid or a gid,
/// laundered. Walked here, before the decision, for every caller with an
/// identity: here the verifier walks it from one state, where after the
/// group scan, or for the record, it would walk it once per state there
/// (past the million instructions 6.1 allows); and the record needs whom
/// the caller acts for, whatever decided. A walk that is not asked to look
/// the creators up denies nothing, even unreadable.
#[inline(always)]
fn creators(caller: &Caller, generation: u32, cfg: &Config) -> Owners {
    let Some(off) = offsets() else {
        return Owners::not_walked();
    };
    let check = cfg.flags & config_flags::CHECK_OWNERS != 0;
    let mut owners = walk_owners(caller.cred, off, generation, check);
    // A copy that fails leaves nothing known of the creators: unreadable
    // denies when they are checked.
    if !forget(&mut owners) {
        owners = Owners::unreadable(check);
    }
    owners
}

/// The policy's order: deny if the uid is denied, or the primary gid, or
/// the cgroup (or it is unclassified under a policy that denies cgroups),
/// or the caller holds more supplementary groups than are read, or one of
/// them is denied, or the creator of any user namespace the caller is in
/// (by its uid, the gid it created it with, or a denied group it is a
/// member of);
/// else, at a workload endpoint ([`endpoint_kind::WORKLOAD`]), allow a
/// caller not on the host ([`reason::WORKLOAD`]);
/// else allow if the cgroup is allowed, then the uid, then the primary
/// gid, then a supplementary group (an allow-on-host rule only for a
/// caller on the host); else the default. Any action other than ALLOW or
/// ALLOW_ON_HOST denies: a value the agent never writes must not open the
/// door.
///
/// `imds_guard::policy::Policy::decide_process` takes the same steps, and
/// one table of cases (`imds-guard/src/policy/cases.rs`) holds both to
/// them: its unit tests run the twin, `e2e/tests/decide.rs` these
/// programs, comparing each record's reason, entry and decider.
#[inline(always)]
fn evaluate(
    generation: u32,
    caller: &Caller,
    ids: Ids,
    cfg: &Config,
    owners: &Owners,
    dst_kind: u8,
) -> Outcome {
    let by_uid = rule(&UID_RULES, ids.uid, generation);
    let by_gid = rule(&GID_RULES, ids.gid, generation);
    if denies(by_uid.action) {
        return Outcome::deny(reason::UID_DENIED, by_uid.entry, ids.uid);
    }
    if denies(by_gid.action) {
        return Outcome::deny(reason::GID_DENIED, by_gid.entry, ids.gid);
    }
    // The cgroup's deny before the groups' and the owners': a deny either
    // way, decided before the scan so that the verifier walks nothing more
    // for each of the scan's states.
    let cgroup = CgroupVerdict::of(caller.cgroup_id, generation, cfg.flags);
    if let Some(denied) = cgroup.denial() {
        return denied;
    }
    // `Caller` has ids only when the offsets are there.
    let Some(off) = offsets() else {
        return Outcome::deny(reason::INTERNAL_ERROR, 0, NO_ID);
    };
    let mut scan = if cfg.flags & config_flags::SCAN_GROUPS != 0 {
        scan_groups(caller.cred, off, generation)
    } else {
        Scan::UNREAD
    };
    // Each way the scan can end is one state from here (see `forget`).
    if !forget(&mut scan) {
        return Outcome::deny(reason::INTERNAL_ERROR, 0, NO_ID);
    }
    let mut outcome = if scan.status() == Scan::TOO_MANY {
        Outcome::deny(reason::TOO_MANY_GROUPS, 0, NO_ID)
    } else if scan.status() != 0 {
        Outcome::deny(reason::UNREADABLE, 0, NO_ID)
    } else if scan.deny() != Scan::NONE {
        let (gid, rule) = group_at(caller.cred, off, scan.deny(), generation);
        Outcome::deny(reason::GROUP_DENIED, rule.entry, gid)
    } else if owners.found == Owners::UNREADABLE {
        Outcome::deny(reason::UNREADABLE, 0, NO_ID)
    } else if owners.found != Owners::CLEAR {
        // The reason the walk found (`OWNER_*`), as it wrote it.
        let mut o = Outcome::deny(owners.found as u8, owners.entry, owners.decider);
        o.owner = owners.owner;
        o
    } else {
        let mut place = Place {
            caller,
            off,
            bits: 0,
        };
        // A workload endpoint (each workload's own credentials): a caller
        // that nothing denied and that is known not to be on the host (a
        // namespace read and found not the agent's; one that could not be
        // read proves nothing here) is let through, whatever allows it or
        // not. The namespaces read here are not kept for the rules below:
        // a caller on the host goes on as at a host endpoint, from the
        // same state.
        if dst_kind == endpoint_kind::WORKLOAD {
            let bits = namespaces(caller, off);
            if bits & (ns::PID | ns::NET | ns::USER) != 0 {
                let mut a = Outcome::allow(reason::WORKLOAD, 0, NO_ID);
                a.namespaces = bits;
                a.ngroups = scan.held();
                return a;
            }
        }
        // The cgroup's allow first: which allow decides changes only the
        // reason (and an allow-on-host rule alone refuses nothing then).
        if cgroup.kind() == CgroupVerdict::ALLOW {
            let mut a = Outcome::allow(reason::CGROUP_ALLOWED, cgroup.entry(), NO_ID);
            a.ngroups = scan.held();
            return a;
        }
        let mut allowed = allowed(&mut place, generation, ids, by_uid, by_gid, scan);
        if allowed.action == action::NONE {
            allowed = if cfg.default_action == action::ALLOW {
                Outcome::allow(reason::DEFAULT, 0, NO_ID)
            } else {
                Outcome::deny(reason::DEFAULT, 0, NO_ID)
            };
        }
        allowed.namespaces = place.bits;
        allowed
    };
    outcome.ngroups = scan.held();
    outcome
}

/// Nothing denies the caller: the first rule that allows it, in the order
/// uid, primary gid, supplementary groups. An allow-on-host rule allows
/// only a caller on the host; when such rules are all that names the
/// caller, the first of them is what refuses it ([`reason::HOST_ONLY`]).
/// No rule at all: an outcome with [`action::NONE`], for the default.
#[inline(always)]
fn allowed(
    place: &mut Place<'_>,
    generation: u32,
    ids: Ids,
    by_uid: IdRule,
    by_gid: IdRule,
    scan: Scan,
) -> Outcome {
    let cred = place.caller.cred;
    if place.allows(by_uid.action) {
        return Outcome::allow(reason::UID_ALLOWED, by_uid.entry, ids.uid);
    }
    if place.allows(by_gid.action) {
        return Outcome::allow(reason::GID_ALLOWED, by_gid.entry, ids.gid);
    }
    // A group allowed on the host only comes first when it is earlier than
    // any allowed anywhere (`Scan::NONE` is the largest index).
    if scan.host() < scan.allow() {
        let (gid, rule) = group_at(cred, place.off, scan.host(), generation);
        if place.allows(rule.action) {
            return Outcome::allow(reason::GROUP_ALLOWED, rule.entry, gid);
        }
    }
    if scan.allow() != Scan::NONE {
        let (gid, rule) = group_at(cred, place.off, scan.allow(), generation);
        if rule.action == action::ALLOW {
            return Outcome::allow(reason::GROUP_ALLOWED, rule.entry, gid);
        }
    }
    if by_uid.action == action::ALLOW_ON_HOST {
        return Outcome::deny(reason::HOST_ONLY, by_uid.entry, ids.uid);
    }
    if by_gid.action == action::ALLOW_ON_HOST {
        return Outcome::deny(reason::HOST_ONLY, by_gid.entry, ids.gid);
    }
    if scan.host() != Scan::NONE {
        let (gid, rule) = group_at(cred, place.off, scan.host(), generation);
        return Outcome::deny(reason::HOST_ONLY, rule.entry, gid);
    }
    Outcome::new(action::NONE, reason::DEFAULT, 0, NO_ID)
}

/// The caller's namespaces, read the first time a rule asks.
struct Place<'a> {
    caller: &'a Caller,
    off: &'a Offsets,
    /// [`ns`] bits; 0 until read.
    bits: u8,
}

impl Place<'_> {
    /// Whether a rule with `action` lets the caller through: ALLOW always,
    /// ALLOW_ON_HOST when the caller is on the host.
    #[inline(always)]
    fn allows(&mut self, action: u32) -> bool {
        if action == action::ALLOW {
            return true;
        }
        if action != action::ALLOW_ON_HOST {
            return false;
        }
        if self.bits == 0 {
            self.bits = namespaces(self.caller, self.off);
        }
        self.bits & ns::NOT_HOST == 0
    }
}

/// What the caller's cgroup says, as one scalar the verifier knows nothing
/// of (`kernel::opaque`): the kind in the high half, the entry in the low
/// one. Carried through the group scan as a value it tracked exactly, each
/// of its kinds would be another pass over the scan's states, past the
/// verifier's million instructions.
#[derive(Clone, Copy)]
struct CgroupVerdict(u64);

impl CgroupVerdict {
    /// No cgroup rule for the caller.
    const NONE: u64 = 0;
    /// An `[allow]` pattern matches its cgroup.
    const ALLOW: u64 = 1;
    /// A `[deny]` pattern matches it (or an action never written).
    const DENY: u64 = 2;
    /// It has no classification, and the policy denies cgroups.
    const UNKNOWN: u64 = 3;

    #[inline(always)]
    fn of(id: u64, generation: u32, flags: u32) -> Self {
        let code = match cgroup_rule(id, generation, flags) {
            CgroupRule::Unknown => Self::UNKNOWN << 32,
            CgroupRule::Rule(r) if r.action == NO_RULE => Self::NONE << 32,
            CgroupRule::Rule(r) if r.action == action::ALLOW => {
                (Self::ALLOW << 32) | u64::from(r.entry)
            }
            CgroupRule::Rule(r) => (Self::DENY << 32) | u64::from(r.entry),
        };
        // A copy that fails (it reads our own stack, and does not) is no
        // classification: denied.
        Self(opaque(code).unwrap_or(Self::UNKNOWN << 32))
    }

    #[inline(always)]
    fn kind(self) -> u64 {
        self.0 >> 32
    }

    #[inline(always)]
    fn entry(self) -> u32 {
        self.0 as u32
    }

    /// The refusal it makes, if it denies.
    #[inline(always)]
    fn denial(self) -> Option<Outcome> {
        match self.kind() {
            Self::NONE | Self::ALLOW => None,
            Self::DENY => Some(Outcome::deny(reason::CGROUP_DENIED, self.entry(), NO_ID)),
            _ => Some(Outcome::deny(reason::CGROUP_UNKNOWN, 0, NO_ID)),
        }
    }
}

/// The rule of a cgroup, before [`CgroupVerdict`] launders it.
#[derive(Clone, Copy)]
enum CgroupRule {
    /// Its rule in this generation (action [`NO_RULE`] for none).
    Rule(IdRule),
    /// It has no classification, and the policy denies some cgroups.
    Unknown,
}

/// The rule of cgroup `id`: none without a cgroup rule in the policy (no
/// lookup then); unknown when it has no classification and the policy
/// denies cgroups (it could be one of them), and no rule when it only
/// allows some (an unknown cgroup is none of them).
#[inline(always)]
fn cgroup_rule(id: u64, generation: u32, flags: u32) -> CgroupRule {
    let none = CgroupRule::Rule(IdRule {
        action: NO_RULE,
        entry: 0,
    });
    if flags & config_flags::CGROUP_RULES == 0 {
        return none;
    }
    let r = classify::rule(id, generation);
    if r.action != classify::UNKNOWN {
        CgroupRule::Rule(r)
    } else if flags & config_flags::CGROUP_DENY != 0 {
        CgroupRule::Unknown
    } else {
        none
    }
}

#[inline(always)]
fn bump(hook: u8, kind: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(hook, kind)) {
        // SAFETY: a per-CPU array slot of this CPU; programs of this type
        // run with migration disabled, so no other writer races with us.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn emit(hook: u8, v: u8, outcome: &Outcome, caller: &Caller, generation: u32, dst: &Dst) {
    // Where the caller runs, for the record, if the decision did not need
    // to know (only a caller with an identity has namespaces to read).
    let namespaces = match (outcome.namespaces, caller.ids(), offsets()) {
        (0, Ok(_), Some(off)) => namespaces(caller, off),
        (bits, ..) => bits,
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(hook, counter::EVENTS_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the record just reserved, as large and as aligned as
    // an `Event` and ours until submitted. Written field by field, in
    // place: an `Event` built on the stack first and copied would cost
    // 96 of the 512 bytes `egress` has.
    unsafe {
        // SAFETY: a helper without preconditions.
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).cgroup_id = caller.cgroup_id;
        (*e).tid = caller.tid;
        (*e).tgid = caller.tgid;
        // `(uid_t)-1` is no id: no process runs as it.
        (*e).uid = caller.ids().map_or(NO_ID, |ids| ids.uid);
        (*e).gid = caller.ids().map_or(NO_ID, |ids| ids.gid);
        (*e).entry = outcome.entry;
        (*e).port = dst.port;
        (*e).hook = hook;
        (*e).verdict = v;
        (*e).reason = outcome.reason;
        (*e).family = dst.family;
        (*e).generation = generation as u8;
        (*e).kind = kind::DECISION;
        (*e).addr = dst.addr;
        (*e).comm = [0; COMM_LEN];
        (*e).proto = dst.proto;
        (*e).flags = dst.flags;
        (*e)._pad1 = [0; 2];
        (*e).decider = outcome.decider;
        (*e).ngroups = outcome.ngroups;
        (*e).namespaces = namespaces;
        (*e)._pad2 = [0; 3];
        (*e).owner = outcome.owner;
        // Whom the caller acts for, which the agent's rate limit counts it
        // as (a user's subordinate ids are that user's).
        (*e).userns_owner = outcome.top;
        (*e)._pad3 = [0; 4];
        if caller.own_task {
            read_comm(&raw mut (*e).comm);
        }
    }
    // No wake-up per event: waking the agent costs the caller microseconds.
    // The agent polls on a short timer, and is woken once the ring is a
    // quarter full so that a storm cannot fill it between two polls.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= u64::from(WAKEUP_AT) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}
