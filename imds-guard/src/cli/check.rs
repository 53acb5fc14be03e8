//! `imds-guard check`: the verdict a policy gives a process, without the
//! kernel.

use nix::unistd::User;
use serde_json::json;

use super::{CheckArgs, CliError, Outcome};
use crate::policy::{CheckReport, Outcome as Verdict, PolicySpec, SystemResolver, check};

pub fn execute(args: &CheckArgs) -> Result<Outcome, CliError> {
    let policy =
        PolicySpec::load(&super::policy_file(args.config.as_deref()))?.resolve(&SystemResolver)?;
    let (uid, gid) = who(args)?;
    let report = check(&policy, uid, gid, args.dst);
    if args.json {
        println!("{}", to_json(&report, uid, gid, args));
    } else {
        println!("{}", to_text(&report, uid, gid, args));
    }
    Ok(if report.outcome == Verdict::Allow {
        Outcome::Success
    } else {
        Outcome::Denied
    })
}

/// The uid and primary gid to check: `--user` (clap requires it or
/// `--uid`) looked up in the user database, `--gid` overriding the primary
/// group.
fn who(args: &CheckArgs) -> Result<(u32, u32), CliError> {
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
    Ok((uid, gid))
}

fn to_text(report: &CheckReport, uid: u32, gid: u32, args: &CheckArgs) -> String {
    let what = match report.outcome {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
        Verdict::Audit => "denied by the policy, but let through and logged (audit mode)",
    };
    let groups = if args.groups.is_empty() {
        ""
    } else {
        " (supplementary groups do not count)"
    };
    format!(
        "{what}: uid {uid} gid {gid}{groups} to {}: {}",
        args.dst, report.why
    )
}

fn to_json(report: &CheckReport, uid: u32, gid: u32, args: &CheckArgs) -> serde_json::Value {
    json!({
        "verdict": report.outcome.as_str(),
        "protected": report.protected,
        "uid": uid,
        "gid": gid,
        "dst": args.dst.to_string(),
        "reason": report.why,
    })
}
