//! An attacker's review of request-level judgement: a caller held to a
//! request set does something to its judged connection that the design's
//! table (docs/design/request-level.md §7) does not list, then asks for
//! the role's credentials. Each trick first runs with the caller allowed
//! the whole service and must show the credentials request reaching the
//! fake IMDS; judged, not a byte of it may arrive.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use imds_guard_e2e::{
    Action, Attack, IMDS_PORT, IMDS_V4, IMDS_V6, INSTANCE_ID, PLAIN_PORT, Sandbox, Trick,
    credentials_path, privileged_or_skip,
};

use super::{
    EACCES, EntryFlags, Guard, Policy, RULES, addrs, contains, entry_flags, entry_number, guard,
    judge, judged, received_since,
};

/// Makes root's entry judged by [`RULES`], as `judge` does uid 1001's:
/// for a trick that needs root of a container (`CAP_NET_ADMIN` over its
/// own namespace, for `nft`), which root in the test's namespace stands
/// for.
fn judge_root(guard: &mut Guard, policy: &Policy, generation: u32) {
    let rule = policy.uids.get(&0).expect("uid 0 has a rule");
    let entry = entry_number(Some(rule.entry()));
    for (i, (method, path)) in RULES.into_iter().enumerate() {
        guard
            .write_request_rule(generation, 1, method, path, i as u32 + 1)
            .expect("request rule");
    }
    let flags = EntryFlags {
        ruleset: 1,
        flags: entry_flags::JUDGE,
        _pad: 0,
    };
    guard
        .write_entry_flags(generation, entry, flags)
        .expect("entry flags");
}

/// The tricks an unprivileged caller plays on its own connection.
const TRICKS: [Trick; 5] = [
    Trick::Reconnect,
    Trick::ConnectAgain,
    Trick::MsgMore,
    Trick::Cork,
    Trick::Urgent,
];

/// Whether any connection since `seen` carried the credentials path.
fn credentials_arrived(sb: &Sandbox, seen: usize) -> bool {
    let path = credentials_path();
    received_since(sb, seen)
        .iter()
        .any(|log| contains(log, path.as_bytes()))
}

#[test]
fn tricks_on_a_judged_connection_never_get_the_credentials_out() {
    if !privileged_or_skip("tricks_on_a_judged_connection_never_get_the_credentials_out") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    // The hand-off runs as root, whose child becomes the judged uid.
    let run = |trick: Trick, addr: SocketAddr| {
        let probe = if trick == Trick::HandOff {
            sb.probe_as(0, 0)
        } else {
            judged(&sb)
        };
        probe.run(Action::Trick(addr, trick))
    };
    let all = || TRICKS.into_iter().chain([Trick::HandOff]);
    // Whole service: every trick gets the credentials request to the
    // service (answered, but for the urgent one, whose last byte the
    // server does not read in line).
    for addr in addrs() {
        for trick in all() {
            let seen = sb.imds.received().len();
            let r = run(trick, addr);
            if trick != Trick::Urgent {
                assert!(
                    r.assert_ok().body.contains(sb.imds.credentials_body()),
                    "{addr} {trick:?}: {r:?}"
                );
            }
            assert!(
                credentials_arrived(&sb, seen),
                "{addr} {trick:?}: the credentials request never reached the service: {r:?}"
            );
        }
    }
    judge(&mut guard, &policy, generation);
    for addr in addrs() {
        for trick in all() {
            let seen = sb.imds.received().len();
            let r = run(trick, addr);
            assert!(!r.ok, "{addr} {trick:?}: {r:?}");
            assert!(
                !credentials_arrived(&sb, seen),
                "{addr} {trick:?}: the credentials request reached the service: {:?}",
                received_since(&sb, seen)
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect::<Vec<_>>()
            );
            // Refused at the send (EACCES), after allowed requests were
            // answered on the same connection: judged, not merely broken
            // (the hand-off's root parent sends a token `PUT` first; the
            // corked tricks' allowed request waits with the forbidden one).
            match trick {
                Trick::MsgMore | Trick::Cork => {}
                Trick::HandOff => assert!(r.body.starts_with("http/1.1 200"), "{r:?}"),
                _ => assert!(r.body.contains(INSTANCE_ID), "{addr} {trick:?}: {r:?}"),
            }
            r.assert_errno(EACCES);
        }
    }
}

#[test]
fn a_judged_caller_that_rewrites_its_destination_to_the_service_sends_nothing() {
    if !privileged_or_skip(
        "a_judged_caller_that_rewrites_its_destination_to_the_service_sends_nothing",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    // Root of a user-namespaced container holds CAP_NET_ADMIN over its own
    // namespace: an nftables `dnat` there turns a connection to the fake
    // IMDS's unprotected loopback port into one to the service, after
    // the connect hook and `sock_ops` saw an unprotected address.
    let cases = [
        (
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PLAIN_PORT),
            SocketAddr::new(IMDS_V4.into(), IMDS_PORT),
        ),
        (
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), PLAIN_PORT),
            SocketAddr::new(IMDS_V6.into(), IMDS_PORT),
        ),
    ];
    let nat = |via, target| {
        sb.probe_as(0, 0)
            .run(Action::attack(Attack::nat(via, target)))
    };
    for (via, target) in cases {
        let seen = sb.imds.tcp_accepted(target);
        let r = nat(via, target);
        assert!(
            r.assert_ok().body.contains(sb.imds.credentials_body()),
            "{via} -> {target}: {r:?}"
        );
        assert!(
            sb.imds.tcp_accepted(target) > seen,
            "{via} -> {target}: the rewritten connection did not reach the service"
        );
    }
    judge_root(&mut guard, &policy, generation);
    for (via, target) in cases {
        let seen = sb.imds.received().len();
        let accepted = sb.imds.tcp_accepted(target);
        let r = nat(via, target);
        assert!(!r.ok, "{via} -> {target}: {r:?}");
        assert!(
            sb.imds.tcp_accepted(target) > accepted,
            "{via} -> {target}: the handshake should pass (no payload)"
        );
        let logs = received_since(&sb, seen);
        assert!(
            logs.iter().all(Vec::is_empty),
            "{via} -> {target}: unjudged bytes reached the service: {:?}",
            logs.iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_request_whose_send_could_sleep_mid_message_is_refused() {
    if !privileged_or_skip("a_request_whose_send_could_sleep_mid_message_is_refused") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let run = |trick, addr| judged(&sb).run(Action::Trick(addr, trick));
    // Whole service: a socket whose unsent bytes may be one byte at most
    // (TCP_NOTSENT_LOWAT, any caller's to set) gets every answer.
    for addr in addrs() {
        for trick in [Trick::NotsentLowat, Trick::NotsentLowatRoomy] {
            let r = run(trick, addr);
            assert!(
                r.assert_ok().body.contains(sb.imds.credentials_body()),
                "{addr} {trick:?}: {r:?}"
            );
        }
    }
    judge(&mut guard, &policy, generation);
    for addr in addrs() {
        // Judged: a send on it may wait mid-message for its bytes to
        // drain, with the socket's lock released (the design's risk R1),
        // so even the allowed token `PUT` is refused, and nothing leaves.
        let seen = sb.imds.received().len();
        run(Trick::NotsentLowat, addr).assert_errno(EACCES);
        let logs = received_since(&sb, seen);
        assert!(
            logs.iter().all(Vec::is_empty),
            "{addr}: {:?}",
            logs.iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
        );
        // A low-water mark with room for a request head: judged as ever.
        let seen = sb.imds.received().len();
        let r = run(Trick::NotsentLowatRoomy, addr);
        r.assert_errno(EACCES);
        assert!(r.body.contains(INSTANCE_ID), "{addr}: {r:?}");
        assert!(!credentials_arrived(&sb, seen), "{addr}: {r:?}");
    }
}
