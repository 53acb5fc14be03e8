//! Request-level judgement (issue 23, docs/design/request-level.md §7),
//! driven in-process: the programs are loaded and attached to the test's
//! cgroup, a policy allows uid 1001 (and root), and the test then makes
//! uid 1001's entry judged (`Guard::write_entry_flags`, until the policy
//! can say it).
//!
//! The oracle is the fake IMDS's log of every byte each connection sent
//! (`FakeImds::received`): a request is refused only if its bytes never
//! arrived. Each case first runs with the caller allowed the whole
//! service, and must then show the fake IMDS answering it.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use imds_guard::{
    kernel::{Guard, Stamp, pins::Pins, records::entry_number, requests::REQ_SOCKS_ENV},
    policy::{Policy, PolicySpec, SystemResolver},
};
use imds_guard_common::{EntryFlags, entry_flags, req_method};
use imds_guard_e2e::{
    Action, Attack, IMDS_PORT, IMDS_V4, IMDS_V6, INSTANCE_ID, INSTANCE_ID_PATH, Probe, Sandbox,
    Script, credentials_path, privileged_or_skip,
};

#[path = "requests/attack.rs"]
mod attack;
#[path = "requests/attribution.rs"]
mod attribution;
#[path = "requests/evasion.rs"]
mod evasion;
#[path = "requests/records.rs"]
mod records;
#[path = "requests/wait.rs"]
mod wait;

const EACCES: i32 = libc::EACCES;
const EPERM: i32 = libc::EPERM;
/// The caller whose requests the tests judge.
const JUDGED: u32 = 1001;
const POLICY: &str = "[allow]\nuids = [0, 1001]\n";

fn policy(toml: &str) -> Policy {
    PolicySpec::parse(std::path::Path::new("requests-test.toml"), toml)
        .unwrap_or_else(|e| panic!("test policy: {e}"))
        .resolve(&SystemResolver)
        .unwrap_or_else(|e| panic!("test policy: {e}"))
}

/// The guard on the sandbox's cgroup, with [`POLICY`] in force (everyone
/// it allows, the whole service); and the policy's generation.
fn guard(sb: &Sandbox) -> (Guard, Policy, u32) {
    let policy = policy(POLICY);
    let mut guard = Guard::load(0).expect("load the programs");
    let generation = guard.apply(&policy, &Stamp::default()).expect("apply");
    guard.attach(sb.cgroup.path(), None).expect("attach");
    (guard, policy, generation)
}

/// The request set the tests give [`JUDGED`]: the token, the instance
/// id, the placement subtree; never the credentials.
const RULES: [(u8, &str); 3] = [
    (req_method::PUT, "/latest/api/token"),
    (req_method::GET, INSTANCE_ID_PATH),
    (req_method::GET, "/latest/meta-data/placement/"),
];

/// Makes [`JUDGED`]'s entry judged with `flags` ([`entry_flags`]): with
/// [`entry_flags::JUDGE`], every request it sends must match [`RULES`].
fn scope(guard: &mut Guard, policy: &Policy, generation: u32, flags: u8) {
    let rule = policy.uids.get(&JUDGED).expect("uid 1001 has a rule");
    let entry = entry_number(Some(rule.entry()));
    for (i, (method, path)) in RULES.into_iter().enumerate() {
        guard
            .write_request_rule(generation, 1, method, path, i as u32 + 1)
            .expect("request rule");
    }
    guard
        .write_entry_flags(
            generation,
            entry,
            EntryFlags {
                ruleset: 1,
                flags,
                _pad: 0,
            },
        )
        .expect("entry flags");
}

/// [`scope`] with the request set.
fn judge(guard: &mut Guard, policy: &Policy, generation: u32) {
    scope(guard, policy, generation, entry_flags::JUDGE);
}

fn judged(sb: &Sandbox) -> Probe {
    sb.probe_as(JUDGED, JUDGED)
}

/// The three ways to one protected address: IPv4, IPv6, and IPv4 from an
/// IPv6 socket (`::ffff:a.b.c.d`, which the connect6 hook sees).
fn addrs() -> [SocketAddr; 3] {
    [
        SocketAddr::new(IMDS_V4.into(), IMDS_PORT),
        SocketAddr::new(IMDS_V6.into(), IMDS_PORT),
        SocketAddr::new(IpAddr::V6(IMDS_V4.to_ipv6_mapped()), IMDS_PORT),
    ]
}

/// The bytes of the connections the fake IMDS accepted after the first
/// `seen`.
fn received_since(sb: &Sandbox, seen: usize) -> Vec<Vec<u8>> {
    sb.imds.received().split_off(seen)
}

fn contains(log: &[u8], needle: &[u8]) -> bool {
    log.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_allowed_request_is_answered_and_a_forbidden_one_never_leaves_however_it_is_sent() {
    if !privileged_or_skip(
        "an_allowed_request_is_answered_and_a_forbidden_one_never_leaves_however_it_is_sent",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let path = credentials_path();
    // Allowed the whole service: every way of sending reaches the service,
    // and it answers the credentials on the kept-alive connection.
    for addr in addrs() {
        for script in Script::CREDENTIALS {
            let seen = sb.imds.received().len();
            let r = judged(&sb).run(Action::Send(addr, script));
            assert!(
                r.assert_ok().body.contains(sb.imds.credentials_body()),
                "{addr} {script:?}: {r:?}"
            );
            let logs = received_since(&sb, seen);
            assert!(
                logs.iter().any(|l| contains(l, path.as_bytes())),
                "{addr} {script:?}: the path never reached the service"
            );
        }
    }
    assert_eq!(guard.judged_sockets().expect("sockhash"), 0);

    // Judged: the token and the instance id are answered on the
    // connection; the credentials request fails with EACCES and not a
    // byte of it reaches the service.
    judge(&mut guard, &policy, generation);
    for addr in addrs() {
        for script in Script::CREDENTIALS {
            let seen = sb.imds.received().len();
            let r = judged(&sb).run(Action::Send(addr, script));
            r.assert_errno(EACCES);
            assert!(
                r.body.contains(INSTANCE_ID),
                "{addr} {script:?}: the allowed request was not answered: {r:?}"
            );
            let logs = received_since(&sb, seen);
            assert_eq!(logs.len(), 1, "{addr} {script:?}: one connection");
            assert!(
                contains(&logs[0], INSTANCE_ID_PATH.as_bytes())
                    && !contains(&logs[0], b"security-credentials"),
                "{addr} {script:?}: the service received {:?}",
                String::from_utf8_lossy(&logs[0])
            );
        }
    }
    // Root is still allowed the whole service.
    let r = sb
        .probe_as(0, 0)
        .run(Action::Send(addrs()[0], Script::Credentials));
    assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
}

#[test]
fn an_allowed_head_split_to_single_bytes_is_held_until_whole_and_then_judged() {
    if !privileged_or_skip(
        "an_allowed_head_split_to_single_bytes_is_held_until_whole_and_then_judged",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    judge(&mut guard, &policy, generation);
    for addr in addrs() {
        let r = judged(&sb).run(Action::Send(addr, Script::InstanceIdBytewise));
        assert!(r.assert_ok().body.contains(INSTANCE_ID), "{addr}: {r:?}");
    }
}

#[test]
fn pipelined_requests_in_one_write_are_refused() {
    if !privileged_or_skip("pipelined_requests_in_one_write_are_refused") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let addr = addrs()[0];
    // Whole service: both answered.
    for script in [Script::PipelinedAllowed, Script::PipelinedCredentials] {
        let r = judged(&sb).run(Action::Send(addr, script));
        assert_eq!(
            r.assert_ok().body.matches("http/1.1 200 ok").count(),
            3,
            "{script:?}: token and two answers: {r:?}"
        );
    }
    judge(&mut guard, &policy, generation);
    for script in [Script::PipelinedAllowed, Script::PipelinedCredentials] {
        let seen = sb.imds.received().len();
        judged(&sb)
            .run(Action::Send(addr, script))
            .assert_errno(EACCES);
        let logs = received_since(&sb, seen);
        assert!(
            !contains(&logs[0], b"GET "),
            "{script:?}: {:?}",
            String::from_utf8_lossy(&logs[0])
        );
    }
}

#[test]
fn an_imdsv2_only_caller_is_refused_its_v1_request_and_answered_its_v2_one() {
    if !privileged_or_skip(
        "an_imdsv2_only_caller_is_refused_its_v1_request_and_answered_its_v2_one",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    for addr in addrs() {
        // Not required: the IMDSv1 request is answered too.
        let r = judged(&sb).run(Action::Send(addr, Script::V1ThenV2));
        assert_eq!(
            r.assert_ok().body.matches(INSTANCE_ID).count(),
            2,
            "{addr}: {r:?}"
        );
    }
    scope(&mut guard, &policy, generation, entry_flags::V2_REQUIRED);
    for addr in addrs() {
        let seen = sb.imds.received().len();
        judged(&sb)
            .run(Action::Send(addr, Script::V1ThenV2))
            .assert_errno(EACCES);
        let logs = received_since(&sb, seen);
        assert!(logs[0].is_empty(), "{addr}: the v1 request left");
        // The v2 flow alone, on a new connection: answered, the
        // credentials too (IMDSv2 required, but the whole service).
        let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
        assert!(
            r.assert_ok().body.contains(sb.imds.credentials_body()),
            "{addr}: {r:?}"
        );
    }
}

#[test]
fn fast_open_mptcp_and_repair_from_a_judged_caller_are_refused_at_connect() {
    if !privileged_or_skip("fast_open_mptcp_and_repair_from_a_judged_caller_are_refused_at_connect")
    {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let v4 = SocketAddr::new(IMDS_V4.into(), IMDS_PORT);
    let v6 = SocketAddr::new(IMDS_V6.into(), IMDS_PORT);
    let repair = || judged(&sb).caps(&["net_admin"]);
    // Whole service: Fast Open's data (a token PUT), a deferred Fast Open
    // connect and MPTCP reach it; a repair-mode connect is let through.
    for addr in [v4, v6] {
        let r = judged(&sb).run(Action::tfo(addr.ip(), addr.port()));
        assert!(!r.assert_ok().body.is_empty(), "{addr}: {r:?}");
        for script in [Script::CredentialsMptcp, Script::CredentialsFastOpenConnect] {
            let r = judged(&sb).run(Action::Send(addr, script));
            assert!(
                r.assert_ok().body.contains(sb.imds.credentials_body()),
                "{addr} {script:?}: {r:?}"
            );
        }
        repair()
            .run(Action::Send(addr, Script::RepairConnect))
            .assert_ok();
    }
    judge(&mut guard, &policy, generation);
    let seen = sb.imds.received().len();
    for addr in [v4, v6] {
        judged(&sb)
            .run(Action::tfo(addr.ip(), addr.port()))
            .assert_errno(EPERM);
        for script in [Script::CredentialsMptcp, Script::CredentialsFastOpenConnect] {
            judged(&sb)
                .run(Action::Send(addr, script))
                .assert_errno(EPERM);
        }
        repair()
            .run(Action::Send(addr, Script::RepairConnect))
            .assert_errno(EPERM);
    }
    let logs = received_since(&sb, seen);
    assert!(
        logs.iter().all(Vec::is_empty),
        "bytes reached the service: {logs:?}"
    );
}

#[test]
fn a_raw_socket_of_a_judged_caller_sends_nothing() {
    if !privileged_or_skip("a_raw_socket_of_a_judged_caller_sends_nothing") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let raw = |src: IpAddr, dst: SocketAddr| {
        judged(&sb)
            .caps(&["net_raw"])
            .run(Action::attack(Attack::raw_tcp(dst, src)))
    };
    let cases = [
        (
            IpAddr::from(Ipv4Addr::LOCALHOST),
            SocketAddr::new(IMDS_V4.into(), IMDS_PORT),
        ),
        (
            IpAddr::from(Ipv6Addr::LOCALHOST),
            SocketAddr::new(IMDS_V6.into(), IMDS_PORT),
        ),
    ];
    // Whole service: a hand-made SYN is answered.
    for (src, dst) in cases {
        raw(src, dst).assert_ok();
    }
    judge(&mut guard, &policy, generation);
    for (src, dst) in cases {
        let r = raw(src, dst);
        assert!(
            !r.ok,
            "{dst}: a judged caller's raw SYN was answered: {r:?}"
        );
    }
}

#[test]
fn a_whole_service_caller_never_enters_the_sockhash() {
    if !privileged_or_skip("a_whole_service_caller_never_enters_the_sockhash") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let addr = SocketAddr::new(IMDS_V4.into(), IMDS_PORT);
    let mut whole = sb.probe_as(0, 0).hold(addr);
    assert_eq!(whole.fetch().assert_ok().body, sb.imds.credentials_body());
    assert_eq!(guard.judged_sockets().expect("sockhash"), 0);
    judge(&mut guard, &policy, generation);
    let mut held = judged(&sb).hold(addr);
    // Connected (the connect is allowed): in the sockhash, alone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while guard.judged_sockets().expect("sockhash") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(guard.judged_sockets().expect("sockhash"), 1);
    held.fetch().assert_errno(EACCES);
    drop(held);
    drop(whole);
}

#[test]
fn the_guard_keeps_judging_with_the_agent_gone() {
    if !privileged_or_skip("the_guard_keeps_judging_with_the_agent_gone") {
        return;
    }
    let sb = Sandbox::new();
    let pins = Pins::new(sb.pin_dir());
    pins.prepare().expect("pin directory");
    let policy = policy(POLICY);
    let mut guard = Guard::load(0).expect("load the programs");
    let generation = guard.apply(&policy, &Stamp::default()).expect("apply");
    judge(&mut guard, &policy, generation);
    guard
        .attach(sb.cgroup.path(), Some(&pins))
        .expect("attach, pinned");
    // The agent's every descriptor closes, as when it is killed.
    drop(guard);
    for addr in addrs() {
        let seen = sb.imds.received().len();
        let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
        r.assert_errno(EACCES);
        assert!(r.body.contains(INSTANCE_ID), "{addr}: {r:?}");
        let logs = received_since(&sb, seen);
        assert!(
            !contains(&logs[0], b"security-credentials"),
            "{addr}: the forbidden request left with the agent gone"
        );
    }
    let r = sb
        .probe_as(0, 0)
        .run(Action::Send(addrs()[0], Script::Credentials));
    assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
    pins.detach_all().expect("detach");
    // Detached: nothing judges any more.
    let r = judged(&sb).run(Action::Send(addrs()[0], Script::Credentials));
    assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
}

#[test]
fn a_reload_cuts_a_judged_kept_alive_connection_and_new_ones_are_judged_by_the_new_rules() {
    if !privileged_or_skip(
        "a_reload_cuts_a_judged_kept_alive_connection_and_new_ones_are_judged_by_the_new_rules",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    // The SDK's flow (token, listing, role, credentials) allowed whole.
    let allow_flow = |guard: &mut Guard, generation: u32| {
        judge(guard, &policy, generation);
        guard
            .write_request_rule(generation, 1, req_method::GET, "/latest/meta-data/", 9)
            .expect("request rule");
    };
    allow_flow(&mut guard, generation);
    let addr = addrs()[0];
    let mut held = judged(&sb).hold(addr);
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    // A reload whose rules no longer hold the listing.
    let next = guard.apply(&policy, &Stamp::default()).expect("reload");
    judge(&mut guard, &policy, next);
    let seen = sb.imds.received();
    held.fetch().assert_errno(EACCES);
    assert_eq!(sb.imds.received(), seen, "a byte left after the reload");
    // New connections: judged by the new rules.
    judged(&sb).hold(addr).fetch().assert_errno(EACCES);
    let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
    r.assert_errno(EACCES);
    assert!(r.body.contains(INSTANCE_ID), "{r:?}");
    // And a reload that gives it back: answered again.
    let again = guard.apply(&policy, &Stamp::default()).expect("reload");
    allow_flow(&mut guard, again);
    assert_eq!(
        judged(&sb).hold(addr).fetch().assert_ok().body,
        sb.imds.credentials_body()
    );
}

#[test]
fn a_socket_the_full_sockhash_cannot_take_sends_nothing() {
    if !privileged_or_skip("a_socket_the_full_sockhash_cannot_take_sends_nothing") {
        return;
    }
    let sb = Sandbox::new();
    // SAFETY: the suite runs one test at a time; the guard reads it as it
    // loads, and it is removed at once.
    unsafe { std::env::set_var(REQ_SOCKS_ENV, "2") };
    let (mut guard, policy, generation) = guard(&sb);
    // SAFETY: as above.
    unsafe { std::env::remove_var(REQ_SOCKS_ENV) };
    let addr = addrs()[0];
    let run = || judged(&sb).run(Action::Send(addr, Script::V1ThenV2));
    // Whole service: a third connection beside two held ones is answered.
    let held = [judged(&sb).hold(addr), judged(&sb).hold(addr)];
    assert_eq!(run().assert_ok().body.matches(INSTANCE_ID).count(), 2);
    drop(held);
    // Judged, the instance id allowed: two held connections fill the
    // sockhash; a third's request is never judged, and never leaves.
    scope(&mut guard, &policy, generation, entry_flags::JUDGE);
    guard
        .write_request_rule(
            generation,
            1,
            req_method::GET,
            "/latest/meta-data/instance-id",
            1,
        )
        .expect("request rule");
    let held = [judged(&sb).hold(addr), judged(&sb).hold(addr)];
    let deadline = Instant::now() + Duration::from_secs(5);
    while guard.judged_sockets().expect("sockhash") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(guard.judged_sockets().expect("sockhash"), 2);
    let seen = sb.imds.received().len();
    let r = run();
    assert!(!r.ok, "a request of a socket outside the sockhash: {r:?}");
    let logs = received_since(&sb, seen);
    assert_eq!(logs.len(), 1, "one connection");
    assert!(
        logs[0].is_empty(),
        "{:?} left unjudged",
        String::from_utf8_lossy(&logs[0])
    );
    // Room again: judged, and answered.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while guard.judged_sockets().expect("sockhash") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(run().assert_ok().body.matches(INSTANCE_ID).count(), 2);
}

/// A policy as an operator writes it: root the whole service, uid 1001 a
/// request table (the token, the instance id, the placement subtree), IMDSv2
/// required of it.
const REQUEST_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0]\n\
    [requests.monitoring]\nuids = [1001]\nimdsv2 = \"required\"\nrules = [\n\
    \"PUT /latest/api/token\",\n\"GET /latest/meta-data/instance-id\",\n\
    \"GET /latest/meta-data/placement/\",\n]\n";
/// The same callers, uid 1001 allowed the whole service.
const WHOLE_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0, 1001]\n";

#[test]
fn the_agent_enforces_a_request_table_and_its_programs_outlive_it() {
    if !privileged_or_skip("the_agent_enforces_a_request_table_and_its_programs_outlive_it") {
        return;
    }
    // Without the table (uid 1001 allowed the whole service): both the v1
    // request and the credentials are answered.
    let mut sb = Sandbox::new();
    sb.policy(WHOLE_POLICY);
    sb.guard(&[]);
    for addr in addrs() {
        let r = judged(&sb).run(Action::Send(addr, Script::V1ThenV2));
        assert_eq!(r.assert_ok().body.matches(INSTANCE_ID).count(), 2, "{r:?}");
        let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
        assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
    }
    drop(sb);

    let sb = Sandbox::with_agent(REQUEST_POLICY);
    let check = |sb: &Sandbox| {
        for addr in addrs() {
            let seen = sb.imds.received().len();
            // IMDSv1 refused, not a byte of it sent.
            judged(sb)
                .run(Action::Send(addr, Script::V1ThenV2))
                .assert_errno(EACCES);
            // The token and the instance id answered, the credentials not.
            let r = judged(sb).run(Action::Send(addr, Script::Credentials));
            r.assert_errno(EACCES);
            assert!(r.body.contains(INSTANCE_ID), "{addr}: {r:?}");
            let logs = received_since(sb, seen);
            assert_eq!(logs.len(), 2, "{addr}: two connections");
            assert!(logs[0].is_empty(), "{addr}: the v1 request left");
            assert!(
                !contains(&logs[1], b"security-credentials"),
                "{addr}: the credentials request left"
            );
            // Root: the whole service.
            let r = sb
                .probe_as(0, 0)
                .run(Action::Send(addr, Script::Credentials));
            assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
        }
    };
    check(&sb);
    // Killed: the pinned programs judge on.
    sb.agent().kill();
    check(&sb);
}

/// Design row 26: where the programs that judge requests cannot run (the
/// unrolled build: no `bpf_loop` on the kernel, as on 5.10, or asked for
/// with `IMDS_GUARD_PROGRAMS`), a policy with a request table is refused
/// by name, at start and at reload, and a running guard keeps the policy
/// it had: the table's callers are never let through to the whole
/// service.
#[test]
fn a_request_table_is_refused_where_the_programs_cannot_judge_requests() {
    use imds_guard_e2e::field;
    use serde_json::Value;

    if !privileged_or_skip("a_request_table_is_refused_where_the_programs_cannot_judge_requests") {
        return;
    }
    let unrolled = [("IMDS_GUARD_PROGRAMS", "unrolled")];
    let wait = Duration::from_secs(120);
    let says_why = |text: &str| {
        text.contains("request-level rules")
            && text.contains("bpf_loop")
            && text.contains("unrolled")
    };
    let sb = Sandbox::new();
    // At start: refused, nothing attached (the caller reaches the service,
    // as before any agent ran).
    sb.policy(REQUEST_POLICY);
    let refused = sb.spawn_agent(&[], &unrolled);
    let code = refused.wait_exit(wait).expect("the agent exits");
    assert!(!code.success(), "{}", refused.output());
    assert!(says_why(&refused.output()), "{}", refused.output());
    // A policy without a table starts on the same build.
    sb.policy(WHOLE_POLICY);
    let agent = sb.spawn_agent(&[], &unrolled);
    let ready = agent.wait_ready(wait);
    assert_eq!(
        field(&ready, "programs").and_then(Value::as_str),
        Some("unrolled"),
        "{ready}"
    );
    // A reload that brings the table is refused, and the policy in force
    // stays: uid 1001 still reads the whole service, nobody nothing.
    sb.policy(REQUEST_POLICY);
    agent.sighup();
    agent
        .wait_for(
            |r| {
                field(r, "event").and_then(Value::as_str) == Some("reload")
                    && field(r, "outcome")
                        .and_then(Value::as_str)
                        .is_some_and(|o| o != "applied")
                    && field(r, "message")
                        .and_then(Value::as_str)
                        .is_some_and(says_why)
            },
            wait,
        )
        .unwrap_or_else(|| panic!("no refused reload:\n{}", agent.output()));
    for addr in addrs() {
        let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
        assert!(
            r.assert_ok().body.contains(sb.imds.credentials_body()),
            "{addr}"
        );
        sb.probe()
            .run(Action::connect(addr.ip(), addr.port()))
            .assert_errno(EPERM);
    }
    drop(agent);
}
