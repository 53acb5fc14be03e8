//! The status file, end to end: the agent writes what `status --json`
//! says where a monitor that is not root reads it, keeps it current through
//! reloads and counters, and says it stopped when it does, leaving the
//! guard pinned.

#![expect(
    clippy::expect_used,
    reason = "test helpers panic with a message, like the tests"
)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use imds_guard_e2e::{Action, IMDS_PORT, IMDS_V4, Sandbox, privileged_or_skip};
use serde_json::Value;

const P1: &str = "[allow]\nuids = [1001]\n";
const P2: &str = "[allow]\nuids = [1001, 1002]\n";
/// Longer than the agent's period (10 s) with room to spare.
const PERIOD: Duration = Duration::from_secs(25);

/// The file as `nobody` reads it: the proof a monitor that is not root can.
fn read_as_nobody(path: &Path) -> Option<Value> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(path)
        .output()
        .expect("run cat as nobody");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until the file, read as `nobody`, satisfies `pred`.
fn wait_for(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PERIOD;
    loop {
        let read = read_as_nobody(path);
        if let Some(s) = read.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the status file never said {what}: {read:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn the_agent_keeps_a_status_file_anyone_can_read() {
    if !privileged_or_skip("the_agent_keeps_a_status_file_anyone_can_read") {
        return;
    }
    let w = Sandbox::new();
    w.policy(P1);
    // The test's directory is root's alone: open it to everyone, as /run
    // is, so that `nobody` meets only the modes the agent gives.
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test directory");
    let dir = w.dir.path().join("run");
    let file = dir.join("status.json");
    let agent = w.start_agent(&["--status-file", file.to_str().expect("utf-8")]);

    let started = wait_for(&file, "the agent started", |s| {
        s["agent"]["state"] == "running"
    });
    assert_eq!(mode_of(&file), 0o644);
    assert_eq!(mode_of(&dir), 0o755);
    let (_, kernel) = w.status();
    assert_eq!(started["enforcing"], true, "{started}");
    assert_eq!(started["attached"], true, "{started}");
    assert_eq!(started["mode"], "enforce", "{started}");
    assert_eq!(started["fallback"], false, "{started}");
    assert_eq!(started["forward"]["guarded"], true, "{started}");
    assert_eq!(started["agent"]["pid"], agent.pid(), "{started}");
    assert_eq!(started["policy"]["digest"], kernel["policy"]["digest"]);
    assert!(started["updated_at"].as_str().is_some(), "{started}");

    // `status` as nobody, who cannot read the pins, prints the file, said
    // to be the agent's snapshot, and still exits 3: the kernel was not
    // read. (The bpf filesystem is root's alone, as systemd mounts it.)
    let bpffs = w.pin_dir().parent().expect("a bpffs").to_owned();
    std::fs::set_permissions(&bpffs, std::fs::Permissions::from_mode(0o700))
        .expect("chmod the test's bpffs");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(imds_guard_e2e::imds_guard_bin())
        .args(["status", "--pin-dir"])
        .arg(w.pin_dir())
        .arg("--status-file")
        .arg(&file)
        .output()
        .expect("status as nobody");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.starts_with("imds-guard: NOT read from the kernel"),
        "{said}"
    );
    let digest = started["policy"]["digest"].as_str().expect("a digest");
    assert!(said.contains(digest), "{said}");

    // The counters come with the next period.
    w.probe()
        .run(Action::connect(IMDS_V4, IMDS_PORT))
        .assert_errno(libc::EPERM);
    let counted = wait_for(&file, "one denial", |s| {
        s["counters"]["denied"].as_u64() >= Some(1)
    });
    assert!(
        counted["updated_unix"].as_u64() >= started["updated_unix"].as_u64(),
        "{counted}"
    );

    // A reload taken is written with the new digest; one refused says so.
    w.policy(P2);
    agent.sighup();
    let reloaded = wait_for(&file, "the new policy", |s| {
        s["policy"]["digest"] != started["policy"]["digest"]
    });
    let (_, kernel) = w.status();
    assert_eq!(reloaded["policy"]["digest"], kernel["policy"]["digest"]);
    w.policy("[allow]\nuids = [\"no such user here\"\n");
    agent.sighup();
    let refused = wait_for(&file, "the reload refused", |s| {
        s["last_reload_refused"] == true
    });
    assert_eq!(refused["policy"]["digest"], reloaded["policy"]["digest"]);

    // Stopping leaves the guard pinned, and the file says both.
    let exit = agent.terminate();
    assert_eq!(exit.code(), Some(0), "{}", agent.output());
    let stopped = read_as_nobody(&file).expect("the file is left for monitors");
    assert_eq!(stopped["agent"]["state"], "stopped", "{stopped}");
    assert_eq!(stopped["agent_alive"], false, "{stopped}");
    assert_eq!(stopped["enforcing"], true, "{stopped}");
    let note = stopped["agent"]["stopped"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("SIGTERM") && note.contains("still pinned"),
        "{stopped}"
    );
    let (code, kernel) = w.status();
    assert_eq!(code, Some(0), "{kernel}");
    assert_eq!(kernel["agent_alive"], false, "{kernel}");
}
