//! Where the guard is placed: the cgroup it attaches to, the cgroup v2
//! hierarchy that cgroup is in, and the namespaces that make "the host" of
//! `[allow.host]` and of the forward table.
//!
//! Settled once by [`establish`], on the main thread before the agent
//! starts any other (a thread's namespaces are its own, and a thread
//! inherits those of the thread that creates it):
//!
//! - a user or pid namespace that is not the initial one is refused: the
//!   host of `[allow.host]` would be the container's processes (an allow
//!   meant for the host's root would let the container's root through),
//!   and the pids the agent logs would not be the host's. A DaemonSet runs
//!   with `hostPID: true`;
//! - a cgroup namespace that is not the initial one is left for the host's
//!   (`setns` on pid 1's, which is the host's init when the agent shares
//!   the host's pid namespace): attached from inside it, the agent would
//!   guard only its own subtree while a mount made in the namespace shows
//!   that subtree as `/`. When it cannot be left, the agent refuses, even
//!   with `--cgroup`: every path it reads (mountinfo, `/proc/PID/cgroup`,
//!   the hierarchy its unit and pod rules are classified in) would be
//!   relative to the container's subtree;
//! - with no mount of the whole cgroup v2 hierarchy (a host that boots
//!   cgroup v1 only, Amazon Linux 2; a container that mounts none, or only
//!   its own subtree), the agent mounts one at [`OWN_MOUNT`], as Cilium
//!   does, and attaches at its root, where every process is. When the host
//!   boots cgroup v1 only, systemd keeps every process at that root: unit,
//!   cgroup and pod rules could never match there ([`Placement::layout`]);
//! - the network namespace is said, not refused: the guard at the cgroup
//!   sees every connect whatever its namespace, only `[allow.host]` and the
//!   forward table are the agent's namespace's, and tests (and an operator
//!   who means it) run the agent in a namespace of their own. `status`
//!   says which namespace that is, and the agent warns when it can tell it
//!   is not pid 1's (a DaemonSet without `hostNetwork: true`).

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, setns},
};

use super::cgroup::{self, CgroupError};
use crate::policy::CgroupLayout;

/// The inode of the initial cgroup namespace (`PROC_CGROUP_INIT_INO` in
/// the kernel's `include/linux/proc_ns.h`, fixed since 4.6).
pub const PROC_CGROUP_INIT_INO: u64 = 0xEFFF_FFFB;
/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`).
pub const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
/// The inode of the initial user namespace (`PROC_USER_INIT_INO`).
pub const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;

/// Where the agent mounts a cgroup v2 hierarchy of its own when none is
/// mounted whole (under the packaged unit's `RuntimeDirectory`).
pub const OWN_MOUNT: &str = "/run/imds-guard/cgroup2";
/// The cgroup namespace left for: pid 1's, the host's init when the agent
/// shares the host's pid namespace.
pub const HOST_CGROUP_NS: &str = "/proc/1/ns/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("cannot read the namespace {path}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the agent runs in a user namespace (user:[{ino}]) that is not the host's: the kernel \
         lets no such namespace load the guard; run it in the host's user namespace (a container \
         without user-namespace remapping)"
    )]
    UserNs { ino: u64 },
    #[error(
        "the agent runs in a pid namespace (pid:[{ino}]) that is not the host's: \"the host\" of \
         [allow.host] would be its container's processes, and the pids it logs would not be the \
         host's; run it in the host's pid namespace (Kubernetes: hostPID: true; docker, podman: \
         --pid=host), or, to guard only this container's processes on purpose, \
         --container with --cgroup"
    )]
    PidNs { ino: u64 },
    #[error(
        "the agent runs in a cgroup namespace (cgroup:[{ino}]) that is not the host's and cannot \
         enter the host's through {host}: {why}; attached from here it would guard only its own \
         subtree. Give it the host's pid namespace and CAP_SYS_ADMIN with CAP_SYS_PTRACE \
         (Kubernetes: hostPID: true; docker, podman: --pid=host), or the host's cgroup namespace \
         (docker, podman: --cgroupns=host)"
    )]
    CgroupNs {
        ino: u64,
        host: PathBuf,
        why: String,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "no mount shows the whole cgroup v2 hierarchy (a host that boots cgroup v1 only?), and \
         the agent cannot mount one at {dir}: mounting takes CAP_SYS_ADMIN and the mount system \
         calls (under the packaged unit, a drop-in with CapabilityBoundingSet=CAP_SYS_ADMIN and \
         SystemCallFilter=@mount; see docs/operating.md)"
    )]
    Mount {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`establish`] is asked.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `--cgroup`: the cgroup to attach to; the hierarchy's root if none.
    pub cgroup: Option<&'a Path>,
    /// The host's cgroup namespace ([`HOST_CGROUP_NS`]).
    pub host_cgroup_ns: &'a Path,
    /// Where to mount a hierarchy when none is mounted whole
    /// ([`OWN_MOUNT`]).
    pub own_mount: &'a Path,
    /// `--container`: the agent runs in a container on purpose, to guard
    /// only the cgroup `--cgroup` names: a pid namespace of its own is
    /// "the host" of `[allow.host]`, and a cgroup namespace of its own is
    /// kept rather than left.
    pub container: bool,
}

impl Default for Request<'_> {
    fn default() -> Self {
        Self {
            cgroup: None,
            host_cgroup_ns: Path::new(HOST_CGROUP_NS),
            own_mount: Path::new(OWN_MOUNT),
            container: false,
        }
    }
}

/// How the cgroup attached to was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// `--cgroup` named it.
    Named,
    /// The root of the hierarchy the host mounts at `mount`.
    Root { mount: PathBuf },
    /// The root of the hierarchy the agent mounted at `mount` (this one,
    /// or an earlier one whose mount is still there).
    Mounted { mount: PathBuf },
}

/// The agent's cgroup namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupNs {
    /// The host's, from the start.
    Host,
    /// The agent started in `from` and entered the host's.
    Entered { from: u64 },
    /// The agent stays in its container's, `ino`, as `--container` asks.
    Kept { ino: u64 },
}

/// The agent's network namespace, compared with pid 1's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetNs {
    /// Pid 1's: the host's.
    Pid1s,
    /// Another one than pid 1's (`pid1` is pid 1's inode).
    NotPid1s { pid1: u64 },
    /// Pid 1's could not be read: why.
    Unknown(String),
}

/// Where the guard goes, and what "the host" means to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The cgroup v2 directory to attach to.
    pub cgroup: PathBuf,
    /// Its id (its inode number); 0 for a `--cgroup` that cannot be read
    /// (the agent then fails when it opens it to attach, after checking
    /// the policy).
    pub cgroup_id: u64,
    pub hierarchy: Hierarchy,
    pub cgroup_ns: CgroupNs,
    /// Whether systemd's cgroup v2 layout is there: false when the agent
    /// mounted the hierarchy and pid 1 sits at its root (a host that boots
    /// cgroup v1 only keeps every process there), where rules naming
    /// units, cgroups or pods could never match.
    pub layout: bool,
    /// The agent's pid namespace (the initial one: others are refused,
    /// unless `--container`).
    pub pid_ns: u64,
    /// The agent's network namespace: "the host" of `[allow.host]` and the
    /// namespace of the forward table.
    pub net_ns: u64,
    pub net: NetNs,
}

impl Placement {
    /// Whether the guard sits at the root of the host's hierarchy, where
    /// every process is.
    pub fn at_root(&self) -> bool {
        !matches!(self.hierarchy, Hierarchy::Named)
    }

    /// The layout policies are checked against.
    pub fn layout(&self) -> CgroupLayout {
        if self.layout {
            CgroupLayout::Systemd
        } else {
            CgroupLayout::Flat
        }
    }

    /// `host`, `mounted` or `named`: how the cgroup was chosen, for records.
    pub fn hierarchy_name(&self) -> &'static str {
        match self.hierarchy {
            Hierarchy::Named => "named",
            Hierarchy::Root { .. } => "host",
            Hierarchy::Mounted { .. } => "mounted",
        }
    }

    /// `host` or `entered`: the agent's cgroup namespace, for records.
    pub fn cgroup_ns_name(&self) -> &'static str {
        match self.cgroup_ns {
            CgroupNs::Host => "host",
            CgroupNs::Entered { .. } => "entered",
            CgroupNs::Kept { .. } => "container",
        }
    }

    /// The mount point of the hierarchy, when the guard is at its root.
    pub fn mount(&self) -> Option<&Path> {
        match &self.hierarchy {
            Hierarchy::Named => None,
            Hierarchy::Root { mount } | Hierarchy::Mounted { mount } => Some(mount),
        }
    }

    /// Whether the agent mounted the hierarchy it attaches in.
    pub fn mounted(&self) -> bool {
        matches!(self.hierarchy, Hierarchy::Mounted { .. })
    }

    /// One phrase: what the guard is attached to.
    pub fn describe(&self) -> String {
        let ns = match self.cgroup_ns {
            CgroupNs::Host => String::new(),
            CgroupNs::Entered { from } => format!(
                " (the agent left its container's cgroup namespace cgroup:[{from}] for the host's)"
            ),
            CgroupNs::Kept { ino } => format!(
                " (in the agent's container's cgroup namespace cgroup:[{ino}], as --container asks)"
            ),
        };
        let what = match &self.hierarchy {
            Hierarchy::Named => format!(
                "the cgroup {} named by --cgroup (id {}): only the processes below it are \
                 guarded",
                self.cgroup.display(),
                self.cgroup_id
            ),
            Hierarchy::Root { mount } => format!(
                "the root of the host's cgroup v2 hierarchy, mounted at {} (id {}): every \
                 process",
                mount.display(),
                self.cgroup_id
            ),
            Hierarchy::Mounted { mount } => format!(
                "the root of the cgroup v2 hierarchy the agent mounted at {} (id {}): every \
                 process{}",
                mount.display(),
                self.cgroup_id,
                if self.layout {
                    ""
                } else {
                    "; the host has no cgroup v2 layout (cgroup v1 only), so units, cgroups and \
                     pods are refused"
                }
            ),
        };
        format!("{what}{ns}")
    }

    /// One phrase: what "the host" of `[allow.host]` is.
    pub fn host(&self) -> String {
        let net = match &self.net {
            NetNs::Pid1s => "pid 1's".to_owned(),
            NetNs::NotPid1s { pid1 } => format!("NOT pid 1's (net:[{pid1}])"),
            NetNs::Unknown(why) => format!("pid 1's unknown: {why}"),
        };
        let pid = if self.pid_ns == PROC_PID_INIT_INO {
            "the initial pid namespace"
        } else {
            "the container's pid namespace (--container)"
        };
        format!(
            "{pid} pid:[{}] and the network namespace net:[{}] ({net})",
            self.pid_ns, self.net_ns
        )
    }
}

/// What a guard attached to a cgroup covers, as a reader (`status`) sees
/// it from where it runs: the kernel's word is the cgroup's id, and only a
/// reader in the host's cgroup namespace can tell whether that is the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The reader is in the host's cgroup namespace.
    pub from_host_ns: bool,
    /// A mount of the whole hierarchy, as the reader finds it.
    pub mount: Option<PathBuf>,
    /// Whether the cgroup is the hierarchy's root; `None` when the reader
    /// cannot tell.
    pub at_root: Option<bool>,
}

impl Seen {
    /// Looks at cgroup `cgroup_id` from the calling thread.
    pub fn of(cgroup_id: u64) -> Self {
        let from_host_ns = own_ns("cgroup").is_ok_and(|ino| ino == PROC_CGROUP_INIT_INO);
        let mount = cgroup::cgroup2_root().ok();
        let at_root = match &mount {
            Some(m) if from_host_ns => ns_ino(m).ok().map(|root| root == cgroup_id),
            _ => None,
        };
        Self {
            from_host_ns,
            mount,
            at_root,
        }
    }

    /// Whether the hierarchy's mount is the one the agent makes.
    pub fn mounted_by_agent(&self) -> bool {
        self.mount.as_deref() == Some(Path::new(OWN_MOUNT))
    }

    /// One phrase: what the guard covers.
    pub fn describe(&self) -> String {
        let mount = self.mount.as_ref().map_or_else(String::new, |m| {
            if self.mounted_by_agent() {
                format!(", mounted by the agent at {}", m.display())
            } else {
                format!(", mounted at {}", m.display())
            }
        });
        match self.at_root {
            Some(true) => {
                format!("every process (the root of the host's cgroup v2 hierarchy{mount})")
            }
            Some(false) => {
                "ONLY the processes below this cgroup (it is not the root of the host's \
                            cgroup v2 hierarchy)"
                    .to_owned()
            }
            None if !self.from_host_ns => "unknown: this command runs in a cgroup namespace that \
                                           is not the host's, where the root cannot be told"
                .to_owned(),
            None => {
                "unknown: no mount of the whole cgroup v2 hierarchy here to compare with".to_owned()
            }
        }
    }
}

/// Whether a namespace inode the agent recorded is the initial one of its
/// kind, for `status`: `Some` for the kinds with a fixed inode.
pub fn initial(kind: &str, ino: u64) -> Option<bool> {
    match kind {
        "pid" => Some(ino == PROC_PID_INIT_INO),
        "user" => Some(ino == PROC_USER_INIT_INO),
        "cgroup" => Some(ino == PROC_CGROUP_INIT_INO),
        _ => None,
    }
}

/// Whether the calling thread is in the network namespace `ino`.
pub fn own_net_ns_is(ino: u64) -> bool {
    own_ns("net").is_ok_and(|own| own == ino)
}

/// Leaves a cgroup namespace that is not the host's, finds (or mounts) the
/// hierarchy and the cgroup to attach to. Changes nothing but the calling
/// thread's cgroup namespace and, when no hierarchy is mounted whole, a
/// mount at [`Request::own_mount`]; call it before any other thread
/// starts.
pub fn establish(req: &Request<'_>) -> Result<Placement, PlaceError> {
    let user = own_ns("user")?;
    if user != PROC_USER_INIT_INO {
        return Err(PlaceError::UserNs { ino: user });
    }
    let pid_ns = own_ns("pid")?;
    if pid_ns != PROC_PID_INIT_INO && !req.container {
        return Err(PlaceError::PidNs { ino: pid_ns });
    }
    let cgroup_ns = leave_cgroup_ns(req)?;
    let net_ns = own_ns("net")?;
    let net = match ns_ino(Path::new("/proc/1/ns/net")) {
        Ok(pid1) if pid1 == net_ns => NetNs::Pid1s,
        Ok(pid1) => NetNs::NotPid1s { pid1 },
        Err(e) => NetNs::Unknown(e.to_string()),
    };
    let (cgroup, hierarchy) = match req.cgroup {
        Some(dir) => (dir.to_owned(), Hierarchy::Named),
        None => root(req.own_mount)?,
    };
    // A named cgroup is opened when the agent attaches, after the policy
    // is checked: a policy that does not validate is said first, with or
    // without the privileges to open it.
    let cgroup_id = match hierarchy {
        Hierarchy::Named => ns_ino(&cgroup).unwrap_or(0),
        _ => cgroup::id(&cgroup::open(&cgroup)?, &cgroup)?,
    };
    let layout = match hierarchy {
        Hierarchy::Mounted { .. } => pid1_below_root(),
        _ => true,
    };
    Ok(Placement {
        cgroup,
        cgroup_id,
        hierarchy,
        cgroup_ns,
        layout,
        pid_ns,
        net_ns,
        net,
    })
}

/// The inode of the calling thread's namespace `kind`.
fn own_ns(kind: &str) -> Result<u64, PlaceError> {
    let path = PathBuf::from(format!("/proc/thread-self/ns/{kind}"));
    ns_ino(&path).map_err(|source| PlaceError::Namespace { path, source })
}

fn ns_ino(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

/// The host's cgroup namespace, entered if the agent is not in it.
fn leave_cgroup_ns(req: &Request<'_>) -> Result<CgroupNs, PlaceError> {
    let ino = own_ns("cgroup")?;
    if ino == PROC_CGROUP_INIT_INO {
        return Ok(CgroupNs::Host);
    }
    if req.container {
        return Ok(CgroupNs::Kept { ino });
    }
    match enter(req.host_cgroup_ns) {
        Ok(()) => Ok(CgroupNs::Entered { from: ino }),
        Err(why) => Err(PlaceError::CgroupNs {
            ino,
            host: req.host_cgroup_ns.to_owned(),
            why,
        }),
    }
}

/// Enters the cgroup namespace at `host` if it is the initial one; why not
/// otherwise.
fn enter(host: &Path) -> Result<(), String> {
    let file = File::open(host).map_err(|e| format!("cannot open it: {e}"))?;
    let ino = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .ino();
    if ino != PROC_CGROUP_INIT_INO {
        return Err(format!(
            "it is cgroup:[{ino}], not the host's either (pid 1 is not the host's init: no \
             hostPID?)"
        ));
    }
    setns(&file, CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("setns refused: {e} (entering takes CAP_SYS_ADMIN)"))
}

/// The root of the whole hierarchy: a mount of it, or one the agent makes
/// at `own`.
fn root(own: &Path) -> Result<(PathBuf, Hierarchy), PlaceError> {
    match cgroup::cgroup2_root() {
        Ok(mount) if mount == own => Ok((mount.clone(), Hierarchy::Mounted { mount })),
        Ok(mount) => Ok((mount.clone(), Hierarchy::Root { mount })),
        Err(CgroupError::NotMounted | CgroupError::Subtree { .. }) => {
            mount_own(own)?;
            match cgroup::cgroup2_root()? {
                mount if mount == own => Ok((mount.clone(), Hierarchy::Mounted { mount })),
                mount => Ok((mount.clone(), Hierarchy::Root { mount })),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Mounts the cgroup v2 hierarchy at `dir`.
fn mount_own(dir: &Path) -> Result<(), PlaceError> {
    let failed = |source| PlaceError::Mount {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    mount(
        Some("cgroup2"),
        dir,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| failed(e.into()))
}

/// Whether pid 1 sits below the root of the cgroup v2 hierarchy: systemd
/// moves itself to `/init.scope` when it uses cgroup v2 (unified or
/// hybrid); on a host that boots cgroup v1 only it stays at `/`, and so
/// does every process. Unreadable: false, so that rules that could not
/// match are refused rather than silently dead.
fn pid1_below_root() -> bool {
    std::fs::read_to_string("/proc/1/cgroup").is_ok_and(|text| below_root(&text))
}

/// Whether the cgroup v2 line (`0::PATH`) of a `/proc/PID/cgroup` names a
/// cgroup below the root.
fn below_root(proc_cgroup: &str) -> bool {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .is_some_and(|path| path != "/")
}

#[cfg(test)]
mod tests;
