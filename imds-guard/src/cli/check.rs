//! `imds-guard check`: the verdict a policy gives a process, without the
//! kernel.

use std::net::IpAddr;

use nix::unistd::{Group, User};
use serde_json::json;

use super::{CheckArgs, CliError, Outcome};
use crate::policy::{
    CgroupClass, CgroupRules, CheckReport, Outcome as Verdict, Policy, PolicySpec, Resolver as _,
    SystemResolver,
    cgroups::{PodName, pods},
    check,
};

pub fn execute(args: &CheckArgs) -> Result<Outcome, CliError> {
    let policy =
        PolicySpec::load(&super::policy_file(args.config.as_deref()))?.resolve(&SystemResolver)?;
    let (uid, gid) = who(args)?;
    let groups = groups(&args.groups)?;
    let (dst, to) = destination(&policy, args.dst);
    let place = place(args, &policy)?;
    let class = place.as_ref().map_or(CgroupClass::Unmatched, |p| p.class);
    let report = check(&policy, uid, gid, class, dst);
    let asked = Asked {
        uid,
        gid,
        groups: &groups,
        to: &to,
        dst: args.dst,
        place: place.as_ref(),
    };
    if args.json {
        println!("{}", to_json(&report, &asked, &policy));
    } else {
        println!("{}", to_text(&report, &asked));
    }
    Ok(if report.outcome == Verdict::Allow {
        Outcome::Success
    } else {
        Outcome::Denied
    })
}

/// The cgroup `--unit` or `--cgroup` names, and what the policy makes of
/// it.
struct Place {
    path: String,
    class: CgroupClass,
    /// The pod whose cgroup it is, when the kubelet lists it.
    pod: Option<PodName>,
}

fn place(args: &CheckArgs, policy: &Policy) -> Result<Option<Place>, CliError> {
    let path = match (&args.unit, &args.cgroup) {
        (Some(unit), _) => found("unit", unit, SystemResolver.unit_cgroup(unit))?,
        (None, Some(path)) if path.starts_with('/') => path.clone(),
        (None, Some(path)) => {
            return Err(CliError::Usage(format!(
                "--cgroup {path:?}: a cgroup path starts with / (the cgroup v2 root)"
            )));
        }
        (None, None) => return Ok(None),
    };
    let listed = pods::list(&args.kubelet_pods_dir).map_err(CliError::runtime)?;
    let (patterns, _) = policy.cgroups.patterns(&listed);
    Ok(Some(Place {
        class: CgroupRules::classify(&patterns, path.as_bytes()),
        pod: pods::pod_of(path.as_bytes(), &listed).cloned(),
        path,
    }))
}

/// The uid and primary gid to check: `--user` (clap requires it or
/// `--uid`) looked up in the user database, `--gid` overriding the primary
/// group.
fn who(args: &CheckArgs) -> Result<(u32, u32), CliError> {
    let user = match (&args.user, args.uid) {
        (Some(name), _) => Some(found("user", name, User::from_name(name))?),
        (None, Some(uid)) => User::from_uid(uid.into()).ok().flatten(),
        (None, None) => None,
    };
    // clap requires one of --user and --uid, so this only refuses what
    // clap would have.
    let uid = args
        .uid
        .or(user.as_ref().map(|u| u.uid.as_raw()))
        .ok_or_else(|| CliError::Usage("give --user or --uid".to_owned()))?;
    let gid = args
        .gid
        .or(user.as_ref().map(|u| u.gid.as_raw()))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "uid {uid} has no entry on this host: give its primary group with --gid"
            ))
        })?;
    Ok((uid, gid))
}

/// What was asked about, as resolved.
struct Asked<'a> {
    uid: u32,
    gid: u32,
    groups: &'a [u32],
    /// The destination in words: the address, or the protected endpoints.
    to: &'a str,
    /// `--dst`, when given.
    dst: Option<IpAddr>,
    /// `--unit` or `--cgroup`, when given.
    place: Option<&'a Place>,
}

/// The address to decide for, and how to name it: `--dst`, or else the
/// first protected endpoint, named as all of them (the decision does not
/// depend on which one).
fn destination(policy: &Policy, dst: Option<IpAddr>) -> (IpAddr, String) {
    if let Some(dst) = dst {
        return (dst, dst.to_string());
    }
    let endpoints = policy.spec.addresses();
    let first = policy
        .spec
        .endpoints
        .first()
        .map_or(IpAddr::from([169, 254, 169, 254]), |e| e.addr);
    (
        first,
        format!("the protected endpoints ({})", endpoints.join(", ")),
    )
}

/// What a lookup of `kind` `name` found: a name the host does not know is
/// a usage error (2), a lookup that failed a runtime one (3).
fn found<T>(
    kind: &str,
    name: &str,
    lookup: Result<Option<T>, impl std::fmt::Display>,
) -> Result<T, CliError> {
    match lookup {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(CliError::Usage(format!(
            "{kind} {name:?} does not exist on this host"
        ))),
        Err(e) => Err(CliError::runtime(std::io::Error::other(format!(
            "cannot look up {kind} {name:?}: {e}"
        )))),
    }
}

/// `--groups`, names looked up in the group database.
fn groups(given: &[String]) -> Result<Vec<u32>, CliError> {
    given
        .iter()
        .map(|g| match g.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => found("group", g, Group::from_name(g)).map(|group| group.gid.as_raw()),
        })
        .collect()
}

fn to_text(report: &CheckReport, asked: &Asked<'_>) -> String {
    let what = match report.outcome {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
        Verdict::Audit => "denied by the policy, but let through and logged (audit mode)",
    };
    let groups = if asked.groups.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = asked.groups.iter().map(u32::to_string).collect();
        format!(
            " groups {} (supplementary groups do not count)",
            list.join(",")
        )
    };
    let cgroup = match asked.place {
        Some(Place {
            path,
            pod: Some(pod),
            ..
        }) => format!(" in cgroup {path} (pod {pod})"),
        Some(place) => format!(" in cgroup {}", place.path),
        None => String::new(),
    };
    format!(
        "{what}: uid {} gid {}{groups}{cgroup} to {}: {}",
        asked.uid, asked.gid, asked.to, report.why
    )
}

fn to_json(report: &CheckReport, asked: &Asked<'_>, policy: &Policy) -> serde_json::Value {
    let endpoints = policy.spec.addresses();
    json!({
        "verdict": report.outcome.as_str(),
        "protected": report.protected,
        "uid": asked.uid,
        "gid": asked.gid,
        "groups": asked.groups,
        "cgroup": asked.place.map(|p| p.path.as_str()),
        "pod": asked.place.and_then(|p| p.pod.as_ref()).map(ToString::to_string),
        "dst": asked.dst.map(|d| d.to_string()),
        "endpoints": endpoints,
        "reason": report.why,
    })
}
