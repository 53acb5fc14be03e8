//! The evasions of the design's §7 not covered above (rows 4, 5, 6, 10
//! after the connect, 12, 14-18), end to end: each first shown reaching
//! the fake IMDS with the caller allowed the whole service, then judged:
//! the forbidden bytes never arrive (the fake IMDS's per-connection log).

use std::net::SocketAddr;

use imds_guard::kernel::{Guard, Stamp, pins::Pins};
use imds_guard_common::req_method;
use imds_guard_e2e::{
    Action, Evasion, FailedPush, HEAD_CASES, INSTANCE_ID, INSTANCE_ID_PATH, Probe, Pushed, Sandbox,
    Script, VMSPLICE_MARK, Way, allowed_prefix, credentials_path, head_case, privileged_or_skip,
};

use super::{EACCES, addrs, contains, guard, judge, judged, received_since};

/// The caller for `way`: with `CAP_NET_ADMIN` for `TCP_REPAIR`, as a
/// rootless container's root has it in its own network namespace.
fn caller(sb: &Sandbox, way: Way) -> Probe {
    match way {
        Way::RepairAfterConnect => judged(sb).caps(&["net_admin"]),
        _ => judged(sb),
    }
}

/// The ways of [`Way`] tried on each address: all of them on IPv4, the
/// page-handing ones and an io_uring send on IPv6 and mapped IPv4.
fn cases() -> Vec<(SocketAddr, Way)> {
    let mut cases = Vec::new();
    for (i, addr) in addrs().into_iter().enumerate() {
        for way in Way::ALL {
            let few = matches!(
                way,
                Way::Sendfile | Way::Splice | Way::Vmsplice | Way::UringSend
            );
            if way != Way::WritePending && (i == 0 || few) {
                cases.push((addr, way));
            }
        }
    }
    cases
}

#[test]
fn sendfile_splice_vmsplice_io_uring_zerocopy_and_repair_are_judged_like_a_write() {
    if !privileged_or_skip(
        "sendfile_splice_vmsplice_io_uring_zerocopy_and_repair_are_judged_like_a_write",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let path = credentials_path();
    // Allowed the whole service: every way reaches the service, which
    // answers the credentials (an io_uring op this kernel lacks fails
    // here: on 6.1 and later every one of them must be there).
    for (addr, way) in cases() {
        let seen = sb.imds.received().len();
        let r = caller(&sb, way).run(Action::Evade(addr, Evasion::Way(way)));
        assert!(
            r.assert_ok().body.contains(sb.imds.credentials_body()),
            "{addr} {}: {r:?}",
            way.name()
        );
        let logs = received_since(&sb, seen);
        assert!(
            logs.iter().any(|l| contains(l, path.as_bytes())),
            "{addr} {}: the path never reached the service",
            way.name()
        );
    }
    judge(&mut guard, &policy, generation);
    for (addr, way) in cases() {
        let seen = sb.imds.received().len();
        let r = caller(&sb, way).run(Action::Evade(addr, Evasion::Way(way)));
        let logs = received_since(&sb, seen);
        assert_eq!(logs.len(), 1, "{addr} {}: one connection", way.name());
        let log = &logs[0];
        assert!(
            !contains(log, b"security-credentials") && !contains(log, VMSPLICE_MARK),
            "{addr} {}: the service received {:?}",
            way.name(),
            String::from_utf8_lossy(log)
        );
        if way.zero_copy_ring() {
            // Judged like a write, or refused before anything is sent
            // (`sock_replace_proto` clears `SOCK_SUPPORT_ZC`): never sent
            // unjudged.
            assert!(
                !r.ok && matches!(r.errno, Some(EACCES | libc::EOPNOTSUPP)),
                "{addr} {}: {r:?}",
                way.name()
            );
            if r.errno == Some(libc::EOPNOTSUPP) {
                assert!(
                    !contains(log, INSTANCE_ID_PATH.as_bytes()),
                    "{addr} {}: refused, yet sent",
                    way.name()
                );
                continue;
            }
        } else {
            r.assert_errno(EACCES);
        }
        // The allowed request went that way and was answered.
        assert!(
            r.body.contains(INSTANCE_ID) && contains(log, INSTANCE_ID_PATH.as_bytes()),
            "{addr} {}: the allowed request was not answered: {r:?}",
            way.name()
        );
    }
}

/// The cases [`head_case`] also runs over IPv6 and mapped IPv4: one of
/// each row.
const HEADS_ON_EVERY_ADDRESS: [u8; 5] = [0, 4, 19, 30, 33];

#[test]
fn request_heads_a_proxy_would_normalise_or_read_two_ways_never_leave() {
    if !privileged_or_skip("request_heads_a_proxy_would_normalise_or_read_two_ways_never_leave") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let mut cases = Vec::new();
    for (i, addr) in addrs().into_iter().enumerate() {
        for n in 0..HEAD_CASES as u8 {
            if i == 0 || HEADS_ON_EVERY_ADDRESS.contains(&n) {
                cases.push((addr, n));
            }
        }
    }
    let case = |addr, n: u8| head_case(addr, usize::from(n)).expect("a head case");
    // Allowed the whole service: each head reaches the service on the
    // connection, after the allowed request.
    for &(addr, n) in &cases {
        let (name, bytes) = case(addr, n);
        let prefix = allowed_prefix(addr);
        let seen = sb.imds.received().len();
        let r = judged(&sb).run(Action::Evade(addr, Evasion::Head(n)));
        assert!(r.body.contains("us-east-1"), "{addr} {name}: {r:?}");
        let logs = received_since(&sb, seen);
        assert_eq!(logs.len(), 1, "{addr} {name}: one connection");
        let first = &bytes[..bytes.len().min(48)];
        assert!(
            logs[0].starts_with(&prefix) && contains(&logs[0][prefix.len()..], first),
            "{addr} {name}: the head never reached the service: {:?}",
            String::from_utf8_lossy(&logs[0])
        );
    }
    judge(&mut guard, &policy, generation);
    for &(addr, n) in &cases {
        let (name, _) = case(addr, n);
        let prefix = allowed_prefix(addr);
        let seen = sb.imds.received().len();
        let r = judged(&sb).run(Action::Evade(addr, Evasion::Head(n)));
        let logs = received_since(&sb, seen);
        assert_eq!(logs.len(), 1, "{addr} {name}: one connection");
        assert!(
            logs[0] == prefix,
            "{addr} {name}: the service received {:?}",
            String::from_utf8_lossy(&logs[0])
        );
        assert!(
            r.body.contains("us-east-1"),
            "{addr} {name}: the allowed request was not answered: {r:?}"
        );
        assert!(
            !r.ok && r.errno == Some(EACCES),
            "{addr} {name}: expected EACCES at the send, got {r:?}"
        );
    }
}

/// Whether `pushed` is the failure `push` is made to provoke: nothing
/// sent and `EISCONN` or `ENOBUFS`, or part of the head sent.
fn failed_as_made(push: FailedPush, pushed: Pushed) -> bool {
    match push {
        FailedPush::FastOpen => pushed.sent == 0 && pushed.errno == Some(libc::EISCONN),
        FailedPush::ZeroCopyNoMemlock => pushed.sent == 0 && pushed.errno == Some(libc::ENOBUFS),
        FailedPush::PartialOob => pushed.failed(),
    }
}

#[test]
fn a_verdict_left_by_a_failed_or_partial_push_never_carries_another_request() {
    if !privileged_or_skip(
        "a_verdict_left_by_a_failed_or_partial_push_never_carries_another_request",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let path = credentials_path();
    let cases: Vec<(SocketAddr, FailedPush)> = addrs()
        .into_iter()
        .flat_map(|addr| FailedPush::ALL.map(|push| (addr, push)))
        .collect();
    let pushed = |r: &imds_guard_e2e::ProbeResult, addr, push: FailedPush| {
        Pushed::parse(&r.body)
            .unwrap_or_else(|| panic!("{addr} {}: no push report: {r:?}", push.name()))
    };
    // Allowed the whole service: the allowed head's send fails as the
    // recipe makes it, and the credentials head that follows (of the
    // length left) is answered.
    for &(addr, push) in &cases {
        let seen = sb.imds.received().len();
        let r = judged(&sb).run(Action::Evade(addr, Evasion::FailedPush(push)));
        let done = pushed(&r, addr, push);
        assert!(
            failed_as_made(push, done),
            "{addr} {}: the send did not fail as made: {done:?}",
            push.name()
        );
        assert!(
            r.assert_ok().body.contains(sb.imds.credentials_body()),
            "{addr} {}: {r:?}",
            push.name()
        );
        let logs = received_since(&sb, seen);
        assert!(
            logs.iter().any(|l| contains(l, path.as_bytes())),
            "{addr} {}: the path never reached the service",
            push.name()
        );
    }
    // Judged: whatever the push did, not a byte of the credentials head
    // reaches the service, and no credentials come back. A push that took
    // the whole head leaves no verdict behind, and the credentials head
    // is refused at its own: so far only the fast open send behind
    // `req_msg` on 6.18 (see [`FailedPush::FastOpen`]).
    judge(&mut guard, &policy, generation);
    let mut left = Vec::new();
    for &(addr, push) in &cases {
        let seen = sb.imds.received().len();
        let r = judged(&sb).run(Action::Evade(addr, Evasion::FailedPush(push)));
        let done = pushed(&r, addr, push);
        let logs = received_since(&sb, seen);
        assert_eq!(logs.len(), 1, "{addr} {}: one connection", push.name());
        let case = format!("{addr} {} ({done:?})", push.name());
        // Shown with a failure: what each case did.
        eprintln!("{case}: ok {} errno {:?} {}", r.ok, r.errno, r.error);
        if contains(&logs[0], b"security-credentials") {
            let log = String::from_utf8_lossy(&logs[0]).replace("aaaa", "");
            left.push(format!("{case}: the service received {log:?}"));
        } else if logs[0].windows(4).filter(|w| w == b"GET ").count() > 1 {
            // More than the allowed head's bytes after the token request.
            let log = String::from_utf8_lossy(&logs[0]).replace("aaaa", "");
            left.push(format!("{case}: two heads left: {log:?}"));
        } else if r.ok || r.body.contains(sb.imds.credentials_body()) {
            left.push(format!("{case}: {r:?}"));
        } else if !done.failed() {
            // Pushed whole: the next head had a verdict of its own.
            r.assert_errno(EACCES);
        }
    }
    assert!(left.is_empty(), "{}", left.join("\n"));
}

/// `nft ARGS` in the sandbox's network namespace.
fn nft(sb: &Sandbox, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", sb.netns_path().display()))
        .arg("nft")
        .args(args)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs [`Way::WritePending`] to `addr` with the service's first SYN-ACK
/// dropped (in the sandbox's namespace only), so that the probe's write
/// waits in the connect: the rule goes once it has dropped one and the
/// writer had time to block; the SYN's retransmission then completes the
/// handshake, a second later.
fn with_a_late_handshake(
    sb: &Sandbox,
    probe: &Probe,
    addr: SocketAddr,
) -> imds_guard_e2e::ProbeResult {
    nft(sb, &["add", "table", "inet", "evade"]);
    nft(
        sb,
        &[
            "add",
            "chain",
            "inet",
            "evade",
            "late",
            "{ type filter hook input priority 0; }",
        ],
    );
    nft(
        sb,
        &[
            "add",
            "rule",
            "inet",
            "evade",
            "late",
            "tcp",
            "sport",
            "80",
            "tcp",
            "flags",
            "&",
            "(syn|ack)",
            "==",
            "syn|ack",
            "counter",
            "drop",
        ],
    );
    std::thread::scope(|s| {
        let run = s.spawn(|| probe.run(Action::Evade(addr, Evasion::Way(Way::WritePending))));
        let deadline = std::time::Instant::now()
            + imds_guard_e2e::slowdown::scaled(std::time::Duration::from_secs(5));
        let dropped = || {
            let chain = nft(sb, &["list", "chain", "inet", "evade", "late"]);
            chain
                .split("packets ")
                .nth(1)
                .and_then(|n| n.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        };
        while !dropped() {
            assert!(
                std::time::Instant::now() < deadline,
                "no SYN-ACK was dropped"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        nft(sb, &["delete", "table", "inet", "evade"]);
        run.join().expect("the probe thread")
    })
}

#[test]
fn a_writer_waiting_in_the_connect_sends_nothing_unjudged() {
    if !privileged_or_skip("a_writer_waiting_in_the_connect_sends_nothing_unjudged") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let path = credentials_path();
    let [v4, v6, _] = addrs();
    // Allowed the whole service: the write made while connecting leaves
    // once the handshake completes, and is answered.
    for addr in [v4, v6] {
        let seen = sb.imds.received().len();
        let r = with_a_late_handshake(&sb, &judged(&sb), addr);
        assert!(r.assert_ok().body.contains("401"), "{addr}: {r:?}");
        let logs = received_since(&sb, seen);
        assert!(
            logs.len() == 1 && contains(&logs[0], path.as_bytes()),
            "{addr}: the path never reached the service: {logs:?}"
        );
    }
    judge(&mut guard, &policy, generation);
    for addr in [v4, v6] {
        let seen = sb.imds.received().len();
        let r = with_a_late_handshake(&sb, &judged(&sb), addr);
        // The write was taken (by the plain path: the socket did not go
        // into the sockhash with a writer inside `tcp_sendmsg`), and
        // nothing of it ever left.
        assert!(
            !r.ok && r.error.starts_with("reading the response"),
            "{addr}: {r:?}"
        );
        let logs = received_since(&sb, seen);
        assert!(
            logs.len() == 1 && logs[0].is_empty(),
            "{addr}: the service received {logs:?}"
        );
    }
    assert_eq!(guard.judged_sockets().expect("sockhash"), 0);
}

#[test]
fn an_upgrade_retires_the_old_agents_judged_connections_and_judges_new_ones() {
    if !privileged_or_skip(
        "an_upgrade_retires_the_old_agents_judged_connections_and_judges_new_ones",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let pins = Pins::new(sb.pin_dir());
    pins.prepare().expect("pin directory");
    let policy = super::policy(super::POLICY);
    // The old agent: the SDK's whole flow allowed (the listing too), so
    // its kept-alive connection is answered the credentials.
    let mut old = Guard::load(0).expect("load the programs");
    let generation = old.apply(&policy, &Stamp::default()).expect("apply");
    judge(&mut old, &policy, generation);
    old.write_request_rule(generation, 1, req_method::GET, "/latest/meta-data/", 9)
        .expect("request rule");
    old.attach(sb.cgroup.path(), Some(&pins))
        .expect("attach, pinned");
    let addr = addrs()[0];
    let mut held = judged(&sb).hold(addr);
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    // The new agent adopts the pins (the old one is gone): its rules do
    // not hold the listing.
    let mut new = Guard::load(0).expect("load the programs");
    let generation = new.apply(&policy, &Stamp::default()).expect("apply");
    judge(&mut new, &policy, generation);
    let report = new
        .attach(sb.cgroup.path(), Some(&pins))
        .expect("adopt the pins");
    assert!(report.adopted > 0 && report.retired, "{report:?}");
    drop(old);
    // The old agent's connection: its next request is refused at once,
    // and not a byte of it leaves.
    let seen = sb.imds.received();
    let r = held.fetch();
    r.assert_errno(EACCES);
    assert_eq!(sb.imds.received(), seen, "a byte left after the upgrade");
    drop(held);
    // New connections: judged by the new agent's rules.
    let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
    r.assert_errno(EACCES);
    assert!(r.body.contains(INSTANCE_ID), "{r:?}");
    pins.detach_all().expect("detach");
}

/// uid 1001 allowed the token and the metadata subtree by a request
/// table (the SDK's flow, credentials included), root the whole service.
const FLOW_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0]\n\
    [requests.flow]\nuids = [1001]\nrules = [\"PUT /latest/api/token\", \
    \"GET /latest/meta-data/\"]\n";

#[test]
fn a_restarted_agent_refuses_the_next_request_of_a_connection_its_predecessor_judged() {
    if !privileged_or_skip(
        "a_restarted_agent_refuses_the_next_request_of_a_connection_its_predecessor_judged",
    ) {
        return;
    }
    let sb = Sandbox::with_agent(FLOW_POLICY);
    let addr = addrs()[0];
    let mut held = judged(&sb).hold(addr);
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    // Stopped (its guard stays pinned), then a new agent takes over.
    sb.agent().terminate();
    let ready = sb.start_agent(&[]);
    let record = ready.wait_ready(imds_guard_e2e::READY);
    assert_eq!(
        imds_guard_e2e::field(&record, "retired").and_then(serde_json::Value::as_bool),
        Some(true),
        "{record}"
    );
    let seen = sb.imds.received();
    held.fetch().assert_errno(EACCES);
    assert_eq!(sb.imds.received(), seen, "a byte left after the restart");
    // A new connection: judged by the new agent, and answered.
    let mut again = judged(&sb).hold(addr);
    assert_eq!(again.fetch().assert_ok().body, sb.imds.credentials_body());
    drop((held, again));
    drop(ready);
}
