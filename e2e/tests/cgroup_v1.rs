//! A host that boots cgroup v1 only (Amazon Linux 2, EKS's AL2 nodes): no
//! cgroup2 mount anywhere. The agent mounts a cgroup2 hierarchy of its own
//! at /run/imds-guard/cgroup2 and attaches at its root, where every process
//! is; uid rules decide there, unit, cgroup and pod rules are refused at
//! start and at reload; from a container (a cgroup namespace of its own)
//! with the host's pid namespace, it enters the host's cgroup namespace and
//! does the same.
//!
//! These tests attach at the root of the cgroup hierarchy: they run only in
//! the QEMU guest booted without cgroup2 (`cargo xtask vm-test
//! --no-cgroup2`, whose `/init` sets `IMDS_GUARD_TEST_NO_CGROUP2=1`), where
//! that root is the test's own. Anywhere else (this machine, the ordinary
//! guest) they say so and do nothing: a host with a cgroup2 mount is not
//! the host they are about, and its root is not theirs to attach to.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use imds_guard_e2e::{
    Action, Agent, FakeImds, IMDS_PORT, IMDS_V4, NOBODY, Netns, Probe, TempDir, TestBpffs,
    TestCgroup, field, imds_guard_bin, privileged_or_skip, write_policy,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const LOG: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);
/// Where the agent mounts its hierarchy (`kernel/place.rs`).
const OWN_MOUNT: &str = "/run/imds-guard/cgroup2";
/// Root may connect, nobody else.
const POLICY: &str = "[allow]\nuids = [0]\n";
/// The same, with a cgroup rule only systemd's cgroup v2 layout could give
/// a meaning.
const WITH_CGROUPS: &str = "[allow]\nuids = [0]\n\n[deny]\ncgroups = [\"/system.slice/**\"]\n";

/// Whether this is the guest booted without cgroup2; panics if it says it
/// is and is not. (`privileged_or_skip` wants a cgroup2 hierarchy to make
/// a test cgroup in, which this host has not: root is checked here.)
fn on_a_cgroup_v1_host(test: &str) -> bool {
    if std::env::var("IMDS_GUARD_TEST_NO_CGROUP2").as_deref() != Ok("1") {
        if privileged_or_skip(test) {
            eprintln!(
                "{test}: not run here: it attaches at the root of the cgroup hierarchy, which \
                 only the guest of `cargo xtask vm-test --no-cgroup2` lets a test do"
            );
        }
        return false;
    }
    assert!(nix::unistd::geteuid().is_root(), "{test}: needs root");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cgroup2: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .filter(|l| l.split(' ').nth(4) != Some(OWN_MOUNT))
        .collect();
    assert!(
        cgroup2.is_empty(),
        "the guest was to boot without a cgroup2 mount: {cgroup2:?}"
    );
    true
}

/// What the tests need besides a cgroup: a namespace with the metadata
/// addresses and a fake IMDS, a private bpffs, a policy directory.
struct Host {
    /// Serves until the host is dropped.
    _imds: FakeImds,
    bpffs: TestBpffs,
    netns: Netns,
    dir: TempDir,
}

impl Host {
    fn new(policy: &str) -> Self {
        let netns = Netns::new();
        let imds = FakeImds::start(&netns);
        let host = Self {
            _imds: imds,
            bpffs: TestBpffs::new(),
            netns,
            dir: TempDir::new(),
        };
        host.policy(policy);
        host
    }

    fn policy(&self, toml: &str) -> PathBuf {
        write_policy(self.dir.path(), toml)
    }

    /// The agent with no `--cgroup`: it finds (or makes) the root.
    fn agent(&self, wrapper: &[OsString], extra: &[&str]) -> Agent {
        Agent::start_wrapped(
            wrapper,
            self.netns.path(),
            &self.dir.path().join("policy.toml"),
            None,
            &self.bpffs.pin_dir(),
            extra,
        )
    }

    /// A probe in the cgroup at `dir`.
    fn probe(&self, dir: &Path, uid: u32) -> Probe {
        Probe::at(self.netns.path(), dir).uid(uid).gid(uid)
    }

    /// `imds-guard status --json`.
    fn status(&self) -> Value {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(imds_guard_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(self.bpffs.pin_dir())
            .output()
            .expect("run status");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {out:?}"))
    }
}

fn said<'a>(record: &'a Value, name: &str) -> &'a Value {
    field(record, name).unwrap_or(&Value::Null)
}

fn mount_cgroup2(at: &Path) {
    let mounted = Command::new("mount")
        .args(["-t", "cgroup2", "cgroup2"])
        .arg(at)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting cgroup2 at {}", at.display());
}

/// Root allowed, nobody denied, from the cgroup at `dir`.
fn decides_by_uid(host: &Host, dir: &Path) {
    host.probe(dir, NOBODY)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(libc::EPERM);
    host.probe(dir, 0)
        .run(Action::http(IMDS_V4, IMDS_PORT))
        .assert_ok();
}

#[test]
fn without_cgroup2_it_mounts_its_own_and_guards_every_process_by_uid() {
    let test = "without_cgroup2_it_mounts_its_own_and_guards_every_process_by_uid";
    if !on_a_cgroup_v1_host(test) {
        return;
    }
    let host = Host::new(POLICY);
    // Nothing guards yet: nobody reaches the metadata service from the
    // root cgroup (named through a mount of the test's, gone again before
    // the agent starts).
    let mnt = TempDir::new();
    mount_cgroup2(mnt.path());
    host.probe(mnt.path(), NOBODY)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
    let unmounted = Command::new("umount")
        .arg(mnt.path())
        .status()
        .expect("umount");
    assert!(unmounted.success());
    let agent = host.agent(&[], &[]);
    let ready = agent.wait_ready(READY);
    assert_eq!(said(&ready, "hierarchy"), "mounted", "{ready}");
    assert_eq!(said(&ready, "cgroup"), OWN_MOUNT, "{ready}");
    assert_eq!(said(&ready, "cgroup_root"), true, "{ready}");
    assert_eq!(said(&ready, "cgroup_layout"), "flat", "{ready}");
    assert_eq!(said(&ready, "cgroup_ns"), "host", "{ready}");
    // At the root: a process there, and one in a cgroup made below it.
    decides_by_uid(&host, Path::new(OWN_MOUNT));
    let below = TestCgroup::new();
    assert!(below.path().starts_with(OWN_MOUNT), "{below:?}");
    decides_by_uid(&host, below.path());
    let status = host.status();
    assert_eq!(status["guards"]["cgroup_root"], true, "{status}");
    assert_eq!(status["guards"]["mounted_by_agent"], true, "{status}");
    assert_eq!(status["enforcing"], true, "{status}");
    drop(below);
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.output());
}

#[test]
fn without_cgroup2_cgroup_rules_are_refused_at_start_and_at_reload() {
    let test = "without_cgroup2_cgroup_rules_are_refused_at_start_and_at_reload";
    if !on_a_cgroup_v1_host(test) {
        return;
    }
    let host = Host::new(WITH_CGROUPS);
    // At start, with no fallback: refused, with where and why.
    let refused = host.agent(&[], &["--fallback", "none"]);
    let code = refused.wait_exit(EXIT).expect("exits");
    assert_eq!(code.code(), Some(1), "{}", refused.output());
    let output = refused.output();
    assert!(output.contains("policy.toml:5:"), "{output}");
    assert!(output.contains("cgroup v1 only"), "{output}");
    assert!(output.contains("users, uids, groups or gids"), "{output}");
    // With uid rules it starts; a reload that brings a cgroup rule is
    // refused and the policy in force stays.
    host.policy(POLICY);
    let agent = host.agent(&[], &[]);
    agent.wait_ready(READY);
    host.policy(WITH_CGROUPS);
    agent.sighup();
    let invalid = agent
        .wait_for(
            |r| {
                field(r, "event").and_then(Value::as_str) == Some("reload")
                    && field(r, "outcome").and_then(Value::as_str) == Some("invalid")
                    && field(r, "message")
                        .and_then(Value::as_str)
                        .is_some_and(|m| m.contains("cgroup v1 only"))
            },
            LOG,
        )
        .unwrap_or_else(|| panic!("no refused reload:\n{}", agent.output()));
    assert!(
        said(&invalid, "message")
            .to_string()
            .contains("policy.toml:5:")
    );
    decides_by_uid(&host, Path::new(OWN_MOUNT));
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.output());
}

#[test]
fn from_a_container_with_the_hosts_pids_it_enters_the_hosts_cgroup_namespace_and_attaches_at_the_root()
 {
    let test = "from_a_container_with_the_hosts_pids_it_enters_the_hosts_cgroup_namespace_and_\
                attaches_at_the_root";
    if !on_a_cgroup_v1_host(test) {
        return;
    }
    let host = Host::new(POLICY);
    let scratch = TempDir::new();
    let (outer, inner) = (scratch.path().join("outer"), scratch.path().join("inner"));
    // A container as a runtime makes one: a cgroup of its own (made through
    // a mount that is gone again, leaving the host without one), a cgroup
    // namespace rooted there, a mount namespace, cgroup2 mounted inside,
    // where it shows the container's cgroup as the root. Pid 1 stays the
    // host's (hostPID): the agent's default --host-cgroupns.
    let script = r#"
        mkdir -p "$1" "$2" &&
        mount -t cgroup2 cgroup2 "$1" &&
        mkdir -p "$1/container" &&
        echo $$ > "$1/container/cgroup.procs" &&
        umount "$1" &&
        exec unshare --cgroup --mount --propagation private \
            bash -c 'mount -t cgroup2 cgroup2 "$1" && shift && exec "$@"' bash "$2" "${@:3}"
    "#;
    let wrapper: Vec<OsString> = vec![
        "bash".into(),
        "-c".into(),
        script.into(),
        "bash".into(),
        outer.clone().into(),
        inner.into(),
    ];
    let agent = host.agent(&wrapper, &[]);
    let ready = agent.wait_ready(READY);
    assert_eq!(said(&ready, "cgroup_ns"), "entered", "{ready}");
    assert_eq!(said(&ready, "hierarchy"), "mounted", "{ready}");
    assert_eq!(said(&ready, "cgroup_root"), true, "{ready}");
    assert!(
        agent
            .output()
            .contains("left its container's cgroup namespace"),
        "{}",
        agent.output()
    );
    // Every process of the host, seen through a mount of the test's own.
    let mnt = TempDir::new();
    mount_cgroup2(mnt.path());
    decides_by_uid(&host, mnt.path());
    decides_by_uid(&host, &mnt.path().join("container"));
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.output());
    let _ = std::fs::remove_dir(mnt.path().join("container"));
    let _ = Command::new("umount").arg(mnt.path()).status();
}
