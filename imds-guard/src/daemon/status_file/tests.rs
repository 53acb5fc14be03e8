//! The status file's writer: a reader sees a whole file, old or new, that
//! anyone may read, and says what the agent is doing.

use std::{
    io::Read as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::PathBuf,
};

use imds_guard_common::{Config, mode};

use super::*;
use crate::kernel::counters::Counters;

/// A directory of the test's own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "imds-guard-status-file-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("make the test directory");
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn the_file_is_replaced_whole_and_readable_by_all() {
    let dir = Dir::new("replace");
    let path = dir.0.join("status.json");
    fs::write(&path, "old\n").expect("write the old file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    // A reader holding the old file keeps reading all of it: the new one
    // is another file renamed over it, never the old one rewritten.
    let mut reader = fs::File::open(&path).expect("open the old file");
    write_atomic(&path, b"new\n").expect("write");
    let mut held = String::new();
    reader.read_to_string(&mut held).expect("read");
    assert_eq!(held, "old\n");
    assert_eq!(fs::read_to_string(&path).expect("read"), "new\n");
    assert_eq!(mode_of(&path), 0o644);
    let left: Vec<_> = fs::read_dir(&dir.0)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("status.json")]);
}

#[test]
fn a_link_planted_where_the_temporary_file_goes_is_not_followed() {
    let dir = Dir::new("planted");
    let path = dir.0.join("status.json");
    let victim = dir.0.join("victim");
    fs::write(&victim, "keep\n").expect("write the victim");
    let temp = dir
        .0
        .join(format!(".status.json.{}.tmp", std::process::id()));
    symlink(&victim, &temp).expect("plant a link");
    write_atomic(&path, b"new\n").expect("write");
    assert_eq!(fs::read_to_string(&victim).expect("read"), "keep\n");
    assert_eq!(fs::read_to_string(&path).expect("read"), "new\n");
    assert!(!temp.exists(), "the planted link is gone");
}

#[test]
fn a_missing_directory_is_made_readable_by_all() {
    let dir = Dir::new("mkdir");
    let path = dir.0.join("run").join("status.json");
    write_atomic(&path, b"{}\n").expect("write");
    assert_eq!(mode_of(&dir.0.join("run")), 0o755);
    assert_eq!(mode_of(&path), 0o644);
}

#[test]
fn status_file_takes_a_path_or_none() {
    assert_eq!(Target::parse("none"), Ok(Target::Off));
    assert_eq!(
        Target::parse("/run/x.json"),
        Ok(Target::File(PathBuf::from("/run/x.json")))
    );
    assert!(Target::parse("").is_err());
}

/// A guard attached with every hook, enforcing, its forward path held.
fn enforcing() -> Status {
    let mut status = Status::guarded_for_test(
        1,
        Config {
            mode: mode::ENFORCE,
            digest: [0xab; 32],
            agent_pid: 42,
            ..Config::default()
        },
    );
    status.counters = Some(Counters {
        denied: 7,
        ..Counters::default()
    });
    status
}

const AT: u64 = 1_795_434_009;

fn agent(why: Why) -> Agent {
    Agent { pid: 42, why }
}

#[test]
fn a_running_agent_writes_what_status_says_with_when_and_why() {
    let s = snapshot(Ok(enforcing()), agent(Why::Reloaded), AT);
    assert_eq!(s["enforcing"], true, "{s}");
    assert_eq!(s["attached"], true, "{s}");
    assert_eq!(s["mode"], "enforce", "{s}");
    assert_eq!(s["fallback"], false, "{s}");
    assert_eq!(s["policy"]["digest"], "ab".repeat(32), "{s}");
    assert_eq!(s["counters"]["denied"], 7, "{s}");
    assert_eq!(s["forward"]["guarded"], true, "{s}");
    assert_eq!(s["agent_alive"], true, "{s}");
    assert_eq!(s["updated_at"], "2026-11-23T11:40:09Z", "{s}");
    assert_eq!(s["updated_unix"], AT, "{s}");
    assert_eq!(s["agent"]["pid"], 42, "{s}");
    assert_eq!(s["agent"]["state"], "running", "{s}");
    assert_eq!(s["agent"]["written_because"], "reloaded", "{s}");
    assert_eq!(s["agent"]["stopped"], Value::Null, "{s}");
    assert!(
        s["about"].as_str().is_some_and(|a| a.contains("snapshot")),
        "{s}"
    );
    // The same fields as `status --json`, in the same words.
    let from_status = inspect::to_json(&enforcing());
    for (key, value) in from_status.as_object().expect("an object") {
        assert_eq!(&s[key], value, "{key}");
    }
}

#[test]
fn a_stopping_agent_says_the_guard_stays_pinned() {
    let s = snapshot(Ok(enforcing()), agent(Why::Stopped("SIGTERM")), AT);
    assert_eq!(s["agent"]["state"], "stopped", "{s}");
    assert_eq!(s["agent_alive"], false, "{s}");
    assert_eq!(s["enforcing"], true, "{s}");
    let note = s["agent"]["stopped"].as_str().expect("a note");
    assert!(
        note.starts_with("SIGTERM") && note.contains("still pinned and enforcing"),
        "{note}"
    );
}

#[test]
fn a_stopping_agent_with_nothing_pinned_says_the_guard_is_off() {
    let mut detached = enforcing();
    detached.links.clear();
    let s = snapshot(Ok(detached), agent(Why::Stopped("SIGTERM")), AT);
    let note = s["agent"]["stopped"].as_str().expect("a note");
    assert!(note.contains("the guard is off"), "{note}");
    assert_eq!(s["attached"], false, "{s}");
}

#[test]
fn pins_that_cannot_be_read_are_said() {
    let s = snapshot(Err("cannot open".to_owned()), agent(Why::Periodic), AT);
    assert_eq!(s["error"], "cannot open", "{s}");
    assert_eq!(s["agent"]["state"], "running", "{s}");
    assert_eq!(s["updated_unix"], AT, "{s}");
}

#[test]
fn the_placement_says_the_agent_mounted_the_root_it_guards_on_a_cgroup_v1_host() {
    use crate::kernel::place::{CgroupNs, Hierarchy};
    let mounted = Placement {
        cgroup: PathBuf::from("/run/imds-guard/cgroup2"),
        cgroup_id: 1,
        hierarchy: Hierarchy::Mounted {
            mount: PathBuf::from("/run/imds-guard/cgroup2"),
        },
        cgroup_ns: CgroupNs::Entered {
            from: 4_026_532_200,
        },
        layout: false,
        pid_ns: 0xEFFF_FFFC,
        net_ns: 4_026_531_840,
        net: NetNs::Pid1s,
    };
    let p = placement_json(&mounted);
    assert_eq!(p["cgroup_root"], true, "{p}");
    assert_eq!(p["hierarchy"], "mounted", "{p}");
    assert_eq!(p["mounted_by_agent"], true, "{p}");
    assert_eq!(p["hierarchy_mount"], "/run/imds-guard/cgroup2", "{p}");
    assert_eq!(p["cgroup_ns"], "entered", "{p}");
    assert_eq!(p["cgroup_layout"], "flat", "{p}");
    assert_eq!(p["net_ns_is_pid1s"], true, "{p}");
    let what = p["what"].as_str().expect("words");
    assert!(
        what.contains("mounted at /run/imds-guard/cgroup2"),
        "{what}"
    );
    assert!(
        what.contains("units, cgroups and pods are refused"),
        "{what}"
    );
    assert!(
        what.contains("cgroup namespace cgroup:[4026532200]"),
        "{what}"
    );

    let named = Placement {
        hierarchy: Hierarchy::Named,
        cgroup_ns: CgroupNs::Host,
        layout: true,
        net: NetNs::NotPid1s { pid1: 7 },
        ..mounted
    };
    let p = placement_json(&named);
    assert_eq!(p["cgroup_root"], false, "{p}");
    assert_eq!(p["mounted_by_agent"], false, "{p}");
    assert_eq!(p["hierarchy_mount"], Value::Null, "{p}");
    assert_eq!(p["net_ns_is_pid1s"], false, "{p}");
    let what = p["what"].as_str().expect("words");
    assert!(what.contains("only the processes below it"), "{what}");
    assert!(
        p["host"].as_str().expect("words").contains("NOT pid 1's"),
        "{p}"
    );
}
