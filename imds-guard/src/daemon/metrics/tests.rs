use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use imds_guard_common::{counter, hook, req_reason, req_version};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
    time::timeout,
};

use super::{
    Enforcing, Metrics, ReloadOutcome,
    http::{LIMITS, Limits, serve_with},
    parse_listen, serve,
};
use crate::{
    kernel::{Counters, classify::CgroupFill, forward::ForwardCounters, usage::RequestCounters},
    policy::Mode,
};

fn counters(by_hook: [[u64; counter::KINDS as usize]; hook::COUNT as usize]) -> Counters {
    Counters {
        allowed: by_hook.iter().map(|h| h[counter::ALLOWED as usize]).sum(),
        denied: by_hook.iter().map(|h| h[counter::DENIED as usize]).sum(),
        audited: by_hook.iter().map(|h| h[counter::AUDITED as usize]).sum(),
        events_lost: by_hook
            .iter()
            .map(|h| h[counter::EVENTS_LOST as usize])
            .sum(),
        errors: by_hook.iter().map(|h| h[counter::ERRORS as usize]).sum(),
        by_hook,
    }
}

/// `[allowed, denied, audited, events_lost, errors]` per hook, each number
/// distinct enough to show where it lands.
const KNOWN: [[u64; 5]; 5] = [
    [10, 2, 0, 1, 0],
    [3, 0, 0, 0, 0],
    [0, 5, 0, 0, 1],
    [0, 0, 7, 4, 0],
    [0, 3, 0, 0, 0],
];

const EXPECTED: &str = r#"# HELP imds_guard_build_info The running agent's version; always 1.
# TYPE imds_guard_build_info gauge
imds_guard_build_info{version="@VERSION@"} 1
# HELP imds_guard_enforcing 1 while the programs are attached and deciding by the policy, in the mode imds_guard_mode shows (audit mode included); 0 otherwise.
# TYPE imds_guard_enforcing gauge
imds_guard_enforcing 1
# HELP imds_guard_mode 1 for the mode the programs decide in: enforce denies, audit only records would-deny; all 0 while not enforcing.
# TYPE imds_guard_mode gauge
imds_guard_mode{mode="enforce"} 1
imds_guard_mode{mode="audit"} 0
# HELP imds_guard_fallback 1 while the agent's fallback policy is in force because the configured one could not be used at start; 0 otherwise.
# TYPE imds_guard_fallback gauge
imds_guard_fallback 0
# HELP imds_guard_policy_info The digest of the policy in force; always 1.
# TYPE imds_guard_policy_info gauge
imds_guard_policy_info{digest="sha256:0123abcd"} 1
# HELP imds_guard_decisions_total Connections and datagrams to a protected destination, by verdict and hook; audited ones would have been denied and went through because the mode is audit.
# TYPE imds_guard_decisions_total counter
imds_guard_decisions_total{verdict="allowed",hook="connect4"} 10
imds_guard_decisions_total{verdict="allowed",hook="connect6"} 3
imds_guard_decisions_total{verdict="allowed",hook="sendmsg4"} 0
imds_guard_decisions_total{verdict="allowed",hook="sendmsg6"} 0
imds_guard_decisions_total{verdict="allowed",hook="egress"} 0
imds_guard_decisions_total{verdict="denied",hook="connect4"} 2
imds_guard_decisions_total{verdict="denied",hook="connect6"} 0
imds_guard_decisions_total{verdict="denied",hook="sendmsg4"} 5
imds_guard_decisions_total{verdict="denied",hook="sendmsg6"} 0
imds_guard_decisions_total{verdict="denied",hook="egress"} 3
imds_guard_decisions_total{verdict="audited",hook="connect4"} 0
imds_guard_decisions_total{verdict="audited",hook="connect6"} 0
imds_guard_decisions_total{verdict="audited",hook="sendmsg4"} 0
imds_guard_decisions_total{verdict="audited",hook="sendmsg6"} 7
imds_guard_decisions_total{verdict="audited",hook="egress"} 0
# HELP imds_guard_events_lost_total Decision events dropped because the ring buffer was full, by hook; the decisions are still counted.
# TYPE imds_guard_events_lost_total counter
imds_guard_events_lost_total{hook="connect4"} 1
imds_guard_events_lost_total{hook="connect6"} 0
imds_guard_events_lost_total{hook="sendmsg4"} 0
imds_guard_events_lost_total{hook="sendmsg6"} 4
imds_guard_events_lost_total{hook="egress"} 0
# HELP imds_guard_internal_errors_total Decisions the programs could not make by the policy, by hook; each was denied.
# TYPE imds_guard_internal_errors_total counter
imds_guard_internal_errors_total{hook="connect4"} 0
imds_guard_internal_errors_total{hook="connect6"} 0
imds_guard_internal_errors_total{hook="sendmsg4"} 1
imds_guard_internal_errors_total{hook="sendmsg6"} 0
imds_guard_internal_errors_total{hook="egress"} 0
# HELP imds_guard_forward_guarded 1 while the forward table drops forwarded packets to protected addresses (or audits them); 0 while the forward path is open.
# TYPE imds_guard_forward_guarded gauge
imds_guard_forward_guarded 1
# HELP imds_guard_forward_packets_total Forwarded packets to a protected destination the forward table dropped, or would have dropped in audit mode.
# TYPE imds_guard_forward_packets_total counter
imds_guard_forward_packets_total{verdict="dropped"} 12
imds_guard_forward_packets_total{verdict="audited"} 0
# HELP imds_guard_reloads_total Policy reloads by outcome: applied; invalid (did not validate, the policy in force is kept); failed (could not be written into the kernel).
# TYPE imds_guard_reloads_total counter
imds_guard_reloads_total{outcome="applied"} 2
imds_guard_reloads_total{outcome="invalid"} 1
imds_guard_reloads_total{outcome="failed"} 0
# HELP imds_guard_cgroup_map_entries Cgroups the classification map has a rule for.
# TYPE imds_guard_cgroup_map_entries gauge
imds_guard_cgroup_map_entries 300
# HELP imds_guard_cgroup_map_capacity The classification map's size, in cgroups.
# TYPE imds_guard_cgroup_map_capacity gauge
imds_guard_cgroup_map_capacity 131072
# HELP imds_guard_cgroup_map_creator_quota Entries one creator other than root on the host may have; all such creators together may have half the map.
# TYPE imds_guard_cgroup_map_creator_quota gauge
imds_guard_cgroup_map_creator_quota 8192
# HELP imds_guard_cgroups_waiting Cgroups without a rule (refused, so unclassified) that the agent classifies as soon as there is room.
# TYPE imds_guard_cgroups_waiting gauge
imds_guard_cgroups_waiting 6
# HELP imds_guard_cgroups_refused_total New cgroups the kernel left without a rule, by why: the map was full, the creator had used up its share, or the path could not be read or was too deep.
# TYPE imds_guard_cgroups_refused_total counter
imds_guard_cgroups_refused_total{why="full"} 1
imds_guard_cgroups_refused_total{why="over_quota"} 5
imds_guard_cgroups_refused_total{why="unclassified"} 2
# HELP imds_guard_cgroup_events_lost_total Cgroup events dropped because their ring buffer was full; the cgroups were classified all the same, and the agent lists the hierarchy again.
# TYPE imds_guard_cgroup_events_lost_total counter
imds_guard_cgroup_events_lost_total 17
# HELP imds_guard_cgroup_rescans_total Times the agent listed the cgroup hierarchy again after lost events.
# TYPE imds_guard_cgroup_rescans_total counter
imds_guard_cgroup_rescans_total 3
# HELP imds_guard_requests_total Requests to a protected address judged by the request programs (callers allowed some requests, IMDSv2 required, or attributed), by kind (v1: no token header, v2: with it, token_put: PUT /latest/api/token, unparsed: not read as a canonical request) and verdict.
# TYPE imds_guard_requests_total counter
imds_guard_requests_total{version="unparsed",verdict="allowed"} 0
imds_guard_requests_total{version="unparsed",verdict="refused"} 0
imds_guard_requests_total{version="v1",verdict="allowed"} 4
imds_guard_requests_total{version="v1",verdict="refused"} 2
imds_guard_requests_total{version="v2",verdict="allowed"} 9
imds_guard_requests_total{version="v2",verdict="refused"} 0
imds_guard_requests_total{version="token_put",verdict="allowed"} 3
imds_guard_requests_total{version="token_put",verdict="refused"} 0
# HELP imds_guard_request_refusals_total Requests refused, by reason.
# TYPE imds_guard_request_refusals_total counter
imds_guard_request_refusals_total{reason="method"} 0
imds_guard_request_refusals_total{reason="h2_preface"} 0
imds_guard_request_refusals_total{reason="target_form"} 0
imds_guard_request_refusals_total{reason="path_byte"} 0
imds_guard_request_refusals_total{reason="percent"} 0
imds_guard_request_refusals_total{reason="query"} 0
imds_guard_request_refusals_total{reason="param"} 0
imds_guard_request_refusals_total{reason="empty_segment"} 0
imds_guard_request_refusals_total{reason="dot_segment"} 0
imds_guard_request_refusals_total{reason="non_ascii"} 0
imds_guard_request_refusals_total{reason="control"} 0
imds_guard_request_refusals_total{reason="version"} 0
imds_guard_request_refusals_total{reason="bare_lf"} 0
imds_guard_request_refusals_total{reason="bare_cr"} 0
imds_guard_request_refusals_total{reason="folded"} 0
imds_guard_request_refusals_total{reason="header_name"} 0
imds_guard_request_refusals_total{reason="header_value"} 0
imds_guard_request_refusals_total{reason="content_length"} 0
imds_guard_request_refusals_total{reason="transfer_encoding"} 0
imds_guard_request_refusals_total{reason="upgrade"} 0
imds_guard_request_refusals_total{reason="expect"} 0
imds_guard_request_refusals_total{reason="token_repeated"} 0
imds_guard_request_refusals_total{reason="token_empty"} 0
imds_guard_request_refusals_total{reason="trailing"} 0
imds_guard_request_refusals_total{reason="line_too_long"} 0
imds_guard_request_refusals_total{reason="path_too_long"} 0
imds_guard_request_refusals_total{reason="header_too_long"} 0
imds_guard_request_refusals_total{reason="too_many_headers"} 0
imds_guard_request_refusals_total{reason="head_too_long"} 0
imds_guard_request_refusals_total{reason="incomplete"} 0
imds_guard_request_refusals_total{reason="not_in_rules"} 0
imds_guard_request_refusals_total{reason="v1_refused"} 2
imds_guard_request_refusals_total{reason="stale"} 0
imds_guard_request_refusals_total{reason="tainted"} 0
imds_guard_request_refusals_total{reason="write_pending"} 0
imds_guard_request_refusals_total{reason="sockhash_full"} 0
imds_guard_request_refusals_total{reason="ulp"} 0
imds_guard_request_refusals_total{reason="poisoned"} 0
imds_guard_request_refusals_total{reason="pull_failed"} 0
imds_guard_request_refusals_total{reason="memory"} 0
imds_guard_request_refusals_total{reason="fast_open"} 0
imds_guard_request_refusals_total{reason="repair"} 0
imds_guard_request_refusals_total{reason="not_tcp"} 0
imds_guard_request_refusals_total{reason="not_in_sockhash"} 0
imds_guard_request_refusals_total{reason="not_kept"} 0
# HELP imds_guard_request_records_lost_total Request records dropped because the ring buffer was full; the requests are still judged and counted.
# TYPE imds_guard_request_records_lost_total counter
imds_guard_request_records_lost_total 1
"#;

fn known() -> Metrics {
    let m = Metrics::new();
    m.set_counters(&counters(KNOWN));
    m.reload(ReloadOutcome::Applied);
    m.reload(ReloadOutcome::Invalid);
    m.reload(ReloadOutcome::Applied);
    m.set_enforcing(Enforcing::Active(Mode::Enforce));
    m.set_policy_digest("sha256:0123abcd");
    m.set_forward(
        Some(ForwardCounters {
            dropped: 12,
            audited: 0,
        }),
        true,
    );
    m.set_cgroups(
        CgroupFill {
            entries: 300,
            capacity: 131_072,
            quota: 8192,
            shared: 65_536,
            pending: 6,
            full: 1,
            over_quota: 5,
            unclassified: 2,
            events_lost: 17,
        },
        3,
    );
    let mut requests = RequestCounters::default();
    requests.by_version[usize::from(req_version::V1)] = [4, 2];
    requests.by_version[usize::from(req_version::V2)] = [9, 0];
    requests.by_version[usize::from(req_version::TOKEN_PUT)] = [3, 0];
    requests.by_reason[usize::from(req_reason::V1_REFUSED)] = 2;
    requests.records_lost = 1;
    m.set_request_counters(&requests);
    m
}

#[test]
fn renders_a_known_state_exactly() {
    let expected = EXPECTED.replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    assert_eq!(known().render(), expected);
}

#[test]
fn fresh_metrics_are_zero_inactive_and_without_policy_info() {
    let text = Metrics::new().render();
    for line in [
        "imds_guard_enforcing 0\n",
        "imds_guard_mode{mode=\"enforce\"} 0\n",
        "imds_guard_mode{mode=\"audit\"} 0\n",
        "imds_guard_decisions_total{verdict=\"denied\",hook=\"sendmsg6\"} 0\n",
        "imds_guard_reloads_total{outcome=\"failed\"} 0\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(!text.contains("imds_guard_policy_info"), "{text}");
}

#[test]
fn audit_mode_is_enforcing_with_mode_audit_and_inactive_clears_both() {
    let m = Metrics::new();
    m.set_enforcing(Enforcing::Active(Mode::Audit));
    let text = m.render();
    assert!(text.contains("imds_guard_enforcing 1\n"), "{text}");
    assert!(
        text.contains("imds_guard_mode{mode=\"enforce\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("imds_guard_mode{mode=\"audit\"} 1\n"),
        "{text}"
    );

    m.set_enforcing(Enforcing::Inactive);
    let text = m.render();
    assert!(text.contains("imds_guard_enforcing 0\n"), "{text}");
    assert!(
        text.contains("imds_guard_mode{mode=\"audit\"} 0\n"),
        "{text}"
    );
}

#[test]
fn label_values_are_escaped_and_the_digest_replaced() {
    let m = Metrics::new();
    m.set_policy_digest("old");
    m.set_policy_digest("a\"b\\c\nd");
    let text = m.render();
    assert!(
        text.contains("imds_guard_policy_info{digest=\"a\\\"b\\\\c\\nd\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("\"old\""), "{text}");
}

/// A structural check of the exposition format, independent of the pinned
/// text: every sample belongs to the family whose HELP and TYPE precede it,
/// names are valid and unique, counters end in `_total`, values parse.
#[test]
fn exposition_is_well_formed() {
    let text = known().render();
    let valid_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut families = HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut pending_help: Option<String> = None;
    let mut series = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(families.insert(name.to_owned()), "family {name} twice");
            pending_help = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert_eq!(pending_help.take().as_deref(), Some(name), "{line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            let (family, _) = current.as_ref().expect("sample before any TYPE");
            let (key, value) = line.rsplit_once(' ').expect("sample has a value");
            let name = key.split_once('{').map_or(key, |(n, _)| n);
            assert_eq!(name, family, "{line}");
            if let Some(labels) = key.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels
                        .strip_prefix('{')
                        .and_then(|l| l.strip_suffix('}'))
                        .expect("labels in braces");
                    for pair in inner.split(',') {
                        let (label, v) = pair.split_once('=').expect("label=value");
                        assert!(valid_name(label), "{line}");
                        assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                    }
                }
            }
            value.parse::<f64>().expect("numeric value");
            assert!(series.insert(key.to_owned()), "series {key} twice");
        }
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn parse_listen_accepts() {
    for (input, want) in [
        ("9100", "127.0.0.1:9100"),
        ("65535", "127.0.0.1:65535"),
        ("127.0.0.1:9100", "127.0.0.1:9100"),
        ("0.0.0.0:9100", "0.0.0.0:9100"),
        ("10.1.2.3:1", "10.1.2.3:1"),
        ("[::1]:9100", "[::1]:9100"),
        ("[::]:9100", "[::]:9100"),
        ("[fd00:ec2::254]:80", "[fd00:ec2::254]:80"),
        ("localhost:9100", "127.0.0.1:9100"),
        ("LocalHost:9100", "127.0.0.1:9100"),
    ] {
        let want: SocketAddr = want.parse().expect("valid");
        match parse_listen(input) {
            Ok(got) => assert_eq!(got, want, "{input}"),
            Err(e) => panic!("{input}: {e}"),
        }
    }
}

#[test]
fn parse_listen_rejects_precisely() {
    for (input, want) in [
        ("", "expected PORT, IP:PORT, [IPV6]:PORT or localhost:PORT"),
        (
            "metrics",
            "expected PORT, IP:PORT, [IPV6]:PORT or localhost:PORT",
        ),
        (
            "0",
            "port 0 would listen on a random port no scraper can find; give a fixed port",
        ),
        (
            "127.0.0.1:0",
            "port 0 would listen on a random port no scraper can find; give a fixed port",
        ),
        ("65536", "port 65536 is out of range 1-65535"),
        (
            "99999999999999999999",
            "port 99999999999999999999 is out of range 1-65535",
        ),
        ("127.0.0.1", "missing port: write 127.0.0.1:PORT"),
        (
            "::1",
            "an IPv6 address takes brackets and a port: write [::1]:PORT",
        ),
        ("[::1]", "missing port: write [::1]:PORT"),
        ("localhost", "missing port: write localhost:PORT"),
        ("127.0.0.1:", "`` is not a port number"),
        ("127.0.0.1:http", "`http` is not a port number"),
        ("127.0.0.1:+80", "`+80` is not a port number"),
        ("127.0.0.1: 80", "` 80` is not a port number"),
        (
            ":9100",
            "missing address: write 127.0.0.1:9100 for loopback only, 0.0.0.0:9100 for every interface",
        ),
        // A valid address in full, not `::1` and port 9100.
        (
            "::1:9100",
            "an IPv6 address takes brackets and a port: write [::1:9100]:PORT",
        ),
        (
            "fd00:ec2::254::80",
            "IPv6 addresses go in brackets: [IPV6]:PORT",
        ),
        (
            "[::1:9100",
            "expected PORT, IP:PORT, [IPV6]:PORT or localhost:PORT",
        ),
        (
            "[::1]9100",
            "expected PORT, IP:PORT, [IPV6]:PORT or localhost:PORT",
        ),
        ("[127.0.0.1]:9100", "`127.0.0.1` is not an IPv6 address"),
        (
            "example.com:9100",
            "`example.com` is not an IP address (host names other than localhost are not resolved)",
        ),
        (
            "127.1:9100",
            "`127.1` is not an IP address (host names other than localhost are not resolved)",
        ),
        (
            " 9100",
            "expected PORT, IP:PORT, [IPV6]:PORT or localhost:PORT",
        ),
    ] {
        match parse_listen(input) {
            Ok(addr) => panic!("{input:?} accepted as {addr}"),
            Err(e) => assert_eq!(e.to_string(), want, "{input:?}"),
        }
    }
}

/// Starts a server on an ephemeral loopback port.
async fn start(metrics: Arc<Metrics>, limits: Limits) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(serve_with(listener, metrics, limits));
    (addr, server)
}

/// Reads to the end (the server closes), failing the test rather than
/// hanging if it does not.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("server closed the connection in time")
        .expect("read the response");
    String::from_utf8(buf).expect("utf-8 response")
}

async fn fetch(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send request");
    read_all(&mut stream).await
}

/// Status line, headers (one string, lines ending in CRLF), body.
fn split(response: &str) -> (&str, &str, &str) {
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status, headers, body)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

#[tokio::test]
async fn serves_metrics_and_answers_the_rest() {
    let metrics = Arc::new(Metrics::new());
    let mut by_hook = [[0; 5]; 5];
    by_hook[hook::CONNECT4 as usize][counter::ALLOWED as usize] = 42;
    metrics.set_counters(&counters(by_hook));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    // The public entry point, with the production limits.
    let server = tokio::spawn(serve(listener, Arc::clone(&metrics)));

    let response = fetch(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (status, headers, body) = split(&response);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(headers, "Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(header(headers, "Connection"), Some("close"));
    assert_eq!(
        header(headers, "Content-Length"),
        Some(&*body.len().to_string())
    );
    assert!(
        body.contains("imds_guard_decisions_total{verdict=\"allowed\",hook=\"connect4\"} 42\n"),
        "{body}"
    );
    assert_eq!(body, metrics.render());

    let response = fetch(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (status, headers, body) = split(&response);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(headers, "Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(body.contains("<a href=\"/metrics\">"), "{body}");

    let response = fetch(addr, b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (status, _, body) = split(&response);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(body, "not found\n");

    let response = fetch(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let (status, headers, _) = split(&response);
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(header(headers, "Allow"), Some("GET, HEAD"));

    let response = fetch(addr, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (status, headers, body) = split(&response);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "", "HEAD has no body");
    assert_eq!(
        header(headers, "Content-Length"),
        Some(&*metrics.render().len().to_string())
    );

    // HTTP/1.0, a query string and bare LF line ends are all fine.
    let response = fetch(addr, b"GET /metrics?format=text HTTP/1.0\n\n").await;
    let (status, _, body) = split(&response);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, metrics.render());

    let response = fetch(addr, b"hello\r\n\r\n").await;
    assert_eq!(split(&response).0, "HTTP/1.1 400 Bad Request");
    let response = fetch(addr, b"GET / HTTP/2.0\r\n\r\n").await;
    assert_eq!(
        split(&response).0,
        "HTTP/1.1 505 HTTP Version Not Supported"
    );

    server.abort();
}

#[tokio::test]
async fn a_slow_client_times_out_while_others_are_served() {
    let limits = Limits {
        io: Duration::from_millis(300),
        linger: Duration::from_millis(100),
        ..LIMITS
    };
    let (addr, server) = start(Arc::new(Metrics::new()), limits).await;

    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc")
        .await
        .expect("send half a request");

    let response = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&response).0, "HTTP/1.1 200 OK");

    let response = read_all(&mut slow).await;
    let (status, _, body) = split(&response);
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert_eq!(body, "request timeout\n");

    let response = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&response).0, "HTTP/1.1 200 OK", "still serving");
    server.abort();
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let limits = Limits {
        linger: Duration::from_millis(100),
        ..LIMITS
    };
    let (addr, server) = start(Arc::new(Metrics::new()), limits).await;
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    request.resize(LIMITS.request + 100, b'a');
    let response = fetch(addr, &request).await;
    assert_eq!(
        split(&response).0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    // A head of exactly the limit, terminator included, is served.
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    request.resize(LIMITS.request - 4, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let response = fetch(addr, &request).await;
    assert_eq!(split(&response).0, "HTTP/1.1 200 OK");
    server.abort();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let limits = Limits {
        connections: 2,
        io: Duration::from_secs(30),
        ..LIMITS
    };
    let (addr, server) = start(Arc::new(Metrics::new()), limits).await;

    let idle1 = TcpStream::connect(addr).await.expect("connect");
    let _idle2 = TcpStream::connect(addr).await.expect("connect");
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("send request");
    let mut byte = [0; 1];
    assert!(
        timeout(Duration::from_millis(300), third.read(&mut byte))
            .await
            .is_err(),
        "served beyond the limit of 2 connections"
    );

    // The first idle client leaves; its slot goes to the waiting one.
    drop(idle1);
    let response = read_all(&mut third).await;
    assert_eq!(split(&response).0, "HTTP/1.1 200 OK");
    server.abort();
}

#[test]
fn a_refused_address_family_names_the_units_setting() {
    let addr: SocketAddr = "127.0.0.1:9100".parse().expect("addr");
    let refused = std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
    let hint = super::sandbox_hint(&refused, addr);
    assert!(hint.contains("AF_INET sockets"), "{hint}");
    assert!(
        hint.contains("RestrictAddressFamilies=AF_INET AF_INET6"),
        "{hint}"
    );
    let in_use = std::io::Error::from_raw_os_error(libc::EADDRINUSE);
    assert_eq!(super::sandbox_hint(&in_use, addr), "");
}
