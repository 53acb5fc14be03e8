//! `imds-guard report imdsv1`: which units, pods and users still send
//! IMDSv1 requests (no token header) on this host, from the census the
//! request programs keep in the kernel (`REQ_USAGE`, read from its pin: the
//! agent may be stopped). What an operator asks before setting
//! `HttpTokens=required` on the instance.
//!
//! Only callers whose requests the programs parse are in the census: those
//! a `[requests.*]` table names, those IMDSv2 is required of, and, with
//! `[attribution] whole_service = true`, those allowed the whole service.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use imds_guard_common::{req_version, verdict};
use nix::unistd::{Uid, User};
use serde_json::{Value, json};

use super::{CliError, Imdsv1Args, Outcome, out::outln};
use crate::{
    kernel::{
        cgroup,
        pins::Pins,
        usage::{self, Census},
    },
    learn::time::{Micros, format_rfc3339, now},
    policy::cgroups::{Pods, pods},
};

/// One caller (a cgroup and a uid) that sent IMDSv1 requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub cgroup_id: u64,
    /// The cgroup's path from the cgroup v2 root, when it still exists.
    pub cgroup: Option<String>,
    /// The systemd unit the cgroup belongs to (the deepest `.service` or
    /// `.scope` in its path).
    pub unit: Option<String>,
    pub pod: Option<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub v1_allowed: u64,
    pub v1_refused: u64,
    /// Its IMDSv2 requests (token header) and token `PUT`s.
    pub v2: u64,
    /// When its last IMDSv1 request was counted.
    pub last_v1: Micros,
}

/// The report: callers that sent IMDSv1, and what the census says of
/// itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub callers: Vec<Caller>,
    /// Callers (cgroup and uid) that sent only IMDSv2 (or their requests
    /// could not be parsed).
    pub others: usize,
    pub full: bool,
    pub capacity: u32,
    /// Since when the census counts (its pin's time), when known.
    pub since: Option<Micros>,
}

/// Where the names of callers come from: the cgroup tree, the kubelet,
/// the user database. A trait so that the report's text is tested without
/// a host.
pub trait Names {
    fn cgroup_path(&self, id: u64) -> Option<String>;
    fn pod(&self, path: &str) -> Option<String>;
    fn user(&self, uid: u32) -> Option<String>;
}

/// The systemd unit a cgroup path belongs to: its deepest component that
/// names a service or a scope.
pub fn unit_of(path: &str) -> Option<String> {
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// Builds the report from `census`, with `mono_now` and `wall_now` the
/// clocks' readings now (the census counts in `CLOCK_MONOTONIC`).
pub fn build(
    census: &Census,
    names: &dyn Names,
    mono_now: u64,
    wall_now: Micros,
    since: Option<Micros>,
) -> Report {
    #[derive(Default)]
    struct Acc {
        v1_allowed: u64,
        v1_refused: u64,
        v2: u64,
        last_v1: u64,
    }
    let mut by_caller: BTreeMap<(u64, u32), Acc> = BTreeMap::new();
    for row in &census.rows {
        let acc = by_caller.entry((row.cgroup_id, row.uid)).or_default();
        match (row.version, row.verdict) {
            (req_version::V1, verdict::DENIED) => acc.v1_refused += row.count,
            (req_version::V1, _) => acc.v1_allowed += row.count,
            (req_version::V2 | req_version::TOKEN_PUT, _) => acc.v2 += row.count,
            _ => {}
        }
        if row.version == req_version::V1 {
            acc.last_v1 = acc.last_v1.max(row.last_ns);
        }
    }
    let wall = |mono: u64| {
        let ago = i64::try_from(mono_now.saturating_sub(mono) / 1000).unwrap_or(i64::MAX);
        wall_now.saturating_sub(ago)
    };
    let mut callers = Vec::new();
    let mut others = 0;
    for ((cgroup_id, uid), acc) in by_caller {
        if acc.v1_allowed + acc.v1_refused == 0 {
            others += 1;
            continue;
        }
        let cgroup = names.cgroup_path(cgroup_id);
        callers.push(Caller {
            cgroup_id,
            unit: cgroup.as_deref().and_then(unit_of),
            pod: cgroup.as_deref().and_then(|p| names.pod(p)),
            cgroup,
            uid,
            user: names.user(uid),
            v1_allowed: acc.v1_allowed,
            v1_refused: acc.v1_refused,
            v2: acc.v2,
            last_v1: wall(acc.last_v1),
        });
    }
    // The most IMDSv1 first.
    callers.sort_by(|a, b| {
        (b.v1_allowed + b.v1_refused)
            .cmp(&(a.v1_allowed + a.v1_refused))
            .then(a.cgroup_id.cmp(&b.cgroup_id))
            .then(a.uid.cmp(&b.uid))
    });
    Report {
        callers,
        others,
        full: census.full(),
        capacity: census.capacity,
        since,
    }
}

impl Caller {
    /// `legacy.service (/system.slice/legacy.service)`, the pod, or the
    /// cgroup id of a cgroup gone.
    pub fn place(&self) -> String {
        match (&self.pod, &self.unit, &self.cgroup) {
            (Some(pod), _, Some(path)) => format!("pod {pod} ({path})"),
            (None, Some(unit), Some(path)) => format!("{unit} ({path})"),
            (None, None, Some(path)) => format!("cgroup {path}"),
            _ => format!("cgroup id {} (gone)", self.cgroup_id),
        }
    }

    pub fn who(&self) -> String {
        match &self.user {
            Some(user) => format!("{user} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let since = self
            .since
            .map_or_else(String::new, |t| format!(" since {}", format_rfc3339(t)));
        if self.callers.is_empty() {
            let _ = writeln!(
                s,
                "No caller has sent an IMDSv1 request (one without the token header){since}."
            );
        } else {
            let _ = writeln!(
                s,
                "Callers that sent IMDSv1 requests (without the token header){since}:"
            );
            for c in &self.callers {
                let _ = writeln!(
                    s,
                    "  {} as {}: IMDSv1 {} ({} allowed, {} refused), IMDSv2 {}, last IMDSv1 at {}",
                    c.place(),
                    c.who(),
                    c.v1_allowed + c.v1_refused,
                    c.v1_allowed,
                    c.v1_refused,
                    c.v2,
                    format_rfc3339(c.last_v1)
                );
            }
        }
        if self.others > 0 {
            let _ = writeln!(
                s,
                "{} other caller(s) sent only IMDSv2 requests (or requests that could not be \
                 parsed).",
                self.others
            );
        }
        if self.full {
            let _ = writeln!(
                s,
                "The census is full ({} entries): it forgets the caller seen least recently to \
                 count a new one, so a rare IMDSv1 caller may be missing.",
                self.capacity
            );
        }
        let _ = writeln!(
            s,
            "Counted are the callers whose requests the guard parses: those a [requests.*] \
             table names, those IMDSv2 is required of, and, with [attribution] whole_service = \
             true, those allowed the whole service."
        );
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "callers": self.callers.iter().map(|c| json!({
                "cgroup_id": c.cgroup_id,
                "cgroup": c.cgroup,
                "unit": c.unit,
                "pod": c.pod,
                "uid": c.uid,
                "user": c.user,
                "v1": c.v1_allowed + c.v1_refused,
                "v1_allowed": c.v1_allowed,
                "v1_refused": c.v1_refused,
                "v2": c.v2,
                "last_v1": format_rfc3339(c.last_v1),
            })).collect::<Vec<_>>(),
            "others": self.others,
            "full": self.full,
            "capacity": self.capacity,
            "since": self.since.map(format_rfc3339),
        })
    }

    /// One line for `status`: the callers still using IMDSv1, or none.
    pub fn status_line(&self) -> String {
        let since = self
            .since
            .map_or_else(String::new, |t| format!(" since {}", format_rfc3339(t)));
        let full = if self.full {
            " (census full: a rare caller may be missing)"
        } else {
            ""
        };
        match self.callers.len() {
            0 => format!("none seen{since}{full}"),
            n => format!("{n} (imds-guard report imdsv1 names them){full}"),
        }
    }
}

/// The names the host gives: the cgroup tree (walked once), the kubelet's
/// pods, the user database.
struct HostNames {
    paths: HashMap<u64, String>,
    pods: Pods,
}

impl HostNames {
    fn new(ids: &HashSet<u64>, kubelet_pods_dir: &Path) -> Self {
        Self {
            paths: cgroup::paths_of(ids, 200_000),
            pods: pods::list(kubelet_pods_dir).unwrap_or_default(),
        }
    }
}

impl Names for HostNames {
    fn cgroup_path(&self, id: u64) -> Option<String> {
        self.paths.get(&id).cloned()
    }

    fn pod(&self, path: &str) -> Option<String> {
        pods::pod_of(path.as_bytes(), &self.pods).map(ToString::to_string)
    }

    fn user(&self, uid: u32) -> Option<String> {
        User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| crate::text::printable(&u.name))
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (what `bpf_ktime_get_ns` counts).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// The report of the census pinned in `pin_dir`; `None` when there is
/// none (no guard, or one without request programs).
pub fn read(pin_dir: &Path, kubelet_pods_dir: &Path) -> Result<Option<Report>, CliError> {
    let pins = Pins::new(pin_dir);
    let Some(census) = usage::pinned_census(&pins).map_err(CliError::runtime)? else {
        return Ok(None);
    };
    let since = pin_time(&pins.map_path(imds_guard_common::MAP_REQ_USAGE));
    let ids: HashSet<u64> = census.rows.iter().map(|r| r.cgroup_id).collect();
    let names = HostNames::new(&ids, kubelet_pods_dir);
    Ok(Some(build(&census, &names, monotonic_ns(), now(), since)))
}

/// When the census was pinned: it counts from then.
fn pin_time(path: &PathBuf) -> Option<Micros> {
    let t = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_micros()).ok()
}

pub fn execute(args: &Imdsv1Args) -> Result<Outcome, CliError> {
    let Some(report) = read(&args.pin_dir, &args.kubelet_pods_dir)? else {
        return Err(CliError::runtime(NoCensus(args.pin_dir.clone())));
    };
    if args.json {
        outln!("{}", report.json())?;
    } else {
        super::out::out!("{}", report.text())?;
    }
    Ok(Outcome::Success)
}

/// No census is pinned.
#[derive(Debug, thiserror::Error)]
#[error(
    "no request census is pinned in {}: no guard runs from that pin directory, or it judges no \
     requests (an agent older than the census)",
    .0.display()
)]
pub struct NoCensus(PathBuf);

#[cfg(test)]
mod tests;
