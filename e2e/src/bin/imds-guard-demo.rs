//! `cargo xtask demo`: the guard at work in a sandbox, with the shipped
//! policy (`config/imds-guard.toml`: root only).
//!
//! Everything happens in a network namespace and a child cgroup made for
//! the demo, where the metadata addresses sit on the namespace's loopback
//! with a fake IMDS behind them: the host's own metadata service is never
//! contacted. All of it is removed when the demo ends, even on failure.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use imds_guard_e2e::{
    Action, Agent, FakeImds, IMDS_PORT, IMDS_V4, IMDS_V6, NOBODY, Netns, Probe, TestCgroup, field,
    privileged_or_skip,
};
use serde_json::Value;

fn main() -> ExitCode {
    if !privileged_or_skip("demo") {
        eprintln!("the demo needs root (it loads eBPF programs and makes a network namespace)");
        return ExitCode::FAILURE;
    }
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/imds-guard.toml");
    let netns = Netns::new();
    let cgroup = TestCgroup::new();
    let imds = FakeImds::start(&netns);
    say(&format!(
        "sandbox: network namespace {} (169.254.169.254 and fd00:ec2::254 on its loopback, \
         a fake IMDSv2 behind them), child cgroup {}",
        netns.name(),
        cgroup.path().display()
    ));
    say(&format!(
        "starting: imds-guard run --config {} --cgroup {} --log-format json",
        policy.display(),
        cgroup.path().display()
    ));
    let agent = Agent::start(&netns, &policy, &cgroup, &[]);
    let ready = agent.wait_ready(Duration::from_secs(30));
    say(&format!("agent: {}", text(&ready, "message")));

    say("root fetches the instance role's credentials (IMDSv2: token, then GETs):");
    let r = Probe::new(&netns, &cgroup)
        .uid(0)
        .gid(0)
        .run(Action::http(IMDS_V4, IMDS_PORT));
    if !r.ok || r.body != imds.credentials_body() {
        say(&format!("unexpected: root was not served: {r:?}"));
        return ExitCode::FAILURE;
    }
    println!("    allowed, HTTP 200:");
    for line in r.body.lines() {
        println!("      {line}");
    }

    say("nobody (uid 65534) tries the same, over IPv4 and over IPv6:");
    let mut denied = Vec::new();
    for ip in [IpAddr::from(IMDS_V4), IpAddr::from(IMDS_V6)] {
        let r = Probe::new(&netns, &cgroup)
            .uid(NOBODY)
            .gid(NOBODY)
            .run(Action::http(ip, IMDS_PORT));
        if r.ok || r.errno != Some(libc::EPERM) {
            say(&format!("unexpected: nobody was not refused: {r:?}"));
            return ExitCode::FAILURE;
        }
        println!("    {ip}: refused at connect(): {}", r.error);
        denied.push(r.pid);
    }

    say("the denial records the agent wrote (one JSON object per line):");
    for pid in denied {
        let rec = agent.wait_for(
            |rec| {
                field(rec, "event").and_then(Value::as_str) == Some("deny")
                    && field(rec, "pid").and_then(Value::as_u64) == Some(u64::from(pid))
            },
            Duration::from_secs(10),
        );
        match rec {
            Some(rec) => println!("    {rec}"),
            None => {
                say(&format!("unexpected: no denial record for pid {pid}"));
                return ExitCode::FAILURE;
            }
        }
    }
    agent.terminate();
    say("done: the agent stopped, the sandbox is being removed");
    ExitCode::SUCCESS
}

fn say(what: &str) {
    println!("==> {what}");
}

fn text<'a>(rec: &'a Value, name: &str) -> &'a str {
    field(rec, name).and_then(Value::as_str).unwrap_or("")
}
