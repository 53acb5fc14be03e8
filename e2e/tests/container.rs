//! The agent in a container: in a cgroup namespace of its own it never
//! reports its subtree as the root; it leaves the namespace for the host's
//! when it can, and then attaches only where told; in a pid namespace of
//! its own it refuses to start.
//!
//! On this machine no test lets an agent attach at the real cgroup root:
//! every agent here is either given `--cgroup` naming a cgroup the test
//! made, or runs in a cgroup namespace rooted at one with no way out
//! (`--host-cgroupns` naming its own namespace), so that even a wrong
//! agent could only reach the test's cgroup. Attaching at the root from a
//! container is proved in the QEMU guest, whose root is the test's own
//! (`cgroup_v1.rs`, `cargo xtask vm-test --no-cgroup2`; the DaemonSet's pod
//! under runc, `kubernetes/runc.rs`, in the ordinary guest).

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{ffi::OsString, path::Path, process::Command, time::Duration};

use imds_guard::kernel::{inspect, programs};
use imds_guard_e2e::{
    Action, Agent, IMDS_PORT, IMDS_V4, NOBODY, Sandbox, TempDir, TestCgroup, field,
    privileged_or_skip,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);
/// Root may connect, nobody else.
const POLICY: &str = "[allow]\nuids = [0]\n";

/// Programs attached to `cgroup` itself, per program of ours.
fn attachments(cgroup: &Path) -> Vec<usize> {
    inspect::attached_per_hook(cgroup).expect("query the cgroup's programs")
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `bash` (not `sh`: the guest's is busybox's, which runs its own
/// `unshare` and `nsenter` rather than util-linux's) that moves itself into
/// `cgroup`, then execs the rest: the agent is
/// in the cgroup before it unshares anything.
fn into_cgroup(cgroup: &TestCgroup) -> Vec<OsString> {
    let mut w = os(&[
        "bash",
        "-c",
        "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"",
        "bash",
    ]);
    w.push(cgroup.path().into());
    w
}

/// A container as Docker makes one on a cgroup v2 host: a cgroup namespace
/// rooted at `cgroup` (the process moves there first), a mount namespace,
/// and cgroup2 mounted at `mnt` from inside, which shows the subtree as
/// `/`.
fn container(cgroup: &TestCgroup, mnt: &Path) -> Vec<OsString> {
    let mut w = into_cgroup(cgroup);
    w.extend(os(&[
        "unshare",
        "--cgroup",
        "--mount",
        "--propagation",
        "private",
        "bash",
        "-c",
        "mount -t cgroup2 cgroup2 \"$1\" && shift && exec \"$@\"",
        "bash",
    ]));
    w.push(mnt.into());
    w
}

/// The last line of the agent's output that is not a JSON record: the
/// error it exits with.
fn exit_error(agent: &Agent) -> String {
    agent
        .records()
        .iter()
        .filter_map(|r| match r {
            Value::String(s) => Some(s.clone()),
            other => field(other, "message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_cgroup_namespace_of_its_own_is_refused_not_reported_as_the_root() {
    if !privileged_or_skip("a_cgroup_namespace_of_its_own_is_refused_not_reported_as_the_root") {
        return;
    }
    let w = Sandbox::new();
    w.policy(POLICY);
    let inside = w.cgroup.child("container");
    let mnt = TempDir::new();
    // What fooled the agent before: inside the namespace, a cgroup2 mount
    // made there shows its subtree as the root ("/") in mountinfo.
    let mut shown = Command::new(&container(&inside, mnt.path())[0]);
    shown
        .args(&container(&inside, mnt.path())[1..])
        .args(["cat", "/proc/self/mountinfo"]);
    let out = shown.output().expect("run the container");
    assert!(out.status.success(), "{out:?}");
    let mountinfo = String::from_utf8_lossy(&out.stdout);
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == mnt.path().to_str())
        .unwrap_or_else(|| panic!("no mount at {}:\n{mountinfo}", mnt.path().display()));
    assert_eq!(line.split(' ').nth(3), Some("/"), "{line}");

    // The agent there, with no way into the host's namespace (its own is
    // named as the host's): refused, with the cause and the fix.
    let agent = Agent::start_wrapped(
        &container(&inside, mnt.path()),
        w.netns_path(),
        &w.policy_path(),
        None,
        &w.pin_dir(),
        &["--host-cgroupns", "/proc/self/ns/cgroup"],
    );
    let status = agent.wait_exit(EXIT).expect("the agent exits");
    assert_eq!(status.code(), Some(6), "{}", agent.output());
    let error = exit_error(&agent);
    for said in [
        "cgroup namespace",
        "not the host's",
        "hostPID",
        "--cgroupns=host",
    ] {
        assert!(error.contains(said), "no {said:?} in:\n{}", agent.output());
    }
    assert!(
        !agent
            .records()
            .iter()
            .any(|r| field(r, "ready") == Some(&Value::Bool(true))),
        "{}",
        agent.output()
    );
    assert_eq!(attachments(inside.path()), [0; programs::GUARDING]);
    assert_eq!(attachments(w.cgroup.path()), [0; programs::GUARDING]);
}

#[test]
fn leaving_a_cgroup_namespace_for_the_hosts_it_attaches_only_where_told() {
    if !privileged_or_skip("leaving_a_cgroup_namespace_for_the_hosts_it_attaches_only_where_told") {
        return;
    }
    let w = Sandbox::new();
    w.policy(POLICY);
    // Nothing guards the sandbox yet: nobody reaches the metadata service.
    w.probe_as(NOBODY, NOBODY)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    let inside = w.cgroup.child("container");
    // The host's cgroup namespace, as pid 1's is with hostPID: this test
    // process's, the machine's initial one.
    let host_ns = format!("/proc/{}/ns/cgroup", std::process::id());
    let mut wrapper = into_cgroup(&inside);
    wrapper.extend(os(&["unshare", "--cgroup"]));
    let agent = Agent::start_wrapped(
        &wrapper,
        w.netns_path(),
        &w.policy_path(),
        Some(&w.cgroup),
        &w.pin_dir(),
        &["--host-cgroupns", &host_ns],
    );
    let ready = agent.wait_ready(READY);
    let said = |name: &str| field(&ready, name).cloned().unwrap_or(Value::Null);
    assert_eq!(said("cgroup_ns"), "entered", "{ready}");
    assert_eq!(said("hierarchy"), "named", "{ready}");
    assert_eq!(said("cgroup_root"), false, "{ready}");
    assert_eq!(
        said("cgroup"),
        w.cgroup.path().to_str().expect("UTF-8"),
        "{ready}"
    );
    assert!(
        agent
            .output()
            .contains("left its container's cgroup namespace"),
        "{}",
        agent.output()
    );
    // Attached to the sandbox's cgroup, the one named, and nowhere below.
    assert_eq!(attachments(w.cgroup.path()), [1; programs::GUARDING]);
    assert_eq!(attachments(inside.path()), [0; programs::GUARDING]);
    w.probe_as(NOBODY, NOBODY)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(libc::EPERM);
    w.probe_as(0, 0)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    // `status` says the guard covers only what is below that cgroup.
    let (_, status) = w.status();
    assert_eq!(status["guards"]["cgroup_root"], false, "{status}");
    assert_eq!(status["guards"]["mounted_by_agent"], false, "{status}");
}

#[test]
fn a_cgroup_namespace_it_cannot_leave_is_refused_even_with_a_named_cgroup() {
    if !privileged_or_skip("a_cgroup_namespace_it_cannot_leave_is_refused_even_with_a_named_cgroup")
    {
        return;
    }
    let w = Sandbox::new();
    w.policy(POLICY);
    let inside = w.cgroup.child("container");
    let mut wrapper = into_cgroup(&inside);
    wrapper.extend(os(&["unshare", "--cgroup"]));
    let agent = Agent::start_wrapped(
        &wrapper,
        w.netns_path(),
        &w.policy_path(),
        Some(&inside),
        &w.pin_dir(),
        &["--host-cgroupns", "/proc/self/ns/cgroup"],
    );
    let status = agent.wait_exit(EXIT).expect("the agent exits");
    assert_eq!(status.code(), Some(6), "{}", agent.output());
    assert!(
        exit_error(&agent).contains("not the host's either"),
        "{}",
        agent.output()
    );
    assert_eq!(attachments(inside.path()), [0; programs::GUARDING]);
}

/// The agent in a pid namespace of its own (as in a container without
/// `hostPID`), told to attach to the sandbox's cgroup.
fn in_a_pid_namespace_of_its_own(w: &Sandbox, extra: &[&str]) -> Agent {
    w.policy(POLICY);
    let wrapper = os(&["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]);
    Agent::start_wrapped(
        &wrapper,
        w.netns_path(),
        &w.policy_path(),
        Some(&w.cgroup),
        &w.pin_dir(),
        extra,
    )
}

#[test]
fn a_pid_namespace_of_its_own_is_refused() {
    if !privileged_or_skip("a_pid_namespace_of_its_own_is_refused") {
        return;
    }
    let w = Sandbox::new();
    let agent = in_a_pid_namespace_of_its_own(&w, &[]);
    let status = agent.wait_exit(EXIT).expect("the agent exits");
    assert_eq!(status.code(), Some(6), "{}", agent.output());
    let error = exit_error(&agent);
    assert!(error.contains("pid namespace"), "{}", agent.output());
    assert!(error.contains("hostPID: true"), "{}", agent.output());
    assert_eq!(attachments(w.cgroup.path()), [0; programs::GUARDING]);
}

/// `--container` runs it in a pid namespace of its own on purpose: it
/// attaches where `--cgroup` says, and says that "the host" is its
/// container's pid namespace and that it guards only that cgroup.
#[test]
fn with_container_a_pid_namespace_of_its_own_guards_only_the_named_cgroup() {
    if !privileged_or_skip("with_container_a_pid_namespace_of_its_own_guards_only_the_named_cgroup")
    {
        return;
    }
    let w = Sandbox::new();
    let agent = in_a_pid_namespace_of_its_own(&w, &["--container"]);
    let ready = agent.wait_ready(READY);
    let said = |name: &str| field(&ready, name).cloned().unwrap_or(Value::Null);
    assert_eq!(said("hierarchy"), "named", "{ready}");
    assert_eq!(said("cgroup_root"), false, "{ready}");
    assert!(
        agent
            .output()
            .contains("the container's pid namespace (--container)"),
        "{}",
        agent.output()
    );
    assert_eq!(attachments(w.cgroup.path()), [1; programs::GUARDING]);
    w.probe_as(NOBODY, NOBODY)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(libc::EPERM);
    let (_, status) = w.status();
    assert_eq!(status["guards"]["cgroup_root"], false, "{status}");
}
