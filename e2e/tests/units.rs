//! Units, cgroup paths and pods end to end: the real agent and programs,
//! unit and cgroup rules matched against cgroups the test creates below
//! its own test cgroup (never the host's units). systemd is stood in for
//! by a script the agent runs as `systemctl` (`IMDS_GUARD_SYSTEMCTL`),
//! which places the units below the test cgroup, as `systemctl show` would
//! report a running unit's `ControlGroup`. The kubelet is stood in for by
//! a pod log directory of the test's own (`--kubelet-pods-dir`) and pod
//! cgroups in the cgroupfs driver's layout below `/kubepods`, a cgroup the
//! test makes at the cgroup2 root (and refuses to take over if it exists)
//! and guards.

#[path = "units/reload_without_cgroup_rules.rs"]
mod reload_without_cgroup_rules;

use std::path::Path;

use imds_guard_e2e::{
    Action, Agent, IMDS_PORT, IMDS_V4, LOG, NOBODY, ProbeResult, READY, Sandbox, TestCgroup,
    cgroup_path, fake_systemctl, field, privileged_or_skip, slowdown::scaled,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;
/// A uid no uid rule names.
const APP_UID: u32 = 1001;
/// How many times a unit's cgroup is deleted and made again.
const RESTARTS: usize = 100;

fn connect() -> Action {
    Action::connect(IMDS_V4, IMDS_PORT)
}

/// Starts the agent on the sandbox's policy, asking `systemctl` of units.
fn start_agent(sb: &Sandbox, systemctl: &Path) -> Agent {
    let systemctl = systemctl
        .to_str()
        .unwrap_or_else(|| panic!("non UTF-8 path"));
    let agent = sb.spawn_agent(&[], &[("IMDS_GUARD_SYSTEMCTL", systemctl)]);
    // Scaled: the classification programs lengthen the verifier's part of
    // a start, which an emulated guest multiplies.
    agent.wait_ready(scaled(READY));
    agent
}

/// Writes `policy` and waits until the agent has put it in force.
fn reload(sb: &Sandbox, agent: &Agent, policy: &str) {
    after_reload(agent, || {
        sb.policy(policy);
        agent.sighup();
    });
}

/// Does `cause` and waits until the agent has applied one reload more.
fn after_reload(agent: &Agent, cause: impl FnOnce()) {
    let applied = || {
        agent
            .records()
            .iter()
            .filter(|r| {
                field(r, "event").and_then(Value::as_str) == Some("reload")
                    && field(r, "outcome").and_then(Value::as_str) == Some("applied")
            })
            .count()
    };
    let before = applied();
    cause();
    let deadline = std::time::Instant::now() + scaled(LOG);
    while applied() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload was applied:\n{}",
            agent.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn denied(r: &ProbeResult) -> bool {
    !r.ok && r.errno == Some(EPERM)
}

/// The agent's denial record for the probe that produced `r`.
fn denial_for(agent: &Agent, r: &ProbeResult) -> Value {
    let pid = u64::from(r.pid);
    agent
        .wait_for(
            |rec| {
                field(rec, "event").and_then(Value::as_str) == Some("deny")
                    && field(rec, "pid").and_then(Value::as_u64) == Some(pid)
            },
            LOG,
        )
        .unwrap_or_else(|| panic!("no deny record for pid {pid}:\n{}", agent.output()))
}

#[test]
fn a_unit_rule_allows_its_cgroup_while_the_same_uid_elsewhere_is_denied() {
    if !privileged_or_skip("a_unit_rule_allows_its_cgroup_while_the_same_uid_elsewhere_is_denied") {
        return;
    }
    let sb = Sandbox::new();
    let app = sb.cgroup.child("app.service");
    let other = sb.cgroup.child("other.service");
    let systemctl = fake_systemctl(&sb, &["app.service", "other.service"]);
    sb.policy("mode = \"enforce\"\n[allow]\nuids = [1001]\n");
    let agent = start_agent(&sb, &systemctl);
    let nobody_in = |cg: &TestCgroup| sb.probe_as(NOBODY, NOBODY).cgroup_dir(cg.path());

    // Without the unit rule, nobody in the unit's cgroup is denied.
    let r = nobody_in(&app).run(connect());
    assert!(denied(&r), "without a unit rule: {r:?}");

    reload(
        &sb,
        &agent,
        "mode = \"enforce\"\n[allow]\nuids = [1001]\nunits = [\"app.service\"]\n",
    );
    let r = nobody_in(&app).run(Action::http(IMDS_V4, IMDS_PORT));
    assert_eq!(
        r.assert_ok().body,
        sb.imds.credentials_body(),
        "in the unit"
    );
    let (_, status) = sb.status();
    let cgroups = &status["cgroups"];
    assert_eq!(cgroups["tracking"], true, "{status}");
    assert_eq!(cgroups["patterns"], 1, "{status}");
    assert!(
        cgroups["classified_cgroups"].as_u64() >= Some(3),
        "{status}"
    );
    // A cgroup below the unit's is the unit's too (a service's own
    // sub-cgroups).
    let inner = app.child("inner");
    nobody_in(&inner).run(connect()).assert_ok();
    drop(inner);
    // The same uid elsewhere: another unit, and the guarded cgroup itself.
    let r = nobody_in(&other).run(connect());
    assert!(denied(&r), "in another unit: {r:?}");
    let rec = denial_for(&agent, &r);
    assert_eq!(
        field(&rec, "cgroup").and_then(Value::as_str),
        Some(format!("{}/other.service", cgroup_path(&sb.cgroup)).as_str()),
        "the record names the caller's cgroup: {rec}"
    );
    let r = sb.probe_as(NOBODY, NOBODY).run(connect());
    assert!(denied(&r), "in the guarded cgroup: {r:?}");
}

#[test]
fn units_restarted_a_hundred_times_are_decided_right_on_the_first_connect() {
    if !privileged_or_skip("units_restarted_a_hundred_times_are_decided_right_on_the_first_connect")
    {
        return;
    }
    let sb = Sandbox::new();
    let mut app = Some(sb.cgroup.child("app.service"));
    let mut bad = Some(sb.cgroup.child("bad.service"));
    let systemctl = fake_systemctl(&sb, &["app.service", "bad.service"]);
    sb.policy("mode = \"enforce\"\n[allow]\nuids = [65534]\n");
    let agent = start_agent(&sb, &systemctl);
    let in_cgroup = |uid: u32, cg: &Option<TestCgroup>| {
        let cg = cg.as_ref().unwrap_or_else(|| panic!("no cgroup"));
        sb.probe_as(uid, uid).cgroup_dir(cg.path()).run(connect())
    };

    // Without the unit rules: the app's uid is denied, and nobody (allowed
    // by uid) connects from the unit the policy is about to deny.
    let r = in_cgroup(APP_UID, &app);
    assert!(denied(&r), "app before its rule: {r:?}");
    in_cgroup(NOBODY, &bad).assert_ok();

    reload(
        &sb,
        &agent,
        "mode = \"enforce\"\n[allow]\nuids = [65534]\nunits = [\"app.service\"]\n[deny]\nunits = \
         [\"bad.service\"]\n",
    );
    let mut wrong = Vec::new();
    for round in 0..RESTARTS {
        // A restart: the unit's cgroup is removed and made again (a new
        // cgroup id), and its process connects at once.
        drop(app.take());
        app = Some(sb.cgroup.child("app.service"));
        let r = in_cgroup(APP_UID, &app);
        if !r.ok {
            wrong.push(format!("round {round}: allowed unit refused: {r:?}"));
        }
        drop(bad.take());
        bad = Some(sb.cgroup.child("bad.service"));
        let r = in_cgroup(NOBODY, &bad);
        if !denied(&r) {
            wrong.push(format!("round {round}: denied unit not refused: {r:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts in {RESTARTS} restarts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    drop(app);
    drop(bad);
}

#[test]
fn cgroup_globs_allow_and_a_subtree_deny_covers_cgroups_made_after_the_start() {
    if !privileged_or_skip(
        "cgroup_globs_allow_and_a_subtree_deny_covers_cgroups_made_after_the_start",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let base = cgroup_path(&sb.cgroup);
    let systemctl = fake_systemctl(&sb, &[]);
    // Without the deny, nobody (allowed by uid) connects from below evil.
    sb.policy(&format!(
        "mode = \"enforce\"\n[allow]\nuids = [65534]\ncgroups = [\"{base}/docker-*.scope\"]\n"
    ));
    let agent = start_agent(&sb, &systemctl);
    let evil = sb.cgroup.child("evil");
    let nested = evil.child("nested");
    sb.probe_as(NOBODY, NOBODY)
        .cgroup_dir(nested.path())
        .run(connect())
        .assert_ok();
    drop(nested);
    drop(evil);

    reload(
        &sb,
        &agent,
        &format!(
            "mode = \"enforce\"\n[allow]\nuids = [65534]\ncgroups = \
             [\"{base}/docker-*.scope\"]\n[deny]\ncgroups = [\"{base}/evil/**\"]\n"
        ),
    );
    // Made after the policy: classified as they are created.
    let docker = sb.cgroup.child("docker-0123abcd.scope");
    let not_docker = sb.cgroup.child("docker-0123abcd.slice");
    let evil = sb.cgroup.child("evil");
    let nested = evil.child("nested");
    let as_app = |cg: &TestCgroup| sb.probe_as(APP_UID, APP_UID).cgroup_dir(cg.path());
    as_app(&docker).run(connect()).assert_ok();
    let r = as_app(&not_docker).run(connect());
    assert!(denied(&r), "the glob's suffix does not match: {r:?}");
    for cg in [&evil, &nested] {
        let r = sb
            .probe_as(NOBODY, NOBODY)
            .cgroup_dir(cg.path())
            .run(connect());
        assert!(denied(&r), "{}: {r:?}", cg.path().display());
    }
    let r = sb
        .probe_as(NOBODY, NOBODY)
        .cgroup_dir(nested.path())
        .run(connect());
    let rec = denial_for(&agent, &r);
    assert_eq!(
        field(&rec, "cgroup").and_then(Value::as_str),
        Some(format!("{base}/evil/nested").as_str()),
        "{rec}"
    );
    drop(nested);
    drop(evil);
    drop(not_docker);
    drop(docker);
}

#[test]
fn a_cgroup_too_deep_to_classify_is_denied_under_a_policy_with_cgroup_denies() {
    if !privileged_or_skip(
        "a_cgroup_too_deep_to_classify_is_denied_under_a_policy_with_cgroup_denies",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let base = cgroup_path(&sb.cgroup);
    let systemctl = fake_systemctl(&sb, &[]);
    sb.policy(&format!(
        "mode = \"enforce\"\n[allow]\nuids = [65534]\ncgroups = [\"{base}/x/**\"]\n"
    ));
    let agent = start_agent(&sb, &systemctl);
    // The test cgroup is at level 1; the programs follow 64 levels.
    let mut chain: Vec<TestCgroup> = Vec::new();
    while chain.len() < 64 {
        let next = match chain.last() {
            Some(parent) => parent.child("d"),
            None => sb.cgroup.child("d"),
        };
        chain.push(next);
    }
    let at = |level: usize| {
        sb.probe_as(NOBODY, NOBODY)
            .cgroup_dir(chain[level - 2].path())
            .run(connect())
    };
    // Only allows by cgroup: an unclassified cgroup just misses them.
    at(64).assert_ok();
    at(65).assert_ok();

    reload(
        &sb,
        &agent,
        &format!(
            "mode = \"enforce\"\n[allow]\nuids = [65534]\ncgroups = [\"{base}/x/**\"]\n[deny]\n\
             cgroups = [\"{base}/y/**\"]\n"
        ),
    );
    at(64).assert_ok();
    let r = at(65);
    assert!(
        denied(&r),
        "too deep to classify, and the policy denies cgroups: {r:?}"
    );
    let rec = denial_for(&agent, &r);
    let reason = field(&rec, "reason").and_then(Value::as_str).unwrap_or("");
    assert!(reason.contains("no classification"), "{rec}");
    while let Some(cg) = chain.pop() {
        drop(cg);
    }
}

/// Pod uids, as the kubelet's log directories and cgroups name them.
const AWS_NODE_UID: &str = "0d1e2f3a-1111-4b8e-9d2a-0c1d2e3f4a01";
const SAME_NAME_UID: &str = "0d1e2f3a-2222-4b8e-9d2a-0c1d2e3f4a02";
const KUBE_PROXY_UID: &str = "0d1e2f3a-3333-4b8e-9d2a-0c1d2e3f4a03";
const ROLLED_UID: &str = "0d1e2f3a-4444-4b8e-9d2a-0c1d2e3f4a04";

#[test]
fn a_pod_pattern_allows_a_daemonset_s_generated_names_in_its_namespace_only() {
    if !privileged_or_skip(
        "a_pod_pattern_allows_a_daemonset_s_generated_names_in_its_namespace_only",
    ) {
        return;
    }
    let kubepods = TestCgroup::kubepods().unwrap_or_else(|e| panic!("{e}"));
    let sb = Sandbox::in_cgroup(kubepods);
    let besteffort = sb.cgroup.child("besteffort");
    let pod = |uid: &str| besteffort.child(&format!("pod{uid}"));
    let aws_node = pod(AWS_NODE_UID);
    let same_name = pod(SAME_NAME_UID);
    let kube_proxy = pod(KUBE_PROXY_UID);
    let container = aws_node.child("0123abcd");
    let kubelet = sb.dir.path().join("pods");
    let listed = |entry: String| {
        std::fs::create_dir_all(kubelet.join(&entry))
            .unwrap_or_else(|e| panic!("making the kubelet's {entry}: {e}"));
    };
    listed(format!("kube-system_aws-node-7xk2p_{AWS_NODE_UID}"));
    listed(format!("default_aws-node-7xk2p_{SAME_NAME_UID}"));
    listed(format!("kube-system_kube-proxy-abcde_{KUBE_PROXY_UID}"));
    let nobody_in = |cg: &TestCgroup| sb.probe_as(NOBODY, NOBODY).cgroup_dir(cg.path());

    // Without the guard, every pod reaches the service.
    for cg in [&container, &same_name, &kube_proxy] {
        let r = nobody_in(cg).run(Action::http(IMDS_V4, IMDS_PORT));
        assert_eq!(r.assert_ok().body, sb.imds.credentials_body(), "unguarded");
    }

    sb.policy("mode = \"enforce\"\n[allow]\npods = [\"kube-system/aws-node-*\"]\n");
    let dir = kubelet.to_str().unwrap_or_else(|| panic!("non UTF-8 path"));
    let agent = sb.start_agent(&["--kubelet-pods-dir", dir]);
    let agent = &agent;

    // The DaemonSet's pod, by its generated name, in its container's cgroup.
    let r = nobody_in(&container).run(Action::http(IMDS_V4, IMDS_PORT));
    assert_eq!(
        r.assert_ok().body,
        sb.imds.credentials_body(),
        "kube-system/aws-node-7xk2p:\n{}",
        agent.output()
    );
    // The same name in another namespace, and another pod of kube-system.
    for (cg, who) in [
        (&same_name, "default/aws-node-7xk2p"),
        (&kube_proxy, "kube-system/kube-proxy-abcde"),
    ] {
        let r = nobody_in(cg).run(connect());
        assert!(denied(&r), "{who}: {r:?}");
        let rec = denial_for(agent, &r);
        assert_eq!(
            field(&rec, "pod").and_then(Value::as_str),
            Some(who),
            "the record names the pod: {rec}"
        );
    }
    // status names the pod the pattern matched, and the entry.
    let out = sb.cli(&["status", "--json", "--rules", "--kubelet-pods-dir", dir]);
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --rules: {e}: {out:?}"));
    let pods: Vec<(&str, &str)> = status["rules"]["cgroups"]
        .as_array()
        .unwrap_or_else(|| panic!("no cgroups in {status}"))
        .iter()
        .filter_map(|c| Some((c["pod"].as_str()?, c["action"].as_str()?)))
        .collect();
    assert!(
        pods.contains(&("kube-system/aws-node-7xk2p", "allow")),
        "{status}"
    );
    assert!(
        !pods
            .iter()
            .any(|(pod, _)| *pod != "kube-system/aws-node-7xk2p"),
        "only the matched pod's cgroups have a rule: {status}"
    );

    // A rollout: a new pod, a new generated name. Its cgroup comes first,
    // and nothing allows it until the kubelet lists it.
    let rolled = pod(ROLLED_UID);
    let r = nobody_in(&rolled).run(connect());
    assert!(denied(&r), "a pod the kubelet does not list yet: {r:?}");
    // The agent lists the kubelet's directory every 2 s and reloads.
    after_reload(agent, || {
        listed(format!("kube-system_aws-node-q9z8w_{ROLLED_UID}"));
    });
    nobody_in(&rolled).run(connect()).assert_ok();
    nobody_in(&container).run(connect()).assert_ok();
    let r = nobody_in(&same_name).run(connect());
    assert!(denied(&r), "default/aws-node-7xk2p after the reload: {r:?}");
}
