//! The DaemonSet's pod run by runc, the OCI runtime under containerd and
//! CRI-O, from the image `cargo xtask image` builds: the container's
//! configuration is made from runc's own default and the pod template
//! (`oci.rs`), so its namespaces, capabilities and mounts are the
//! manifest's.
//!
//! In the QEMU guest of `cargo xtask vm-test` (and only there: `/init`
//! says so with `IMDS_GUARD_TEST_GUEST=1`, and the test checks that its
//! root is the guest's initramfs) the pod gets no site ConfigMap, so the
//! agent does what it does on a node: leaves its container's cgroup
//! namespace for pid 1's and attaches at the root of the guest's cgroup
//! hierarchy, where every process is. Anywhere else the test gives the
//! pod a site ConfigMap naming a cgroup the test made
//! (`IMDS_GUARD_CGROUP`), as the podman test does: no test attaches at
//! this machine's root.
//!
//! The guest's root is an initramfs, which `pivot_root(2)` cannot leave
//! (EINVAL): there runc runs with `--no-pivot`, its documented way for a
//! root on a ramdisk (it moves the container's root over `/` and
//! chroots instead). Nothing else differs.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use imds_guard::kernel::{inspect, programs};
use imds_guard_e2e::{
    Action, IMDS_PORT, IMDS_V4, IMDS_V6, NOBODY, Probe, Sandbox, TempDir, TestCgroup, UDP_PORT,
    cgroup2_root, field, imds_guard_bin, privileged_or_skip, slowdown,
};
use serde_json::Value;

use super::{
    DAEMONSET, cap_set,
    oci::{self, Image, Node, Runtime},
    text,
};

const POLICY: &str = include_str!("../../../deploy/kubernetes/policy.yaml");
/// The pin directory the agent takes by default, in the node's bpffs.
const PIN_DIR: &str = "imds-guard";
const READY: Duration = Duration::from_secs(60);

/// Whether this is the QEMU guest of `cargo xtask vm-test`, whose cgroup
/// root a test may attach at. Panics if the environment says so and the
/// root file system is not the guest's initramfs.
pub fn in_the_guest() -> bool {
    if std::env::var("IMDS_GUARD_TEST_GUEST").as_deref() != Ok("1") {
        return false;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root_fs = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (left.split(' ').nth(4) == Some("/")).then(|| right.split(' ').next().map(str::to_owned))?
    });
    assert!(
        matches!(root_fs.as_deref(), Some("rootfs" | "ramfs" | "tmpfs"))
            && Path::new("/vm/env").is_file(),
        "IMDS_GUARD_TEST_GUEST=1, but / is {root_fs:?} and there is no /vm/env: not the guest"
    );
    true
}

/// The image's OCI archive: `IMDS_GUARD_TEST_IMAGE` (the guest's `/init`
/// names the one it carries), else the newest `cargo xtask image` built.
fn image_archive() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IMDS_GUARD_TEST_IMAGE") {
        return Some(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".oci.tar"))
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// A manifest of deploy/kubernetes/ as data.
fn manifest(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("reading a manifest: {e}"))
}

/// Whether runc and the image are here; says why not (a failure in CI).
fn runc_or_skip(test: &str) -> Option<PathBuf> {
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let archive = image_archive().filter(|a| a.is_file());
    if let (true, Some(archive)) = (runc, &archive) {
        return Some(archive.clone());
    }
    let reason = format!(
        "runc {}, image archive {archive:?}: apt-get install runc; cargo xtask image",
        if runc { "found" } else { "missing" }
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {reason} (CI=true: a skip is a failure)"
    );
    eprintln!("skipping: {test}: {reason}");
    None
}

/// Containers of the pod, run by runc in the test's network namespace
/// (`hostNetwork` is that namespace), with a state directory of the
/// test's. Kills and deletes them on drop.
struct Runc {
    netns: PathBuf,
    state: PathBuf,
    bundle: PathBuf,
    no_pivot: bool,
    running: Vec<String>,
    /// The cgroup the containers' cgroups are made in.
    parent: TestCgroup,
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .args(["--", "runc", "--root"])
            .arg(&self.state)
            .stdin(Stdio::null());
        c
    }

    fn runc(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("runc")
    }

    fn log(&self, id: &str) -> PathBuf {
        self.bundle.join(format!("{id}.log"))
    }

    /// Starts container `id` of the bundle, detached, its output in its
    /// log.
    fn run(&mut self, id: &str) {
        let log = File::create(self.log(id)).expect("the container's log");
        let mut c = self.command();
        c.args(["run", "--detach", "--bundle"]).arg(&self.bundle);
        if self.no_pivot {
            c.arg("--no-pivot");
        }
        let out = c
            .arg(id)
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .status()
            .expect("runc run");
        self.running.push(id.to_owned());
        assert!(
            out.success(),
            "runc run {id}: {out}: {}",
            fs::read_to_string(self.log(id)).unwrap_or_default()
        );
    }

    /// The agent's JSON records so far.
    fn records(&self, id: &str) -> Vec<Value> {
        fs::read_to_string(self.log(id))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn ready(&self, id: &str) -> Value {
        let deadline = Instant::now() + slowdown::scaled(READY);
        loop {
            if let Some(r) = self
                .records(id)
                .into_iter()
                .find(|r| field(r, "ready") == Some(&Value::Bool(true)))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the container's agent is not ready:\n{}\n{}",
                fs::read_to_string(self.log(id)).unwrap_or_default(),
                text(&self.runc(&["state", id]))
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `runc state`'s status and the container's pid.
    fn state(&self, id: &str) -> (String, u64) {
        let out = self.runc(&["state", id]);
        assert!(out.status.success(), "runc state {id}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("runc state's JSON");
        (
            v["status"].as_str().unwrap_or("").to_owned(),
            v["pid"].as_u64().unwrap_or(0),
        )
    }

    /// SIGKILL to the container (the agent), until runc says it stopped,
    /// and deletes it.
    fn kill(&mut self, id: &str) {
        let out = self.runc(&["kill", id, "KILL"]);
        assert!(out.status.success(), "runc kill {id}: {}", text(&out));
        let deadline = Instant::now() + slowdown::scaled(Duration::from_secs(10));
        while self.state(id).0 != "stopped" {
            assert!(Instant::now() < deadline, "{id} did not stop");
            thread::sleep(Duration::from_millis(20));
        }
        let out = self.runc(&["delete", id]);
        assert!(out.status.success(), "runc delete {id}: {}", text(&out));
        self.running.retain(|r| r != id);
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        if thread::panicking() {
            for log in fs::read_dir(&self.bundle).into_iter().flatten().flatten() {
                let path = log.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    eprintln!("{}:\n{text}", path.display());
                }
            }
        }
        for id in &self.running {
            let _ = self.runc(&["delete", "--force", id]);
        }
        // On a cgroup v1 or hybrid host runc made the parent's path in
        // every v1 hierarchy too; the TestCgroup removes the v2 one.
        let rel = self
            .parent
            .path()
            .strip_prefix(cgroup2_root())
            .map(Path::to_owned)
            .unwrap_or_default();
        if !rel.as_os_str().is_empty() {
            for hierarchy in super::cgroup_mounts() {
                if hierarchy != cgroup2_root() {
                    super::remove_tree(&hierarchy.join(&rel));
                }
            }
        }
    }
}

/// Programs attached to `cgroup` itself, per program of ours.
fn attachments(cgroup: &Path) -> Vec<usize> {
    inspect::attached_per_hook(cgroup).expect("query the cgroup's programs")
}

/// A ConfigMap's data from its manifest.
fn config_map(manifest: &Value) -> (String, BTreeMap<String, String>) {
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned();
    let data = manifest["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_owned()))
        .collect();
    (name, data)
}

/// Sets its flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Connects as `nobody` from `cgroup`, in rounds, until `stop`: attempts,
/// and those refused with EPERM, counted as each round ends.
fn hammer(probe: &Probe, stop: &AtomicBool, attempts: &AtomicU64, eperm: &AtomicU64) {
    let probe = probe.clone().repeat(200);
    while !stop.load(Ordering::Relaxed) {
        let r = probe.run(Action::connect(IMDS_V4, IMDS_PORT));
        eperm.fetch_add(u64::from(r.eperm), Ordering::Relaxed);
        attempts.fetch_add(u64::from(r.attempts), Ordering::Relaxed);
    }
}

#[test]
fn runc_runs_the_daemonset_pod_and_a_new_container_adopts_the_guard_without_a_gap() {
    let test = "runc_runs_the_daemonset_pod_and_a_new_container_adopts_the_guard_without_a_gap";
    if !privileged_or_skip(test) {
        return;
    }
    let Some(archive) = runc_or_skip(test) else {
        return;
    };
    let guest = in_the_guest();
    let sb = Sandbox::new();
    let scratch = TempDir::new();
    let bundle = scratch.path().join("bundle");
    let image: Image = oci::unpack(
        &archive,
        &scratch.path().join("layout"),
        &bundle.join("rootfs"),
    );

    // Where the probes run: in the guest, the root cgroup (and a cgroup
    // made after the agent started), which only a guard at the root
    // covers; elsewhere the test's cgroup the agent is told to guard.
    let probed: PathBuf = if guest {
        cgroup2_root()
    } else {
        sb.cgroup.path().to_owned()
    };
    let nobody = Probe::at(sb.netns_path(), &probed).uid(NOBODY).gid(NOBODY);
    let root = Probe::at(sb.netns_path(), &probed).uid(0).gid(0);
    // Unguarded, the path works: what the guard closes is open.
    let r = nobody.run(Action::http(IMDS_V4, IMDS_PORT));
    assert_eq!(r.assert_ok().body, sb.imds.credentials_body());

    // The node: its bpffs is the test's own (its pins go with it), its
    // pod logs a directory of the test's; /sys/fs/cgroup, /etc/passwd and
    // /etc/group are the machine's.
    let (policy_name, policy) = config_map(&manifest(POLICY));
    let mut config_maps = BTreeMap::from([(policy_name, policy)]);
    if !guest {
        config_maps.insert(
            "imds-guard-site".to_owned(),
            BTreeMap::from([(
                "IMDS_GUARD_CGROUP".to_owned(),
                sb.cgroup.path().display().to_string(),
            )]),
        );
    }
    let node = Node {
        host_paths: BTreeMap::from([
            ("/sys/fs/bpf", sb.bpffs.path().to_owned()),
            ("/var/log/pods", scratch.path().join("pods")),
        ]),
        config_maps,
        volumes: scratch.path().join("volumes"),
    };
    let parent = TestCgroup::new();
    let cgroups_path = format!(
        "/{}",
        parent
            .path()
            .strip_prefix(cgroup2_root())
            .expect("below the root")
            .display()
    );
    let mut runc = Runc {
        netns: sb.netns_path().to_owned(),
        state: scratch.path().join("state"),
        bundle: bundle.clone(),
        no_pivot: guest,
        running: Vec::new(),
        parent,
    };
    let out = runc.runc(&["spec", "--bundle", &bundle.display().to_string()]);
    assert!(out.status.success(), "runc spec: {}", text(&out));
    let default: Value = serde_json::from_str(
        &fs::read_to_string(bundle.join("config.json")).expect("runc spec's config.json"),
    )
    .expect("runc spec's JSON");
    let daemonset = manifest(DAEMONSET);
    let pod = &daemonset["spec"]["template"]["spec"];
    let ours = fs::read_to_string("/proc/self/status").expect("our status");
    // A cgroup v2 host (the guest): the container has a cgroup namespace
    // of its own, which the agent leaves for pid 1's.
    let unified = cgroup2_root() == Path::new("/sys/fs/cgroup");
    let bounding = cap_set(&ours, "CapBnd");
    let container_cgroup = |id: &str| {
        oci::config(
            pod,
            &image,
            &node,
            &Runtime {
                default: default.clone(),
                cgroups_path: &format!("{cgroups_path}/{id}"),
                bounding,
                cgroupns: unified,
            },
        )
    };

    // The first pod.
    let config = container_cgroup("first");
    fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
    runc.run("first");
    let ready = runc.ready("first");
    assert_eq!(field(&ready, "adopted"), Some(&Value::from(0)), "{ready}");
    let ns = if unified { "entered" } else { "host" };
    assert_eq!(
        field(&ready, "cgroup_ns").cloned(),
        Some(ns.into()),
        "{ready}"
    );
    if guest {
        assert!(unified, "the guest mounts cgroup2 at /sys/fs/cgroup");
    }
    let want_root = Value::Bool(guest);
    assert_eq!(field(&ready, "cgroup_root"), Some(&want_root), "{ready}");
    if guest {
        assert_eq!(
            field(&ready, "cgroup")
                .and_then(Value::as_str)
                .map(PathBuf::from),
            Some(cgroup2_root()),
            "{ready}"
        );
        assert_eq!(
            attachments(&cgroup2_root()),
            vec![1; programs::GUARDING],
            "one attachment per hook at the guest's root"
        );
    }

    // The repository's policy: root on the host, and no one else.
    for ip in [std::net::IpAddr::from(IMDS_V4), IMDS_V6.into()] {
        nobody
            .run(Action::connect(ip, IMDS_PORT))
            .assert_errno(libc::EPERM);
    }
    if guest {
        // The fake metadata service here is a local service in the guarded
        // root cgroup, and [allow.host] refuses its TCP replies to the
        // protected address (sent by the kernel, not by their owner: see
        // docs/threat-model.md), so root is shown let through by a
        // datagram the service counts.
        let udp = SocketAddr::new(IMDS_V4.into(), UDP_PORT);
        let before = sb.imds.udp_received(udp);
        root.run(Action::UdpSend(udp)).assert_ok();
        assert_eq!(
            sb.imds.udp_received(udp),
            before + 1,
            "root's datagram arrived"
        );
        nobody.run(Action::UdpSend(udp)).assert_errno(libc::EPERM);
    } else {
        root.run(Action::http(IMDS_V4, IMDS_PORT)).assert_ok();
    }
    let later = TestCgroup::new();
    if guest {
        // A cgroup made after the agent started, outside its container's.
        Probe::at(sb.netns_path(), later.path())
            .run(Action::connect(IMDS_V4, IMDS_PORT))
            .assert_errno(libc::EPERM);
    }

    // The capabilities the manifest lists, and no more.
    let (_, pid) = runc.state("first");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
    let listed = oci::cap_mask(&pod["containers"][0]["securityContext"]["capabilities"]["add"]);
    assert_eq!(
        listed.count_ones(),
        6,
        "BPF PERFMON NET_ADMIN SYS_ADMIN SYS_PTRACE SYS_RESOURCE"
    );
    if guest {
        assert_eq!(
            bounding & listed,
            listed,
            "root in the guest holds every capability"
        );
    }
    assert_eq!(
        cap_set(&status, "CapEff"),
        listed & bounding,
        "the agent's capabilities are the DaemonSet's list"
    );

    // The container is killed and a new one started; nobody, connecting
    // throughout, is never let through.
    let stop = AtomicBool::new(false);
    let (attempts, eperm) = (AtomicU64::new(0), AtomicU64::new(0));
    let (in_gap, second) = thread::scope(|s| {
        // Stops the hammer however this ends (the scope waits for it).
        let _stop = Stop(&stop);
        let h = s.spawn(|| hammer(&nobody, &stop, &attempts, &eperm));
        while attempts.load(Ordering::Relaxed) == 0 {
            thread::sleep(Duration::from_millis(20));
        }
        runc.kill("first");
        let killed = attempts.load(Ordering::Relaxed);
        fs::write(
            bundle.join("config.json"),
            container_cgroup("second").to_string(),
        )
        .expect("config.json");
        runc.run("second");
        let second = runc.ready("second");
        // At least one round whole after the new agent is ready.
        let ready_at = attempts.load(Ordering::Relaxed);
        while attempts.load(Ordering::Relaxed) <= ready_at {
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().expect("the hammer");
        (ready_at - killed, second)
    });
    let (attempts, eperm) = (attempts.into_inner(), eperm.into_inner());
    assert_eq!(
        eperm,
        attempts,
        "nobody got through {} of {attempts} times",
        attempts - eperm
    );
    assert!(
        in_gap > 0,
        "no connect counted between the kill and the new agent"
    );
    eprintln!(
        "{test}: {attempts} connects by nobody, {in_gap} of them between the kill and the new \
         agent's ready record, all refused"
    );
    assert!(
        field(&second, "adopted").and_then(Value::as_u64) == Some(programs::GUARDING as u64),
        "the new container adopts every pinned program: {second}"
    );
    if guest {
        assert_eq!(
            attachments(&cgroup2_root()),
            vec![1; programs::GUARDING],
            "still one attachment per hook"
        );
    }

    // `status`, from the node: what is guarded, and by whom.
    let pins = sb.bpffs.path().join(PIN_DIR);
    let status = |json: bool| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", sb.netns_path().display()))
            .arg("--")
            .arg(imds_guard_bin())
            .arg("status");
        if json {
            c.arg("--json");
        }
        c.arg("--pin-dir").arg(&pins).output().expect("status")
    };
    let out = status(true);
    let s: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {}", text(&out)));
    assert_eq!(s["enforcing"], true, "{s}");
    assert_eq!(s["agent_alive"], true, "{s}");
    assert_eq!(s["guards"]["cgroup_root"], want_root, "{s}");
    let out = status(false);
    let said = String::from_utf8_lossy(&out.stdout);
    let guards = said
        .lines()
        .find(|l| l.trim_start().starts_with("guards:"))
        .unwrap_or_else(|| panic!("no guards line: {said}"));
    if guest {
        assert!(guards.contains("every process"), "{guards}");
    } else {
        assert!(guards.contains("ONLY the processes below"), "{guards}");
    }
    drop(later);
    runc.kill("second");
}
