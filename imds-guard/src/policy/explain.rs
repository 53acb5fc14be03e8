//! Decisions in words: why a decision came out as it did, citing the
//! policy entry and its position in the file. The kernel's records, the
//! agent's log and `check` all explain through here.

use imds_guard_common::Bounds;

use super::{Action, Entry, Identity, Place, Policy, Reason};

/// What else is known of the process a decision was about, beyond its uid
/// and primary gid: the id whose rule decided, where it runs, how many
/// supplementary groups it holds. `None` where unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub uid: u32,
    pub gid: u32,
    /// The id whose rule decided (`Decision::id`, `Event::decider`).
    pub id: Option<u32>,
    pub place: Option<Place>,
    /// The supplementary groups held, when they were read.
    pub groups: Option<u32>,
    /// Why the process is not on the host, in words ("its pid namespace
    /// differs"), when known.
    pub not_host: Option<&'static str>,
    /// No namespace is known to differ from the agent's, but one could not
    /// be read: the guard cannot tell that the process is on the host,
    /// which is not to say it runs in a container.
    pub host_unknown: bool,
    /// The creator of the user namespace whose creator decided, when a
    /// record names it (`Event::owner`).
    pub owner: Option<u32>,
}

/// Why a decision for `uid`/`gid` with `reason`, decided by the entry at
/// `index` (none for the default), came out as it did.
pub fn explain(
    policy: &Policy,
    reason: Reason,
    index: Option<usize>,
    uid: u32,
    gid: u32,
) -> String {
    explain_with(
        policy,
        reason,
        index,
        &Context {
            uid,
            gid,
            ..Context::default()
        },
    )
}

/// Why a workload endpoint let a caller through ([`Reason::Workload`]).
const WORKLOAD: &str = "it runs in a container (a namespace of its own), the destination is a \
                        workload endpoint, which hands each workload its own credentials, and \
                        nothing in [deny] names it";

/// [`explain`], with what else is known of the process.
pub fn explain_with(policy: &Policy, reason: Reason, index: Option<usize>, cx: &Context) -> String {
    let (uid, gid) = (cx.uid, cx.gid);
    let entry = index.and_then(|i| policy.spec.entries.get(i));
    let cite = |what: &str| match entry {
        Some(e) => format!(
            "{what} by {} at {}:{}:{}",
            described(policy, index, e),
            policy.spec.path.display(),
            e.at.line,
            e.at.col
        ),
        None => format!("{what} by a policy entry"),
    };
    let id = |fallback: u32| cx.id.unwrap_or(fallback);
    match reason {
        Reason::UidDenied => cite(&format!("uid {uid} is denied")),
        Reason::GidDenied => cite(&format!("gid {gid} is denied")),
        Reason::UidAllowed => cite(&format!("uid {uid} is {}", done(entry))),
        Reason::GidAllowed => cite(&format!("gid {gid} is {}", done(entry))),
        Reason::GroupDenied => match cx.id {
            Some(g) => cite(&format!("supplementary group {g} is denied")),
            None => cite("a supplementary group is denied"),
        },
        Reason::GroupAllowed => match cx.id {
            Some(g) => cite(&format!("supplementary group {g} is {}", done(entry))),
            None => cite(&format!("a supplementary group is {}", done(entry))),
        },
        Reason::OwnerDenied | Reason::OwnerGidDenied | Reason::OwnerMemberDenied => {
            cite(&owner_refused(reason, cx))
        }
        Reason::HostOnly => {
            let whose = match entry.map(|e| &e.identity) {
                Some(Identity::User(_) | Identity::Uid(_)) => format!("uid {}", id(uid)),
                Some(_) => format!("gid {}", id(gid)),
                None => "the process".to_owned(),
            };
            let why = cx
                .not_host
                .map_or_else(String::new, |why| format!(" ({why})"));
            let allowed = cite(&format!("{whose} is allowed on the host only"));
            if cx.host_unknown {
                format!(
                    "{allowed}, and the guard cannot tell that this process is on the \
                     host{why}, so it refuses (fail closed); a local service on a protected \
                     address (an IMDS emulator, a proxy) sends its replies to that address: \
                     allow its unit or cgroup in [allow] to let them through"
                )
            } else {
                format!("{allowed}, and this process runs in a container{why}, not on the host")
            }
        }
        Reason::TooManyGroups => format!(
            "the process holds {} supplementary groups, more than the guard reads ({} with \
             bpf_loop, {} on kernels without it), and the policy has group rules: one past the \
             bound could be denied, so the guard fails closed",
            cx.groups
                .map_or_else(|| "too many".to_owned(), |n| n.to_string()),
            Bounds::LOOP.groups,
            Bounds::UNROLLED.groups,
        ),
        Reason::CgroupDenied => cite("its cgroup is denied"),
        Reason::CgroupAllowed => cite("its cgroup is allowed"),
        Reason::Workload => WORKLOAD.to_owned(),
        Reason::CgroupUnknown => "its cgroup has no classification (the guard could not store \
             one, or it is nested too deep), and the policy denies some cgroups: it could be one \
             of them, so the guard fails closed"
            .to_owned(),
        Reason::Default => match policy.default_action {
            Action::Deny => format!(
                "neither uid {uid} nor gid {gid}{} is in [allow], and the policy denies everyone \
                 else",
                groups_too(cx)
            ),
            Action::Allow => format!(
                "neither uid {uid} nor gid {gid}{} is in [deny], and the policy allows everyone \
                 else",
                groups_too(cx)
            ),
        },
    }
}

/// Why a user namespace's creator refuses the process, before the
/// citation: by its uid, by the gid it created the namespace with, or by a
/// denied group it is a member of (`cx.id` is that uid or gid).
fn owner_refused(reason: Reason, cx: &Context) -> String {
    let uid = cx.uid;
    match reason {
        Reason::OwnerGidDenied => {
            let group = cx
                .id
                .map_or_else(|| "a gid".to_owned(), |g| format!("gid {g}"));
            let by = cx
                .owner
                .map_or_else(String::new, |o| format!(" by uid {o}"));
            format!("uid {uid} runs in a user namespace created{by} as {group}, which is denied")
        }
        Reason::OwnerMemberDenied => {
            let group = cx
                .id
                .map_or_else(|| "a group".to_owned(), |g| format!("group {g}"));
            let who = cx.owner.map_or_else(
                || "whose creator is".to_owned(),
                |o| format!("created by uid {o}, who is"),
            );
            format!(
                "uid {uid} runs in a user namespace {who} a member of {group} in the group \
                 database (a namespace keeps none of its creator's supplementary groups), which \
                 is denied"
            )
        }
        _ => match cx.id {
            Some(owner) => format!(
                "uid {uid} runs in a user namespace created by uid {owner}, which is denied"
            ),
            None => format!("uid {uid} runs in a user namespace whose creator is denied"),
        },
    }
}

/// ", nor any of its N supplementary groups", when they were read.
fn groups_too(cx: &Context) -> String {
    match cx.groups {
        Some(n) if n > 0 => format!(" nor any of its {n} supplementary groups"),
        _ => String::new(),
    }
}

/// "allowed" or "allowed on the host".
fn done(entry: Option<&Entry>) -> &'static str {
    entry.map_or("allowed", Entry::done)
}

/// [`describe`], naming the `[requests.NAME]` table of an entry a request
/// table wrote (an allow entry, which [`Entry::table`] calls `[allow]`).
pub(super) fn described(policy: &Policy, index: Option<usize>, e: &Entry) -> String {
    let set = index
        .and_then(|i| policy.spec.requests.members.get(&i))
        .and_then(|&s| policy.spec.requests.sets.get(s));
    match set {
        Some(set) => describe(e).replacen(e.table(), &format!("[requests.{}]", set.name), 1),
        None => describe(e),
    }
}

/// `[deny] users "apache"`, `[allow.host] uids 0`.
pub(super) fn describe(entry: &Entry) -> String {
    let table = entry.table();
    match &entry.identity {
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

    #[test]
    fn a_namespace_creator_refused_for_a_group_is_named_with_the_group() {
        let p = PolicySpec::parse(
            Path::new("/etc/imds-guard/policy.toml"),
            "[allow]\nuids = [2345]\n[deny]\ngids = [2666]\n",
        )
        .expect("valid")
        .resolve(&FakeResolver::new(&[], &[]).with_members(&[(2345, 2666)]))
        .expect("resolves");
        let cx = Context {
            uid: 2345,
            gid: 200_001,
            id: Some(2666),
            owner: Some(2345),
            ..Context::default()
        };
        assert_eq!(
            explain_with(&p, Reason::OwnerMemberDenied, Some(1), &cx),
            "uid 2345 runs in a user namespace created by uid 2345, who is a member of group 2666 in \
             the group database (a namespace keeps none of its creator's supplementary groups), \
             which is denied by [deny] gids 2666 at /etc/imds-guard/policy.toml:4:9"
        );
        assert_eq!(
            explain_with(&p, Reason::OwnerGidDenied, Some(1), &cx),
            "uid 2345 runs in a user namespace created by uid 2345 as gid 2666, which is denied \
             by [deny] gids 2666 at /etc/imds-guard/policy.toml:4:9"
        );
    }
}
