//! Units, cgroups and pods in a policy: what validation refuses and how,
//! how units resolve, and how [`Policy::decide`] weighs a cgroup's rule.

use std::path::Path;

use super::{CgroupClass, CgroupRules, Pods, pods};
use crate::policy::{
    Action, Decision, Policy, PolicySpec, Process, Reason, resolve::fake::FakeResolver,
};

fn resolver() -> FakeResolver {
    FakeResolver::new(&[("root", 0), ("app", 1001)], &[("root", 0)]).with_units(&[
        (
            "amazon-ssm-agent.service",
            "/system.slice/amazon-ssm-agent.service",
        ),
        ("evil.service", "/system.slice/evil.service"),
    ])
}

/// The error text for `text`, which must be refused when read.
fn refused(text: &str) -> String {
    match PolicySpec::parse(Path::new("p.toml"), text) {
        Ok(spec) => panic!("accepted: {spec:?}"),
        Err(e) => e.to_string(),
    }
}

fn policy(text: &str) -> Policy {
    PolicySpec::parse(Path::new("p.toml"), text)
        .and_then(|spec| spec.resolve(&resolver()))
        .unwrap_or_else(|e| panic!("refused:\n{e}"))
}

/// The classification `policy` gives the cgroup at `path`.
/// What `policy` decides for uid and gid `id` on the host, in a cgroup of
/// class `cgroup`.
fn in_cgroup(policy: &Policy, id: u32, cgroup: CgroupClass) -> Decision {
    policy.decide_process(&Process {
        cgroup,
        ..Process::on_host(id, id)
    })
}

fn class(policy: &Policy, path: &str) -> CgroupClass {
    let (patterns, _) = policy.cgroups.patterns(&Pods::new());
    CgroupRules::classify(&patterns, path.as_bytes())
}

#[test]
fn bad_cgroup_entries_are_refused_where_they_are_with_what_is_wrong() {
    let cases = [
        (
            "[allow]\ncgroups = [\"system.slice\"]\n",
            "p.toml:2:12: [allow] cgroups: \"system.slice\" does not start with /",
        ),
        (
            "[allow]\ncgroups = [\"/a/**/b\"]\n",
            "p.toml:2:12: [allow] cgroups: \"/a/**/b\" has ** before its end",
        ),
        (
            "[deny]\nunits = [\"sshd\"]\n",
            "p.toml:2:10: [deny] units: \"sshd\" has no unit type",
        ),
        (
            "[deny]\nunits = [\"a.timer\"]\n",
            "p.toml:2:10: [deny] units: \"a.timer\" is a .timer unit, which has no cgroup",
        ),
        (
            "[allow]\npods = [\"kube-system\"]\n",
            "p.toml:2:9: [allow] pods: \"kube-system\" is not namespace/name",
        ),
        (
            "[allow]\npods = [\"kube-system/aws-*-node\"]\n",
            "p.toml:2:9: [allow] pods: \"kube-system/aws-*-node\": a * in a pod pattern stands \
             only at the end of the name",
        ),
        (
            "[allow]\npods = [\"kube-*/aws-node-*\"]\n",
            "p.toml:2:9: [allow] pods: \"kube-*/aws-node-*\": a pod pattern names its namespace \
             exactly",
        ),
        (
            "[allow]\ncgroups = [42]\n",
            "p.toml:2:12: [allow] cgroups: expected one of the cgroup path patterns as a string, \
             found integer 42",
        ),
    ];
    for (text, want) in cases {
        let e = refused(text);
        assert!(
            e.starts_with(want),
            "for {text:?}:\n{e}\nwanted it to start with:\n{want}"
        );
    }
}

#[test]
fn units_cgroups_and_pods_cannot_be_limited_to_the_host() {
    let e = refused("[allow.host]\nunits = [\"app.service\"]\n");
    assert!(
        e.starts_with("p.toml:2:1: [allow.host] units: units, cgroups and pods cannot be limited"),
        "{e}"
    );
}

#[test]
fn a_pod_cannot_be_denied_by_name() {
    let e = refused("[deny]\npods = [\"default/web\"]\n");
    assert!(
        e.starts_with("p.toml:2:1: [deny] pods: a pod cannot be denied by name"),
        "{e}"
    );
    assert!(
        e.contains("[deny] cgroups"),
        "it says what to do instead: {e}"
    );
}

#[test]
fn more_patterns_than_the_kernel_holds_are_refused_at_the_first_too_many() {
    let list: Vec<String> = (0..65).map(|i| format!("\"/s/c{i}\"")).collect();
    let e = refused(&format!("[allow]\ncgroups = [{}]\n", list.join(", ")));
    assert!(e.contains("too many cgroup patterns"), "{e}");
    assert!(e.contains("makes 65"), "{e}");
    // Pods count four each.
    let pods: Vec<String> = (0..17).map(|i| format!("\"ns/p{i}\"")).collect();
    let e = refused(&format!("[allow]\npods = [{}]\n", pods.join(", ")));
    assert!(e.contains("makes 68"), "{e}");
}

#[test]
fn a_unit_resolves_to_its_cgroup_and_everything_below() {
    let p = policy("[allow]\nunits = [\"amazon-ssm-agent.service\"]\n");
    let rule = CgroupClass::Rule {
        action: Action::Allow,
        index: 0,
    };
    assert_eq!(class(&p, "/system.slice/amazon-ssm-agent.service"), rule);
    assert_eq!(class(&p, "/system.slice/amazon-ssm-agent.service/x"), rule);
    // A cgroup named like it elsewhere is not it.
    assert_eq!(
        class(&p, "/user.slice/user-1000.slice/amazon-ssm-agent.service"),
        CgroupClass::Unmatched
    );
    assert_eq!(
        class(&p, "/system.slice/amazon-ssm-agent.service2"),
        CgroupClass::Unmatched
    );
}

#[test]
fn a_unit_that_does_not_resolve_is_an_error_or_left_out_if_allowed() {
    let spec = |text: &str| PolicySpec::parse(Path::new("p.toml"), text).expect("valid");
    let e = spec("[deny]\nunits = [\"nope.service\"]\n")
        .resolve(&resolver())
        .expect_err("unknown unit");
    assert!(
        e.to_string()
            .contains("p.toml:2:10: unit \"nope.service\" does not exist on this host"),
        "{e}"
    );
    let mut failing = resolver();
    failing.failing.push("evil.service".to_owned());
    let e = spec("[deny]\nunits = [\"evil.service\"]\n")
        .resolve(&failing)
        .expect_err("systemd unreachable");
    assert!(
        e.to_string()
            .contains("cannot look up unit \"evil.service\": Failed to connect to bus"),
        "{e}"
    );
    // An [allow] unit that is not there (yet) is left out, and denied.
    let (p, left_out) = spec("[allow]\nunits = [\"nope.service\"]\n")
        .resolve_available(&resolver())
        .expect("resolves what it can");
    assert_eq!(left_out.len(), 1);
    assert!(p.cgroups.is_empty());
    assert_eq!(p.decide(1001, 1001).action, Action::Deny);
}

#[test]
fn a_cgroup_deny_beats_a_uid_allow_and_an_unclassified_cgroup_is_denied() {
    let p = policy(
        "[allow]\nusers = [\"root\"]\ncgroups = [\"/system.slice/docker-*.scope\"]\n[deny]\nunits \
         = [\"evil.service\"]\n",
    );
    let evil = class(&p, "/system.slice/evil.service/child");
    let d = in_cgroup(&p, 0, evil);
    assert_eq!(
        (d.action, d.reason, d.index),
        (Action::Deny, Reason::CgroupDenied, Some(2))
    );
    let docker = class(&p, "/system.slice/docker-0a1b.scope");
    let d = in_cgroup(&p, 1001, docker);
    assert_eq!(
        (d.action, d.reason, d.index),
        (Action::Allow, Reason::CgroupAllowed, Some(1))
    );
    // Root elsewhere: its uid rule.
    let d = in_cgroup(&p, 0, class(&p, "/system.slice/sshd.service"));
    assert_eq!((d.action, d.reason), (Action::Allow, Reason::UidAllowed));
    // With a cgroup deny in the policy, a cgroup the kernel has no
    // classification for might be the denied one.
    let d = in_cgroup(&p, 0, CgroupClass::Unclassified);
    assert_eq!((d.action, d.reason), (Action::Deny, Reason::CgroupUnknown));
    // Without one, it only misses the cgroup allows.
    let allow_only = policy("[allow]\ncgroups = [\"/a/**\"]\n");
    let d = in_cgroup(&allow_only, 1001, CgroupClass::Unclassified);
    assert_eq!((d.action, d.reason), (Action::Deny, Reason::Default));
}

#[test]
fn denies_come_first_then_allows_each_in_entry_order() {
    let p = policy("[allow]\ncgroups = [\"/a/**\", \"/a/b\"]\n[deny]\ncgroups = [\"/a/b/**\"]\n");
    let (patterns, _) = p.cgroups.patterns(&Pods::new());
    let order: Vec<(Action, usize)> = patterns.iter().map(|r| (r.action, r.index)).collect();
    assert_eq!(
        order,
        [(Action::Deny, 2), (Action::Allow, 0), (Action::Allow, 1)]
    );
    assert_eq!(
        class(&p, "/a/b"),
        CgroupClass::Rule {
            action: Action::Deny,
            index: 2
        }
    );
}

#[test]
fn pods_allow_the_cgroups_of_the_uids_the_kubelet_lists() {
    let p = policy("[allow]\npods = [\"kube-system/aws-node\"]\n");
    let mut listed = Pods::new();
    let (pod, uid) = pods::parse_entry("kube-system_aws-node_3f8a55c2-7b1e-4b8e-9d2a-0c1d2e3f4a5b")
        .expect("a kubelet entry");
    listed.insert(pod, vec![uid]);
    let (patterns, dropped) = p.cgroups.patterns(&listed);
    assert!(dropped.pods.is_empty());
    let path = "/kubepods.slice/kubepods-burstable.slice/\
                kubepods-burstable-pod3f8a55c2_7b1e_4b8e_9d2a_0c1d2e3f4a5b.slice/cri-containerd-1.scope";
    assert_eq!(
        CgroupRules::classify(&patterns, path.as_bytes()),
        CgroupClass::Rule {
            action: Action::Allow,
            index: 0
        }
    );
    // Not listed: nothing allows it.
    let (none, _) = p.cgroups.patterns(&Pods::new());
    assert_eq!(
        CgroupRules::classify(&none, path.as_bytes()),
        CgroupClass::Unmatched
    );
}

/// The kubelet's listing of `entries` (`namespace_name_uid`).
fn listed(entries: &[&str]) -> Pods {
    let mut listed = Pods::new();
    for entry in entries {
        let (pod, uid) = pods::parse_entry(entry).unwrap_or_else(|| panic!("{entry}"));
        listed.entry(pod).or_default().push(uid);
    }
    listed
}

#[test]
fn a_pod_pattern_allows_the_pods_it_matches_as_they_come_and_only_in_its_namespace() {
    let p = policy(
        "[allow]\npods = [\"kube-system/coredns-0\", \"kube-system/aws-node-*\"]\n\
         cgroups = [\"/other/**\"]\n",
    );
    // Entries are numbered key by key: the cgroup first, then the pods.
    const EXACT: usize = 1;
    const PATTERN: usize = 2;
    let path = |uid: &str| format!("/kubepods/besteffort/pod{uid}/c1");
    let pods = listed(&[
        "kube-system_aws-node-7xk2p_0001",
        "kube-system_aws-node-x2k4p_0002",
        "default_aws-node-7xk2p_0003",
        "kube-system_kube-proxy-abcde_0004",
        "kube-system_coredns-0_0005",
    ]);
    let (patterns, dropped) = p.cgroups.patterns(&pods);
    assert!(dropped.pods.is_empty());
    let allowed_by = |index| CgroupClass::Rule {
        action: Action::Allow,
        index,
    };
    let class_of = |uid| CgroupRules::classify(&patterns, path(uid).as_bytes());
    // Both generated names, each by the pattern.
    assert_eq!(class_of("0001"), allowed_by(PATTERN));
    assert_eq!(class_of("0002"), allowed_by(PATTERN));
    // The same name in another namespace, and another workload: nothing.
    assert_eq!(class_of("0003"), CgroupClass::Unmatched);
    assert_eq!(class_of("0004"), CgroupClass::Unmatched);
    // The exact name still decides for its own pod.
    assert_eq!(class_of("0005"), allowed_by(EXACT));
    // One fixed pattern, four per matched pod uid.
    assert_eq!(patterns.len(), 1 + 3 * pods::PATTERNS_PER_POD);
    // A pod made later (a rollout's new name) is allowed at the next
    // listing, with nothing written in the policy.
    let later = listed(&["kube-system_aws-node-q9z8w_0006"]);
    let (patterns, _) = p.cgroups.patterns(&later);
    assert_eq!(
        CgroupRules::classify(&patterns, path("0006").as_bytes()),
        allowed_by(PATTERN)
    );
    assert_eq!(
        CgroupRules::classify(&patterns, path("0001").as_bytes()),
        CgroupClass::Unmatched
    );
}

#[test]
fn a_pod_two_entries_name_is_allowed_once_by_the_first() {
    let p = policy("[allow]\npods = [\"ns/web-*\", \"ns/web-0\", \"ns/*\"]\n");
    let pods = listed(&["ns_web-0_0001"]);
    let (patterns, _) = p.cgroups.patterns(&pods);
    assert_eq!(patterns.len(), pods::PATTERNS_PER_POD);
    assert!(patterns.iter().all(|r| r.index == 0));
}

#[test]
fn pods_past_what_the_kernel_holds_are_left_out_and_named() {
    let p = policy("[allow]\npods = [\"ns/web-*\"]\n");
    let entries: Vec<String> = (0..17).map(|i| format!("ns_web-{i:02}_{i:04}")).collect();
    let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
    let (patterns, dropped) = p.cgroups.patterns(&listed(&entries));
    assert_eq!(patterns.len(), 64);
    assert_eq!(dropped.pods.len(), 1);
    assert_eq!(dropped.pods[0].0.to_string(), "ns/web-16");
}

#[test]
fn a_whole_namespace_is_warned_of_and_a_prefix_is_not() {
    let spec = |text: &str| {
        PolicySpec::parse(Path::new("p.toml"), text).unwrap_or_else(|e| panic!("refused:\n{e}"))
    };
    let warned = spec("[allow]\npods = [\"monitoring/*\"]\n").warnings();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0]
            .message
            .contains("allows every pod of namespace \"monitoring\""),
        "{warned:?}"
    );
    assert!(
        spec("[allow]\npods = [\"kube-system/aws-node-*\", \"ns/web-0\"]\n")
            .warnings()
            .is_empty()
    );
}

/// The policy of the shipped ConfigMap (`deploy/kubernetes/policy.yaml`),
/// as the kubelet writes it into the volume.
fn shipped_configmap_policy() -> String {
    let yaml = include_str!("../../../../deploy/kubernetes/policy.yaml");
    let (_, block) = yaml
        .split_once("  policy.toml: |\n")
        .unwrap_or_else(|| panic!("no policy.toml in the ConfigMap"));
    block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect()
}

#[test]
fn the_shipped_configmap_allows_the_vpc_cni_s_daemonset_pods_by_their_generated_names() {
    let text = shipped_configmap_policy();
    let spec = PolicySpec::parse(Path::new("policy.toml"), &text)
        .unwrap_or_else(|e| panic!("refused:\n{e}\n{text}"));
    assert!(spec.warnings().is_empty(), "{:?}", spec.warnings());
    let p = spec.resolve(&resolver()).unwrap_or_else(|e| panic!("{e}"));
    // Two nodes' aws-node pods, a rollout's, and what must not match.
    let pods = listed(&[
        "kube-system_aws-node-7xk2p_0001",
        "kube-system_aws-node-q9z8w_0002",
        "default_aws-node-7xk2p_0003",
        "kube-system_coredns-5d8f7c9b6-abcde_0004",
    ]);
    let (patterns, _) = p.cgroups.patterns(&pods);
    let allowed = |uid: &str| {
        let path =
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice");
        matches!(
            CgroupRules::classify(&patterns, path.as_bytes()),
            CgroupClass::Rule {
                action: Action::Allow,
                ..
            }
        )
    };
    assert!(allowed("0001"));
    assert!(allowed("0002"));
    assert!(!allowed("0003"));
    assert!(!allowed("0004"));
}
