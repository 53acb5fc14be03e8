//! A user of the test's own, made in a [`PrivateEtc`] (the machine's
//! `/etc` is never written), and a cgroup subtree delegated to it as
//! systemd delegates one (`Delegate=yes`, every `user@.service`): the
//! directory and its `cgroup.procs`, `cgroup.subtree_control` and
//! `cgroup.threads` owned by the user, who may then make and remove cgroups
//! below it, and only there.

use nix::unistd::{Gid, Uid, chown};

use crate::{PrivateEtc, TestCgroup};

/// A user in a private `/etc`, with a group of its name and number.
#[derive(Debug)]
pub struct TestUser {
    name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// Makes `name`, uid and gid `uid`, in `etc`.
    pub fn new(etc: &PrivateEtc, name: &str, uid: u32) -> Self {
        etc.add_user(name, uid);
        Self {
            name: name.to_owned(),
            uid,
            gid: uid,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delegates `cgroup` to the user, as systemd does.
    pub fn delegate(&self, cgroup: &TestCgroup) {
        let dir = cgroup.path();
        let (uid, gid) = (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)));
        for path in [
            dir.to_path_buf(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.subtree_control"),
            dir.join("cgroup.threads"),
        ] {
            chown(&path, uid, gid).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}
