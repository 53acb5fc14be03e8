//! The decision for a protected destination: who is calling, what the
//! policy says, the event and the counters. Only protected destinations get
//! here; everything else was allowed by the hook after one map lookup.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    },
    maps::HashMap,
    programs::SockAddrContext,
};
use aya_log_ebpf::error;
use imds_guard_common::{
    COMM_LEN, Event, IdKey, IdRule, action, counter, counter_index, mode, reason, verdict,
};

use crate::{
    dst::Dst,
    maps::{CONFIG, COUNTERS, EVENTS, GID_RULES, UID_RULES},
};

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
    rule: u32,
}

/// Decides a connection (or datagram) to the protected destination `dst`.
#[inline(always)]
pub fn decide(ctx: &SockAddrContext, hook: u8, generation: u32, dst: &Dst) -> Verdict {
    let uid_gid = bpf_get_current_uid_gid();
    // The real ids, mapped into the initial user namespace.
    let uid = uid_gid as u32;
    let gid = (uid_gid >> 32) as u32;

    let (outcome, audit) = match CONFIG.get(generation) {
        Some(cfg) if cfg.mode == mode::ENFORCE || cfg.mode == mode::AUDIT => (
            evaluate(generation, uid, gid, cfg.default_action),
            cfg.mode == mode::AUDIT,
        ),
        // Unconfigured (the agent has not written the config yet) or a
        // value we never write: fail closed, and say so.
        _ => {
            error!(ctx, "imds-guard: no valid configuration; denying");
            (
                Outcome {
                    action: action::DENY,
                    reason: reason::INTERNAL_ERROR,
                    rule: 0,
                },
                false,
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
    emit(hook, v, &outcome, uid, gid, generation, dst);

    if v == verdict::DENIED {
        Verdict::Reject
    } else {
        Verdict::Allow
    }
}

/// Deny wins over allow, uid before gid, then the default. Any action
/// other than ALLOW denies: a value the agent never writes must not open
/// the door. `imds_guard::policy::Policy::decide` mirrors this order.
#[inline(always)]
fn evaluate(generation: u32, uid: u32, gid: u32, default_action: u32) -> Outcome {
    let by_uid = rule(
        &UID_RULES,
        IdKey {
            generation,
            id: uid,
        },
    );
    let by_gid = rule(
        &GID_RULES,
        IdKey {
            generation,
            id: gid,
        },
    );
    if by_uid.action != NO_RULE && by_uid.action != action::ALLOW {
        return Outcome {
            action: action::DENY,
            reason: reason::UID_DENIED,
            rule: by_uid.rule,
        };
    }
    if by_gid.action != NO_RULE && by_gid.action != action::ALLOW {
        return Outcome {
            action: action::DENY,
            reason: reason::GID_DENIED,
            rule: by_gid.rule,
        };
    }
    if by_uid.action == action::ALLOW {
        return Outcome {
            action: action::ALLOW,
            reason: reason::UID_ALLOWED,
            rule: by_uid.rule,
        };
    }
    if by_gid.action == action::ALLOW {
        return Outcome {
            action: action::ALLOW,
            reason: reason::GID_ALLOWED,
            rule: by_gid.rule,
        };
    }
    Outcome {
        action: if default_action == action::ALLOW {
            action::ALLOW
        } else {
            action::DENY
        },
        reason: reason::DEFAULT,
        rule: 0,
    }
}

/// The action of an absent rule.
const NO_RULE: u32 = 0;

/// The rule for `id`, copied out at once, with [`NO_RULE`] when there is
/// none. Keeping an `Option` of the map pointer instead lets LLVM test
/// "either lookup found something" by OR-ing the two pointers, which the
/// verifier rejects (`R7 pointer |= pointer prohibited`).
#[inline(always)]
fn rule(map: &HashMap<IdKey, IdRule>, key: IdKey) -> IdRule {
    match map.get_ptr(key) {
        // SAFETY: a non-null pointer from a hash map lookup points at a
        // value of the map's type, valid for the duration of the program.
        Some(p) => unsafe { *p },
        None => IdRule {
            action: NO_RULE,
            rule: 0,
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
fn emit(hook: u8, v: u8, outcome: &Outcome, uid: u32, gid: u32, generation: u32, dst: &Dst) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(hook, counter::EVENTS_LOST);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    // SAFETY: helpers without preconditions, allowed in cgroup/sock_addr.
    let (ts_ns, cgroup_id) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_cgroup_id()) };
    entry.write(Event {
        ts_ns,
        cgroup_id,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid,
        gid,
        rule: outcome.rule,
        port: dst.port,
        hook,
        verdict: v,
        reason: outcome.reason,
        family: dst.family,
        generation: generation as u8,
        _pad0: 0,
        addr: dst.addr,
        comm,
        _pad1: [0; 4],
    });
    entry.submit(0);
}
