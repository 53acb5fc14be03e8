//! Where the guard outlives its agent: links and maps pinned in a bpf
//! filesystem directory (default `/sys/fs/bpf/imds-guard`).
//!
//! A pinned link keeps the programs attached after the agent exits or is
//! killed; the next agent adopts it. The pinned `ACTIVE`, `CONFIG` and
//! `COUNTERS` maps let `imds-guard status` read what is in force from the
//! kernel, and the pinned `RESOLVED` map what the programs were told of the
//! kernel's layout and the host. `imds-guard detach` removes it all.

use std::{
    fs,
    os::fd::{BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    programs::links::FdLink,
};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sys::statfs::BPF_FS_MAGIC,
};

use super::{programs, sys};

/// The default pin directory.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/imds-guard";

/// `imds-guard COMMAND` for the pins in `dir`: with `--pin-dir` when `dir`
/// is not [`DEFAULT_DIR`], so that a hint can be pasted as it is.
pub fn command_for(dir: &Path, command: &str) -> String {
    if dir == Path::new(DEFAULT_DIR) {
        format!("imds-guard {command}")
    } else {
        format!("imds-guard {command} --pin-dir {}", dir.display())
    }
}
/// Where systemd (and we, if it did not) mount the bpf filesystem.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The agent lock on a pin directory ([`Pins::lock`]), held until dropped.
pub struct AgentLock(
    #[expect(dead_code, reason = "held for its Drop, which unlocks")] Flock<fs::File>,
);

/// A pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

/// Something that could not be done with a pin or the pin directory.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}")]
pub struct PinError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl PinError {
    pub fn new(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the pins are not this user's to read (only root's are).
    pub fn permission_denied(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::PermissionDenied
    }
}

/// Whether `path` is there. A pin that cannot be looked at (the pin
/// directory is root's, mode 0700) is an error, not "nothing pinned": as
/// another user, `status` must not report a guard that enforces as absent.
fn pinned(path: &Path) -> Result<bool, PinError> {
    path.try_exists().map_err(|source| PinError {
        what: "look at",
        path: path.to_owned(),
        source: if source.kind() == std::io::ErrorKind::PermissionDenied {
            std::io::Error::new(
                source.kind(),
                format!("{source}: only root can read the guard's pins; run it as root"),
            )
        } else {
            source
        },
    })
}

fn pin_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PinError {
    let path = path.to_owned();
    move |source| PinError { what, path, source }
}

/// An aya error with its causes, as one I/O error (aya's pin errors say
/// which call failed and keep the errno in their source).
fn chain(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(format!("{:#}", anyhow::Error::from(e)))
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `imds-guard COMMAND` as an operator must type it for these pins:
    /// with `--pin-dir` when they are not in the default directory.
    pub fn command(&self, command: &str) -> String {
        command_for(&self.dir, command)
    }

    /// Makes sure the directory exists on a bpf filesystem. Mounts one at
    /// `/sys/fs/bpf` when the directory is below it and nothing is mounted
    /// there (systemd mounts it on most hosts).
    pub fn prepare(&self) -> Result<(), PinError> {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            if self.dir.starts_with(BPFFS_ROOT) && !is_bpffs(Path::new(BPFFS_ROOT)) {
                nix::mount::mount(
                    Some("bpf"),
                    BPFFS_ROOT,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    Some("mode=0700"),
                )
                .map_err(|e| {
                    pin_err("mount a bpf filesystem on", Path::new(BPFFS_ROOT))(e.into())
                })?;
            }
            if !is_bpffs(parent) {
                return Err(PinError {
                    what: "pin in",
                    path: self.dir.clone(),
                    source: std::io::Error::other("it is not on a bpf filesystem"),
                });
            }
        }
        match fs::create_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(pin_err("create", &self.dir)(e)),
        }
    }

    pub fn link_path(&self, program: &str) -> PathBuf {
        self.dir.join(format!("link_{program}"))
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.dir.join(format!("map_{map}"))
    }

    /// The link pinned for `program`, if there is one.
    pub fn open_link(&self, program: &str) -> Result<Option<(PathBuf, OwnedFd)>, PinError> {
        let path = self.link_path(program);
        if !pinned(&path)? {
            return Ok(None);
        }
        let fd = sys::obj_get(&path).map_err(pin_err("open the pinned link", &path))?;
        Ok(Some((path, fd)))
    }

    /// Pins a link we attached; the pin keeps it attached after we exit.
    pub fn pin_link(&self, program: &str, link: FdLink) -> Result<(), PinError> {
        let path = self.link_path(program);
        link.pin(&path)
            .map(drop)
            .map_err(|e| pin_err("pin the link at", &path)(chain(e)))
    }

    /// Pins `link` (a bpf_link aya does not hold), which then keeps it
    /// attached after we exit.
    pub fn pin_link_fd(&self, program: &str, link: BorrowedFd<'_>) -> Result<(), PinError> {
        let path = self.link_path(program);
        sys::obj_pin(link, &path).map_err(pin_err("pin the link at", &path))
    }

    /// Pins `map`, replacing the pin of an earlier agent's map.
    pub fn pin_map(&self, name: &str, map: &Map) -> Result<(), PinError> {
        let path = self.map_path(name);
        // bpffs refuses names with a dot in them (`bpf_lookup`, EPERM).
        let fresh = self.dir.join(format!("new_map_{name}"));
        let _ = fs::remove_file(&fresh);
        map.pin(&fresh)
            .map_err(|e| pin_err("pin the map at", &fresh)(chain(e)))?;
        fs::rename(&fresh, &path).map_err(pin_err("rename the pinned map to", &path))
    }

    /// A pinned map, as the `Map` variant `wrap` makes of it.
    pub fn open_map(&self, name: &str, wrap: fn(MapData) -> Map) -> Result<Option<Map>, PinError> {
        let path = self.map_path(name);
        if !pinned(&path)? {
            return Ok(None);
        }
        let data = MapData::from_pin(&path)
            .map_err(|e| pin_err("open the pinned map", &path)(chain(e)))?;
        Ok(Some(wrap(data)))
    }

    /// Takes the agent lock: an exclusive `flock` on the pin directory, held
    /// for as long as the returned file is open (the process's life). `None`
    /// when another agent holds it. Only root can open the directory, and a
    /// dead agent's lock goes with it, so neither a stale pid nor a forged
    /// process name can stand in for a live agent.
    pub fn lock(&self) -> Result<Option<AgentLock>, PinError> {
        let dir = fs::File::open(&self.dir).map_err(pin_err("open", &self.dir))?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(AgentLock(lock))),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(pin_err("lock", &self.dir)(e.into())),
        }
    }

    /// Whether an agent holds the lock now.
    pub fn locked(&self) -> bool {
        let Ok(dir) = fs::File::open(&self.dir) else {
            return false;
        };
        // A shared lock we get is released as it drops, here.
        Flock::lock(dir, FlockArg::LockSharedNonblock).is_err()
    }

    /// Whether any link on the guarded cgroup is pinned.
    pub fn any_link(&self) -> bool {
        programs::guarding().any(|(row, _)| self.link_path(row.name).exists())
    }

    /// Detaches every pinned link (whoever else holds it) and removes every
    /// pin and the directory. Returns the number of links detached on the
    /// guarded cgroup, and of the forward program's.
    pub fn detach_all(&self) -> Result<(usize, usize), PinError> {
        let mut detached = 0;
        for (row, _) in programs::guarding() {
            if let Some((path, fd)) = self.open_link(row.name)? {
                use std::os::fd::AsFd as _;
                sys::link_detach(fd.as_fd()).map_err(pin_err("detach the pinned link", &path))?;
                fs::remove_file(&path).map_err(pin_err("remove", &path))?;
                detached += 1;
            }
        }
        // The forward program's links (netfilter, one per family).
        let mut forward = 0;
        for (row, _) in programs::netfilter_links() {
            if let Some((path, fd)) = self.open_link(row.name)? {
                use std::os::fd::AsFd as _;
                sys::link_detach(fd.as_fd()).map_err(pin_err("detach the pinned link", &path))?;
                fs::remove_file(&path).map_err(pin_err("remove", &path))?;
                forward += 1;
            }
        }
        // A raw tracepoint's link cannot be detached, only let go; once
        // unpinned it goes with the agent, which `detach` stops.
        for (row, _) in programs::tracepoints() {
            remove_pin(&self.link_path(row.name))?;
        }
        for name in programs::pinned_maps() {
            remove_pin(&self.map_path(name))?;
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => Ok((detached, forward)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((detached, forward)),
            Err(e) => Err(pin_err("remove", &self.dir)(e)),
        }
    }
}

/// Removes the pin at `path`, if there is one.
fn remove_pin(path: &Path) -> Result<(), PinError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pin_err("remove", path)(e)),
    }
}

#[cfg(test)]
mod command_tests {
    use super::*;

    #[test]
    fn a_hint_names_a_pin_dir_that_is_not_the_default() {
        assert_eq!(
            command_for(Path::new(DEFAULT_DIR), "detach"),
            "imds-guard detach"
        );
        assert_eq!(
            command_for(Path::new("/sys/fs/bpf/other"), "detach"),
            "imds-guard detach --pin-dir /sys/fs/bpf/other"
        );
    }
}
