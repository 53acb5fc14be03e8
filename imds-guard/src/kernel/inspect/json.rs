//! The guard as the kernel has it, as one JSON object: what `status
//! --json` prints, and what the agent writes to its status file (which
//! adds when and by whom), so that both say the same thing in the same
//! words.

use imds_guard_common::forward_flags;
use serde_json::{Value, json};

use super::Status;
use crate::{
    kernel::{features::Build, offsets, place},
    policy::hex,
};

/// What `status --json` prints of the guard: the kernel's word, field by
/// field.
pub fn to_json(status: &Status) -> Value {
    let config = status.config.map(|(generation, c)| {
        json!({
            "generation": generation,
            "epoch": c.epoch,
            "digest": hex(&c.digest),
            "applied_unix": c.applied_unix,
            "attached_unix": c.attached_unix,
            "agent_pid": c.agent_pid,
        })
    });
    let counters = status.counters.map(|c| {
        json!({
            "allowed": c.allowed,
            "denied": c.denied,
            "audited": c.audited,
            "events_lost": c.events_lost,
            "internal_errors": c.errors,
        })
    });
    json!({
        "enforcing": status.enforcing(),
        "fallback": status.in_fallback(),
        "last_reload_refused": status.reload_refused(),
        "names_left_out": status.names_left_out(),
        "attached": !status.links.is_empty(),
        "mode": status.mode_name(),
        "pin_dir": status.pin_dir,
        "cgroup": status.cgroup,
        "cgroup_id": status.links.first().map(|l| l.cgroup_id),
        "guards": status.guards.as_ref().map(|g| json!({
            "cgroup_root": g.at_root,
            "hierarchy_mount": g.mount,
            "mounted_by_agent": g.mounted_by_agent(),
            "seen_from_host_cgroup_ns": g.from_host_ns,
            "what": g.describe(),
        })),
        "links": status.links.iter().map(|l| json!({
            "program": l.program,
            "link_id": l.link_id,
            "prog_id": l.prog_id,
            "cgroup_id": l.cgroup_id,
        })).collect::<Vec<_>>(),
        "policy": config,
        "endpoints": status.endpoints,
        "counters": counters,
        "forward": forward_json(status),
        "agent_alive": status.agent_alive,
        "identity": identity_json(status),
        "cgroups": status.cgroups.map(|c| json!({
            "tracking": c.tracking,
            "patterns": c.patterns,
            "classified_cgroups": c.cgroups,
            "classified": c.classified,
            "unclassified": c.unclassified,
            "not_stored": c.not_stored,
            "over_quota": c.over_quota,
            "events_lost": c.events_lost,
            "map": {
                "entries": c.cgroups,
                "capacity": c.capacity,
                "quota_per_creator": c.quota,
                "shared": c.shared,
                "charged": c.charged,
                "largest_creator": c.largest.map(|(uid, n)| json!({"uid": uid, "entries": n})),
            },
        })),
        "other_guards": status.other_guards.iter().map(|o| json!({
            "program": o.program,
            "prog_id": o.prog_id,
        })).collect::<Vec<_>>(),
    })
}

/// What the programs read of a caller beyond its uid and gid, and the
/// kernel layout they read it at.
fn identity_json(status: &Status) -> Value {
    let Some(r) = status.resolved else {
        return Value::Null;
    };
    let (groups, owners) = status.reads();
    let offsets: serde_json::Map<String, Value> = offsets::named(&r.offsets)
        .into_iter()
        .map(|(name, value)| (name, json!(value)))
        .collect();
    let build = imds_guard_common::Bounds::from_groups(r.max_groups).and_then(Build::of);
    json!({
        "programs": build.map(Build::name),
        "max_groups": r.max_groups,
        "max_userns_depth": build.map(|b| b.bounds().userns_depth),
        "scans_groups": groups,
        "checks_userns_owners": owners,
        "host_namespaces": {
            "pid": r.host.pid,
            "net": r.host.net,
            "user": r.host.user,
            "pid_initial": place::initial("pid", r.host.pid.into()),
            "user_initial": place::initial("user", r.host.user.into()),
            "net_is_this_commands": place::own_net_ns_is(r.host.net.into()),
        },
        "offsets": offsets,
    })
}

/// The forward path: what holds it, whether it holds as the agent left
/// it, and its counts.
fn forward_json(status: &Status) -> Value {
    let f = match &status.forward {
        Ok(f) => f,
        Err(e) => return json!({"guarded": null, "error": e}),
    };
    let problem = status.forward_problem();
    let counters = f.counters();
    json!({
        "guarded": problem.is_none(),
        "problem": problem,
        "mechanism": f.mechanism().as_str(),
        "owner": f.state.map(|s| s.flags & forward_flags::NO_OWNER == 0),
        "forced": f.state.map(|s| s.flags & forward_flags::FORCED != 0),
        "links": f.links.iter().map(|l| json!({
            "name": l.name,
            "link_id": l.link_id,
            "prog_id": l.prog_id,
            "priority": l.priority,
        })).collect::<Vec<_>>(),
        "table": match &f.table {
            Ok(Some(t)) => json!({"intact": t.intact}),
            Ok(None) => Value::Null,
            Err(e) => json!({"error": e}),
        },
        "owned_table": f.owned.as_ref().ok(),
        "dropped": counters.map(|c| c.dropped),
        "audited": counters.map(|c| c.audited),
    })
}
