//! Smoke tests of the harness itself, without the agent or any eBPF: with
//! nothing guarding the test cgroup, every action a probe can take must
//! reach the fake IMDS. Whatever later tests see blocked is then the agent's
//! doing, not the harness's.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use imds_guard_e2e::{
    Action, Agent, FakeImds, IMDS_PORT, IMDS_V4, IMDS_V6, NOBODY, Netns, PLAIN_PORT, Probe,
    Sandbox, TempDir, TestCgroup, UDP_PORT, cgroup2_root, field, privileged_or_skip, write_policy,
};
use serde_json::Value;

/// The probe these smoke tests use: `nobody`, this package's own build.
fn nobody(w: &Sandbox) -> Probe {
    w.probe()
        .uid(NOBODY)
        .gid(NOBODY)
        .bin(env!("CARGO_BIN_EXE_imds-probe"))
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn http_flow_gets_the_credentials_over_both_metadata_addresses() {
    if !privileged_or_skip("http_flow_gets_the_credentials_over_both_metadata_addresses") {
        return;
    }
    let w = Sandbox::new();
    for ip in [IpAddr::from(IMDS_V4), IMDS_V6.into()] {
        let result = nobody(&w).run(Action::http(ip, IMDS_PORT));
        assert_eq!(
            result.assert_ok().body,
            w.imds.credentials_body(),
            "over {ip}"
        );
        assert!(result.body.contains(w.imds.marker()));
        assert_eq!(result.comm, "imds-probe");
    }
    // PUT token, GET meta-data/, GET the role list, GET the role, twice.
    assert_eq!(w.imds.requests_served(), 8);
    assert_eq!(w.imds.tcp_accepted(addr(IMDS_V4, IMDS_PORT)), 4);
    assert_eq!(w.imds.tcp_accepted(addr(IMDS_V6, IMDS_PORT)), 4);
}

#[test]
fn probe_runs_as_the_requested_identity_in_the_test_cgroup() {
    if !privileged_or_skip("probe_runs_as_the_requested_identity_in_the_test_cgroup") {
        return;
    }
    let w = Sandbox::new();
    for (uid, gid, groups) in [
        (NOBODY, NOBODY, vec![]),
        (1000, 1001, vec![100, 101]),
        (0, 0, vec![0]),
    ] {
        let result = nobody(&w)
            .uid(uid)
            .gid(gid)
            .groups(&groups)
            .run(Action::connect(Ipv4Addr::LOCALHOST, PLAIN_PORT));
        result.assert_ok();
        assert_eq!(
            (result.uid, result.gid, &result.groups),
            (uid, gid, &groups),
            "{result:?}"
        );
        let joined = cgroup2_root().join(result.cgroup.trim_start_matches('/'));
        assert_eq!(joined, w.cgroup.path(), "{result:?}");
    }
}

#[test]
fn connect_reaches_unprotected_destinations() {
    if !privileged_or_skip("connect_reaches_unprotected_destinations") {
        return;
    }
    let w = Sandbox::new();
    nobody(&w)
        .run(Action::connect(Ipv4Addr::LOCALHOST, PLAIN_PORT))
        .assert_ok();
    nobody(&w)
        .run(Action::connect(Ipv6Addr::LOCALHOST, PLAIN_PORT))
        .assert_ok();
    assert_eq!(
        w.imds.tcp_accepted(addr(Ipv4Addr::LOCALHOST, PLAIN_PORT)),
        1
    );
    assert_eq!(
        w.imds.tcp_accepted(addr(Ipv6Addr::LOCALHOST, PLAIN_PORT)),
        1
    );
    // A bare connect sends no request.
    assert_eq!(w.imds.requests_served(), 0);
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    if !privileged_or_skip("connect_to_a_closed_port_is_refused") {
        return;
    }
    // Shows the probe reports errno, and that "not ok" is not something the
    // harness produces by itself for a reachable port.
    let w = Sandbox::new();
    nobody(&w)
        .run(Action::connect(Ipv4Addr::LOCALHOST, 9))
        .assert_errno(libc::ECONNREFUSED);
}

#[test]
fn udp_datagrams_arrive() {
    if !privileged_or_skip("udp_datagrams_arrive") {
        return;
    }
    let w = Sandbox::new();
    let v4 = addr(IMDS_V4, UDP_PORT);
    nobody(&w)
        .run(Action::udp_send(IMDS_V4, UDP_PORT))
        .assert_ok();
    assert_eq!(w.imds.udp_received(v4), 1);
    nobody(&w)
        .run(Action::udp_send(IMDS_V6, UDP_PORT))
        .assert_ok();
    assert_eq!(w.imds.udp_received(addr(IMDS_V6, UDP_PORT)), 1);
    // The mapped form lands on the IPv4 socket.
    nobody(&w)
        .run(Action::udp_send_mapped(IMDS_V4, UDP_PORT))
        .assert_ok();
    assert_eq!(w.imds.udp_received(v4), 2);
    nobody(&w)
        .run(Action::udp_connect(IMDS_V4, UDP_PORT))
        .assert_ok();
    assert_eq!(w.imds.udp_received(v4), 3);
    nobody(&w)
        .run(Action::udp_send(Ipv4Addr::LOCALHOST, UDP_PORT))
        .assert_ok();
    assert_eq!(w.imds.udp_received(addr(Ipv4Addr::LOCALHOST, UDP_PORT)), 1);
}

#[test]
fn connect_mapped_reaches_the_ipv4_server() {
    if !privileged_or_skip("connect_mapped_reaches_the_ipv4_server") {
        return;
    }
    let w = Sandbox::new();
    nobody(&w)
        .run(Action::connect_mapped(IMDS_V4, IMDS_PORT))
        .assert_ok();
    assert_eq!(w.imds.tcp_accepted(addr(IMDS_V4, IMDS_PORT)), 1);
    assert_eq!(w.imds.tcp_accepted(addr(IMDS_V6, IMDS_PORT)), 0);
}

#[test]
fn tfo_carries_the_request_in_the_syn() {
    if !privileged_or_skip("tfo_carries_the_request_in_the_syn") {
        return;
    }
    let w = Sandbox::new();
    for ip in [IpAddr::from(IMDS_V4), IMDS_V6.into()] {
        let result = nobody(&w).run(Action::tfo(ip, IMDS_PORT));
        assert!(
            result.assert_ok().body.starts_with("AQAEA"),
            "not a token: {result:?}"
        );
        assert_eq!(
            result.syn_data,
            Some(true),
            "the request did not travel in the SYN over {ip}"
        );
    }
    assert_eq!(w.imds.requests_served(), 2);
}

/// A child the test started, killed (by its own handle) if the test fails
/// before the cgroup guard gets to it.
struct Sleeper(std::process::Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guards_remove_the_namespace_and_the_cgroup() {
    if !privileged_or_skip("guards_remove_the_namespace_and_the_cgroup") {
        return;
    }
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let imds = FakeImds::start(&netns);
    let (ns_path, cg_path): (PathBuf, PathBuf) = (netns.path().into(), cgroup.path().into());
    assert!(ns_path.exists() && cg_path.is_dir());

    // A process left behind in the cgroup must not stop its removal.
    let mut sleeper = Sleeper(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sleep: {e}")),
    );
    let sleeper_pid = sleeper.0.id();
    std::fs::write(cg_path.join("cgroup.procs"), sleeper_pid.to_string())
        .unwrap_or_else(|e| panic!("moving sleep into the cgroup: {e}"));
    assert_eq!(cgroup.procs(), [sleeper_pid as i32]);

    drop(imds);
    drop(cgroup);
    drop(netns);
    let status = sleeper
        .0
        .wait()
        .unwrap_or_else(|e| panic!("waiting for sleep: {e}"));
    assert!(!status.success(), "sleep was not killed: {status}");
    assert!(!ns_path.exists(), "{} still exists", ns_path.display());
    assert!(!cg_path.exists(), "{} still exists", cg_path.display());
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("ip netns list: {e}"));
    let name = ns_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .any(|n| n == name),
        "{name} is still listed"
    );
}

#[test]
fn guards_clean_up_when_a_test_panics() {
    if !privileged_or_skip("guards_clean_up_when_a_test_panics") {
        return;
    }
    let mut paths = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let w = Sandbox::new();
        paths = Some((w.netns.path().to_path_buf(), w.cgroup.path().to_path_buf()));
        panic!("deliberate panic with the guards alive");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    let Some((ns_path, cg_path)) = paths else {
        panic!("the world was not built");
    };
    assert!(!ns_path.exists(), "{} survived a panic", ns_path.display());
    assert!(!cg_path.exists(), "{} survived a panic", cg_path.display());
}

/// Writes an executable stand-in for the agent into `dir`.
fn stand_in(dir: &TempDir, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let path = dir.path().join("imds-guard");
    std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing the stand-in: {e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod the stand-in: {e}"));
    path
}

#[test]
fn agent_runner_collects_records_and_terminates() {
    if !privileged_or_skip("agent_runner_collects_records_and_terminates") {
        return;
    }
    let dir = TempDir::new();
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let policy = write_policy(dir.path(), "# stand-in policy\n");
    assert_eq!(
        std::fs::read_to_string(&policy).ok().as_deref(),
        Some("# stand-in policy\n")
    );
    // Logs like the agent would: a plain line, a JSON line with nested
    // fields, and a last record when asked to stop (the trap comes first,
    // as the agent's signal handler must, or a fast test kills it early).
    let bin = stand_in(
        &dir,
        r#"#!/bin/sh
trap 'printf "{\"level\":\"INFO\",\"message\":\"stopped\"}\n" >&2; exit 0' TERM
echo "stand-in starting"
printf '{"level":"INFO","fields":{"message":"attached","ready":true,"argv":"%s"}}\n' "$*" >&2
while :; do sleep 0.05; done
"#,
    );
    let agent = Agent::start_bin(&netns, &bin, &policy, &cgroup, &["--extra"]);
    let ready = agent.wait_ready(Duration::from_secs(10));
    let argv = field(&ready, "argv").and_then(Value::as_str).unwrap_or("");
    let expected = format!(
        "run --config {} --cgroup {} --log-format json --pin-dir ",
        policy.display(),
        cgroup.path().display()
    );
    // The agent never pins in the host's /sys/fs/bpf: the runner gives it
    // a private bpffs of its own. Nor does it write the host's
    // /run/imds-guard/status.json.
    let pin_dir = argv
        .strip_prefix(&expected)
        .and_then(|rest| rest.strip_suffix(" --status-file none --extra"))
        .unwrap_or_else(|| panic!("unexpected argv {argv:?}"));
    assert!(
        pin_dir.starts_with(std::env::temp_dir().to_str().unwrap_or("/tmp"))
            && pin_dir.ends_with("/imds-guard"),
        "{pin_dir}"
    );
    let plain = Value::String("stand-in starting".into());
    assert!(
        agent
            .wait_for(|r| *r == plain, Duration::from_secs(5))
            .is_some(),
        "non-JSON lines must be kept: {:?}",
        agent.records()
    );
    assert_eq!(agent.exit_status(), None);

    let status = agent.terminate();
    assert!(status.success(), "{status}");
    let stopped = agent
        .records()
        .into_iter()
        .any(|r| field(&r, "message") == Some(&"stopped".into()));
    assert!(stopped, "the last record was lost: {:?}", agent.records());
}

#[test]
fn agent_runner_reports_an_agent_that_exits_before_ready() {
    if !privileged_or_skip("agent_runner_reports_an_agent_that_exits_before_ready") {
        return;
    }
    let dir = TempDir::new();
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let policy = write_policy(dir.path(), "");
    let bin = stand_in(
        &dir,
        "#!/bin/sh\necho 'policy.toml:3:1: unknown key' >&2\nexit 2\n",
    );
    let agent = Agent::start_bin(&netns, &bin, &policy, &cgroup, &[]);
    let started = Instant::now();
    let panic = catch_unwind(AssertUnwindSafe(|| {
        agent.wait_ready(Duration::from_secs(30))
    }));
    let Err(payload) = panic else {
        panic!("wait_ready accepted an agent that never became ready");
    };
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("policy.toml:3:1: unknown key"),
        "the agent's output is missing from: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "wait_ready waited for the timeout instead of noticing the exit"
    );
    assert_eq!(
        agent
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(2)
    );
}
