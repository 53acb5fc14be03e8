//! The containers of a [`Topology`](super::Topology): a network namespace
//! behind a veth, owned either by the initial user namespace or by one of
//! its own whose root is an unprivileged uid outside.

use std::{
    ffi::CString,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Netns, Probe, TestCgroup, util::cleanup_failed};

/// The uid (and gid) a user-namespaced container's root is outside it.
pub const USERNS_ROOT: u32 = 100_000;
/// How many ids the container's user namespace maps, from 0 inside.
const USERNS_SIZE: u32 = 65_536;
/// Every id to itself (`(uid_t)-1` is no id).
const IDENTITY_MAP: &str = "0 0 4294967295\n";

/// How a container's network namespace is owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// By the initial user namespace (Docker, containerd, rootful podman).
    Plain,
    /// By a user namespace of its own, root = uid [`USERNS_ROOT`] outside
    /// (LXC unprivileged, podman `--userns=auto`, Kubernetes
    /// `hostUsers: false`).
    Userns,
}

/// A user namespace created by an unprivileged uid, with ids 0-65535 inside
/// mapped to a range outside (what `/etc/subuid` gives a rootless user),
/// and a network namespace it owns when asked, or one of a nest of them
/// ([`UserNamespace::nested`]); held open by a `sleep` that is our child,
/// killed on drop.
#[derive(Debug)]
pub struct UserNamespace {
    child: Child,
}

impl UserNamespace {
    /// Starts `sleep infinity` in `cgroup` as uid and gid `owner`, which
    /// then creates the user namespace (so it is its owner, as with an
    /// unprivileged runtime), with a network namespace too when
    /// `with_net`; maps ids 0-65535 inside to `base`.. outside.
    pub fn spawn(cgroup: &TestCgroup, owner: u32, base: u32, with_net: bool) -> Self {
        let holder = Self::start(cgroup, None, (owner, owner), &[], with_net);
        // Root of the parent namespace may map any range: as newuidmap
        // does from /etc/subuid.
        holder.map(&format!("0 {base} {USERNS_SIZE}\n"), None);
        holder
    }

    /// User namespaces one inside the other, created by `owners` (uid and
    /// effective gid), innermost first (the order the programs walk them
    /// in); the last holder returned holds the innermost. Each maps every
    /// id to itself, so that a process inside runs as the ids it has
    /// outside, and the next owner has ids to create its namespace as.
    pub fn nested(cgroup: &TestCgroup, owners: &[(u32, u32)]) -> Vec<Self> {
        let mut chain: Vec<Self> = Vec::new();
        for &owner in owners.iter().rev() {
            let parent = chain.last().map(Self::path);
            let holder = Self::start(cgroup, parent.as_deref(), owner, &[], false);
            holder.map(IDENTITY_MAP, parent.as_deref());
            chain.push(holder);
        }
        chain
    }

    /// A user namespace created by uid and gid `owner` holding the
    /// supplementary `groups` (as its login gives them), mapped by
    /// `newuidmap` and `newgidmap` run as that user, as rootless podman
    /// runs them: its own ids to 0 inside, its subordinate ids `first`..
    /// (`/etc/subuid`, `/etc/subgid`) to 1.. inside. With a subordinate
    /// range, `newgidmap` leaves `setgroups` allowed: a process inside may
    /// drop the groups, or take a subordinate gid as its primary one.
    pub fn by_newuidmap(
        cgroup: &TestCgroup,
        owner: (u32, u32),
        groups: &[u32],
        first: u32,
        count: u32,
    ) -> Self {
        let holder = Self::start(cgroup, None, owner, groups, false);
        let pid = holder.pid().to_string();
        for (helper, own) in [("newuidmap", owner.0), ("newgidmap", owner.1)] {
            let (own, first, count) = (own.to_string(), first.to_string(), count.to_string());
            let mut cmd = Command::new(helper);
            cmd.args([pid.as_str(), "0", &own, "1", "1", &first, &count])
                .stdin(Stdio::null());
            as_user(&mut cmd, owner, groups);
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("running {helper} (package uidmap): {e}"));
            assert!(
                out.status.success(),
                "{helper} {pid} 0 {own} 1 1 {first} {count} as uid {}: {}: {}",
                owner.0,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        holder
    }

    /// Starts the holder: `sleep infinity` in `cgroup`, in user namespace
    /// `parent` if given, as uid and gid `owner` with supplementary
    /// `groups`, which then creates a user namespace (and a network
    /// namespace when `with_net`).
    fn start(
        cgroup: &TestCgroup,
        parent: Option<&Path>,
        (uid, gid): (u32, u32),
        groups: &[u32],
        with_net: bool,
    ) -> Self {
        let procs = CString::new(
            cgroup
                .path()
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap_or_else(|e| panic!("cgroup path: {e}"));
        let parent = parent
            .map(|p| fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display())));
        let parent_fd = parent.as_ref().map(AsRawFd::as_raw_fd);
        let groups: Vec<libc::gid_t> = groups.to_vec();
        let flags = if with_net {
            libc::CLONE_NEWUSER | libc::CLONE_NEWNET
        } else {
            libc::CLONE_NEWUSER
        };
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs between fork and exec and only makes
        // system calls (no allocation, no locks), on data prepared before
        // the fork.
        unsafe {
            cmd.pre_exec(move || {
                // The guarded cgroup first, while still root.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd.into())?;
                check(libc::write(fd, b"0".as_ptr().cast(), 1) as libc::c_long)?;
                libc::close(fd);
                // Root of the initial namespace has every capability in
                // the parent, whose ids map to themselves: it may become
                // the owner there.
                if let Some(parent) = parent_fd {
                    check(libc::setns(parent, libc::CLONE_NEWUSER).into())?;
                }
                check(libc::setgroups(groups.len(), groups.as_ptr()).into())?;
                check(libc::setresgid(gid, gid, gid).into())?;
                check(libc::setresuid(uid, uid, uid).into())?;
                // After the uid change, which clears it: if the test
                // process dies, so does the holder, and its namespaces.
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL).into())?;
                check(libc::unshare(flags).into())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the user namespace holder: {e}"));
        // The guard owns the child from here: a failure below still kills
        // it. spawn() returned after the exec, so the unshare is done.
        drop(parent);
        UserNamespace { child }
    }

    /// Writes `map` as the namespace's uid and gid maps: from this process
    /// when the namespace is a child of the initial one, else (`parent`)
    /// from a process that joins its parent first, as the kernel asks of
    /// the writer (user_namespaces(7), "Defining user and group ID
    /// mappings").
    fn map(&self, map: &str, parent: Option<&Path>) {
        let files = ["uid_map", "gid_map"].map(|file| format!("/proc/{}/{file}", self.pid()));
        let Some(parent) = parent else {
            for path in &files {
                fs::write(path, map).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            }
            return;
        };
        let ns =
            fs::File::open(parent).unwrap_or_else(|e| panic!("opening {}: {e}", parent.display()));
        let ns_fd = ns.as_raw_fd();
        let paths = files
            .clone()
            .map(|path| CString::new(path).unwrap_or_else(|e| panic!("a /proc path: {e}")));
        let map = map.as_bytes().to_vec();
        let mut cmd = Command::new("true");
        cmd.stdin(Stdio::null());
        // SAFETY: as in `start`: system calls only, on data prepared before
        // the fork.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::setns(ns_fd, libc::CLONE_NEWUSER).into())?;
                for path in &paths {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    check(fd.into())?;
                    let written = libc::write(fd, map.as_ptr().cast(), map.len());
                    libc::close(fd);
                    check(written as libc::c_long)?;
                }
                Ok(())
            });
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("writing {files:?} from {}: {e}", parent.display()));
        assert!(status.success(), "the map writer for {files:?}: {status}");
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The user namespace, as `/proc/PID/ns/user`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.pid()))
    }
}

/// Makes `cmd` run as uid and gid `owner` with supplementary `groups`.
fn as_user(cmd: &mut Command, (uid, gid): (u32, u32), groups: &[u32]) {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: as in `UserNamespace::start`: system calls only, on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setgroups(groups.len(), groups.as_ptr()).into())?;
            check(libc::setresgid(gid, gid, gid).into())?;
            check(libc::setresuid(uid, uid, uid).into())
        });
    }
}

impl Drop for UserNamespace {
    fn drop(&mut self) {
        // Our child, not yet reaped: the pid is still its own.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        if let Err(e) = self.child.wait() {
            cleanup_failed(&format!("reaping userns holder {}: {e}", self.child.id()));
        }
    }
}

#[derive(Debug)]
enum ContainerNs {
    Plain(Netns),
    Userns(UserNamespace),
}

/// One container of a [`Topology`](super::Topology), number `index`:
/// 10.88.`index`.0/24 and fd42:88:`index`::/64, `.1`/`::1` the host's end.
#[derive(Debug)]
pub struct Container {
    name: String,
    index: u8,
    ns: ContainerNs,
    cgroup: PathBuf,
}

impl Container {
    /// A container whose processes join `cgroup` (not yet wired).
    pub(super) fn new(name: &str, kind: ContainerKind, index: u8, cgroup: &TestCgroup) -> Self {
        let ns = match kind {
            ContainerKind::Plain => ContainerNs::Plain(Netns::bare()),
            ContainerKind::Userns => {
                ContainerNs::Userns(UserNamespace::spawn(cgroup, USERNS_ROOT, USERNS_ROOT, true))
            }
        };
        Container {
            name: name.to_owned(),
            index,
            ns,
            cgroup: cgroup.path().to_path_buf(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn index(&self) -> u8 {
        self.index
    }

    pub fn kind(&self) -> ContainerKind {
        match self.ns {
            ContainerNs::Plain(_) => ContainerKind::Plain,
            ContainerNs::Userns(_) => ContainerKind::Userns,
        }
    }

    /// Its network namespace, as `nsenter --net=` and `setns` take it.
    pub fn netns_path(&self) -> PathBuf {
        match &self.ns {
            ContainerNs::Plain(ns) => ns.path().to_path_buf(),
            ContainerNs::Userns(h) => PathBuf::from(format!("/proc/{}/ns/net", h.pid())),
        }
    }

    /// Its user namespace, for a [`ContainerKind::Userns`] container.
    pub fn userns_path(&self) -> Option<PathBuf> {
        match &self.ns {
            ContainerNs::Plain(_) => None,
            ContainerNs::Userns(h) => Some(h.path()),
        }
    }

    /// The container's address.
    pub fn addr_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, self.index, 2)
    }
    pub fn addr_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd42, 0x88, u16::from(self.index), 0, 0, 0, 0, 2)
    }
    /// The host's address on the container's link: its default gateway.
    pub fn gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, self.index, 1)
    }
    pub fn gateway_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd42, 0x88, u16::from(self.index), 0, 0, 0, 0, 1)
    }
    /// An address of the container's subnet that nothing uses.
    pub fn spare_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, self.index, 77)
    }
    pub fn spare_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd42, 0x88, u16::from(self.index), 0, 0, 0, 0, 0x77)
    }

    /// A probe in the container, in the guarded cgroup: `nobody` in a plain
    /// container, root (uid 0 inside, [`USERNS_ROOT`] outside, every
    /// capability over the container's namespaces only) in a
    /// user-namespaced one.
    pub fn probe(&self) -> Probe {
        let probe = Probe::at(self.netns_path(), &self.cgroup);
        match self.userns_path() {
            Some(userns) => probe.userns(userns).uid(0).gid(0),
            None => probe,
        }
    }
}

/// A system call's result as `pre_exec` wants it: negative is the error in
/// `errno`.
fn check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
