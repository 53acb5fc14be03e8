use std::path::Path;

use imds_guard_common::{COMM_LEN, Event, family, hook, kind, reason, verdict};

use super::*;
use crate::policy::{FakeResolver, PolicySpec};

fn policy() -> Policy {
    PolicySpec::parse(Path::new("p.toml"), "[allow]\nuids = [0]\n")
        .expect("valid")
        .resolve(&FakeResolver::new(&[], &[]))
        .expect("resolves")
}

/// A denial of `uid` in the user namespaces of `owner`.
fn namespaced(uid: u32, owner: u32, tgid: u32) -> DecisionRecord {
    let mut d = denial(uid, tgid, 80);
    d.userns_owner = Some(owner);
    d
}

fn denial(uid: u32, tgid: u32, port: u16) -> DecisionRecord {
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"curl");
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[169, 254, 169, 254]);
    DecisionRecord::from_event(&Event {
        ts_ns: 1,
        cgroup_id: 1,
        tid: tgid,
        tgid,
        uid,
        gid: uid,
        entry: 0,
        port,
        hook: hook::CONNECT4,
        verdict: verdict::DENIED,
        reason: reason::DEFAULT,
        family: family::INET,
        generation: 0,
        kind: kind::DECISION,
        addr,
        comm,
        proto: 0,
        flags: 0,
        _pad1: [0; 2],
        decider: imds_guard_common::NO_ID,
        ngroups: imds_guard_common::NO_ID,
        namespaces: 0,
        _pad2: [0; 3],
        owner: imds_guard_common::NO_ID,
        userns_owner: imds_guard_common::NO_ID,
        _pad3: [0; 4],
    })
    .expect("valid")
}

#[test]
fn one_caller_changing_ports_and_pids_stays_one_key() {
    let (mut log, p, r, t0) = (
        EventLog::default(),
        policy(),
        FakeResolver::new(&[], &[]),
        Instant::now(),
    );
    for i in 0..(MAX_KEYS as u32 * 2) {
        log.record(&denial(1000, 2000 + i, (i % 60000) as u16), &p, &r, t0);
    }
    assert_eq!(
        log.limiter.tracked(),
        1,
        "ports and pids are not in the key"
    );
    // Another caller is still logged, not swallowed by an overflow.
    let key = Key {
        outcome: Outcome::Deny,
        who: Who::Uid(1001),
        dst: "169.254.169.254".parse().expect("ip"),
        interface: None,
        request: false,
    };
    assert!(!log.limiter_has(&key));
    log.record(&denial(1001, 9, 80), &p, &r, t0);
    assert!(log.limiter_has(&key));
    assert_eq!(log.received(), MAX_KEYS as u64 * 2 + 1);
}

#[test]
fn subordinate_ids_count_as_their_user_and_cannot_hide_another_caller_or_the_user() {
    let (mut log, p, r, t0) = (
        EventLog::default(),
        policy(),
        FakeResolver::new(&[], &[]),
        Instant::now(),
    );
    let dst: IpAddr = "169.254.169.254".parse().expect("ip");
    let key = |who| Key {
        outcome: Outcome::Deny,
        who,
        dst,
        interface: None,
        request: false,
    };
    // 4,200 subordinate ids of uid 2345, more than the keys tracked,
    // each from a process of its own.
    const FLOOD: u32 = 4_200;
    assert!(FLOOD as usize > MAX_KEYS);
    for i in 0..FLOOD {
        log.record(&namespaced(100_000 + i, 2345, 10_000 + i), &p, &r, t0);
    }
    assert_eq!(log.limiter.tracked(), 1, "one user, one key");
    assert!(log.limiter_has(&key(Who::Namespaced(2345))));
    assert!(log.overflow.is_empty() && log.overflow_others == 0);
    // Another caller's record is written, and so is the user's own,
    // from the host: new keys, logged.
    log.record(&denial(1001, 9, 80), &p, &r, t0);
    log.record(&denial(2345, 10, 80), &p, &r, t0);
    assert!(log.limiter_has(&key(Who::Uid(1001))));
    assert!(log.limiter_has(&key(Who::Uid(2345))));
    assert_eq!(log.limiter.tracked(), 3);
    assert!(log.overflow.is_empty() && log.overflow_others == 0);
    // The flood is summarised under its user when the window ends.
    assert_eq!(
        Who::Namespaced(2345).to_string(),
        "the user namespaces of uid 2345"
    );
}

#[test]
fn overflow_is_counted_per_caller() {
    let (mut log, t0) = (EventLog::default(), Instant::now());
    let dst: IpAddr = "169.254.169.254".parse().expect("ip");
    for uid in 0..(MAX_KEYS as u32 + 10) {
        let sample = || Sample {
            outcome: Outcome::Deny,
            who: Who::Uid(uid),
            dst: SocketAddr::new(dst, 80),
            process: None,
            interface: None,
        };
        log.admit(Outcome::Deny, Who::Uid(uid), dst, None, t0, sample);
    }
    assert_eq!(log.overflow.values().sum::<u64>(), 10);
    assert!(log.overflow.contains_key(&Who::Uid(MAX_KEYS as u32)));
}

#[test]
fn a_forwarded_flood_spends_only_its_own_sources_budget() {
    let (mut log, t0) = (EventLog::default(), Instant::now());
    let packet = |src: &str, interface: &str| Logged {
        interface: interface.to_owned(),
        src: src.parse().expect("ip"),
        dst: "169.254.169.254".parse().expect("ip"),
        proto: 6,
        port: 80,
        prefix: String::new(),
    };
    for _ in 0..10_000 {
        log.record_forward(&packet("10.88.1.2", "ctr1"), Mode::Enforce, t0);
    }
    let admitted = |log: &mut EventLog, src: &str, interface: &str| {
        let p = packet(src, interface);
        let sample = || Sample {
            outcome: Outcome::Deny,
            who: Who::Source(p.src),
            dst: SocketAddr::new(p.dst, p.port),
            process: None,
            interface: Some(p.interface.clone()),
        };
        let interface = Some(p.interface.clone());
        log.admit(
            Outcome::Deny,
            Who::Source(p.src),
            p.dst,
            interface,
            t0,
            sample,
        )
    };
    assert!(
        !admitted(&mut log, "10.88.1.2", "ctr1"),
        "the flood is held back"
    );
    assert!(
        admitted(&mut log, "10.88.2.2", "ctr2"),
        "another source is logged"
    );
    assert!(
        admitted(&mut log, "10.88.1.2", "ctr3"),
        "the same address on another interface is another source"
    );
}

#[test]
fn explains_an_internal_error_and_no_identity() {
    let p = policy();
    let mut d = denial(1000, 1, 80);
    d.reason = RecordReason::InternalError;
    assert_eq!(
        explain_record(&d, &p),
        "the guard could not read its configuration, and fails closed"
    );
    d.reason = RecordReason::NoIdentity;
    assert!(explain_record(&d, &p).starts_with("nobody can be held to account"));
    assert_eq!(
        describe(&d, None),
        "denied connection to 169.254.169.254:80 by pid 1 (curl) with no identity"
    );
}

#[test]
fn a_revocation_says_so_in_words() {
    let mut d = denial(1000, 0, 80);
    d.hook = Hook::Egress;
    d.proto = 6;
    d.revoked = true;
    assert_eq!(
        describe(&d, Some("alice")),
        "denied packet (tcp) to 169.254.169.254:80 from a socket uid 1000 (alice) gid 1000, \
         on a connection an earlier policy let through (revoked)"
    );
}

impl EventLog {
    fn limiter_has(&self, key: &Key) -> bool {
        self.limiter.contains(key)
    }
}
