//! `imds-guard check`: the verdict a policy gives a process, without the
//! kernel.

use std::ffi::CString;

use nix::unistd::{Gid, Group, User, getgrouplist};
use serde_json::json;

use super::{CheckArgs, CliError, Outcome};
use crate::policy::{
    CheckReport, Outcome as Verdict, Place, PolicySpec, Process, SystemResolver, check,
};

pub fn execute(args: &CheckArgs) -> Result<Outcome, CliError> {
    let policy =
        PolicySpec::load(&super::policy_file(args.config.as_deref()))?.resolve(&SystemResolver)?;
    let (process, user) = who(args)?;
    let report = check(&policy, &process, args.dst);
    if args.json {
        println!("{}", to_json(&report, &process, args));
    } else {
        println!("{}", to_text(&report, &process, user.as_ref(), args));
    }
    Ok(if report.outcome == Verdict::Allow {
        Outcome::Success
    } else {
        Outcome::Denied
    })
}

/// The process to check: `--user` (clap requires it or `--uid`) looked up
/// in the user database, `--gid` overriding the primary group, `--groups`
/// the supplementary ones (by default a login session's), `--container`
/// where it runs. Also the user's entry, when there is one.
fn who(args: &CheckArgs) -> Result<(Process, Option<User>), CliError> {
    let user = match (&args.user, args.uid) {
        (Some(name), _) => match User::from_name(name) {
            Ok(Some(u)) => Some(u),
            Ok(None) => {
                return Err(CliError::Usage(format!(
                    "user {name:?} does not exist on this host"
                )));
            }
            Err(e) => {
                return Err(CliError::runtime(std::io::Error::other(format!(
                    "cannot look up user {name:?}: {e}"
                ))));
            }
        },
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
    };
    Ok((process, user))
}

/// A group named by number or by name.
fn group_id(text: &str) -> Result<u32, CliError> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(text) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(CliError::Usage(format!(
            "group {text:?} does not exist on this host"
        ))),
        Err(e) => Err(CliError::runtime(std::io::Error::other(format!(
            "cannot look up group {text:?}: {e}"
        )))),
    }
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

fn to_text(report: &CheckReport, p: &Process, user: Option<&User>, args: &CheckArgs) -> String {
    let what = match report.outcome {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
        Verdict::Audit => "denied by the policy, but let through and logged (audit mode)",
    };
    let groups = if p.groups.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = p.groups.iter().map(u32::to_string).collect();
        let source = if args.groups.is_none() && user.is_some() {
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
    format!(
        "{what}: uid {} gid {}{groups} {place} to {}: {}",
        p.uid, p.gid, args.dst, report.why
    )
}

fn to_json(report: &CheckReport, p: &Process, args: &CheckArgs) -> serde_json::Value {
    json!({
        "verdict": report.outcome.as_str(),
        "protected": report.protected,
        "uid": p.uid,
        "gid": p.gid,
        "groups": p.groups,
        "place": p.place.as_str(),
        "dst": args.dst.to_string(),
        "reason": report.why,
    })
}
