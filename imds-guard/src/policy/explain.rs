//! Decisions in words: why a decision came out as it did, citing the
//! policy entry and its position in the file. The kernel's records, the
//! agent's log and `check` all explain through here.

use super::{Action, Identity, Policy, Reason};

/// Why a decision for `uid`/`gid` with `reason`, decided by the entry at
/// `index` (none for the default), came out as it did.
pub fn explain(
    policy: &Policy,
    reason: Reason,
    index: Option<usize>,
    uid: u32,
    gid: u32,
) -> String {
    let entry = index.and_then(|i| policy.spec.entries.get(i));
    let cite = |what: &str| match entry {
        Some(e) => format!(
            "{what} by {} at {}:{}:{}",
            describe(e.action, &e.identity),
            policy.spec.path.display(),
            e.at.line,
            e.at.col
        ),
        None => format!("{what} by a policy entry"),
    };
    match reason {
        Reason::UidDenied => cite(&format!("uid {uid} is denied")),
        Reason::GidDenied => cite(&format!("gid {gid} is denied")),
        Reason::UidAllowed => cite(&format!("uid {uid} is allowed")),
        Reason::GidAllowed => cite(&format!("gid {gid} is allowed")),
        Reason::CgroupDenied => cite("its cgroup is denied"),
        Reason::CgroupAllowed => cite("its cgroup is allowed"),
        Reason::CgroupUnknown => "its cgroup has no classification (the guard could not store \
             one, or it is nested too deep), and the policy denies some cgroups: it could be one \
             of them, so the guard fails closed"
            .to_owned(),
        Reason::Default => match policy.default_action {
            Action::Deny => format!(
                "neither uid {uid} nor gid {gid} is in [allow], and the policy denies everyone else"
            ),
            Action::Allow => format!(
                "neither uid {uid} nor gid {gid} is in [deny], and the policy allows everyone else"
            ),
        },
    }
}

/// `[deny] users "apache"`.
fn describe(action: Action, identity: &Identity) -> String {
    let table = match action {
        Action::Allow => "[allow]",
        Action::Deny => "[deny]",
    };
    match identity {
        Identity::User(n) => format!("{table} users \"{n}\""),
        Identity::Uid(n) => format!("{table} uids {n}"),
        Identity::Group(n) => format!("{table} groups \"{n}\""),
        Identity::Gid(n) => format!("{table} gids {n}"),
        Identity::Unit(n) => format!("{table} units \"{n}\""),
        Identity::Cgroup(p) => format!("{table} cgroups \"{p}\""),
        Identity::Pod(p) => format!("{table} pods \"{p}\""),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{FakeResolver, PolicySpec};

    fn policy() -> Policy {
        PolicySpec::parse(
            Path::new("/etc/imds-guard/policy.toml"),
            "[allow]\nuids = [0]\n[deny]\nusers = [\"apache\"]\n",
        )
        .expect("valid")
        .resolve(&FakeResolver::new(&[("apache", 48)], &[]))
        .expect("resolves")
    }

    #[test]
    fn explains_by_citing_the_entry_and_its_position() {
        let p = policy();
        assert_eq!(
            explain(&p, Reason::UidDenied, Some(1), 1000, 1001),
            "uid 1000 is denied by [deny] users \"apache\" at /etc/imds-guard/policy.toml:4:10"
        );
        assert_eq!(
            explain(&p, Reason::UidAllowed, Some(0), 1000, 1001),
            "uid 1000 is allowed by [allow] uids 0 at /etc/imds-guard/policy.toml:2:9"
        );
        assert_eq!(
            explain(&p, Reason::Default, None, 1000, 1001),
            "neither uid 1000 nor gid 1001 is in [allow], and the policy denies everyone else"
        );
    }
}
