//! What end-to-end tests killed mid-run left behind: a test removes its
//! cgroups, network namespaces and bpffs mounts on drop, even when it
//! fails, but not when it is killed (`SIGKILL`, a CI timeout). They are
//! named after the pid of the test process that made them
//! (`imds-guard-test-<pid>-<n>`, `igt-<pid>-<n>`, `igt-bpffs-<pid>-<n>`,
//! `e2e/src/util.rs`); `cargo xtask test` removes those whose process is
//! gone before it runs the tests, and nothing else: a name of another form,
//! or of a live process, is left alone. The one cgroup of a fixed name,
//! `/kubepods` (the pod tests'), is removed only when it holds a marker of
//! that form of a gone process.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The pid in `<prefix>-<pid>-<n>`, if `name` has that form.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Whether `name` was made by a test process that is gone.
fn stale(name: &str, prefix: &str) -> bool {
    owner(name, prefix).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Whether the cgroup `dir` (`/kubepods`) is one a killed pod test made:
/// it holds that test's marker, `imds-guard-test-<pid>-<n>`, of a gone
/// process (`e2e/src/cgroup.rs`, `TestCgroup::kubepods`). A kubelet's
/// holds none.
fn left(dir: &Path) -> bool {
    fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        stale(&name, "imds-guard-test")
    })
}

/// The mount points of file systems of `fstype`, from mountinfo.
fn mounts(fstype: &str) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next() == Some(fstype)).then(|| left.split(' ').nth(4))?
        })
        .map(PathBuf::from)
        .collect()
}

/// Removes a test cgroup and the cgroups below it, deepest first; one that
/// still holds a process stays (and with it its parents).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("xtask: sweep: cannot remove {}: {e}", dir.display());
    }
}

/// Removes what killed test processes left: cgroups below the cgroup v2
/// root, named network namespaces and bpffs mounts.
pub fn sweep() {
    for root in mounts("cgroup2") {
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name, "imds-guard-test") || (name == "kubepods" && left(&entry.path())) {
                eprintln!("xtask: sweep: a killed test's cgroup {name}");
                remove_cgroup(&entry.path());
            }
        }
    }
    for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name, "igt") {
            eprintln!("xtask: sweep: a killed test's network namespace {name}");
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        }
    }
    for mount in mounts("bpf") {
        let name = mount.file_name().map(|n| n.to_string_lossy().into_owned());
        if mount.parent() == Some(&std::env::temp_dir())
            && name.is_some_and(|n| stale(&n, "igt-bpffs"))
        {
            eprintln!("xtask: sweep: a killed test's bpffs {}", mount.display());
            if umount(&mount) {
                let _ = fs::remove_dir(&mount);
            }
        }
    }
}

/// `umount PATH`, whether it worked.
fn umount(path: &Path) -> bool {
    Command::new("umount")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_the_tests_form_have_an_owner() {
        assert_eq!(
            owner("imds-guard-test-7502-3", "imds-guard-test"),
            Some(7502)
        );
        assert_eq!(owner("igt-14708-2", "igt"), Some(14708));
        assert_eq!(owner("igt-bpffs-9473-0", "igt-bpffs"), Some(9473));
        for other in [
            "igt-bpffs-9473-0",
            "igt-14708",
            "igt-a-1",
            "igt-1-",
            "igt--1",
            "igt-1-2-3",
            "igtx-1-2",
            "system.slice",
        ] {
            assert_eq!(owner(other, "igt"), None, "{other}");
        }
    }

    #[test]
    fn a_live_process_s_names_are_not_stale() {
        let mine = format!("igt-{}-0", std::process::id());
        assert!(!stale(&mine, "igt"));
        assert!(!stale("system.slice", "imds-guard-test"));
    }

    #[test]
    fn a_kubepods_cgroup_is_left_only_with_a_gone_test_s_marker() {
        let dir = std::env::temp_dir().join(format!("xtask-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("besteffort")).expect("mkdir");
        // A kubelet's: no marker.
        assert!(!left(&dir));
        // A live test's.
        let live = dir.join(format!("imds-guard-test-{}-0", std::process::id()));
        fs::create_dir(&live).expect("mkdir");
        assert!(!left(&dir));
        fs::remove_dir(&live).expect("rmdir");
        // A gone one's (pids stop far below this).
        fs::create_dir(dir.join("imds-guard-test-4294967-0")).expect("mkdir");
        assert!(left(&dir));
        let _ = fs::remove_dir_all(&dir);
    }
}
