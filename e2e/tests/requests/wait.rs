//! A judged request whose push waits for memory mid-message (issue 23,
//! the design's risk R1, docs/design/request-level.md §3): the socket's
//! lock is released inside a judged range, where a writer that loaded the
//! plain `sk_prot` before the insertion could queue bytes the verdict
//! never saw; `egress` lets a byte of a judged socket leave only if it is
//! the one judged at its position (`judged_bytes.rs`), so those could not
//! leave. This test holds that wait open and shows the other half: the
//! judged request itself, pushed part before the wait and part after it,
//! leaves whole and is answered, as is the next one. The comparison never
//! stops what was judged, however the kernel cut it into segments.
//!
//! The wait is made, and held for as long as the test wants, by a
//! listener on a judged address that reads nothing until released, with a
//! receive buffer smaller than the request ([`StalledListener`]), and a
//! sender with a small send buffer ([`Trick::WaitForMemory`]).

use std::{
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use imds_guard_e2e::{
    Action, Agent, FILLER_LEN, HeldProbe, IMDS_V4, IMDS_V6, LOG, READY, STALL_PORT, STALLED_BODY,
    STALLED_LEN, STALLED_PATH, Sandbox, Stalled, StalledListener, Trick, field, filler_request,
    next_request, privileged_or_skip, slowdown::scaled, stalled_request,
};
use serde_json::Value;

use super::judged;

/// Root the whole service, uid 1001 the placement subtree, IMDSv1 allowed
/// (the stalled listener hands out no token).
const WAIT_POLICY: &str = "mode = \"enforce\"\n[allow]\nuids = [0]\n\
    [requests.waiting]\nuids = [1001]\nimdsv2 = \"optional\"\nrules = [\n\
    \"GET /latest/meta-data/placement/\",\n]\n";
/// How long the probe may take to wait, the records to come, and the
/// listener to be connected (times the slowdown).
const SETTLE: Duration = Duration::from_secs(5);
/// How long the test holds the sender waiting before it looks again
/// (times the slowdown).
const HOLD: Duration = Duration::from_secs(1);

fn stalled_addrs() -> [SocketAddr; 2] {
    [
        SocketAddr::new(IMDS_V4.into(), STALL_PORT),
        SocketAddr::new(IMDS_V6.into(), STALL_PORT),
    ]
}

fn s<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    field(record, name).and_then(Value::as_str)
}

/// The kernel stack of `pid` (one thread; root reads it), a function a
/// line, offsets dropped.
fn stack(pid: u32) -> Vec<String> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stack"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.split('+').next().unwrap_or(f).to_owned())
        .collect()
}

/// Whether `stack` waits for memory in the TCP push of a message `sk_msg`
/// let through (`tcp_bpf_push`: `tcp_sendmsg_locked` on 6.5 and later,
/// `do_tcp_sendpages` before), not in the copy before the verdict
/// (`tcp_bpf_sendmsg` waiting itself).
fn waits_in_the_push(stack: &[String]) -> bool {
    let at = stack.iter().position(|f| f == "sk_stream_wait_memory");
    at.is_some_and(|i| {
        stack.get(i + 1).is_some_and(|f| f != "tcp_bpf_sendmsg")
            && stack[i..].iter().any(|f| f == "tcp_bpf_sendmsg")
    })
}

/// What `ss` says of the connections to the stalled listener, memory and
/// windows, for a failure's message.
fn sockets(sb: &Sandbox) -> String {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", sb.netns_path().display()))
        .args(["ss", "-tmin", "( sport = :81 or dport = :81 )"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("ss: {e}"))
}

/// A judged sender caught waiting for memory after its request's verdict,
/// and the listener that holds it there.
struct Waiting {
    probe: HeldProbe,
    stalled: Stalled,
    _listener: StalledListener,
}

/// Starts the judged sender to `addr` and returns once it waits in the
/// judged push: its stack in `sk_stream_wait_memory` under the sk_msg
/// push, part of its request (not all) at the listener, and the agent's
/// record of the request let through (the verdict came before the wait).
fn wait_mid_message(sb: &Sandbox, agent: &Agent, addr: SocketAddr) -> Waiting {
    let listener = StalledListener::start(&sb.netns, addr);
    let mut probe = judged(sb).start(Action::Trick(addr, Trick::WaitForMemory));
    let stalled = listener.accept(scaled(SETTLE));
    let pid = probe.pid();
    let deadline = Instant::now() + scaled(SETTLE);
    let mut seen = stack(pid);
    while !waits_in_the_push(&seen) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        seen = stack(pid);
    }
    if !waits_in_the_push(&seen) {
        let sockets = sockets(sb);
        let r = probe.result_within(scaled(REPORT));
        panic!(
            "{addr}: the sender never waited for memory in the judged push ({r:?}); its \
             stack: {seen:?}; the sockets:\n{sockets}"
        );
    }
    // The filler arrived whole, the stalled request in part.
    let arrived = stalled.arrived();
    let filler = FILLER_LEN as u64;
    if !(filler + 1..filler + STALLED_LEN as u64).contains(&arrived) {
        let sockets = sockets(sb);
        let r = probe.result_within(scaled(REPORT));
        panic!(
            "{addr}: {arrived} bytes at the listener, want the filler's {filler} and a part of \
             the {STALLED_LEN} after it ({r:?}); the sockets:\n{sockets}"
        );
    }
    // Both requests let through and recorded, the filler first: the
    // verdict on the stalled one came before its wait.
    let deadline = Instant::now() + scaled(LOG);
    let passed = || {
        agent
            .records()
            .iter()
            .filter(|r| {
                s(r, "hook") == Some("request")
                    && s(r, "event") == Some("allow")
                    && s(r, "path") == Some(STALLED_PATH)
                    && field(r, "pid").and_then(Value::as_u64) == Some(u64::from(pid))
            })
            .count()
    };
    while passed() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        passed(),
        2,
        "{addr}: want the records of the filler and the stalled request let through:\n{}",
        agent.output()
    );
    // Held there: still waiting a while later, nothing more let through.
    thread::sleep(scaled(HOLD));
    assert!(
        waits_in_the_push(&stack(pid)),
        "{addr}: the sender stopped waiting before the listener read; the sockets:\n{}",
        sockets(sb)
    );
    Waiting {
        probe,
        stalled,
        _listener: listener,
    }
}

/// The agent on [`WAIT_POLICY`] in `sb`.
fn agent(sb: &Sandbox) -> Agent {
    sb.policy(WAIT_POLICY);
    let agent = sb.spawn_agent(&[], &[]);
    agent.wait_ready(READY);
    agent
}

/// How long the probe may take to report, every wait of a guarded run
/// included (times the slowdown).
const REPORT: Duration = Duration::from_secs(20);

#[test]
fn a_judged_request_whose_send_waits_for_memory_mid_message_leaves_whole_and_is_answered() {
    if !privileged_or_skip(
        "a_judged_request_whose_send_waits_for_memory_mid_message_leaves_whole_and_is_answered",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let agent = agent(&sb);
    for addr in stalled_addrs() {
        let Waiting {
            mut probe,
            stalled,
            _listener,
        } = wait_mid_message(&sb, &agent, addr);
        // Let through, and its sender waits with the lock released, part
        // of it sent. Once the listener reads, the rest leaves, every byte
        // the one judged there, and the filler, the stalled request and
        // the next are answered.
        let serving = stalled.release();
        let r = probe.result_within(scaled(REPORT));
        assert!(
            r.ok && r.body.matches(STALLED_BODY).count() == 3,
            "{addr}: {r:?}"
        );
        let received = serving.received();
        assert_eq!(
            received,
            [
                filler_request(addr),
                stalled_request(addr),
                next_request(addr),
            ]
            .concat(),
            "{addr}: {}",
            String::from_utf8_lossy(&received)
        );
        assert_eq!(serving.answered(), 3, "{addr}");
        let pid = u64::from(probe.pid());
        let refused = agent.records().into_iter().find(|r| {
            s(r, "event") == Some("deny") && field(r, "pid").and_then(Value::as_u64) == Some(pid)
        });
        assert!(refused.is_none(), "{addr}: refused: {refused:?}");
    }
    drop(agent);
}
