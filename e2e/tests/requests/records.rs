//! What the request programs leave behind (issue 23, design §6 and §7 rows
//! 19 and 23): a record in the events ring for each refusal and the first
//! requests of a socket, with the kind (IMDSv1, IMDSv2, the token `PUT`),
//! the path as read (the role name included) and the rule; counters by
//! version and verdict; the census `report imdsv1` reads; and never the
//! token. Each case first shows the requests reaching the fake IMDS with
//! nothing recorded (the caller allowed the whole service, no attribution),
//! then guarded.

use std::{collections::HashMap, net::SocketAddr, os::unix::fs::MetadataExt as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use imds_guard::kernel::{
    request_records::{RequestHook, RequestRecord, Version, record_kind},
    requests::REQ_SOCKS_ENV,
};
use imds_guard_common::{entry_flags, kind, req_reason, req_version, verdict};
use imds_guard_e2e::{
    Action, INSTANCE_ID, INSTANCE_ID_PATH, Sandbox, Script, credentials_path, field,
    privileged_or_skip,
};
use serde_json::Value;

use super::{EACCES, JUDGED, addrs, contains, guard, judged, scope};

/// Every record waiting in `ring`: the request records decoded, and the
/// raw bytes of every record (decisions too).
fn drain(ring: &mut RingBuf<MapData>) -> (Vec<RequestRecord>, Vec<Vec<u8>>) {
    let (mut requests, mut raw) = (Vec::new(), Vec::new());
    while let Some(item) = ring.next() {
        raw.push(item.to_vec());
        if record_kind(&item) == Some(kind::REQUEST) {
            requests.push(RequestRecord::decode(&item).expect("a request record decodes"));
        }
    }
    (requests, raw)
}

/// The token the fake IMDS handed out, as the service received it back in
/// a request's token header.
fn tokens(sb: &Sandbox) -> Vec<String> {
    let needle = b"X-aws-ec2-metadata-token: ";
    let mut found = Vec::new();
    for log in sb.imds.received() {
        let mut rest = &log[..];
        while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
            let value = &rest[at + needle.len()..];
            let end = value
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or(value.len());
            found.push(String::from_utf8_lossy(&value[..end]).into_owned());
            rest = &value[end..];
        }
    }
    found
}

/// The id of the sandbox's cgroup, as records and the census name it.
fn cgroup_id(sb: &Sandbox) -> u64 {
    std::fs::metadata(sb.cgroup.path())
        .expect("the test cgroup")
        .ino()
}

/// The destination a record names for a connection to `addr`: a mapped
/// address stays what the IPv6 socket connected to.
fn same_dst(r: &RequestRecord, addr: SocketAddr) -> bool {
    r.dst == addr.ip() && r.port == addr.port()
}

#[test]
fn request_records_name_the_version_path_and_rule_and_never_carry_the_token() {
    if !privileged_or_skip(
        "request_records_name_the_version_path_and_rule_and_never_carry_the_token",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let mut ring = guard.take_events().expect("the events ring");
    // The whole service, nothing recorded: the v1 request and the
    // credentials reach the service, and no request record is made.
    for addr in addrs() {
        let seen = sb.imds.received().len();
        let r = judged(&sb).run(Action::Send(addr, Script::V1ThenV2));
        assert_eq!(r.assert_ok().body.matches(INSTANCE_ID).count(), 2);
        let logs = super::received_since(&sb, seen);
        assert!(contains(&logs[0], INSTANCE_ID_PATH.as_bytes()));
    }
    let (records, _) = drain(&mut ring);
    assert!(records.is_empty(), "recorded unjudged: {records:?}");
    let before = guard.request_counters().expect("request counters");

    // IMDSv2 required (row 19): the v1 request refused and recorded as
    // such; the token PUT and the v2 requests let through and recorded.
    scope(&mut guard, &policy, generation, entry_flags::V2_REQUIRED);
    for addr in addrs() {
        judged(&sb)
            .run(Action::Send(addr, Script::V1ThenV2))
            .assert_errno(EACCES);
        let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
        assert!(r.assert_ok().body.contains(sb.imds.credentials_body()));
        let (records, _) = drain(&mut ring);
        let said: Vec<_> = records
            .iter()
            .map(|r| (r.outcome.as_str(), r.version, r.request_line(), r.reason))
            .collect();
        assert_eq!(
            said,
            [
                (
                    "deny",
                    Version::V1,
                    format!("GET {INSTANCE_ID_PATH}"),
                    req_reason::V1_REFUSED
                ),
                (
                    "allow",
                    Version::TokenPut,
                    "PUT /latest/api/token".to_owned(),
                    req_reason::NONE
                ),
                (
                    "allow",
                    Version::V2,
                    format!("GET {INSTANCE_ID_PATH}"),
                    req_reason::NONE
                ),
                (
                    "allow",
                    Version::V2,
                    format!("GET {}", credentials_path()),
                    req_reason::NONE
                ),
            ],
            "{addr}"
        );
        for r in &records {
            assert!(same_dst(r, addr), "{addr}: {r:?}");
            assert_eq!((r.uid, r.gid), (JUDGED, JUDGED), "{r:?}");
            assert_eq!(r.cgroup_id, cgroup_id(&sb), "{r:?}");
            assert_ne!(r.pid, 0, "{r:?}");
            assert_eq!(r.sender_pid, r.pid, "the connector sent: {r:?}");
        }
    }

    // Judged by rules: the rule that let each request through, and the
    // path of the one refused, the role name included.
    scope(
        &mut guard,
        &policy,
        generation,
        entry_flags::JUDGE | entry_flags::V2_REQUIRED,
    );
    for addr in addrs() {
        judged(&sb)
            .run(Action::Send(addr, Script::Credentials))
            .assert_errno(EACCES);
        let (records, _) = drain(&mut ring);
        let said: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.outcome.as_str(),
                    r.version,
                    r.path.clone(),
                    r.rule,
                    r.reason,
                )
            })
            .collect();
        assert_eq!(
            said,
            [
                (
                    "allow",
                    Version::TokenPut,
                    "/latest/api/token".to_owned(),
                    Some(1),
                    req_reason::NONE
                ),
                (
                    "allow",
                    Version::V2,
                    INSTANCE_ID_PATH.to_owned(),
                    Some(2),
                    req_reason::NONE
                ),
                (
                    "deny",
                    Version::V2,
                    credentials_path(),
                    None,
                    req_reason::NOT_IN_RULES
                ),
            ],
            "{addr}"
        );
        assert!(records.iter().all(|r| r.ruleset == Some(1)), "{records:?}");
    }

    // Counted by version and verdict (metrics), beside the records: per
    // address one v1 refused, two token PUTs, three v2 let through, one v2
    // refused.
    let after = guard.request_counters().expect("request counters");
    let delta = |version: u8, refused: usize| {
        after.by_version[usize::from(version)][refused]
            - before.by_version[usize::from(version)][refused]
    };
    assert_eq!(delta(req_version::V1, 1), 3);
    assert_eq!(delta(req_version::V1, 0), 0);
    assert_eq!(delta(req_version::TOKEN_PUT, 0), 6);
    assert_eq!(delta(req_version::V2, 0), 9);
    assert_eq!(delta(req_version::V2, 1), 3);
    assert_eq!(after.by_reason[usize::from(req_reason::V1_REFUSED)], 3);
    assert_eq!(after.by_reason[usize::from(req_reason::NOT_IN_RULES)], 3);
    assert_eq!(after.records_lost, 0);

    // The census: the judged caller, in the test's cgroup, by kind.
    let census = guard.census().expect("census");
    let count = |version: u8, v: u8| {
        census
            .rows
            .iter()
            .filter(|r| {
                r.uid == JUDGED
                    && r.cgroup_id == cgroup_id(&sb)
                    && r.version == version
                    && r.verdict == v
            })
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!(count(req_version::V1, verdict::DENIED), 3);
    assert_eq!(count(req_version::V2, verdict::ALLOWED), 9);
    assert_eq!(count(req_version::TOKEN_PUT, verdict::ALLOWED), 6);

    // Row 23: the token the service handed out and got back is in no
    // record's bytes.
    let tokens = tokens(&sb);
    assert!(!tokens.is_empty(), "the service received no token header");
    check_no_token(&mut ring, &sb, &tokens);
}

/// Makes one more v2 request with every token `tokens` holds in flight,
/// then checks that no byte of the ring holds any of them.
fn check_no_token(ring: &mut RingBuf<MapData>, sb: &Sandbox, tokens: &[String]) {
    let r = judged(sb).run(Action::Send(addrs()[0], Script::V1ThenV2));
    assert!(!r.ok, "{r:?}");
    let (_, raw) = drain(ring);
    assert!(!raw.is_empty());
    for bytes in &raw {
        for token in tokens {
            assert!(
                !contains(bytes, token.as_bytes()),
                "the token {token:?} is in a record"
            );
        }
    }
}

#[test]
fn a_socket_records_its_first_four_requests_and_counts_them_all() {
    if !privileged_or_skip("a_socket_records_its_first_four_requests_and_counts_them_all") {
        return;
    }
    let sb = Sandbox::new();
    let (mut guard, policy, generation) = guard(&sb);
    let mut ring = guard.take_events().expect("the events ring");
    scope(&mut guard, &policy, generation, entry_flags::V2_REQUIRED);
    let before = guard.request_counters().expect("request counters");
    let addr = addrs()[0];
    let mut held = judged(&sb).hold(addr);
    // Two IMDSv2 flows on one connection (the token, the listing, the
    // role's listing, the role): eight requests.
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    assert_eq!(held.fetch().assert_ok().body, sb.imds.credentials_body());
    drop(held);
    let (records, _) = drain(&mut ring);
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(records.iter().all(|r| r.outcome.as_str() == "allow"));
    let after = guard.request_counters().expect("request counters");
    let allowed = |c: &imds_guard::kernel::usage::RequestCounters| {
        c.by_version[usize::from(req_version::V2)][0]
            + c.by_version[usize::from(req_version::TOKEN_PUT)][0]
    };
    assert_eq!(allowed(&after) - allowed(&before), 8);
}

/// A policy as an operator writes it: root the whole service; `nobody`
/// some requests, IMDSv1 still allowed (a legacy service); uid 1001 the
/// same requests, IMDSv2 required.
const CENSUS_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0]\n\
    [requests.legacy]\nuids = [65534]\nimdsv2 = \"optional\"\nrules = [\n\
    \"PUT /latest/api/token\",\n\"GET /latest/meta-data/instance-id\",\n]\n\
    [requests.modern]\nuids = [1001]\nimdsv2 = \"required\"\nrules = [\n\
    \"PUT /latest/api/token\",\n\"GET /latest/meta-data/instance-id\",\n]\n";
const NOBODY: u32 = 65534;

fn request_records(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| field(r, "hook").and_then(Value::as_str) == Some("request"))
        .collect()
}

pub(super) fn s<'a>(r: &'a Value, name: &str) -> Option<&'a str> {
    field(r, name).and_then(Value::as_str)
}

#[test]
fn the_agent_logs_request_records_and_report_imdsv1_names_the_v1_caller_with_the_agent_gone() {
    if !privileged_or_skip(
        "the_agent_logs_request_records_and_report_imdsv1_names_the_v1_caller_with_the_agent_gone",
    ) {
        return;
    }
    let sb = Sandbox::with_agent(CENSUS_POLICY);
    // Nothing counted yet: the report says so, and the status line too.
    let out = sb.cli(&["report", "imdsv1"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("No caller has sent an IMDSv1 request"),
        "{text}"
    );
    let status = String::from_utf8_lossy(&sb.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("callers still using IMDSv1: none seen since "),
        "{status}"
    );

    let addr = addrs()[0];
    // The legacy caller: IMDSv1 answered, then IMDSv2.
    let r = sb
        .probe_as(NOBODY, NOBODY)
        .run(Action::Send(addr, Script::V1ThenV2));
    assert_eq!(r.assert_ok().body.matches(INSTANCE_ID).count(), 2, "{r:?}");
    // The modern caller: only IMDSv2; the credentials refused.
    let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
    r.assert_errno(EACCES);
    assert!(r.body.contains(INSTANCE_ID), "{r:?}");

    // The records: kind, path, rule as written and its table, verdict.
    let agent = sb.agent();
    let found = agent.wait_for(
        |r| {
            field(r, "hook").and_then(Value::as_str) == Some("request")
                && field(r, "uid").and_then(Value::as_u64) == Some(u64::from(JUDGED))
                && s(r, "event") == Some("deny")
        },
        Duration::from_secs(10),
    );
    let refused = found.unwrap_or_else(|| panic!("no refusal record: {}", agent.output()));
    assert_eq!(
        s(&refused, "path"),
        Some(credentials_path().as_str()),
        "{}",
        agent.output()
    );
    assert_eq!(s(&refused, "version"), Some("v2"));
    assert_eq!(s(&refused, "method"), Some("GET"));
    assert_eq!(s(&refused, "table"), Some("requests.modern"));
    assert!(
        s(&refused, "reason").is_some_and(|w| w.contains("no rule")),
        "{refused}"
    );
    let records = agent.records();
    let requests = request_records(&records);
    let by_nobody: HashMap<(&str, &str), &Value> = requests
        .iter()
        .filter(|r| field(r, "uid").and_then(Value::as_u64) == Some(u64::from(NOBODY)))
        .filter_map(|r| Some(((s(r, "version")?, s(r, "path")?), *r)))
        .collect();
    let v1 = by_nobody
        .get(&("v1", INSTANCE_ID_PATH))
        .unwrap_or_else(|| panic!("no v1 record of nobody: {}", agent.output()));
    assert_eq!(s(v1, "event"), Some("allow"));
    assert_eq!(s(v1, "rule"), Some("GET /latest/meta-data/instance-id"));
    assert_eq!(s(v1, "table"), Some("requests.legacy"));
    assert_eq!(s(v1, "user"), Some("nobody"));
    assert!(
        by_nobody.contains_key(&("token_put", "/latest/api/token"))
            && by_nobody.contains_key(&("v2", INSTANCE_ID_PATH)),
        "{}",
        agent.output()
    );
    // Row 23: no line of the agent's holds the token.
    let tokens = tokens(&sb);
    assert!(!tokens.is_empty());
    let output = agent.output();
    for token in &tokens {
        assert!(!output.contains(token.as_str()), "the token is in the log");
    }

    // The census names the v1 caller, by cgroup and user, not the v2 one;
    // with the agent killed too (read from the pins).
    let check = |sb: &Sandbox| {
        let out = sb.cli(&["report", "imdsv1"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cgroup = sb
            .cgroup
            .path()
            .strip_prefix(imds_guard_e2e::cgroup2_root())
            .expect("below the root")
            .display()
            .to_string();
        let line = text
            .lines()
            .find(|l| l.contains("as nobody (uid 65534)"))
            .unwrap_or_else(|| panic!("nobody is not named: {text}"));
        assert!(line.contains(&format!("cgroup /{cgroup} ")), "{line}");
        assert!(line.contains("IMDSv1 1 (1 allowed, 0 refused)"), "{line}");
        assert!(!text.contains("uid 1001"), "the v2 caller is named: {text}");
        let out = sb.cli(&["report", "imdsv1", "--json"]);
        let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let callers = json["callers"].as_array().expect("callers");
        assert_eq!(callers.len(), 1, "{json}");
        assert_eq!(callers[0]["uid"], NOBODY);
        assert_eq!(callers[0]["cgroup_id"], cgroup_id(sb));
        assert_eq!(json["others"], 1, "{json}");
        let status = String::from_utf8_lossy(&sb.cli(&["status"]).stdout).into_owned();
        assert!(
            status.contains("callers still using IMDSv1: 1 (imds-guard report imdsv1"),
            "{status}"
        );
    };
    check(&sb);
    agent.kill();
    check(&sb);
}

#[test]
fn a_socket_the_full_sockhash_cannot_take_is_recorded_as_refused_by_sockops() {
    if !privileged_or_skip(
        "a_socket_the_full_sockhash_cannot_take_is_recorded_as_refused_by_sockops",
    ) {
        return;
    }
    let sb = Sandbox::new();
    // SAFETY: the suite runs one test at a time; the guard reads it as it
    // loads, and it is removed at once.
    unsafe { std::env::set_var(REQ_SOCKS_ENV, "1") };
    let (mut guard, policy, generation) = guard(&sb);
    // SAFETY: as above.
    unsafe { std::env::remove_var(REQ_SOCKS_ENV) };
    let mut ring = guard.take_events().expect("the events ring");
    let addr = addrs()[0];
    // Whole service: a second connection beside a held one is answered,
    // and nothing is recorded.
    let held = judged(&sb).hold(addr);
    let r = judged(&sb).run(Action::Send(addr, Script::V1ThenV2));
    assert_eq!(r.assert_ok().body.matches(INSTANCE_ID).count(), 2);
    drop(held);
    let (records, _) = drain(&mut ring);
    assert!(records.is_empty(), "{records:?}");
    // Judged: one held connection fills the sockhash; the next one's
    // request never leaves, and the socket is recorded as refused by
    // `sock_ops`, the sockhash full.
    scope(&mut guard, &policy, generation, entry_flags::V2_REQUIRED);
    let held = judged(&sb).hold(addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while guard.judged_sockets().expect("sockhash") < 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = sb.imds.received().len();
    let r = judged(&sb).run(Action::Send(addr, Script::Credentials));
    assert!(!r.ok, "{r:?}");
    let logs = super::received_since(&sb, seen);
    assert!(
        logs[0].is_empty(),
        "{:?} left",
        String::from_utf8_lossy(&logs[0])
    );
    let (records, _) = drain(&mut ring);
    let full: Vec<_> = records
        .iter()
        .filter(|r| r.hook == RequestHook::Sockops)
        .collect();
    assert_eq!(full.len(), 1, "{records:?}");
    let r = full[0];
    assert_eq!(
        (r.outcome.as_str(), r.reason, r.version),
        ("deny", req_reason::SOCKHASH_FULL, Version::Unparsed)
    );
    assert!(same_dst(r, addr), "{r:?}");
    assert_eq!((r.uid, r.sender_pid), (JUDGED, 0), "{r:?}");
    assert_ne!(r.pid, 0, "the connector is named: {r:?}");
    let counters = guard.request_counters().expect("request counters");
    assert_eq!(
        counters.by_reason[usize::from(req_reason::SOCKHASH_FULL)],
        1
    );
    drop(held);
}
