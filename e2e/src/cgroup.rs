//! A child cgroup (v2) per test, which the agent guards and probes join.
//!
//! The harness only ever creates a directory directly under the cgroup2 root
//! and never writes a file of the root itself, so a test cannot change what
//! the rest of the machine is allowed to do.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::util::{cleanup_failed, unique_name};

/// How long [`TestCgroup`]'s drop waits for killed processes to leave, and
/// then for `rmdir` to stop saying EBUSY.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// The mount point of the cgroup2 hierarchy, from `/proc/self/mountinfo`:
/// `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid
/// ones. Panics if cgroup2 is not mounted.
pub fn cgroup2_root() -> PathBuf {
    try_cgroup2_root().unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn try_cgroup2_root() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    parse_cgroup2_root(&mountinfo).ok_or_else(|| "no cgroup2 mount in /proc/self/mountinfo".into())
}

/// Finds the first cgroup2 mount point in mountinfo text (proc(5): the fifth
/// field is the mount point, the file system type follows the ` - `).
fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        before.split(' ').nth(4).map(|p| PathBuf::from(unescape(p)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `<cgroup2 root>/imds-guard-test-<pid>-<n>`, removed on drop together with
/// every process still in it and every cgroup below it (a user's, made in
/// a subtree delegated to it, included).
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates the cgroup, panicking with the reason if it cannot.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("creating a test cgroup: {e}"))
    }

    /// Like [`TestCgroup::new`], but returns why it failed.
    pub fn try_new() -> Result<Self, String> {
        let path = try_cgroup2_root()?.join(unique_name("imds-guard-test"));
        fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// `<cgroup2 root>/kubepods`, where the kubelet's cgroupfs driver
    /// puts pods (`/kubepods/<qos>/pod<uid>`), for tests of `pods` rules,
    /// whose cgroup paths are the kubelet's from the root. Refused when it
    /// exists (a kubelet's, or one a killed test left: its marker, an
    /// empty `imds-guard-test-<pid>-<n>` cgroup inside, names the dead test
    /// process, and `cargo xtask test` sweeps it).
    pub fn kubepods() -> Result<Self, String> {
        let path = try_cgroup2_root()?.join("kubepods");
        fs::create_dir(&path).map_err(|e| {
            format!(
                "creating {} (the kubelet's cgroup of pods, which the test makes for itself \
                 and will not take over): {e}",
                path.display()
            )
        })?;
        let kubepods = TestCgroup { path };
        let marker = kubepods.path.join(unique_name("imds-guard-test"));
        fs::create_dir(&marker).map_err(|e| format!("creating {}: {e}", marker.display()))?;
        Ok(kubepods)
    }

    /// A cgroup below this one, `name`, removed on drop like this one (with
    /// every process still in it); drop it before its parent.
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// The cgroup's directory, what the agent's `--cgroup` takes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pids in `cgroup.procs` (this cgroup only, not descendants).
    pub fn procs(&self) -> Vec<i32> {
        let file = self.path.join("cgroup.procs");
        match fs::read_to_string(&file) {
            Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) => panic!("reading {}: {e}", file.display()),
        }
    }

    fn kill_all(&self) -> Result<(), String> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let procs = self.procs();
            if procs.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("processes {procs:?} did not leave"));
            }
            for pid in procs {
                // Every process in a test cgroup was started by the test
                // (probes join it themselves), so killing them is ours to do.
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(format!("killing {pid}: {e}")),
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn remove(&self) -> Result<(), String> {
        remove_below(&self.path)?;
        rmdir(&self.path)
    }
}

/// Removes every cgroup below `dir`, the deepest first.
fn remove_below(dir: &Path) -> Result<(), String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let child = entry.path();
            remove_below(&child)?;
            rmdir(&child)?;
        }
    }
    Ok(())
}

/// Removes the (empty) cgroup at `path`, waiting out a moment of EBUSY.
fn rmdir(path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A killed task can keep the cgroup populated for a moment
            // after it disappears from cgroup.procs.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("removing {}: {e}", path.display())),
        }
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all().and_then(|()| self.remove()) {
            cleanup_failed(&format!("cgroup {}: {e}", self.path.display()));
        }
    }
}

/// Moves the calling process into the cgroup directory `dir`, which must
/// be one (a cgroup2 or cgroup v1 filesystem): on a plain directory (a
/// tmpfs where the hierarchy was expected, a typo) writing `cgroup.procs`
/// would only make a file, the process would stay where it was, and a
/// test would judge a caller it did not mean to.
pub fn join(dir: &Path) -> Result<(), String> {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

    let fs = statfs(dir).map_err(|e| format!("statfs {}: {e}", dir.display()))?;
    let kind = fs.filesystem_type();
    if kind != CGROUP2_SUPER_MAGIC && kind != CGROUP_SUPER_MAGIC {
        return Err(format!(
            "{} is not a cgroup (filesystem type {:#x})",
            dir.display(),
            kind.0
        ));
    }
    let procs = dir.join("cgroup.procs");
    // "0" moves the writing process itself.
    fs::write(&procs, "0").map_err(|e| format!("joining {}: {e}", procs.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_root(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_with_optional_fields_and_escapes() {
        let mountinfo = "\
25 1 0:22 / /sys/fs/cgroup\\040v2 rw,nosuid shared:9 master:1 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            parse_cgroup2_root(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup v2"))
        );
    }

    #[test]
    fn no_cgroup2_mount() {
        let mountinfo = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_root(mountinfo), None);
    }
}
