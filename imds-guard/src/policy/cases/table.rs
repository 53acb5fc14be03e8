//! The cases: a few policies, and what each decides for callers that
//! take each step of the decision, alone and two at a time (a deny
//! against every other deny and every allow; an allow against every later
//! allow).

use imds_guard_common::MAX_GROUPS;

use super::{Case, CgroupAt, allow, container, deny, host};
use crate::policy::Reason;

/// Allows and denies of every kind: uids, gids (primary or
/// supplementary), cgroups. Entries, as records number them: 1 uid 1001,
/// 2 gid 1500, 3 gid 1700, 4 `{base}/allowed/**`, 5 uid 3003, 6 uid 4004,
/// 7 gid 1600, 8 gid 1610, 9 `{base}/denied/**`. Default: deny.
pub const MIXED: &str = r#"
[allow]
uids = [1001]
gids = [1500, 1700]
cgroups = ["{base}/allowed/**"]

[deny]
uids = [3003, 4004]
gids = [1600, 1610]
cgroups = ["{base}/denied/**"]
"#;

/// `[allow.host]` beside rules that allow anywhere. Entries: 1 gid 1500,
/// 2 `{base}/allowed/**`, 3 uid 2001 (host), 4 gid 2500 (host), 5 gid 1400
/// (host), 6 uid 3003 (deny). Default: deny.
pub const HOST: &str = r#"
[allow]
gids = [1500]
cgroups = ["{base}/allowed/**"]

[allow.host]
uids = [2001]
gids = [2500, 1400]

[deny]
uids = [3003]
"#;

/// Only denies. Entries: 1 uid 3003, 2 gid 1600. Default: allow.
pub const DENY_LIST: &str = r#"
[deny]
uids = [3003]
gids = [1600]
"#;

/// Cgroups only allowed, none denied. Entries: 1 uid 1001,
/// 2 `{base}/allowed/**`. Default: deny.
pub const ALLOWED_CGROUPS: &str = r#"
[allow]
uids = [1001]
cgroups = ["{base}/allowed/**"]
"#;

/// No gid rule, so no group is read. Entries: 1 uid 1001, 2 uid 3003.
/// Default: deny.
pub const UIDS_ONLY: &str = r#"
[allow]
uids = [1001]

[deny]
uids = [3003]
"#;

/// Allows a uid, denies a group only: the policy of issue 18's user,
/// allowed by uid, member of a denied group. Entries: 1 uid 1002, 2 gid
/// 1610. Default: deny.
pub const GROUP_DENY: &str = r#"
[allow]
uids = [1002]

[deny]
gids = [1610]
"#;

/// A workload endpoint beside the metadata service (the `aws-ecs`
/// preset's 169.254.170.2:80), an allow, an allow on the host and denies.
/// Entries: 1 uid 1001, 2 uid 2001 (host), 3 uid 3003 (deny), 4
/// `{base}/denied/**` (deny). Default: deny.
pub const WORKLOAD: &str = r#"
[endpoints]
presets = ["aws-ec2", "aws-ecs"]

[allow]
uids = [1001]

[allow.host]
uids = [2001]

[deny]
uids = [3003]
cgroups = ["{base}/denied/**"]
"#;

/// The group database of the cases, as `(uid, gid)`: the user is a member
/// of the group (its primary group, or one that lists it). 1002 is a
/// member of 1610, 4005 of 1610, 4006 of 1600 and 1610.
pub const MEMBERS: &[(u32, u32)] = &[(1002, 1610), (4005, 1610), (4006, 1600), (4006, 1610)];

/// `N` gids from `first` on, none of them named by a rule.
const fn numbered<const N: usize>(first: u32) -> [u32; N] {
    let mut gids = [0; N];
    let mut i = 0;
    while i < N {
        gids[i] = first + i as u32;
        i += 1;
    }
    gids
}

/// As many supplementary groups as the programs read.
const AT_BOUND: [u32; MAX_GROUPS as usize] = numbered(20_000);
/// One more than they read.
const TOO_MANY: [u32; MAX_GROUPS as usize + 1] = numbered(20_000);
/// One more than they read, the first a denied one (1600).
const TOO_MANY_ONE_DENIED: [u32; MAX_GROUPS as usize + 1] = {
    let mut gids = TOO_MANY;
    gids[0] = 1600;
    gids
};

const ALLOWED: CgroupAt = CgroupAt::Below("allowed");
const DENIED: CgroupAt = CgroupAt::Below("denied");

/// Every case, by the steps it takes.
pub const CASES: &[Case] = &[
    // The ids' own rules, and the default.
    Case {
        name: "an allowed uid",
        policy: MIXED,
        caller: host(1001, 1001),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    Case {
        name: "a denied uid",
        policy: MIXED,
        caller: host(3003, 3003),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "an allowed primary gid",
        policy: MIXED,
        caller: host(5005, 1500),
        expected: allow(Reason::GidAllowed, 2, Some(1500)),
    },
    Case {
        name: "a denied primary gid",
        policy: MIXED,
        caller: host(5005, 1600),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "no rule names it: the default denies",
        policy: MIXED,
        caller: host(5005, 5005),
        expected: deny(Reason::Default, 0, None),
    },
    Case {
        name: "no rule names it: the default of a deny list allows",
        policy: DENY_LIST,
        caller: host(5005, 5005),
        expected: allow(Reason::Default, 0, None),
    },
    Case {
        name: "a denied uid under a deny list",
        policy: DENY_LIST,
        caller: host(3003, 3003),
        expected: deny(Reason::UidDenied, 1, Some(3003)),
    },
    // Supplementary groups.
    Case {
        name: "an allowed supplementary group",
        policy: MIXED,
        caller: host(5005, 5005).groups(&[10, 1700]),
        expected: allow(Reason::GroupAllowed, 3, Some(1700)),
    },
    Case {
        name: "a denied supplementary group",
        policy: MIXED,
        caller: host(5005, 5005).groups(&[10, 1610]),
        expected: deny(Reason::GroupDenied, 8, Some(1610)),
    },
    Case {
        name: "a denied supplementary group under a deny list",
        policy: DENY_LIST,
        caller: host(5005, 5005).groups(&[1600]),
        expected: deny(Reason::GroupDenied, 2, Some(1600)),
    },
    Case {
        name: "of two allowed groups the lowest gid decides",
        policy: MIXED,
        caller: host(5005, 5005).groups(&[1700, 1500]),
        expected: allow(Reason::GroupAllowed, 2, Some(1500)),
    },
    Case {
        name: "of two denied groups the lowest gid decides",
        policy: MIXED,
        caller: host(5005, 5005).groups(&[1610, 1600]),
        expected: deny(Reason::GroupDenied, 7, Some(1600)),
    },
    Case {
        name: "a denied group wins over a lower allowed one",
        policy: MIXED,
        caller: host(5005, 5005).groups(&[1600, 1500]),
        expected: deny(Reason::GroupDenied, 7, Some(1600)),
    },
    Case {
        name: "a denied group wins over a higher allowed one",
        policy: MIXED,
        caller: host(5005, 5005).groups(&[1700, 1610]),
        expected: deny(Reason::GroupDenied, 8, Some(1610)),
    },
    Case {
        name: "as many groups as are read",
        policy: MIXED,
        caller: host(1001, 1001).groups(&AT_BOUND),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    Case {
        name: "more groups than are read, under group rules",
        policy: MIXED,
        caller: host(5005, 5005).groups(&TOO_MANY),
        expected: deny(Reason::TooManyGroups, 0, None),
    },
    Case {
        name: "more groups than are read, without group rules: not read",
        policy: UIDS_ONLY,
        caller: host(1001, 1001).groups(&TOO_MANY),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    // Owners of user namespaces.
    Case {
        name: "a user namespace created by a denied uid",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "a denied owner further out",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(5006, 5006), (4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "of two denied owners the innermost decides",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4004, 4004), (3003, 3003)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "of two denied owners the innermost decides, the other way round",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(3003, 3003), (4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 5, Some(3003)),
    },
    Case {
        name: "an allowed owner is no allow",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(1001, 1001)]),
        expected: deny(Reason::Default, 0, None),
    },
    // Creators of user namespaces by their groups: the gid a namespace
    // was created with, and the creator's memberships.
    Case {
        name: "a user namespace created with a denied gid",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(5006, 1600)]),
        expected: deny(Reason::OwnerGidDenied, 7, Some(1600)),
    },
    Case {
        name: "a user namespace created by a member of a denied group",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4005, 4005)]),
        expected: deny(Reason::OwnerMemberDenied, 8, Some(1610)),
    },
    Case {
        name: "a creator in two denied groups: the lowest",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4006, 4006)]),
        expected: deny(Reason::OwnerMemberDenied, 7, Some(1600)),
    },
    Case {
        name: "a denied gid further out",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(5006, 5006), (5007, 1610)]),
        expected: deny(Reason::OwnerGidDenied, 8, Some(1610)),
    },
    Case {
        name: "in one namespace, the creator's uid before its gid",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4004, 1600)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "in one namespace, the creator's gid before its memberships",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4005, 1600)]),
        expected: deny(Reason::OwnerGidDenied, 7, Some(1600)),
    },
    Case {
        name: "a member innermost before a denied uid further out",
        policy: MIXED,
        caller: container(5005, 5005).owners(&[(4005, 4005), (4004, 4004)]),
        expected: deny(Reason::OwnerMemberDenied, 8, Some(1610)),
    },
    Case {
        name: "a member of a denied group under a deny list",
        policy: DENY_LIST,
        caller: container(5005, 5005).owners(&[(4006, 4006)]),
        expected: deny(Reason::OwnerMemberDenied, 2, Some(1600)),
    },
    Case {
        name: "the allowed uid holding its denied group",
        policy: GROUP_DENY,
        caller: host(1002, 1002).groups(&[1610]),
        expected: deny(Reason::GroupDenied, 2, Some(1610)),
    },
    Case {
        name: "the allowed uid on the host, not holding the group it is a member of",
        policy: GROUP_DENY,
        caller: host(1002, 1002),
        expected: allow(Reason::UidAllowed, 1, Some(1002)),
    },
    Case {
        name: "the allowed uid in a namespace it created, the group dropped",
        policy: GROUP_DENY,
        caller: container(1002, 1002).owners(&[(1002, 1002)]),
        expected: deny(Reason::OwnerMemberDenied, 2, Some(1610)),
    },
    Case {
        name: "a subordinate id in a namespace the member created",
        policy: GROUP_DENY,
        caller: container(100_000, 100_001).owners(&[(1002, 1002)]),
        expected: deny(Reason::OwnerMemberDenied, 2, Some(1610)),
    },
    Case {
        name: "a namespace created with the denied gid, under a group deny only",
        policy: GROUP_DENY,
        caller: container(5005, 5005).owners(&[(5005, 1610)]),
        expected: deny(Reason::OwnerGidDenied, 2, Some(1610)),
    },
    Case {
        name: "the allowed uid in a namespace of a creator in no denied group",
        policy: GROUP_DENY,
        caller: container(1002, 1002).owners(&[(5005, 5005)]),
        expected: allow(Reason::UidAllowed, 1, Some(1002)),
    },
    Case {
        name: "a denied owner under a policy of uids only",
        policy: UIDS_ONLY,
        caller: container(5005, 5005).owners(&[(3003, 3003)]),
        expected: deny(Reason::OwnerDenied, 2, Some(3003)),
    },
    // Cgroups.
    Case {
        name: "an allowed cgroup",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(ALLOWED),
        expected: allow(Reason::CgroupAllowed, 4, None),
    },
    Case {
        name: "a cgroup below an allowed one",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(CgroupAt::Below("allowed/inner")),
        expected: allow(Reason::CgroupAllowed, 4, None),
    },
    Case {
        name: "a denied cgroup",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(DENIED),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "a cgroup no pattern matches",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(CgroupAt::Below("other")),
        expected: deny(Reason::Default, 0, None),
    },
    Case {
        name: "an unclassified cgroup under a policy that denies cgroups",
        policy: MIXED,
        caller: host(1001, 1001).cgroup(CgroupAt::TooDeep),
        expected: deny(Reason::CgroupUnknown, 0, None),
    },
    Case {
        name: "an unclassified cgroup under cgroup allows only: the uid decides",
        policy: ALLOWED_CGROUPS,
        caller: host(1001, 1001).cgroup(CgroupAt::TooDeep),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    Case {
        name: "an unclassified cgroup under cgroup allows only: the default decides",
        policy: ALLOWED_CGROUPS,
        caller: host(5005, 5005).cgroup(CgroupAt::TooDeep),
        expected: deny(Reason::Default, 0, None),
    },
    Case {
        name: "an allowed cgroup under cgroup allows only",
        policy: ALLOWED_CGROUPS,
        caller: host(5005, 5005).cgroup(ALLOWED),
        expected: allow(Reason::CgroupAllowed, 2, None),
    },
    // [allow.host].
    Case {
        name: "a host-only uid on the host",
        policy: HOST,
        caller: host(2001, 2001),
        expected: allow(Reason::UidAllowed, 3, Some(2001)),
    },
    Case {
        name: "a host-only uid in a container",
        policy: HOST,
        caller: container(2001, 2001),
        expected: deny(Reason::HostOnly, 3, Some(2001)),
    },
    Case {
        name: "a host-only primary gid on the host",
        policy: HOST,
        caller: host(5005, 2500),
        expected: allow(Reason::GidAllowed, 4, Some(2500)),
    },
    Case {
        name: "a host-only primary gid in a container",
        policy: HOST,
        caller: container(5005, 2500),
        expected: deny(Reason::HostOnly, 4, Some(2500)),
    },
    Case {
        name: "a host-only group on the host",
        policy: HOST,
        caller: host(5005, 5005).groups(&[2500]),
        expected: allow(Reason::GroupAllowed, 4, Some(2500)),
    },
    Case {
        name: "a host-only group in a container",
        policy: HOST,
        caller: container(5005, 5005).groups(&[2500]),
        expected: deny(Reason::HostOnly, 4, Some(2500)),
    },
    Case {
        name: "a host-only group lower than one allowed anywhere, on the host",
        policy: HOST,
        caller: host(5005, 5005).groups(&[1500, 1400]),
        expected: allow(Reason::GroupAllowed, 5, Some(1400)),
    },
    Case {
        name: "a host-only group lower than one allowed anywhere, in a container",
        policy: HOST,
        caller: container(5005, 5005).groups(&[1500, 1400]),
        expected: allow(Reason::GroupAllowed, 1, Some(1500)),
    },
    Case {
        name: "a gid allowed anywhere, in a container",
        policy: HOST,
        caller: container(5005, 1500),
        expected: allow(Reason::GidAllowed, 1, Some(1500)),
    },
    Case {
        name: "a group allowed anywhere allows a host-only uid in a container",
        policy: HOST,
        caller: container(2001, 2001).groups(&[1500]),
        expected: allow(Reason::GroupAllowed, 1, Some(1500)),
    },
    Case {
        name: "an allowed cgroup allows a host-only uid in a container",
        policy: HOST,
        caller: container(2001, 2001).cgroup(ALLOWED),
        expected: allow(Reason::CgroupAllowed, 2, None),
    },
    Case {
        name: "in a container the host-only uid refuses before the gid",
        policy: HOST,
        caller: container(2001, 2500),
        expected: deny(Reason::HostOnly, 3, Some(2001)),
    },
    Case {
        name: "in a container the host-only gid refuses before a group",
        policy: HOST,
        caller: container(5005, 2500).groups(&[1400]),
        expected: deny(Reason::HostOnly, 4, Some(2500)),
    },
    Case {
        name: "a denied uid in a container",
        policy: HOST,
        caller: container(3003, 3003),
        expected: deny(Reason::UidDenied, 6, Some(3003)),
    },
    // Two denies: the earlier step decides.
    Case {
        name: "uid and gid denied: the uid",
        policy: MIXED,
        caller: host(3003, 1600),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "uid and cgroup denied: the uid",
        policy: MIXED,
        caller: host(3003, 3003).cgroup(DENIED),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "uid denied, too many groups: the uid",
        policy: MIXED,
        caller: host(3003, 3003).groups(&TOO_MANY),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "uid and group denied: the uid",
        policy: MIXED,
        caller: host(3003, 3003).groups(&[1600]),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "uid and owner denied: the uid",
        policy: MIXED,
        caller: container(3003, 3003).owners(&[(4004, 4004)]),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "gid and cgroup denied: the gid",
        policy: MIXED,
        caller: host(5005, 1600).cgroup(DENIED),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "gid denied, too many groups: the gid",
        policy: MIXED,
        caller: host(5005, 1600).groups(&TOO_MANY),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "gid and group denied: the gid",
        policy: MIXED,
        caller: host(5005, 1610).groups(&[1600]),
        expected: deny(Reason::GidDenied, 8, Some(1610)),
    },
    Case {
        name: "gid and owner denied: the gid",
        policy: MIXED,
        caller: container(5005, 1600).owners(&[(4004, 4004)]),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "cgroup denied, too many groups: the cgroup",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(DENIED).groups(&TOO_MANY),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "cgroup and group denied: the cgroup",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(DENIED).groups(&[1600]),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "cgroup and owner denied: the cgroup",
        policy: MIXED,
        caller: container(5005, 5005).cgroup(DENIED).owners(&[(4004, 4004)]),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "an unclassified cgroup and a denied group: the cgroup",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(CgroupAt::TooDeep).groups(&[1600]),
        expected: deny(Reason::CgroupUnknown, 0, None),
    },
    Case {
        name: "too many groups, one of them denied: too many",
        policy: MIXED,
        caller: host(5005, 5005).groups(&TOO_MANY_ONE_DENIED),
        expected: deny(Reason::TooManyGroups, 0, None),
    },
    Case {
        name: "too many groups and a denied owner: too many",
        policy: MIXED,
        caller: container(5005, 5005)
            .groups(&TOO_MANY)
            .owners(&[(4004, 4004)]),
        expected: deny(Reason::TooManyGroups, 0, None),
    },
    Case {
        name: "group and owner denied: the group",
        policy: MIXED,
        caller: container(5005, 5005)
            .groups(&[1600])
            .owners(&[(4004, 4004)]),
        expected: deny(Reason::GroupDenied, 7, Some(1600)),
    },
    // A deny and an allow: the deny.
    Case {
        name: "uid denied, cgroup allowed",
        policy: MIXED,
        caller: host(3003, 3003).cgroup(ALLOWED),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "uid denied, gid allowed",
        policy: MIXED,
        caller: host(3003, 1500),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "uid denied, group allowed",
        policy: MIXED,
        caller: host(3003, 3003).groups(&[1500]),
        expected: deny(Reason::UidDenied, 5, Some(3003)),
    },
    Case {
        name: "gid denied, cgroup allowed",
        policy: MIXED,
        caller: host(5005, 1600).cgroup(ALLOWED),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "gid denied, uid allowed",
        policy: MIXED,
        caller: host(1001, 1600),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "gid denied, group allowed",
        policy: MIXED,
        caller: host(5005, 1600).groups(&[1500]),
        expected: deny(Reason::GidDenied, 7, Some(1600)),
    },
    Case {
        name: "cgroup denied, uid allowed",
        policy: MIXED,
        caller: host(1001, 1001).cgroup(DENIED),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "cgroup denied, gid allowed",
        policy: MIXED,
        caller: host(5005, 1500).cgroup(DENIED),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "cgroup denied, group allowed",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(DENIED).groups(&[1500]),
        expected: deny(Reason::CgroupDenied, 9, None),
    },
    Case {
        name: "too many groups, cgroup allowed",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(ALLOWED).groups(&TOO_MANY),
        expected: deny(Reason::TooManyGroups, 0, None),
    },
    Case {
        name: "too many groups, uid allowed",
        policy: MIXED,
        caller: host(1001, 1001).groups(&TOO_MANY),
        expected: deny(Reason::TooManyGroups, 0, None),
    },
    Case {
        name: "too many groups, gid allowed",
        policy: MIXED,
        caller: host(5005, 1500).groups(&TOO_MANY),
        expected: deny(Reason::TooManyGroups, 0, None),
    },
    Case {
        name: "group denied, cgroup allowed",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(ALLOWED).groups(&[1600]),
        expected: deny(Reason::GroupDenied, 7, Some(1600)),
    },
    Case {
        name: "group denied, uid allowed",
        policy: MIXED,
        caller: host(1001, 1001).groups(&[1600]),
        expected: deny(Reason::GroupDenied, 7, Some(1600)),
    },
    Case {
        name: "group denied, gid allowed",
        policy: MIXED,
        caller: host(5005, 1500).groups(&[1610]),
        expected: deny(Reason::GroupDenied, 8, Some(1610)),
    },
    Case {
        name: "owner denied, cgroup allowed",
        policy: MIXED,
        caller: container(5005, 5005)
            .cgroup(ALLOWED)
            .owners(&[(4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "owner denied, uid allowed",
        policy: MIXED,
        caller: container(1001, 1001).owners(&[(4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "owner denied, gid allowed",
        policy: MIXED,
        caller: container(5005, 1500).owners(&[(4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    Case {
        name: "owner denied, group allowed",
        policy: MIXED,
        caller: container(5005, 5005)
            .groups(&[1500])
            .owners(&[(4004, 4004)]),
        expected: deny(Reason::OwnerDenied, 6, Some(4004)),
    },
    // Two allows: the earlier step names the reason.
    Case {
        name: "cgroup and uid allowed: the cgroup",
        policy: MIXED,
        caller: host(1001, 1001).cgroup(ALLOWED),
        expected: allow(Reason::CgroupAllowed, 4, None),
    },
    Case {
        name: "cgroup and gid allowed: the cgroup",
        policy: MIXED,
        caller: host(5005, 1500).cgroup(ALLOWED),
        expected: allow(Reason::CgroupAllowed, 4, None),
    },
    Case {
        name: "cgroup and group allowed: the cgroup",
        policy: MIXED,
        caller: host(5005, 5005).cgroup(ALLOWED).groups(&[1500]),
        expected: allow(Reason::CgroupAllowed, 4, None),
    },
    Case {
        name: "uid and gid allowed: the uid",
        policy: MIXED,
        caller: host(1001, 1500),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    Case {
        name: "uid and group allowed: the uid",
        policy: MIXED,
        caller: host(1001, 1001).groups(&[1500]),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    Case {
        name: "gid and group allowed: the gid",
        policy: MIXED,
        caller: host(5005, 1700).groups(&[1500]),
        expected: allow(Reason::GidAllowed, 3, Some(1700)),
    },
    // A workload endpoint: open to callers not on the host that nothing
    // denies; the host's callers follow the policy; a deny still wins.
    Case {
        name: "a container at a workload endpoint",
        policy: WORKLOAD,
        caller: container(5005, 5005).to_workload(),
        expected: allow(Reason::Workload, 0, None),
    },
    Case {
        name: "the same container at the metadata service",
        policy: WORKLOAD,
        caller: container(5005, 5005),
        expected: deny(Reason::Default, 0, None),
    },
    Case {
        name: "a host caller no rule names at a workload endpoint",
        policy: WORKLOAD,
        caller: host(5005, 5005).to_workload(),
        expected: deny(Reason::Default, 0, None),
    },
    Case {
        name: "an allowed host caller at a workload endpoint",
        policy: WORKLOAD,
        caller: host(1001, 1001).to_workload(),
        expected: allow(Reason::UidAllowed, 1, Some(1001)),
    },
    Case {
        name: "a host caller allowed on the host at a workload endpoint",
        policy: WORKLOAD,
        caller: host(2001, 2001).to_workload(),
        expected: allow(Reason::UidAllowed, 2, Some(2001)),
    },
    Case {
        name: "allowed on the host only, in a container, at a workload endpoint",
        policy: WORKLOAD,
        caller: container(2001, 2001).to_workload(),
        expected: allow(Reason::Workload, 0, None),
    },
    Case {
        name: "allowed on the host only, in a container, at the metadata service",
        policy: WORKLOAD,
        caller: container(2001, 2001),
        expected: deny(Reason::HostOnly, 2, Some(2001)),
    },
    Case {
        name: "a denied uid in a container at a workload endpoint",
        policy: WORKLOAD,
        caller: container(3003, 3003).to_workload(),
        expected: deny(Reason::UidDenied, 3, Some(3003)),
    },
    Case {
        name: "a denied cgroup in a container at a workload endpoint",
        policy: WORKLOAD,
        caller: container(5005, 5005).cgroup(DENIED).to_workload(),
        expected: deny(Reason::CgroupDenied, 4, None),
    },
    Case {
        name: "a container whose user namespace a denied uid made, at a workload endpoint",
        policy: WORKLOAD,
        caller: container(5005, 5005).owners(&[(3003, 3003)]).to_workload(),
        expected: deny(Reason::OwnerDenied, 3, Some(3003)),
    },
];
