//! The decision for a protected destination: what the policy says of the
//! caller, the event and the counters. Only protected destinations get
//! here; everything else was allowed by the hook after one map lookup.
//! Generic over the program's context, with the caller handed in: it reads
//! nothing of the running task itself (`caller.rs` does).

use aya_ebpf::{EbpfContext, helpers::generated::bpf_ktime_get_ns, maps::HashMap};
use aya_log_ebpf::error;
use imds_guard_common::{
    EVENTS_BYTE_SIZE, Event, IdRule, IdRules, action, config_flags, counter, counter_index, kind,
    mode, reason, verdict,
};

use crate::{
    caller::{Caller, NoCaller},
    classify,
    dst::Dst,
    maps::{CONFIG, COUNTERS, EVENTS, GID_RULES, UID_RULES},
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

/// The outcome of looking the caller up in the policy.
struct Outcome {
    action: u32,
    reason: u8,
    /// The deciding entry's number (1-based), 0 for none.
    entry: u32,
}

/// Decides a connection (or datagram) by `caller` to the protected
/// destination `dst`, under policy `generation`.
#[inline(always)]
pub fn decide<C: EbpfContext>(
    ctx: &C,
    hook: u8,
    generation: u32,
    caller: &Caller,
    dst: &Dst,
) -> Verdict {
    let internal_error = Outcome {
        action: action::DENY,
        reason: reason::INTERNAL_ERROR,
        entry: 0,
    };
    let (outcome, audit) = match (CONFIG.get(generation), caller.ids) {
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
            Outcome {
                action: action::DENY,
                reason: reason::NO_IDENTITY,
                entry: 0,
            },
            cfg.mode == mode::AUDIT,
        ),
        (Some(cfg), Ok(ids)) => (
            evaluate(
                generation,
                ids.uid,
                ids.gid,
                cgroup_rule(caller.cgroup_id, generation, cfg.flags),
                cfg.default_action,
            ),
            cfg.mode == mode::AUDIT,
        ),
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

    if v == verdict::DENIED {
        Verdict::Reject
    } else {
        Verdict::Allow
    }
}

/// Deny wins over allow: uid, gid, then cgroup denies; then the cgroup's
/// allow, the uid's, the gid's (which allow decides changes only the
/// reason; the cgroup's comes first, where it costs the verifier least
/// beside the group scan); then the default. Any action other
/// than ALLOW denies: a value the agent never writes must not open the
/// door. `imds_guard::policy::Policy::decide` mirrors this order.
#[inline(always)]
fn evaluate(
    generation: u32,
    uid: u32,
    gid: u32,
    by_cgroup: CgroupRule,
    default_action: u32,
) -> Outcome {
    let by_uid = rule(&UID_RULES, uid, generation);
    let by_gid = rule(&GID_RULES, gid, generation);
    if by_uid.action != NO_RULE && by_uid.action != action::ALLOW {
        return Outcome {
            action: action::DENY,
            reason: reason::UID_DENIED,
            entry: by_uid.entry,
        };
    }
    if by_gid.action != NO_RULE && by_gid.action != action::ALLOW {
        return Outcome {
            action: action::DENY,
            reason: reason::GID_DENIED,
            entry: by_gid.entry,
        };
    }
    match by_cgroup {
        CgroupRule::Unknown => {
            return Outcome {
                action: action::DENY,
                reason: reason::CGROUP_UNKNOWN,
                entry: 0,
            };
        }
        CgroupRule::Rule(r) if r.action != NO_RULE && r.action != action::ALLOW => {
            return Outcome {
                action: action::DENY,
                reason: reason::CGROUP_DENIED,
                entry: r.entry,
            };
        }
        _ => {}
    }
    if let CgroupRule::Rule(r) = by_cgroup
        && r.action == action::ALLOW
    {
        return Outcome {
            action: action::ALLOW,
            reason: reason::CGROUP_ALLOWED,
            entry: r.entry,
        };
    }
    if by_uid.action == action::ALLOW {
        return Outcome {
            action: action::ALLOW,
            reason: reason::UID_ALLOWED,
            entry: by_uid.entry,
        };
    }
    if by_gid.action == action::ALLOW {
        return Outcome {
            action: action::ALLOW,
            reason: reason::GID_ALLOWED,
            entry: by_gid.entry,
        };
    }
    Outcome {
        action: if default_action == action::ALLOW {
            action::ALLOW
        } else {
            action::DENY
        },
        reason: reason::DEFAULT,
        entry: 0,
    }
}

/// The action of an absent rule.
const NO_RULE: u32 = action::NONE;

/// What the caller's cgroup says.
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
    if flags & config_flags::CGROUP_RULES == 0 {
        return CgroupRule::Rule(IdRule {
            action: NO_RULE,
            entry: 0,
        });
    }
    let r = classify::rule(id, generation);
    if r.action != classify::UNKNOWN {
        CgroupRule::Rule(r)
    } else if flags & config_flags::CGROUP_DENY != 0 {
        CgroupRule::Unknown
    } else {
        CgroupRule::Rule(IdRule {
            action: NO_RULE,
            entry: 0,
        })
    }
}

/// The rule for `id` in `generation`, copied out at once, with [`NO_RULE`]
/// when there is none. Keeping an `Option` of the map pointer instead lets
/// LLVM test "either lookup found something" by OR-ing the two pointers,
/// which the verifier rejects (`R7 pointer |= pointer prohibited`).
#[inline(always)]
fn rule(map: &HashMap<u32, IdRules>, id: u32, generation: u32) -> IdRule {
    match map.get_ptr(id) {
        // SAFETY: a non-null pointer from a hash map lookup points at a
        // value of the map's type, valid for the duration of the program;
        // the slot index is masked to the array's bounds.
        Some(p) => unsafe { (*p).by_generation[(generation & 1) as usize] },
        None => IdRule {
            action: NO_RULE,
            entry: 0,
        },
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
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(hook, counter::EVENTS_LOST);
        return;
    };
    // SAFETY: a helper without preconditions.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.write(Event {
        ts_ns,
        cgroup_id: caller.cgroup_id,
        tid: caller.tid,
        tgid: caller.tgid,
        // u32::MAX, `(uid_t)-1`, is no id: no process runs as it.
        uid: caller.ids.map_or(u32::MAX, |ids| ids.uid),
        gid: caller.ids.map_or(u32::MAX, |ids| ids.gid),
        entry: outcome.entry,
        port: dst.port,
        hook,
        verdict: v,
        reason: outcome.reason,
        family: dst.family,
        generation: generation as u8,
        kind: kind::DECISION,
        addr: dst.addr,
        comm: caller.comm,
        proto: dst.proto,
        _pad1: [0; 3],
    });
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
