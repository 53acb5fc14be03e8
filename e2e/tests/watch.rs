//! `run --watch-config`: a policy mounted from a ConfigMap is put in force
//! when the kubelet swaps its `..data` link, a bad one is refused with the
//! policy in force kept, and without the flag nothing changes until a
//! reload is asked for.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{path::PathBuf, time::Duration};

use imds_guard_e2e::{
    Action, Agent, IMDS_PORT, IMDS_V4, IMDS_V6, Sandbox, configmap_write, field, privileged_or_skip,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;

/// Uid 1001 allowed, every other uid denied.
const ALLOW_1001: &str = "[allow]\nuids = [1001]\n";
/// Uid 2002 denied, every other uid allowed.
const DENY_2002: &str = "[deny]\nuids = [2002]\n";
/// Does not validate: a uid that is not a number.
const BROKEN: &str = "[allow]\nuids = [1001, \"x\"]\n";

/// The ConfigMap volume's directory, inside the sandbox's.
fn volume(w: &Sandbox) -> PathBuf {
    let dir = w.dir.path().join("configmap");
    std::fs::create_dir_all(&dir).expect("the volume directory");
    dir
}

fn connects(w: &Sandbox, uid: u32) {
    w.probe_as(uid, uid)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
}

fn refused(w: &Sandbox, uid: u32) {
    for ip in [std::net::IpAddr::from(IMDS_V4), IMDS_V6.into()] {
        w.probe_as(uid, uid)
            .run(Action::connect(ip, IMDS_PORT))
            .assert_errno(EPERM);
    }
}

fn under_allow_1001(w: &Sandbox) {
    connects(w, 1001);
    refused(w, 3003);
}

fn under_deny_2002(w: &Sandbox) {
    connects(w, 3003);
    refused(w, 2002);
}

fn is_reload(outcome: &'static str) -> impl Fn(&Value) -> bool {
    move |r| {
        field(r, "event").and_then(Value::as_str) == Some("reload")
            && field(r, "outcome").and_then(Value::as_str) == Some(outcome)
    }
}

/// Waits for a reload record with `outcome` after the first `seen` records.
fn reload_after(agent: &Agent, seen: usize, outcome: &'static str) -> Value {
    agent
        .wait_for_after(seen, is_reload(outcome), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no {outcome} reload:\n{}", agent.output()))
}

#[test]
fn a_configmap_swap_is_applied_a_bad_policy_refused_and_a_good_one_after_it_applied() {
    if !privileged_or_skip(
        "a_configmap_swap_is_applied_a_bad_policy_refused_and_a_good_one_after_it_applied",
    ) {
        return;
    }
    let w = Sandbox::new();
    let dir = volume(&w);
    let config = configmap_write(&dir, "2026_12_07_10_00_00.1", ALLOW_1001);
    let agent = Agent::start_pinned(
        &w.netns,
        &config,
        &w.cgroup,
        &w.pin_dir(),
        &["--watch-config"],
    );
    let ready = agent.wait_ready(Duration::from_secs(30));
    assert_eq!(field(&ready, "watch_config"), Some(&Value::Bool(true)));
    under_allow_1001(&w);

    let seen = agent.records().len();
    configmap_write(&dir, "2026_12_07_10_01_00.2", DENY_2002);
    reload_after(&agent, seen, "applied");
    under_deny_2002(&w);

    let seen = agent.records().len();
    configmap_write(&dir, "2026_12_07_10_02_00.3", BROKEN);
    let invalid = reload_after(&agent, seen, "invalid");
    assert_eq!(
        field(&invalid, "level").and_then(Value::as_str),
        Some("WARN")
    );
    assert!(
        agent
            .records()
            .iter()
            .skip(seen)
            .any(|r| field(r, "message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with(&format!("{}:2:15:", config.display())))),
        "the error names the file, line and column:\n{}",
        agent.output()
    );
    under_deny_2002(&w);

    let seen = agent.records().len();
    configmap_write(&dir, "2026_12_07_10_03_00.4", ALLOW_1001);
    reload_after(&agent, seen, "applied");
    under_allow_1001(&w);
}

#[test]
fn without_watch_config_a_changed_policy_waits_for_a_reload() {
    if !privileged_or_skip("without_watch_config_a_changed_policy_waits_for_a_reload") {
        return;
    }
    let w = Sandbox::new();
    let dir = volume(&w);
    let config = configmap_write(&dir, "2026_12_07_11_00_00.1", ALLOW_1001);
    let agent = Agent::start_pinned(&w.netns, &config, &w.cgroup, &w.pin_dir(), &[]);
    let ready = agent.wait_ready(Duration::from_secs(30));
    assert_eq!(field(&ready, "watch_config"), Some(&Value::Bool(false)));

    let seen = agent.records().len();
    configmap_write(&dir, "2026_12_07_11_01_00.2", DENY_2002);
    // Four quiet periods: a watch would have reloaded by then.
    assert!(
        agent
            .wait_for_after(
                seen,
                |r| field(r, "event").and_then(Value::as_str) == Some("reload"),
                Duration::from_secs(2)
            )
            .is_none(),
        "reloaded unasked:\n{}",
        agent.output()
    );
    under_allow_1001(&w);
    agent.sighup();
    reload_after(&agent, seen, "applied");
    under_deny_2002(&w);
}
