//! A private `/etc` for a test that must make users, groups and
//! subordinate id ranges: an overlay on `/etc` in a mount namespace of the
//! test's own thread, its upper layer on a tmpfs of its own. What the test
//! writes there (`/etc/passwd`, `/etc/group`, `/etc/subuid`,
//! `/etc/subgid`) is seen by what it starts from that thread (the agent
//! resolving names through NSS, `newuidmap` reading the ranges) and by
//! nothing else; the machine's files are never written, and there is
//! nothing to take back: the namespace goes with the thread.
//!
//! Needs `CAP_SYS_ADMIN` and an `/etc` that overlayfs takes as a lower
//! layer (any local filesystem). A lookup that goes to a daemon (nscd,
//! SSSD) would not see the private files: the hosts the suites run on
//! resolve through `files`.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    path::Path,
};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

use crate::TempDir;

/// The private `/etc` of the running thread (see [`PrivateEtc::run`]).
#[derive(Debug)]
pub struct PrivateEtc {
    _private: (),
}

impl PrivateEtc {
    /// Runs `test` on a thread of its own, in a private mount namespace
    /// whose `/etc` is a writable overlay of the machine's. A panic in
    /// `test` is the caller's.
    pub fn run<T: Send + 'static>(test: impl FnOnce(&PrivateEtc) -> T + Send + 'static) -> T {
        // The directory the tmpfs goes on, on the machine: empty, removed
        // after the thread (and its mounts) are gone.
        let base = TempDir::new();
        let layers = base.path().to_owned();
        let joined = std::thread::spawn(move || {
            let etc = PrivateEtc::mount(&layers);
            test(&etc)
        })
        .join();
        drop(base);
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn mount(layers: &Path) -> Self {
        // A mount namespace is per thread: this one dies with the thread.
        unshare(CloneFlags::CLONE_NEWNS)
            .unwrap_or_else(|e| panic!("making a mount namespace for a private /etc: {e}"));
        // Private first, so that nothing mounted below propagates back to
        // the machine's namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("making / private in the test's mount namespace: {e}"));
        mount(
            Some("tmpfs"),
            layers,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0700"),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", layers.display()));
        let (upper, work) = (layers.join("upper"), layers.join("work"));
        for dir in [&upper, &work] {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        let options = format!(
            "lowerdir=/etc,upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            "/etc",
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting an overlay on /etc ({options}): {e}"));
        PrivateEtc { _private: () }
    }

    /// Appends `line` (and a newline) to `/etc/<file>`, creating it.
    pub fn append(&self, file: &str, line: &str) {
        let path = Path::new("/etc").join(file);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        writeln!(f, "{line}").unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A user with its own primary group of the same number and name.
    pub fn add_user(&self, name: &str, uid: u32) {
        self.append(
            "passwd",
            &format!("{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin"),
        );
        self.append("group", &format!("{name}:x:{uid}:"));
    }

    /// A group listing `members` (user names).
    pub fn add_group(&self, name: &str, gid: u32, members: &[&str]) {
        self.append("group", &format!("{name}:x:{gid}:{}", members.join(",")));
    }

    /// Subordinate uids and gids `first..first + count` for user `name`,
    /// as `usermod --add-subuids` and `--add-subgids` write them.
    pub fn add_subordinate_ids(&self, name: &str, first: u32, count: u32) {
        for file in ["subuid", "subgid"] {
            self.append(file, &format!("{name}:{first}:{count}"));
        }
    }
}
