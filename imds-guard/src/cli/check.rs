//! `imds-guard check`: the verdict a policy gives a process, without the
//! kernel.

use std::{ffi::CString, net::IpAddr};

use nix::unistd::{Gid, Group, User, getgrouplist};
use serde_json::json;

use super::{CheckArgs, CliError, Outcome, out::outln};
use crate::{
    kernel::features::Build,
    policy::{
        CgroupClass, CgroupRules, CheckReport, Destination, Outcome as Verdict, Place, Policy,
        PolicySpec, Process, Resolver as _, SystemResolver,
        cgroups::{PodName, pods},
        check,
    },
};

pub fn execute(args: &CheckArgs) -> Result<Outcome, CliError> {
    let policy =
        PolicySpec::load(&super::policy_file(args.config.as_deref()))?.resolve(&SystemResolver)?;
    let (mut process, user) = who(args)?;
    let cgroup = cgroup_place(args, &policy)?;
    process.cgroup = cgroup.as_ref().map_or(CgroupClass::Unmatched, |p| p.class);
    let (dst, to) = destination(&policy, args.dst);
    // As the programs this kernel loads read groups: 16 without bpf_loop.
    let report = check(&policy, &process, &dst, Build::running().bounds());
    let request = match (&args.request, &report.decision) {
        (Some(request), Some(decision)) if report.outcome != Verdict::Deny => {
            Some(policy.explain_request(decision, request, args.token))
        }
        _ => None,
    };
    let asked = Asked {
        process: &process,
        user: user.as_ref(),
        cgroup: cgroup.as_ref(),
        to: &to,
        args,
    };
    if args.json {
        let mut value = to_json(&report, &asked, &policy);
        if let (Some(text), Some((passes, why))) = (&args.request, &request) {
            value["request"] = json!({
                "request": text,
                "token": args.token,
                "verdict": if *passes { "allowed" } else { "refused" },
                "reason": why,
            });
        }
        outln!("{value}")?;
    } else {
        outln!("{}", to_text(&report, &asked))?;
        if let (Some(text), Some((passes, why))) = (&args.request, &request) {
            let verdict = if *passes { "allowed" } else { "refused" };
            let token = if args.token {
                " with the token header"
            } else {
                ""
            };
            outln!("request {text:?}{token}: {verdict}: {why}")?;
        }
    }
    let request_passes = request.as_ref().is_none_or(|(passes, _)| *passes);
    Ok(if report.outcome == Verdict::Allow && request_passes {
        Outcome::Success
    } else {
        Outcome::Denied
    })
}

/// The cgroup `--unit` or `--cgroup` names, and what the policy makes of
/// it.
struct CgroupPlace {
    path: String,
    class: CgroupClass,
    /// The pod whose cgroup it is, when the kubelet lists it.
    pod: Option<PodName>,
}

fn cgroup_place(args: &CheckArgs, policy: &Policy) -> Result<Option<CgroupPlace>, CliError> {
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
    Ok(Some(CgroupPlace {
        class: CgroupRules::classify(&patterns, path.as_bytes()),
        pod: pods::pod_of(path.as_bytes(), &listed).cloned(),
        path,
    }))
}

/// The process to check: `--user` (clap requires it or `--uid`) looked up
/// in the user database, `--gid` overriding the primary group, `--groups`
/// the supplementary ones (by default a login session's), `--container`
/// where it runs. Also the user's entry, when there is one.
fn who(args: &CheckArgs) -> Result<(Process, Option<User>), CliError> {
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
    let groups = match (&args.groups, &args.user, &user) {
        (Some(list), ..) => list
            .iter()
            .filter(|g| !g.is_empty())
            .map(|g| group_id(g))
            .collect::<Result<Vec<u32>, CliError>>()?,
        (None, Some(_), Some(u)) => login_groups(u)?,
        (None, ..) => Vec::new(),
    };
    let process = Process {
        uid,
        gid,
        groups,
        owners: Vec::new(),
        place: if args.container {
            Place::Container
        } else {
            Place::Host
        },
        // Set from --unit or --cgroup by the caller.
        cgroup: CgroupClass::Unmatched,
    };
    Ok((process, user))
}

/// A group named by number or by name.
fn group_id(text: &str) -> Result<u32, CliError> {
    match text.parse::<u32>() {
        Ok(gid) => Ok(gid),
        Err(_) => found("group", text, Group::from_name(text)).map(|g| g.gid.as_raw()),
    }
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

/// The address to decide for, and how to name it: `--dst`, or else the
/// first protected endpoint, named as all of them (the decision does not
/// depend on which one).
fn destination(policy: &Policy, dst: Option<Destination>) -> (Destination, String) {
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
        Destination::from(first),
        format!("the protected endpoints ({})", endpoints.join(", ")),
    )
}

/// What was asked about, as resolved.
struct Asked<'a> {
    process: &'a Process,
    /// The user's entry, when there is one.
    user: Option<&'a User>,
    /// `--unit` or `--cgroup`, when given.
    cgroup: Option<&'a CgroupPlace>,
    /// The destination in words: the address, or the protected endpoints.
    to: &'a str,
    args: &'a CheckArgs,
}

/// The groups `initgroups` gives a login session of `user`: what a
/// process it starts holds, unless it changed them.
fn login_groups(user: &User) -> Result<Vec<u32>, CliError> {
    let name = CString::new(user.name.as_bytes())
        .map_err(|_| CliError::Usage(format!("user name {:?} has a NUL", user.name)))?;
    let groups = getgrouplist(&name, user.gid).map_err(|e| {
        CliError::runtime(std::io::Error::other(format!(
            "cannot list the groups of user {:?}: {e}",
            user.name
        )))
    })?;
    Ok(groups.into_iter().map(Gid::as_raw).collect())
}

fn to_text(report: &CheckReport, asked: &Asked<'_>) -> String {
    let p = asked.process;
    let what = match report.outcome {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
        Verdict::Audit => "denied by the policy, but let through and logged (audit mode)",
    };
    let groups = if p.groups.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = p.groups.iter().map(u32::to_string).collect();
        let source = if asked.args.groups.is_none() && asked.user.is_some() {
            " (a login session's)"
        } else {
            ""
        };
        format!(" groups {}{source}", list.join(","))
    };
    let place = match p.place {
        Place::Host => "on the host",
        Place::Container => "in a container",
    };
    let in_cgroup = match asked.cgroup {
        Some(CgroupPlace {
            path,
            pod: Some(pod),
            ..
        }) => format!(" in cgroup {path} (pod {pod})"),
        Some(c) => format!(" in cgroup {}", c.path),
        None => String::new(),
    };
    format!(
        "{what}: uid {} gid {}{groups} {place}{in_cgroup} to {}: {}",
        p.uid, p.gid, asked.to, report.why
    )
}

fn to_json(report: &CheckReport, asked: &Asked<'_>, policy: &Policy) -> serde_json::Value {
    let p = asked.process;
    let cgroup = asked.cgroup;
    json!({
        "verdict": report.outcome.as_str(),
        "protected": report.protected,
        "uid": p.uid,
        "gid": p.gid,
        "groups": p.groups,
        "place": p.place.as_str(),
        "cgroup": cgroup.map(|c| c.path.as_str()),
        "pod": cgroup.and_then(|c| c.pod.as_ref()).map(ToString::to_string),
        "dst": asked.args.dst.map(|d| d.to_string()),
        "endpoints": policy.spec.addresses(),
        "reason": report.why,
    })
}
