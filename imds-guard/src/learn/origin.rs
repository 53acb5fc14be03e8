//! Who a decision record is about, as narrowly as the policy can name it:
//! a pod, then a systemd unit, then a transient scope's cgroup (a
//! container's), and only then the caller's uid. A forwarded packet is
//! about its source; a record with no identity about nobody.
//!
//! A cgroup is a unit's when a component of its path (the first one from
//! the root) is a unit name with a cgroup of its own that is not a slice
//! and not a scope: `/system.slice/app.service/sub` is `app.service`'s.
//! What runs under `/user.slice` (login sessions, the user's own systemd)
//! is the user's: systemd's system instance knows none of those units,
//! and a session scope is made anew at each login. Other scopes (a
//! container runtime's `docker-<id>.scope`) are transient: their cgroup
//! is named, and its name widened to a pattern on request.

use std::{fmt, net::IpAddr};

use super::records::Decision;
use crate::policy::cgroups::{Pattern, units};

/// Whom records are grouped by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Who {
    Pod(String),
    Unit(String),
    /// A transient scope's cgroup path (the subtree is meant).
    Cgroup(String),
    Uid(u32),
    Forwarded(IpAddr),
    Nobody,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(pod) => write!(f, "pod {pod}"),
            Self::Unit(unit) => write!(f, "unit {unit}"),
            Self::Cgroup(path) => write!(f, "cgroup {path}"),
            Self::Uid(uid) => write!(f, "uid {uid}"),
            Self::Forwarded(src) => write!(f, "forwarded from {src}"),
            Self::Nobody => f.write_str("no identity"),
        }
    }
}

/// Who `d` is about.
pub fn who(d: &Decision) -> Who {
    if d.hook.as_deref() == Some("forward") || (d.uid.is_none() && d.src.is_some()) {
        return d.src.map_or(Who::Nobody, Who::Forwarded);
    }
    let Some(uid) = d.uid else {
        return Who::Nobody;
    };
    if let Some(pod) = d.pod.as_ref().filter(|p| p.contains('/')) {
        return Who::Pod(pod.clone());
    }
    match d.cgroup.as_deref().map(of_path) {
        Some(Some(who)) => who,
        _ => Who::Uid(uid),
    }
}

/// The unit or transient scope a cgroup path is in, if any.
fn of_path(path: &str) -> Option<Who> {
    let mut parts = path.strip_prefix('/')?.split('/');
    let first = parts.clone().next()?;
    if first == "user.slice" {
        return None;
    }
    let mut prefix = String::new();
    for part in &mut parts {
        prefix.push('/');
        prefix.push_str(part);
        let name = unescape(part);
        let Some((_, kind)) = name.rsplit_once('.') else {
            continue;
        };
        match kind {
            "slice" => continue,
            "scope" => {
                // A scope made by hand or by a runtime: named as a cgroup,
                // if the policy can write it as one.
                return Pattern::subtree_of(&prefix)
                    .is_ok()
                    .then(|| Who::Cgroup(prefix.clone()));
            }
            _ if units::check_name(&name).is_ok() && !name.starts_with("user@") => {
                return Some(Who::Unit(name));
            }
            _ => return None,
        }
    }
    None
}

/// A cgroup name as the unit name systemd escaped into it (`cg_escape`
/// puts a `_` in front of some names).
fn unescape(part: &str) -> String {
    match part.strip_prefix('_') {
        Some(name) if units::escape(name) == part => name.to_owned(),
        _ => part.to_owned(),
    }
}

/// `/system.slice/docker-0123.scope` widened to every scope named like
/// it, `/system.slice/docker-*.scope`; `None` when the name has no `-`.
pub fn widen_scope(path: &str) -> Option<String> {
    let (parent, name) = path.rsplit_once('/')?;
    let (runtime, _) = name.rsplit_once('-')?;
    let suffix = name.rsplit_once('.').map_or("", |(_, kind)| kind);
    let glob = format!("{parent}/{runtime}-*.{suffix}");
    // Only what the policy can write: one `*` in the component.
    Pattern::parse(&glob).is_ok().then_some(glob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cgroup: &str, pod: Option<&str>) -> Who {
        who(&Decision {
            uid: Some(1000),
            cgroup: Some(cgroup.to_owned()),
            pod: pod.map(str::to_owned),
            ..Decision::default()
        })
    }

    #[test]
    fn the_narrowest_name_of_a_cgroup() {
        assert_eq!(
            at("/system.slice/app.service", None),
            Who::Unit("app.service".into())
        );
        assert_eq!(
            at("/system.slice/app.service/sub/x", None),
            Who::Unit("app.service".into())
        );
        assert_eq!(
            at("/test-1/app.service", None),
            Who::Unit("app.service".into())
        );
        assert_eq!(
            at("/system.slice/_cpu.service", None),
            Who::Unit("cpu.service".into())
        );
        assert_eq!(
            at("/system.slice/docker-0a1b.scope", None),
            Who::Cgroup("/system.slice/docker-0a1b.scope".into())
        );
        assert_eq!(
            at("/user.slice/user-1000.slice/session-3.scope", None),
            Who::Uid(1000)
        );
        assert_eq!(
            at(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
                None
            ),
            Who::Uid(1000)
        );
        assert_eq!(at("/", None), Who::Uid(1000));
        assert_eq!(at("/imds-guard-test-7", None), Who::Uid(1000));
        assert_eq!(
            at(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-9.scope",
                Some("kube-system/aws-node")
            ),
            Who::Pod("kube-system/aws-node".into())
        );
        // A name with a * cannot be written as a cgroup literal.
        assert_eq!(at("/system.slice/a*b-1.scope", None), Who::Uid(1000));
    }

    #[test]
    fn a_scope_widens_to_its_runtime_pattern() {
        assert_eq!(
            widen_scope("/system.slice/docker-0a1b.scope").as_deref(),
            Some("/system.slice/docker-*.scope")
        );
        assert_eq!(widen_scope("/system.slice/init.scope"), None);
        assert_eq!(widen_scope("/system.slice/a*b-1.scope"), None);
    }
}
