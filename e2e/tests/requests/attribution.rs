//! Callers allowed the whole service whose requests the kernel parses
//! (issue 23): with `[attribution] whole_service = true`, recorded and
//! never refused for what they ask; with `[imdsv2] required = true`,
//! held to the token. Each case first shows the path open without it.

use std::time::Duration;

use imds_guard::kernel::Stamp;
use imds_guard_common::entry_flags;
use imds_guard_e2e::{
    Action, INSTANCE_ID, INSTANCE_ID_PATH, Sandbox, Script, field, privileged_or_skip,
};
use serde_json::Value;

use super::{EACCES, JUDGED, addrs, guard, judged, records::s, scope};

/// Root the whole service; uid 1001 too, its requests recorded.
const ATTRIBUTION_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0, 1001]\n\
    [attribution]\nwhole_service = true\n";

#[test]
fn an_attributed_whole_service_caller_is_recorded_and_answered_whatever_it_sends() {
    if !privileged_or_skip(
        "an_attributed_whole_service_caller_is_recorded_and_answered_whatever_it_sends",
    ) {
        return;
    }
    let sb = Sandbox::with_agent(ATTRIBUTION_POLICY);
    let agent = sb.agent();
    // A head split to single bytes (not a request the parser reads whole)
    // answered, recorded unparsed; then IMDSv1 and IMDSv2 answered, and
    // recorded, over each address. (The first one first: the agent logs
    // five records per caller and address in ten seconds.)
    let r = judged(&sb).run(Action::Send(addrs()[0], Script::CredentialsBytewise));
    assert!(
        r.assert_ok().body.contains(sb.imds.credentials_body()),
        "{r:?}"
    );
    for addr in addrs() {
        let r = judged(&sb).run(Action::Send(addr, Script::V1ThenV2));
        assert_eq!(r.assert_ok().body.matches(INSTANCE_ID).count(), 2, "{addr}");
    }
    let v1 = agent.wait_for(
        |r| {
            field(r, "hook").and_then(Value::as_str) == Some("request")
                && s(r, "version") == Some("v1")
        },
        Duration::from_secs(10),
    );
    let v1 = v1.unwrap_or_else(|| panic!("no v1 record: {}", agent.output()));
    assert_eq!(s(&v1, "event"), Some("allow"));
    assert_eq!(s(&v1, "path"), Some(INSTANCE_ID_PATH));
    assert_eq!(
        field(&v1, "uid").and_then(Value::as_u64),
        Some(u64::from(JUDGED))
    );
    let unparsed = agent.wait_for(
        |r| {
            field(r, "hook").and_then(Value::as_str) == Some("request")
                && s(r, "version") == Some("unparsed")
        },
        Duration::from_secs(10),
    );
    let unparsed = unparsed.unwrap_or_else(|| panic!("no unparsed record: {}", agent.output()));
    assert_eq!(s(&unparsed, "event"), Some("allow"));
    // The census counts it as an IMDSv1 caller.
    let out = sb.cli(&["report", "imdsv1", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["callers"][0]["uid"], JUDGED, "{json}");
    assert_eq!(json["callers"][0]["v1_allowed"], 3, "{json}");
}

/// IMDSv2 for everyone: whole-service callers are judged for the token.
const V2_EVERYONE_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0, 1001]\n\
    [imdsv2]\nrequired = true\n";

#[test]
fn imdsv2_for_everyone_refuses_a_whole_service_callers_v1_request_and_records_it() {
    if !privileged_or_skip(
        "imdsv2_for_everyone_refuses_a_whole_service_callers_v1_request_and_records_it",
    ) {
        return;
    }
    // Without the switch: the v1 request is answered.
    let mut sb = Sandbox::new();
    sb.policy(super::WHOLE_POLICY);
    sb.guard(&[]);
    let r = judged(&sb).run(Action::Send(addrs()[0], Script::V1ThenV2));
    assert_eq!(r.assert_ok().body.matches(INSTANCE_ID).count(), 2);
    drop(sb);

    let sb = Sandbox::with_agent(V2_EVERYONE_POLICY);
    for addr in addrs() {
        let seen = sb.imds.received().len();
        judged(&sb)
            .run(Action::Send(addr, Script::V1ThenV2))
            .assert_errno(EACCES);
        let logs = super::received_since(&sb, seen);
        assert!(logs[0].is_empty(), "{addr}: the v1 request left");
        let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
        assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
    }
    let agent = sb.agent();
    let refused = agent.wait_for(
        |r| {
            field(r, "hook").and_then(Value::as_str) == Some("request")
                && s(r, "event") == Some("deny")
        },
        Duration::from_secs(10),
    );
    let refused = refused.unwrap_or_else(|| panic!("no refusal record: {}", agent.output()));
    assert_eq!(s(&refused, "version"), Some("v1"));
    assert_eq!(s(&refused, "path"), Some(INSTANCE_ID_PATH));
}

#[test]
fn a_reload_that_narrows_an_attributed_caller_cuts_its_kept_alive_connection() {
    if !privileged_or_skip(
        "a_reload_that_narrows_an_attributed_caller_cuts_its_kept_alive_connection",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    // Attributed: the whole service, recorded; its connection is in the
    // sockhash and answered the credentials.
    scope(&mut guard, &policy, generation, entry_flags::ATTRIBUTE);
    let addr = addrs()[0];
    let mut held = judged(&sb).hold(addr);
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    // A reload that gives the caller a request table without the
    // credentials: its kept-alive connection must not keep the whole
    // service.
    let next = guard.apply(&policy, &Stamp::default()).expect("reload");
    scope(&mut guard, &policy, next, entry_flags::JUDGE);
    let seen = sb.imds.received();
    held.fetch().assert_errno(EACCES);
    assert_eq!(sb.imds.received(), seen, "a byte left after the reload");
    // New connections: judged by the new rules.
    let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
    r.assert_errno(EACCES);
    assert!(r.body.contains(INSTANCE_ID), "{r:?}");
}
