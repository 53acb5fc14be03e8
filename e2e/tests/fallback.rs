//! The boot window: a policy that cannot be used when the agent starts.
//! With nothing pinned (a host that just booted), the agent puts its
//! fallback policy in force (root only), says so, keeps running and takes
//! the real policy on the first reload that validates; with a guard pinned
//! already, the last good policy stays and the agent exits; with
//! `--fallback none`, nothing is attached.

use std::net::IpAddr;

use imds_guard_e2e::{
    Action, IMDS_PORT, IMDS_V4, NOBODY, READY, Sandbox, field, privileged_or_skip,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;

/// Broken in three ways: a syntax the checker refuses, a denied user that
/// does not exist (an allowed one is left out instead: see below), a
/// policy that decides nothing.
const BROKEN: [(&str, &str, &str); 3] = [
    (
        "[allow]\nuids = [\"x\"]\n",
        ":2:9: ",
        "expected an integer uid",
    ),
    (
        "[deny]\nusers = [\"no-such-user-imds\"]\n",
        ":2:10: ",
        "does not exist",
    ),
    ("mode = \"enforce\"\n", ":1:1: ", "decides nothing"),
];

fn imds_v4() -> IpAddr {
    IMDS_V4.into()
}

#[test]
fn a_policy_that_does_not_validate_at_boot_puts_the_fallback_in_force() {
    if !privileged_or_skip("a_policy_that_does_not_validate_at_boot_puts_the_fallback_in_force") {
        return;
    }
    let sb = Sandbox::new();
    for (policy, position, what) in BROKEN {
        let config = sb.policy(policy);
        let agent = sb.spawn_agent(&[], &[]);
        let ready = agent.wait_ready(READY);
        assert_eq!(
            field(&ready, "fallback"),
            Some(&Value::Bool(true)),
            "{ready}"
        );
        let expected = format!("{}{position}", config.display());
        let out = agent.output();
        assert!(
            out.contains(&expected) && out.contains(what),
            "expected {expected}...{what} in:\n{out}"
        );
        agent
            .wait_for(
                |r| {
                    field(r, "message")
                        .and_then(Value::as_str)
                        .is_some_and(|m| m.contains("the FALLBACK policy is in force"))
                },
                READY,
            )
            .unwrap_or_else(|| panic!("no FALLBACK record:\n{}", agent.output()));
        // Root only: root reads the credentials, nobody is refused.
        let r = sb.probe_as(0, 0).run(Action::http(imds_v4(), IMDS_PORT));
        assert_eq!(r.assert_ok().body, sb.imds.credentials_body());
        sb.probe_as(NOBODY, NOBODY)
            .run(Action::connect(imds_v4(), IMDS_PORT))
            .assert_errno(EPERM);
        let (code, status) = sb.status();
        assert_eq!(code, Some(5), "a health check must see it: {status}");
        assert_eq!(status["fallback"], true, "{status}");
        drop(agent);
        let out = sb.cli(&["detach"]);
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn the_first_reload_that_validates_replaces_the_fallback() {
    if !privileged_or_skip("the_first_reload_that_validates_replaces_the_fallback") {
        return;
    }
    let sb = Sandbox::new();
    sb.policy(BROKEN[1].0);
    let agent = sb.start_agent(&[]);
    sb.probe_as(1001, 1001)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_errno(EPERM);
    // Still broken: refused, the fallback stays.
    agent.sighup();
    agent
        .wait_for(
            |r| field(r, "outcome").and_then(Value::as_str) == Some("invalid"),
            READY,
        )
        .unwrap_or_else(|| panic!("no refused reload:\n{}", agent.output()));
    assert_eq!(sb.status().1["fallback"], true);
    // Fixed: in force, and the fallback gone.
    sb.policy("[allow]\nuids = [1001]\n");
    agent.sighup();
    agent
        .wait_for(
            |r| field(r, "outcome").and_then(Value::as_str) == Some("applied"),
            READY,
        )
        .unwrap_or_else(|| panic!("no applied reload:\n{}", agent.output()));
    sb.probe_as(1001, 1001)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_ok();
    sb.probe_as(0, 0)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_errno(EPERM);
    let (code, status) = sb.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["fallback"], false, "{status}");
}

#[test]
fn a_fallback_file_is_used_instead_of_the_builtin_one() {
    if !privileged_or_skip("a_fallback_file_is_used_instead_of_the_builtin_one") {
        return;
    }
    let sb = Sandbox::new();
    let fallback = sb.dir.path().join("fallback.toml");
    std::fs::write(&fallback, "[allow]\nuids = [1001]\n")
        .unwrap_or_else(|e| panic!("writing the fallback: {e}"));
    sb.policy(BROKEN[0].0);
    let agent = sb.start_agent(&["--fallback", &fallback.display().to_string()]);
    sb.probe_as(1001, 1001)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_ok();
    sb.probe_as(0, 0)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_errno(EPERM);
    drop(agent);
}

#[test]
fn with_a_guard_pinned_the_last_good_policy_stays_and_the_agent_exits() {
    if !privileged_or_skip("with_a_guard_pinned_the_last_good_policy_stays_and_the_agent_exits") {
        return;
    }
    let sb = Sandbox::new();
    sb.policy("[allow]\nuids = [1001]\n");
    let first = sb.start_agent(&[]);
    drop(first);
    sb.policy(BROKEN[0].0);
    let second = sb.spawn_agent(&[], &[]);
    let status = second
        .wait_exit(READY)
        .unwrap_or_else(|| panic!("the agent kept running:\n{}", second.output()));
    assert_eq!(status.code(), Some(1), "{}", second.output());
    // The log says what is wrong at error priority (`journalctl -p
    // warning` shows it), and that the pinned guard keeps enforcing.
    let errors: Vec<String> = second
        .records()
        .iter()
        .filter(|r| r["level"] == "ERROR")
        .filter_map(|r| field(r, "message")?.as_str().map(str::to_owned))
        .collect();
    let config = sb.policy_path();
    let at = format!("{}{}", config.display(), BROKEN[0].1);
    assert!(
        errors.iter().any(|m| m.starts_with(&at)),
        "no error record {at}...: {errors:?}\n{}",
        second.output()
    );
    assert!(
        errors
            .iter()
            .any(|m| m.contains("keeps enforcing the policy last put in force")),
        "{errors:?}"
    );
    assert!(
        !second.output().contains("nothing was attached"),
        "{}",
        second.output()
    );
    // The pinned guard still decides by the last good policy.
    sb.probe_as(1001, 1001)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_ok();
    sb.probe_as(0, 0)
        .run(Action::connect(imds_v4(), IMDS_PORT))
        .assert_errno(EPERM);
}

#[test]
fn without_a_fallback_a_policy_that_does_not_validate_leaves_nothing_attached() {
    if !privileged_or_skip(
        "without_a_fallback_a_policy_that_does_not_validate_leaves_nothing_attached",
    ) {
        return;
    }
    let sb = Sandbox::new();
    for (policy, position, what) in BROKEN {
        let config = sb.policy(policy);
        let agent = sb.spawn_agent(&["--fallback", "none"], &[]);
        let status = agent
            .wait_exit(READY)
            .unwrap_or_else(|| panic!("the agent kept running with {policy:?}"));
        assert_eq!(status.code(), Some(1), "{}", agent.output());
        let expected = format!("{}{position}", config.display());
        let out = agent.output();
        assert!(
            out.contains(&expected) && out.contains(what),
            "expected {expected}...{what} in:\n{out}"
        );
        // Nothing is attached: the service is reachable by anyone.
        let r = sb.probe().run(Action::http(imds_v4(), IMDS_PORT));
        assert_eq!(r.assert_ok().body, sb.imds.credentials_body());
    }
}

#[test]
fn an_allowed_name_that_does_not_resolve_yet_is_left_out_and_retried() {
    if !privileged_or_skip("an_allowed_name_that_does_not_resolve_yet_is_left_out_and_retried") {
        return;
    }
    // The agent sees a copy of /etc/passwd, bind-mounted in a mount
    // namespace of its own, so that the test can create the user later
    // without touching the machine's.
    let w = Sandbox::new();
    let passwd = w.dir.path().join("passwd");
    std::fs::copy("/etc/passwd", &passwd).expect("copy /etc/passwd");
    let script = w.dir.path().join("agent-with-own-passwd.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private -- sh -c 'mount --bind {} \
             /etc/passwd && exec {} \"$@\"' sh \"$@\"\n",
            passwd.display(),
            imds_guard_e2e::imds_guard_bin().display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config = w.policy("[allow]\nusers = [\"root\", \"imds-later\"]\n");
    let agent = imds_guard_e2e::Agent::start_bin(&w.netns, &script, &config, &w.cgroup, &[]);
    agent.wait_ready(READY);
    let left_out = agent
        .wait_for(|r| field(r, "unresolved").is_some(), READY)
        .unwrap_or_else(|| panic!("no record names the name left out"));
    let message = field(&left_out, "message")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(
        message.contains("imds-later") && message.contains("left out"),
        "{message}"
    );
    // Not the fallback: the rest of the policy is in force, and the name
    // left out is denied.
    let ready = agent
        .wait_for(|r| field(r, "ready").is_some(), READY)
        .expect("ready");
    assert_eq!(
        field(&ready, "fallback"),
        Some(&Value::Bool(false)),
        "{ready}"
    );
    w.probe_as(0, 0)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    w.probe_as(4242, 4242)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(EPERM);
    // The user appears (cloud-init, a package): the agent's retry finds it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&passwd)
        .expect("open the copy");
    std::io::Write::write_all(&mut f, b"imds-later:x:4242:4242::/nonexistent:/bin/false\n")
        .expect("append the user");
    drop(f);
    let resolved = agent.wait_for(
        |r| {
            field(r, "message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("every [allow] name resolves now"))
        },
        imds_guard_e2e::slowdown::scaled(std::time::Duration::from_secs(45)),
    );
    assert!(resolved.is_some(), "the retry did not find the user");
    w.probe_as(4242, 4242)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    drop(agent);
}
