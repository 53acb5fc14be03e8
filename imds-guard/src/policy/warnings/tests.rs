//! One test per foot-gun, and the policies that give none.

use std::path::Path;

use super::*;
use crate::policy::{FakeResolver, Location};

fn spec(text: &str) -> PolicySpec {
    PolicySpec::parse(Path::new("p.toml"), text)
        .unwrap_or_else(|e| panic!("the policy was refused:\n{e}\n--- policy:\n{text}"))
}

/// root (0) and alice (1000); root a member of root (0), alice of wheel
/// (10) and of contractors (2666).
fn db() -> FakeResolver {
    FakeResolver::new(
        &[("root", 0), ("alice", 1000)],
        &[("root", 0), ("wheel", 10), ("contractors", 2666)],
    )
    .with_members(&[(0, 0), (1000, 10), (1000, 2666)])
    .with_units(&[("-.slice", "/"), ("system.slice", "/system.slice")])
}

fn warnings(text: &str) -> Vec<Diagnostic> {
    spec(text)
        .resolve(&db())
        .unwrap_or_else(|e| panic!("resolution failed:\n{e}"))
        .warnings(&db())
}

fn at(line: u32, col: u32) -> Location {
    Location { line, col }
}

#[test]
fn a_cgroup_deny_without_a_subtree_says_how_to_spell_one() {
    let text =
        "[deny]\ncgroups = [\"/user.slice/user-1000.slice\", \"/system.slice/docker-*.scope\"]\n";
    let w = warnings(text);
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_eq!(w[0].at, at(2, 12));
    assert_eq!(
        w[0].message,
        "[deny] cgroups \"/user.slice/user-1000.slice\" names that one cgroup, not the cgroups \
         below it: a process there escapes the deny by making a child cgroup (a user's systemd \
         session may), and a slice holds no process of its own, so this matches none; write \
         \"/user.slice/user-1000.slice/**\" to deny the cgroup and every cgroup below it"
    );
    assert!(
        w[1].message
            .contains("write \"/system.slice/docker-*.scope/**\""),
        "{w:#?}"
    );
    assert!(!w[1].message.contains("slice holds no process"), "{w:#?}");
    // The same without the database, for `validate --offline`.
    assert_eq!(spec(text).warnings(), w);
    // Spelled as subtrees: nothing to say. An allow of one cgroup is
    // narrower, not wider: nothing either.
    assert!(
        warnings(
            "[allow]\ncgroups = [\"/system.slice/app.service\"]\n[deny]\ncgroups = \
             [\"/user.slice/user-1000.slice/**\", \"/**\"]\n"
        )
        .is_empty()
    );
}

#[test]
fn allowing_the_root_slice_or_every_cgroup_allows_everything() {
    let w = warnings("[allow]\nunits = [\"-.slice\"]\ncgroups = [\"/**\"]\n");
    assert_eq!(w.len(), 2, "{w:#?}");
    assert_eq!(w[0].at, at(2, 10));
    assert!(
        w[0].message.starts_with(
            "[allow] units \"-.slice\" allows every process: -.slice is the root slice"
        ),
        "{w:#?}"
    );
    assert_eq!(w[1].at, at(3, 12));
    assert!(
        w[1].message
            .starts_with("[allow] cgroups \"/**\" allows every process"),
        "{w:#?}"
    );
    assert!(warnings("[allow]\nunits = [\"system.slice\"]\n").is_empty());
}

#[test]
fn a_group_allowed_anywhere_that_a_host_only_user_is_in_readmits_it() {
    let text = "[allow.host]\nusers = [\"root\"]\n[allow]\ngroups = [\"root\", \"wheel\"]\n";
    let w = warnings(text);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].at, at(4, 11));
    assert_eq!(
        w[0].message,
        "[allow] groups \"root\" lets in from anywhere what [allow.host] users \"root\" at line 2, \
         column 10 keeps to the host: uid 0 is a member of gid 0, so its processes in a \
         container (root of every container, for gid 0) have the group too, and are allowed; \
         list the group in [allow.host], or name who may connect from a container"
    );
    // By number, the same; kept to the host too, nothing to say.
    assert_eq!(
        warnings("[allow.host]\nuids = [0]\n[allow]\ngids = [0]\n").len(),
        1
    );
    assert!(warnings("[allow.host]\nuids = [0]\ngids = [0]\n").is_empty());
}

#[test]
fn a_user_allowed_by_uid_who_is_a_member_of_a_denied_group_is_warned_of() {
    let w = warnings("[allow]\nusers = [\"alice\"]\n[deny]\ngroups = [\"contractors\"]\n");
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].at, at(2, 10));
    assert_eq!(
        w[0].message,
        "[allow] users \"alice\" allows uid 1000, which is a member of gid 2666, denied by \
         [deny] groups \"contractors\" at line 4, column 11: its processes are refused while \
         they hold the group, and in every user namespace it creates; take it out of the group \
         or the group out of [deny]"
    );
    // Not a member, or the group not denied: nothing.
    assert!(
        warnings("[allow]\nusers = [\"root\"]\n[deny]\ngroups = [\"contractors\"]\n").is_empty()
    );
    assert!(warnings("[allow]\nusers = [\"alice\"]\n[deny]\ngroups = [\"root\"]\n").is_empty());
}

#[test]
fn a_request_table_s_user_who_is_a_member_of_an_allowed_group_is_warned_of() {
    let text = "[allow]\ngroups = [\"wheel\"]\n[requests.monitor]\nusers = [\"alice\"]\nrules = \
                [\"GET /latest/meta-data/instance-id\"]\n";
    let w = warnings(text);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].at, at(4, 10));
    assert_eq!(
        w[0].message,
        "[requests.monitor] users \"alice\" names uid 1000, which is a member of gid 10, \
         allowed by [allow] groups \"wheel\" at line 2, column 11: the uid is decided first, so \
         its processes may send only the requests of [requests.monitor], and [allow] groups \
         \"wheel\" decides only for others holding the group; which entry decides sets what a \
         caller may send, so name the user in one of them, or take it out of the group"
    );
    // Another table's group decides with another scope too.
    let two_tables = "[requests.a]\ngroups = [\"wheel\"]\nrules = [\"GET \
                      /latest/meta-data/placement/\"]\n[requests.b]\nuids = [1000]\nrules = \
                      [\"GET /latest/meta-data/instance-id\"]\n";
    assert_eq!(warnings(two_tables).len(), 1, "{:#?}", warnings(two_tables));
    // Not a member, the group in the same table, or the user allowed the
    // whole service: nothing.
    assert!(
        warnings(
            "[allow]\ngroups = [\"contractors\"]\n[requests.m]\nusers = [\"root\"]\nrules = \
             [\"GET /latest/meta-data/instance-id\"]\n"
        )
        .is_empty()
    );
    assert!(
        warnings(
            "[requests.m]\nusers = [\"alice\"]\ngroups = [\"wheel\"]\nrules = [\"GET \
             /latest/meta-data/instance-id\"]\n"
        )
        .is_empty()
    );
    assert!(warnings("[allow]\nusers = [\"alice\"]\ngroups = [\"wheel\"]\n").is_empty());
}

#[test]
fn the_shipped_policy_and_the_fallback_give_none() {
    let shipped = include_str!("../../../../config/imds-guard.toml");
    assert!(warnings(shipped).is_empty(), "{:#?}", warnings(shipped));
    let fallback = Policy::root_only(Path::new("builtin"));
    assert!(fallback.warnings(&db()).is_empty());
}
