//! `status --rules`: who is allowed (and denied) right now, read from the
//! pinned maps (`kernel/rules.rs`): the uid and gid rules of the policy in
//! force, the cgroups its units, cgroup patterns and pods classify, and
//! what everyone else gets.

use std::fmt::Write as _;

use imds_guard_common::{action, mode};
use nix::unistd::{Gid, Group};
use serde_json::{Value, json};

use super::CliError;
use crate::{
    kernel::{
        pins::Pins,
        rules::{self, InForce, Rule},
    },
    policy::{
        Resolver as _, SystemResolver,
        cgroups::{Pods, pods},
    },
};

/// The rules in force in the guard pinned at `pins`.
pub fn read(pins: &Pins) -> Result<Option<InForce>, CliError> {
    rules::read(pins).map_err(CliError::runtime)
}

fn action_name(a: u32) -> &'static str {
    match a {
        action::ALLOW => "allow",
        action::ALLOW_ON_HOST => "allow_on_host",
        action::DENY => "deny",
        _ => "none",
    }
}

fn action_words(a: u32) -> &'static str {
    match a {
        action::ALLOW => "allowed",
        action::ALLOW_ON_HOST => "allowed on the host only",
        action::DENY => "denied",
        _ => "no rule",
    }
}

fn mode_name(m: u32) -> &'static str {
    match m {
        mode::ENFORCE => "enforce",
        mode::AUDIT => "audit",
        _ => "unset (the programs deny: fail closed)",
    }
}

fn user(uid: u64) -> Option<String> {
    u32::try_from(uid)
        .ok()
        .and_then(|u| SystemResolver.user_name(u))
}

fn group(gid: u64) -> Option<String> {
    let gid = u32::try_from(gid).ok()?;
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// `uid 0 (root)`, `gid 1500`.
fn named(kind: &str, r: &Rule, name: Option<String>) -> String {
    match name {
        Some(n) => format!("{kind} {} ({})", r.id, crate::text::printable(&n)),
        None => format!("{kind} {}", r.id),
    }
}

/// The pod whose cgroup `path` is, among those the kubelet lists.
fn pod_at(path: Option<&String>, listed: &Pods) -> Option<String> {
    path.and_then(|p| pods::pod_of(p.as_bytes(), listed))
        .map(ToString::to_string)
}

/// Indented lines for `status`; a cgroup of a pod the kubelet lists
/// (`listed`) is named with the pod.
pub fn to_text(r: Option<&InForce>, listed: &Pods) -> String {
    let Some(r) = r else {
        return "  rules: no guard is pinned here\n".to_owned();
    };
    let mut out = format!(
        "  rules in force (generation {}, {}):\n",
        r.generation,
        mode_name(r.mode)
    );
    let line = |out: &mut String, who: String, rule: &Rule| {
        let _ = writeln!(
            out,
            "    {who}: {} (policy entry {})",
            action_words(rule.action),
            rule.entry
        );
    };
    for rule in &r.uids {
        line(&mut out, named("uid", rule, user(rule.id)), rule);
    }
    for rule in &r.gids {
        line(&mut out, named("gid", rule, group(rule.id)), rule);
    }
    for (rule, path) in &r.cgroups {
        let mut who = match path {
            Some(p) => format!("cgroup {}", crate::text::printable(p)),
            None => format!("cgroup id {} (not found in the hierarchy)", rule.id),
        };
        if let Some(pod) = pod_at(path.as_ref(), listed) {
            let _ = write!(who, " (pod {pod})");
        }
        line(&mut out, who, rule);
    }
    let _ = writeln!(out, "    everyone else: {}", action_words(r.default_action));
    out
}

/// The same for `status --json`, as `rules`.
pub fn to_json(r: Option<&InForce>, listed: &Pods) -> Value {
    let Some(r) = r else {
        return Value::Null;
    };
    let ids = |rules: &[Rule], key: &str, name: &dyn Fn(u64) -> Option<String>| {
        rules
            .iter()
            .map(|rule| {
                let mut v = json!({"action": action_name(rule.action), "entry": rule.entry});
                v[key] = json!(rule.id);
                v["name"] = json!(name(rule.id));
                v
            })
            .collect::<Vec<_>>()
    };
    let cgroups: Vec<Value> = r
        .cgroups
        .iter()
        .map(|(rule, path)| {
            json!({
                "id": rule.id,
                "path": path,
                "pod": pod_at(path.as_ref(), listed),
                "action": action_name(rule.action),
                "entry": rule.entry,
            })
        })
        .collect();
    json!({
        "generation": r.generation,
        "mode": mode_name(r.mode),
        "default": action_name(r.default_action),
        "uids": ids(&r.uids, "uid", &user),
        "gids": ids(&r.gids, "gid", &group),
        "cgroups": cgroups,
    })
}
