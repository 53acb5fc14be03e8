//! A reload to a policy without cgroup rules skips the classifier's grace
//! period and its listing of the hierarchy (issue 21): the generation it
//! writes runs without `CGROUP_RULES`, so the programs read no
//! classification and `status --rules` shows none. The classification
//! of the slot it reuses is then two policies old; these tests show that
//! nothing decides by it, and that the next policy with cgroup rules
//! classifies every cgroup again, those made meanwhile included.

use imds_guard_e2e::{
    NOBODY, Sandbox, TestCgroup, cgroup_path, fake_systemctl, privileged_or_skip,
};
use serde_json::Value;

use super::{APP_UID, connect, denied, reload, start_agent};

/// The cgroups `status --rules` lists in force.
fn cgroup_rules(sb: &Sandbox) -> Vec<Value> {
    let out = sb.cli(&["status", "--json", "--rules"]);
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --rules: {e}: {out:?}"));
    status["rules"]["cgroups"]
        .as_array()
        .unwrap_or_else(|| panic!("no cgroups in {status}"))
        .clone()
}

#[test]
fn a_cgroup_allowed_two_policies_ago_is_not_allowed_by_a_policy_without_cgroup_rules() {
    if !privileged_or_skip(
        "a_cgroup_allowed_two_policies_ago_is_not_allowed_by_a_policy_without_cgroup_rules",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let base = cgroup_path(&sb.cgroup);
    let systemctl = fake_systemctl(&sb, &[]);
    let with_cgroups = format!(
        "mode = \"enforce\"\n[allow]\nuids = [65534]\ncgroups = [\"{base}/app-*.scope\"]\n"
    );
    sb.policy(&with_cgroups);
    let agent = start_agent(&sb, &systemctl);
    let app = sb.cgroup.child("app-1.scope");
    let as_app = |cg: &TestCgroup| sb.probe_as(APP_UID, APP_UID).cgroup_dir(cg.path());
    // The cgroup rule allows the app's uid in its cgroup, and only there.
    as_app(&app).run(connect()).assert_ok();
    let other = sb.cgroup.child("other.scope");
    let r = as_app(&other).run(connect());
    assert!(denied(&r), "outside the allowed cgroup: {r:?}");
    assert!(!cgroup_rules(&sb).is_empty(), "the app's cgroup has a rule");

    // Two policies without cgroup rules: the second writes the slot the
    // first policy's classification is in, and does not list the
    // hierarchy again.
    for uids in ["[65534]", "[65534, 4242]"] {
        reload(
            &sb,
            &agent,
            &format!("mode = \"enforce\"\n[allow]\nuids = {uids}\n"),
        );
        let r = as_app(&app).run(connect());
        assert!(denied(&r), "uids {uids}: the cgroup rule is gone: {r:?}");
        sb.probe_as(NOBODY, NOBODY)
            .cgroup_dir(app.path())
            .run(connect())
            .assert_ok();
        let rules = cgroup_rules(&sb);
        assert!(
            rules.is_empty(),
            "uids {uids}: no cgroup rule in force: {rules:?}"
        );
    }
    // Made while no policy had cgroup rules: the programs classified it by
    // empty tables; the next policy with cgroup rules lists it again.
    let later = sb.cgroup.child("app-2.scope");
    let r = as_app(&later).run(connect());
    assert!(denied(&r), "no cgroup rule yet: {r:?}");
    reload(&sb, &agent, &with_cgroups);
    as_app(&app).run(connect()).assert_ok();
    as_app(&later).run(connect()).assert_ok();
    let r = as_app(&other).run(connect());
    assert!(denied(&r), "outside the allowed cgroups: {r:?}");
    drop(later);
    drop(other);
    drop(app);
}
