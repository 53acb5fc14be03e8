//! The policy as a whole: the shipped default file, [`Policy::decide`] for
//! every [`Reason`], and [`Policy::protects`].

use std::{net::IpAddr, path::Path};

use imds_guard_common::{Bounds, MAX_GROUPS};

use super::{
    Action, Decision, Identity, Location, Mode, Owner, Place, Policy, PolicySpec, Process,
    Protocol, Reason, Scope, resolve::fake::FakeResolver,
};

/// The policy shipped in `config/`, as installed.
const SHIPPED: &str = include_str!("../../../config/imds-guard.toml");

fn hosts_db() -> FakeResolver {
    FakeResolver::new(
        &[("root", 0), ("apache", 48), ("alice", 1001)],
        &[("root", 0), ("imds", 1500), ("banned", 666)],
    )
}

fn policy(text: &str) -> Policy {
    PolicySpec::parse(Path::new("p.toml"), text)
        .and_then(|spec| spec.resolve(&hosts_db()))
        .unwrap_or_else(|e| panic!("the policy was refused:\n{e}\n--- policy:\n{text}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} in a test: {e}"))
}

fn decision(action: Action, reason: Reason, index: Option<usize>) -> Decision {
    Decision {
        action,
        reason,
        index,
        id: None,
    }
}

/// [`Policy::decide`] without the deciding id, which these tests do not
/// state.
fn bare(policy: &Policy, uid: u32, gid: u32) -> Decision {
    Decision {
        id: None,
        ..policy.decide(uid, gid)
    }
}

#[test]
fn the_shipped_policy_allows_root_on_the_host_only_and_enforces() {
    let spec = PolicySpec::parse(Path::new("config/imds-guard.toml"), SHIPPED)
        .unwrap_or_else(|e| panic!("the shipped policy does not validate:\n{e}"));
    assert_eq!(spec.mode, Mode::Enforce);
    let addrs: Vec<IpAddr> = spec.endpoints.iter().map(|e| e.addr).collect();
    assert_eq!(addrs, [ip("169.254.169.254"), ip("fd00:ec2::254")]);
    // Written out, not the built-in default.
    assert!(spec.endpoints.iter().all(|e| e.at.is_some()), "{spec:?}");
    let identities: Vec<(Action, Scope, &Identity)> = spec
        .entries
        .iter()
        .map(|e| (e.action, e.scope, &e.identity))
        .collect();
    assert_eq!(
        identities,
        [(Action::Allow, Scope::Host, &Identity::User("root".into()))]
    );

    let root_only = FakeResolver::new(&[("root", 0)], &[("root", 0)]);
    let policy = spec
        .resolve(&root_only)
        .unwrap_or_else(|e| panic!("the shipped policy does not resolve:\n{e}"));
    assert_eq!(
        bare(&policy, 0, 0),
        decision(Action::Allow, Reason::UidAllowed, Some(0))
    );
    assert_eq!(
        bare(&policy, 1000, 1000),
        decision(Action::Deny, Reason::Default, None)
    );
    // A process in group root but not uid 0 is not root.
    assert_eq!(bare(&policy, 1000, 0).action, Action::Deny);
    // Root in a container is not root on the host.
    let in_container = Process {
        place: Place::Container,
        ..Process::on_host(0, 0)
    };
    assert_eq!(
        policy.decide_process(&in_container),
        Decision {
            action: Action::Deny,
            reason: Reason::HostOnly,
            index: Some(0),
            id: Some(0),
        }
    );
}

/// `[allow] groups imds (1500)`, `[deny] gids 666`, `[deny] users apache`,
/// `[allow.host] uids 0`.
fn identity_policy() -> Policy {
    policy(
        "[allow]\ngroups = [\"imds\"]\n[allow.host]\nuids = [0]\n\
         [deny]\ngids = [666]\nusers = [\"apache\"]\n",
    )
}

fn member(uid: u32, gid: u32, groups: &[u32]) -> Process {
    Process {
        groups: groups.to_vec(),
        ..Process::on_host(uid, gid)
    }
}

#[test]
fn supplementary_groups_allow_and_deny_like_the_primary_one() {
    let p = identity_policy();
    let d = p.decide_process(&member(2000, 2000, &[10, 1500]));
    assert_eq!(
        (d.action, d.reason, d.id),
        (Action::Allow, Reason::GroupAllowed, Some(1500))
    );
    // A denied group wins over an allowed one, whichever comes first.
    let d = p.decide_process(&member(2000, 1500, &[666]));
    assert_eq!(
        (d.action, d.reason, d.id),
        (Action::Deny, Reason::GroupDenied, Some(666))
    );
    // `sg imds`: the primary gid becomes the allowed group, the denied one
    // stays supplementary, and still denies.
    let d = p.decide_process(&member(2000, 1500, &[666, 1500]));
    assert_eq!(d.reason, Reason::GroupDenied);
    // Group rules in force and too many groups: denied, whatever they are.
    let many: Vec<u32> = (10_000..10_000 + MAX_GROUPS + 1).collect();
    let d = p.decide_process(&member(0, 0, &many));
    assert_eq!((d.action, d.reason), (Action::Deny, Reason::TooManyGroups));
    // Without group rules they are not read, and do not count.
    let uids_only = policy("[allow]\nuids = [0]\n");
    assert_eq!(
        uids_only.decide_process(&member(0, 0, &many)).action,
        Action::Allow
    );
    // The unrolled build (no bpf_loop) reads 16: 17 are too many there,
    // and not with bpf_loop.
    let seventeen: Vec<u32> = (10_000..10_017).collect();
    let root = member(0, 0, &seventeen);
    assert_eq!(p.decide_process(&root).reason, Reason::UidAllowed);
    let d = p.decide_process_within(&root, Bounds::UNROLLED);
    assert_eq!((d.action, d.reason), (Action::Deny, Reason::TooManyGroups));
    let sixteen = member(0, 0, &seventeen[..16]);
    assert_eq!(
        p.decide_process_within(&sixteen, Bounds::UNROLLED).reason,
        Reason::UidAllowed
    );
}

/// Creators of user namespaces, each with its own number as its gid (as a
/// user whose primary group is its own creates them).
fn owned(uids: &[u32]) -> Vec<Owner> {
    uids.iter().map(|&uid| Owner { uid, gid: uid }).collect()
}

#[test]
fn a_user_namespace_created_by_a_denied_user_is_that_user() {
    let p = identity_policy();
    // uid 100000 is apache's subordinate id, inside apache's namespace.
    let rootless = Process {
        owners: owned(&[48]),
        ..member(100_000, 100_000, &[1500])
    };
    let d = p.decide_process(&rootless);
    assert_eq!(
        (d.action, d.reason, d.id, d.index),
        (Action::Deny, Reason::OwnerDenied, Some(48), Some(2))
    );
    // Owners further out count too; an allowed owner is no allow.
    let nested = Process {
        owners: owned(&[1001, 48]),
        ..member(5, 5, &[])
    };
    assert_eq!(p.decide_process(&nested).reason, Reason::OwnerDenied);
    let allowed_owner = Process {
        owners: owned(&[0]),
        ..member(5, 5, &[])
    };
    assert_eq!(p.decide_process(&allowed_owner).reason, Reason::Default);
}

#[test]
fn host_only_entries_allow_on_the_host_and_name_why_not_elsewhere() {
    let p = identity_policy();
    assert_eq!(
        p.decide_process(&member(0, 0, &[])).reason,
        Reason::UidAllowed
    );
    let root_in_container = Process {
        place: Place::Container,
        ..member(0, 0, &[])
    };
    assert_eq!(
        p.decide_process(&root_in_container).reason,
        Reason::HostOnly
    );
    // An entry that allows anywhere still allows in a container.
    let member_in_container = Process {
        place: Place::Container,
        ..member(0, 0, &[1500])
    };
    assert_eq!(
        p.decide_process(&member_in_container).reason,
        Reason::GroupAllowed
    );
    assert_eq!(
        crate::policy::explain_with(
            &p,
            Reason::HostOnly,
            Some(1),
            &crate::policy::Context {
                uid: 0,
                gid: 0,
                id: Some(0),
                place: Some(Place::Container),
                groups: Some(0),
                not_host: Some("its pid namespace is not the agent's"),
                host_unknown: false,
                owner: None,
            }
        ),
        "uid 0 is allowed on the host only by [allow.host] uids 0 at p.toml:4:9, and this \
         process runs in a container (its pid namespace is not the agent's), not on the host"
    );
    // A packet the kernel sent for a socket: nothing says it runs in a
    // container, only that the guard cannot tell.
    let unknown = crate::policy::explain_with(
        &p,
        Reason::HostOnly,
        Some(1),
        &crate::policy::Context {
            uid: 0,
            gid: 0,
            id: Some(0),
            place: Some(Place::Container),
            not_host: Some("the owner's pid namespace is unknown"),
            host_unknown: true,
            ..crate::policy::Context::default()
        },
    );
    assert!(
        unknown.starts_with(
            "uid 0 is allowed on the host only by [allow.host] uids 0 at p.toml:4:9, and the \
             guard cannot tell that this process is on the host (the owner's pid namespace is \
             unknown), so it refuses (fail closed)"
        ),
        "{unknown}"
    );
    assert!(!unknown.contains("container"), "{unknown}");
}

#[test]
fn allow_host_is_an_allow_table_and_deny_host_is_refused() {
    let refused = |text: &str| {
        PolicySpec::parse(Path::new("p.toml"), text)
            .expect_err("refused")
            .to_string()
    };
    assert!(
        refused("[allow]\nuids = [0]\n[allow.host]\nuids = [0]\n")
            .contains("p.toml:4:9: duplicate rule: uid 0 is already allowed at line 2, column 9"),
    );
    assert!(
        refused("[deny.host]\nuids = [5]\n").contains(
            "unknown key \"host\" in [deny], host belongs in [allow] only ([allow.host])"
        ),
    );
    assert!(refused("[allow.host]\n").contains("the policy decides nothing"));
    // Today's policies keep their meaning: [allow] allows anywhere.
    let p = policy("[allow]\nuids = [0]\n");
    let root_in_container = Process {
        place: Place::Container,
        ..Process::on_host(0, 0)
    };
    assert_eq!(p.decide_process(&root_in_container).action, Action::Allow);
}

/// allow: uid 1001 (alice), gid 1500 (imds); deny: uid 48 (apache),
/// gid 666 (banned).
fn mixed() -> Policy {
    policy(
        "[allow]\nusers = [\"alice\"]\ngroups = [\"imds\"]\n\
         [deny]\nusers = [\"apache\"]\ngids = [666]\n",
    )
}

#[test]
fn decide_gives_every_reason_in_the_kernel_order() {
    let policy = mixed();
    // Entries: 0 alice, 1 imds, 2 apache, 3 gid 666.
    let cases = [
        // A denied uid loses even with an allowed gid.
        (
            (48, 1500),
            decision(Action::Deny, Reason::UidDenied, Some(2)),
        ),
        // Deny over allow: uid allowed, gid denied.
        (
            (1001, 666),
            decision(Action::Deny, Reason::GidDenied, Some(3)),
        ),
        (
            (1001, 1500),
            decision(Action::Allow, Reason::UidAllowed, Some(0)),
        ),
        (
            (1001, 1001),
            decision(Action::Allow, Reason::UidAllowed, Some(0)),
        ),
        (
            (2000, 1500),
            decision(Action::Allow, Reason::GidAllowed, Some(1)),
        ),
        ((2000, 2000), decision(Action::Deny, Reason::Default, None)),
        // An id is looked up in its own map only: gid 48 and uid 666 are
        // not the rules for uid 48 and gid 666.
        ((666, 48), decision(Action::Deny, Reason::Default, None)),
    ];
    for ((uid, gid), expected) in cases {
        assert_eq!(bare(&policy, uid, gid), expected, "uid {uid} gid {gid}");
    }
    let entry = |d: Decision| d.index.map(|i| &policy.spec.entries[i].identity);
    assert_eq!(
        entry(bare(&policy, 48, 0)),
        Some(&Identity::User("apache".into()))
    );
}

#[test]
fn a_deny_list_alone_allows_by_default() {
    let policy = policy("[deny]\nusers = [\"apache\"]\n");
    assert_eq!(
        bare(&policy, 1000, 1000),
        decision(Action::Allow, Reason::Default, None)
    );
    assert_eq!(
        bare(&policy, 48, 48),
        decision(Action::Deny, Reason::UidDenied, Some(0))
    );
}

#[test]
fn a_group_alone_can_allow() {
    let policy = policy("[allow]\ngroups = [\"imds\"]\n");
    assert_eq!(
        bare(&policy, 1000, 1500),
        decision(Action::Allow, Reason::GidAllowed, Some(0))
    );
    assert_eq!(
        bare(&policy, 1500, 1000),
        decision(Action::Deny, Reason::Default, None)
    );
}

#[test]
fn protects_the_listed_addresses_and_the_mapped_form_of_ipv4_ones() {
    let policy = policy("[allow]\nuids = [0]\n");
    for protected in [
        "169.254.169.254",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",
    ] {
        assert!(
            policy.protects(ip(protected)),
            "{protected} is not protected"
        );
    }
    for open in [
        "169.254.169.253",
        "10.0.0.1",
        // IPv4-compatible, not mapped: a different (deprecated) address.
        "::169.254.169.254",
        "fd00:ec2::253",
        "::ffff:10.0.0.1",
    ] {
        assert!(!policy.protects(ip(open)), "{open} is protected");
    }
}

#[test]
fn a_port_scoped_endpoint_protects_its_ports_and_leaves_the_others_open() {
    let policy = policy(
        "[endpoints]\naddresses = [\"169.254.169.254\", \"169.254.170.2:80/tcp\", \
         \"[fd00:ec2::23]:80\"]\n[allow]\nuids = [0]\n",
    );
    let tcp = Protocol::Tcp;
    let udp = Protocol::Udp;
    // A bare address: every port, both protocols.
    assert!(policy.protects_port(ip("169.254.169.254"), udp, Some(53)));
    assert!(policy.protects_port(ip("::ffff:169.254.169.254"), tcp, Some(1)));
    // 80/tcp only.
    assert!(policy.protects_port(ip("169.254.170.2"), tcp, Some(80)));
    assert!(policy.protects_port(ip("::ffff:169.254.170.2"), tcp, Some(80)));
    assert!(!policy.protects_port(ip("169.254.170.2"), udp, Some(80)));
    assert!(!policy.protects_port(ip("169.254.170.2"), tcp, Some(81)));
    // Port 80, TCP and UDP.
    assert!(policy.protects_port(ip("fd00:ec2::23"), udp, Some(80)));
    assert!(!policy.protects_port(ip("fd00:ec2::23"), tcp, Some(8080)));
    // A port that cannot be read is a protected one.
    assert!(policy.protects_port(ip("169.254.170.2"), udp, None));
    assert!(!policy.protects_port(ip("169.254.170.3"), tcp, None));
    assert!(policy.protects(ip("169.254.170.2")));
    assert_eq!(
        policy.spec.addresses(),
        [
            "169.254.169.254",
            "169.254.170.2:80/tcp",
            "[fd00:ec2::23]:80"
        ]
    );
}

#[test]
fn an_ipv6_only_policy_does_not_protect_mapped_ipv4() {
    let policy = policy("[endpoints]\naddresses = [\"fd00:ec2::254\"]\n[allow]\nuids = [0]\n");
    assert!(policy.protects(ip("fd00:ec2::254")));
    assert!(!policy.protects(ip("169.254.169.254")));
    assert!(!policy.protects(ip("::ffff:169.254.169.254")));
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let missing = Path::new("/nonexistent/imds-guard/policy.toml");
    match PolicySpec::load(missing) {
        Ok(spec) => panic!("loaded {spec:?}"),
        Err(e) => assert_eq!(
            e.to_string(),
            "/nonexistent/imds-guard/policy.toml: cannot read the policy file"
        ),
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/imds-guard.toml");
    let spec = PolicySpec::load(&shipped)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", shipped.display()));
    assert_eq!(spec.path, shipped);
}

#[test]
fn identities_and_locations_print_as_messages_use_them() {
    let printed: Vec<String> = [
        Identity::User("root".into()),
        Identity::Uid(0),
        Identity::Group("imds".into()),
        Identity::Gid(1500),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        printed,
        ["user \"root\"", "uid 0", "group \"imds\"", "gid 1500"]
    );
    assert_eq!(Location { line: 3, col: 14 }.to_string(), "3:14");
    assert_eq!(
        Location { line: 3, col: 14 }.in_words(),
        "line 3, column 14"
    );
    assert_eq!(Mode::default(), Mode::Enforce);
}
