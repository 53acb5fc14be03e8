//! The DaemonSet in `deploy/kubernetes/`, run by `podman kube play` from
//! the image `cargo xtask image` built: its own security context, mounts,
//! arguments and policy, with only the site values (the cgroup to attach
//! to, the pin directory) from a ConfigMap the test gives, as an operator
//! gives theirs.
//!
//! Podman 4.3 (Debian 12) plays Pods and Deployments, not DaemonSets: the
//! test plays the DaemonSet's pod template as a Pod, cut out of the file
//! line by line with nothing in it changed (`pod_of_daemonset`).
//!
//! Where it runs, so that nothing of this machine's is touched: podman runs
//! in the sandbox's network namespace (`hostNetwork` is that namespace) and
//! in a mount namespace of the test's own, where the node's paths the pod
//! mounts are the test's: a fresh bpf filesystem on `/sys/fs/bpf`, a tmpfs
//! for `/var/log/pods`. The cgroup hierarchy is the machine's, and the
//! agent attaches only to the sandbox's child cgroup (`IMDS_GUARD_CGROUP`).
//! On this machine's hybrid cgroup layout, with no systemd as pid 1, podman
//! runs with runc (crun refuses a hybrid layout whose cgroup2 has
//! controllers), the cgroupfs manager, file events, and resource limits no
//! higher than the test's own (root here lacks CAP_SYS_RESOURCE): the
//! `containers.conf` the test writes. Podman 4.3's `kube play` also ignores
//! `hostPID` (the container gets a pid namespace of its own, and the agent
//! rightly judges root there as in a container): the same file makes the
//! host's pid namespace podman's default, which is what `hostPID` asks.
//!
//! `runc.rs` runs the same pod with runc, the runtime under containerd and
//! CRI-O, from a configuration made from the manifest (`oci.rs`, the manifest
//! read with serde_yaml_ng): here on the test's cgroup, and in the QEMU guest (which has
//! no podman) at the root of the guest's cgroup hierarchy, across a
//! restart of the container.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

#[path = "kubernetes/oci.rs"]
mod oci;
#[path = "kubernetes/runc.rs"]
mod runc;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use imds_guard_e2e::{
    Action, IMDS_PORT, IMDS_V4, IMDS_V6, Sandbox, imds_guard_bin, privileged_or_skip,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;
/// The container `podman kube play` names for the pod's one container.
const CONTAINER: &str = "imds-guard-imds-guard";
/// The pin directory the test's site ConfigMap names, in its bpffs.
const PIN_DIR: &str = "/sys/fs/bpf/imds-guard";

/// The DaemonSet, built into the tests: the guest has no checkout.
const DAEMONSET: &str = include_str!("../../deploy/kubernetes/daemonset.yaml");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(file)
}

/// The DaemonSet's pod template as a Pod: `spec.template`'s lines, moved
/// four columns left, under `kind: Pod` and the DaemonSet's name and
/// namespace. Panics unless the template is the last thing in the file
/// (so that every line of it is taken).
fn pod_of_daemonset(daemonset: &str) -> String {
    let field = |name: &str| {
        daemonset
            .lines()
            .find_map(|l| l.strip_prefix(&format!("  {name}: ")))
            .unwrap_or_else(|| panic!("no metadata.{name} in the DaemonSet"))
            .to_owned()
    };
    let (name, namespace) = (field("name"), field("namespace"));
    let template = daemonset
        .split_once("\n  template:\n")
        .expect("a spec.template")
        .1;
    let mut pod = String::from("apiVersion: v1\nkind: Pod\n");
    for line in template.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let moved = line
            .strip_prefix("    ")
            .unwrap_or_else(|| panic!("{line:?} is not in the template: it must come last"));
        pod.push_str(moved);
        pod.push('\n');
        if moved == "metadata:" {
            pod.push_str(&format!("  name: {name}\n  namespace: {namespace}\n"));
        }
    }
    pod
}

/// The image the DaemonSet names.
fn image(daemonset: &str) -> String {
    daemonset
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("an image")
        .to_owned()
}

/// Podman, in the test's network and mount namespaces, with its
/// containers.conf. Cleans up on drop: the pod, the pins, the namespace.
struct Podman {
    /// Holds the mount namespace (`unshare --mount ... sleep`).
    holder: Child,
    netns: PathBuf,
    conf: PathBuf,
    pod: PathBuf,
    /// The cgroups podman made for each pod played (`/libpod_parent/ID`),
    /// which it leaves behind on this machine's layout.
    cgroups: Vec<String>,
}

impl Podman {
    fn new(sb: &Sandbox) -> Self {
        let dir = sb.dir.path();
        let conf = dir.join("containers.conf");
        let limit = |resource| {
            let (soft, _) = nix::sys::resource::getrlimit(resource).expect("getrlimit");
            soft.min(1 << 16)
        };
        fs::write(
            &conf,
            format!(
                "[containers]\npidns = \"host\"\ndefault_ulimits = [\"nofile={n}:{n}\", \"nproc={p}:{p}\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"runc\"\n",
                n = limit(nix::sys::resource::Resource::RLIMIT_NOFILE) / 2,
                p = limit(nix::sys::resource::Resource::RLIMIT_NPROC) / 2,
            ),
        )
        .expect("containers.conf");
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --mount");
        let podman = Self {
            holder,
            netns: sb.netns_path().to_owned(),
            conf,
            pod: dir.join("pod.yaml"),
            cgroups: Vec::new(),
        };
        // The unshare has happened once its namespace differs from ours.
        let ours = fs::read_link("/proc/self/ns/mnt").expect("our mount namespace");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(format!("/proc/{}/ns/mnt", podman.holder.id())).ok()
            == Some(ours.clone())
        {
            assert!(Instant::now() < deadline, "unshare made no mount namespace");
            thread::sleep(Duration::from_millis(10));
        }
        podman.sh(
            "mount -t bpf bpf /sys/fs/bpf && mount -t tmpfs tmpfs /var/log && mkdir /var/log/pods",
        );
        podman
    }

    /// `program args` in the test's namespaces.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program)
            .env("CONTAINERS_CONF", &self.conf)
            .stdin(Stdio::null());
        c
    }

    fn sh(&self, script: &str) -> Output {
        let out = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("sh");
        assert!(out.status.success(), "{script}: {}", text(&out));
        out
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.command("podman").args(args).output().expect("podman")
    }

    /// `podman kube play` of the DaemonSet's pod, with the repository's
    /// policy ConfigMap and the test's site ConfigMap.
    fn play(&mut self, site: &Path) {
        let (policy, site, pod) = (deploy("policy.yaml"), site.display(), self.pod.display());
        let out = self.podman(&[
            "kube",
            "play",
            "--configmap",
            &policy.display().to_string(),
            "--configmap",
            &site.to_string(),
            &pod.to_string(),
        ]);
        assert!(out.status.success(), "podman kube play: {}", text(&out));
        let out = self.podman(&[
            "pod",
            "inspect",
            "--format",
            "{{.CgroupPath}}",
            "imds-guard",
        ]);
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(path.starts_with("/libpod_parent/"), "{}", text(&out));
        self.cgroups.push(path);
    }

    fn down(&self) {
        let out = self.podman(&["kube", "down", &self.pod.display().to_string()]);
        assert!(out.status.success(), "podman kube down: {}", text(&out));
    }

    /// The agent's log, one JSON record a line.
    fn records(&self) -> Vec<Value> {
        let out = self.podman(&["logs", CONTAINER]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the agent's `ready` record.
    fn ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(ready) = self
                .records()
                .into_iter()
                .find(|r| r["ready"] == Value::Bool(true))
            {
                return ready;
            }
            assert!(
                Instant::now() < deadline,
                "the pod's agent is not ready:\n{}\n{}",
                text(&self.podman(&["logs", CONTAINER])),
                text(&self.podman(&["ps", "-a"]))
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's effective capabilities, from its /proc status.
    fn agent_caps(&self) -> u64 {
        let out = self.podman(&["inspect", "--format", "{{.State.Pid}}", CONTAINER]);
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        cap_set(
            &fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status"),
            "CapEff",
        )
    }

    /// `imds-guard ARGS` on the test's pins.
    fn cli(&self, args: &[&str]) -> Output {
        self.command(&imds_guard_bin().display().to_string())
            .args(args)
            .args(["--pin-dir", PIN_DIR])
            .output()
            .expect("imds-guard")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["kube", "down", &self.pod.display().to_string()]);
        let _ = self.cli(&["detach"]);
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for hierarchy in cgroup_mounts() {
            for pod in &self.cgroups {
                remove_tree(&hierarchy.join(pod.trim_start_matches('/')));
            }
            let _ = fs::remove_dir(hierarchy.join("libpod_parent"));
        }
    }
}

/// Where every cgroup hierarchy (v1 and v2) is mounted.
fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Removes the cgroup `dir` and those below it, deepest first (a cgroup
/// goes with `rmdir` once it has no children and no processes).
fn remove_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

fn text(out: &Output) -> String {
    format!(
        "{}{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A capability set of a `/proc/PID/status` text (`CapEff`, `CapBnd`).
fn cap_set(status: &str, set: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {set} in {status}"))
}

/// Whether podman and the image are here; says why not (a failure in CI).
fn podman_or_skip(test: &str, image: &str) -> bool {
    let have = Command::new("podman")
        .args(["image", "exists", image])
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return true;
    }
    let reason = format!("no podman, or no image {image}: cargo xtask setup && cargo xtask image");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {reason} (CI=true: a skip is a failure)"
    );
    eprintln!("skipping: {test}: {reason}");
    false
}

#[test]
fn the_daemonset_pod_guards_the_cgroup_and_a_new_pod_adopts_the_guard() {
    let test = "the_daemonset_pod_guards_the_cgroup_and_a_new_pod_adopts_the_guard";
    let daemonset = DAEMONSET;
    if runc::in_the_guest() {
        eprintln!("{test}: not run in the QEMU guest, which has no podman (runc.rs runs there)");
        return;
    }
    if !privileged_or_skip(test) || !podman_or_skip(test, &image(daemonset)) {
        return;
    }
    let sb = Sandbox::new();
    let nobody = |sb: &Sandbox| sb.probe_as(1001, 1001);
    // Unguarded, the path works: what the guard closes is open.
    nobody(&sb)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();

    let mut podman = Podman::new(&sb);
    fs::write(&podman.pod, pod_of_daemonset(daemonset)).expect("pod.yaml");
    let site = sb.dir.path().join("site.yaml");
    fs::write(
        &site,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: imds-guard-site\n  \
             namespace: imds-guard\ndata:\n  IMDS_GUARD_CGROUP: {}\n  IMDS_GUARD_PIN_DIR: {PIN_DIR}\n",
            sb.cgroup.path().display()
        ),
    )
    .expect("site.yaml");
    podman.play(&site);
    let ready = podman.ready();
    assert_eq!(ready["cgroup"], sb.cgroup.path().display().to_string());
    assert_eq!(ready["watch_config"], Value::Bool(true), "{ready}");
    assert_eq!(ready["adopted"], 0, "{ready}");

    // The repository's policy: root on the host, and no one else here.
    let root = sb.probe_as(0, 0);
    root.run(Action::connect(IMDS_V4, IMDS_PORT)).assert_ok();
    for ip in [std::net::IpAddr::from(IMDS_V4), IMDS_V6.into()] {
        nobody(&sb)
            .run(Action::connect(ip, IMDS_PORT))
            .assert_errno(EPERM);
    }

    // The capabilities listed, and no more (those this machine's root has).
    let listed = [39, 38, 12, 21, 19, 24] // BPF PERFMON NET_ADMIN SYS_ADMIN SYS_PTRACE SYS_RESOURCE
        .iter()
        .fold(0u64, |m, c| m | 1 << c);
    let ours = cap_set(
        &fs::read_to_string("/proc/self/status").expect("our status"),
        "CapEff",
    );
    assert_eq!(
        podman.agent_caps(),
        listed & ours,
        "the agent's capabilities are the DaemonSet's list"
    );

    // The pod goes (a rolling upgrade deletes it first): the pinned guard
    // stays enforcing with no agent.
    podman.down();
    nobody(&sb)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(EPERM);
    root.run(Action::connect(IMDS_V4, IMDS_PORT)).assert_ok();
    // The new pod takes the pinned guard over.
    podman.play(&site);
    let ready = podman.ready();
    assert!(ready["adopted"].as_u64().is_some_and(|n| n > 0), "{ready}");
    nobody(&sb)
        .run(Action::connect(IMDS_V6, IMDS_PORT))
        .assert_errno(EPERM);
    root.run(Action::connect(IMDS_V4, IMDS_PORT)).assert_ok();

    let status = podman.cli(&["status", "--short"]);
    assert!(status.status.success(), "{}", text(&status));
    podman.down();
    let detach = podman.cli(&["detach"]);
    assert!(detach.status.success(), "{}", text(&detach));
    nobody(&sb)
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_ok();
}

#[test]
fn the_pod_is_the_daemonsets_template_line_for_line() {
    let daemonset = DAEMONSET;
    let pod = pod_of_daemonset(daemonset);
    assert!(pod.starts_with("apiVersion: v1\nkind: Pod\nmetadata:\n  name: imds-guard\n"));
    for needle in [
        "hostNetwork: true",
        "hostPID: true",
        "- --watch-config",
        "name: imds-guard-site",
    ] {
        assert!(pod.contains(needle), "{needle}: {pod}");
    }
    let template_lines = daemonset
        .split_once("\n  template:\n")
        .expect("template")
        .1
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    // Every line of the template, plus the header and the name.
    assert_eq!(pod.lines().count(), template_lines + 4, "{pod}");
}
