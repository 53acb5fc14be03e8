//! Connections kept alive across a reload (issue 18, item 7): a reload, or
//! the switch from audit to enforce, judges the next packet of every
//! connection let through before it, as a firewall rule judges the next
//! packet. A connection the new policy refuses is cut on its next request
//! and the cut is recorded as a revocation; one it still allows keeps
//! working, judged once after the reload rather than packet by packet.
//!
//! Each test holds one connection in a probe ([`Probe::hold`]) and fetches
//! the credentials on it before and after the reload. The first shows the
//! path: the same connection is answered again across a reload that does
//! not refuse its caller, so an unanswered fetch in the others is the cut.

use std::net::{IpAddr, SocketAddr};

use imds_guard_e2e::{Action, IMDS_PORT, LOG, Sandbox, field};
use serde_json::Value;

use super::{EPERM, imds_v4, imds_v6, record_for, str_field, u64_field};

/// The guard suite's `ALLOW_LIST` with uid 1002 allowed too: another
/// policy, which still allows uid 1001.
const ALLOW_MORE: &str = "mode = \"enforce\"\n[allow]\nuids = [1001, 1002]\ngids = [1500]\n";
/// `ALLOW_LIST` without uid 1001: it refuses what `ALLOW_LIST` allowed.
const REFUSE_1001: &str = "mode = \"enforce\"\n[allow]\nuids = [1002]\ngids = [1500]\n";
/// One rule set in both modes: uid 2002 is refused (audited, then denied).
const AUDIT: &str = "mode = \"audit\"\n[allow]\nuids = [1001]\n";
const ENFORCE: &str = "mode = \"enforce\"\n[allow]\nuids = [1001]\n";
/// Requests in one IMDSv2 flow: token, listing, role, credentials.
const FLOW: usize = 4;

/// Writes `policy`, sends SIGHUP and waits until the agent says it is in
/// force.
fn reload(sb: &Sandbox, policy: &str) {
    let agent = sb.agent();
    let seen = agent.records().len();
    sb.policy(policy);
    agent.sighup();
    agent
        .wait_for_after(
            seen,
            |r| {
                field(r, "event").and_then(Value::as_str) == Some("reload")
                    && field(r, "outcome").and_then(Value::as_str) == Some("applied")
            },
            LOG,
        )
        .unwrap_or_else(|| panic!("the reload was not applied:\n{}", agent.output()));
}

/// The decisions the programs counted, from the kernel (`status`):
/// (allowed, denied, audited).
fn decisions(sb: &Sandbox) -> (u64, u64, u64) {
    let (_, status) = sb.status();
    let count = |name: &str| {
        status["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no counter {name}: {status}"))
    };
    (count("allowed"), count("denied"), count("audited"))
}

/// The first `egress` denial to `dst` after the first `seen` records.
fn egress_denial(sb: &Sandbox, seen: usize, dst: IpAddr) -> Value {
    let dst = dst.to_string();
    sb.agent()
        .wait_for_after(
            seen,
            |r| {
                field(r, "event").and_then(Value::as_str) == Some("deny")
                    && field(r, "hook").and_then(Value::as_str) == Some("egress")
                    && field(r, "dst").and_then(Value::as_str) == Some(dst.as_str())
            },
            LOG,
        )
        .unwrap_or_else(|| {
            panic!(
                "no egress denial to {dst}; agent output:\n{}",
                sb.agent().output()
            )
        })
}

/// Asserts that `rec` records the cut of a connection `uid` kept alive.
fn assert_revocation(rec: &Value, uid: u32) {
    assert_eq!(u64_field(rec, "uid"), u64::from(uid), "{rec}");
    assert_eq!(str_field(rec, "proto"), "tcp", "{rec}");
    assert_eq!(field(rec, "revoked"), Some(&Value::Bool(true)), "{rec}");
    assert!(str_field(rec, "message").contains("(revoked)"), "{rec}");
}

#[test]
fn a_kept_alive_connection_still_allowed_after_a_reload_is_judged_once_not_cut() {
    if !imds_guard_e2e::privileged_or_skip(
        "a_kept_alive_connection_still_allowed_after_a_reload_is_judged_once_not_cut",
    ) {
        return;
    }
    let sb = Sandbox::with_agent(super::ALLOW_LIST);
    let addr = SocketAddr::new(imds_v4(), IMDS_PORT);
    let mut held = sb.probe_as(1001, 1001).hold(addr);
    for _ in 0..3 {
        assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    }
    // One decision, the connect: the connection's packets (twelve requests
    // and their acknowledgements) went unjudged.
    assert_eq!(decisions(&sb), (1, 0, 0));
    let served = sb.imds.requests_served();
    reload(&sb, ALLOW_MORE);
    for _ in 0..3 {
        assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    }
    // The same connection answered across the reload...
    assert_eq!(sb.imds.requests_served(), served + 3 * FLOW);
    assert_eq!(sb.imds.tcp_accepted(addr), 1, "one connection");
    // ...judged once more, at its first packet under the new policy.
    assert_eq!(decisions(&sb), (2, 0, 0));
}

#[test]
fn a_reload_that_refuses_the_caller_cuts_its_kept_alive_connections() {
    if !imds_guard_e2e::privileged_or_skip(
        "a_reload_that_refuses_the_caller_cuts_its_kept_alive_connections",
    ) {
        return;
    }
    let sb = Sandbox::with_agent(super::ALLOW_LIST);
    let probe = sb.probe_as(1001, 1001);
    let ips = [imds_v4(), imds_v6()];
    let mut held = ips.map(|ip| probe.hold(SocketAddr::new(ip, IMDS_PORT)));
    for h in &mut held {
        assert_eq!(h.fetch().assert_ok().body, sb.imds.credentials_body());
    }
    let served = sb.imds.requests_served();
    let seen = sb.agent().records().len();
    reload(&sb, REFUSE_1001);
    // A new connect is refused at once, as before revocation existed.
    let r = probe.run(Action::connect(imds_v4(), IMDS_PORT));
    r.assert_errno(EPERM);
    let connect = record_for(&sb, "deny", &r);
    assert_eq!(str_field(&connect, "hook"), "connect4", "{connect}");
    assert_eq!(field(&connect, "revoked"), None, "{connect}");
    // The connections opened before: the next request goes unanswered.
    for (h, ip) in held.iter_mut().zip(ips) {
        let r = h.fetch();
        assert!(
            !r.ok && r.body.is_empty(),
            "{ip}: answered after the reload: {r:?}"
        );
        assert_revocation(&egress_denial(&sb, seen, ip), 1001);
    }
    assert_eq!(sb.imds.requests_served(), served, "no request reached it");
}

#[test]
fn the_switch_from_audit_to_enforce_cuts_an_audited_kept_alive_connection() {
    if !imds_guard_e2e::privileged_or_skip(
        "the_switch_from_audit_to_enforce_cuts_an_audited_kept_alive_connection",
    ) {
        return;
    }
    let sb = Sandbox::with_agent(AUDIT);
    let addr = SocketAddr::new(imds_v4(), IMDS_PORT);
    let mut held = sb.probe_as(2002, 2002).hold(addr);
    let r = held.fetch();
    assert_eq!(r.assert_ok().body, sb.imds.credentials_body());
    let audited = record_for(&sb, "audit", &r);
    assert_eq!(str_field(&audited, "hook"), "connect4", "{audited}");
    held.fetch().assert_ok();
    // Audited once, at the connect: one record per connection.
    assert_eq!(decisions(&sb), (0, 0, 1));
    let served = sb.imds.requests_served();
    let seen = sb.agent().records().len();
    reload(&sb, ENFORCE);
    let r = held.fetch();
    assert!(
        !r.ok && r.body.is_empty(),
        "answered after the switch: {r:?}"
    );
    assert_revocation(&egress_denial(&sb, seen, imds_v4()), 2002);
    assert_eq!(sb.imds.requests_served(), served, "no request reached it");
    // And a new connect is refused, as it is under enforce.
    sb.probe_as(2002, 2002)
        .run(Action::connect(imds_v6(), IMDS_PORT))
        .assert_errno(EPERM);
}
