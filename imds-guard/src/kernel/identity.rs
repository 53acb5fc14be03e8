//! What the programs need to know of "the host" (issue 9): the
//! namespaces the agent runs in, which a caller must share to be on the
//! host, and the record of what was handed to the programs (offsets,
//! namespaces, the group bound), kept in the pinned `RESOLVED` map for
//! `status`.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use imds_guard_common::{self as common, Bounds, HostNamespaces, Offsets, Resolved};

use super::maps::{self, MapError};

/// A namespace of the host that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the namespace {path}, which tells the host from a container")]
pub struct NamespaceError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The namespaces of this process, by inode number: `/proc/self/ns/pid`
/// names the active pid namespace (`task_active_pid_ns`), the other two
/// the network and user namespaces. Run the agent with `nsenter --net=`
/// and "the host's" network namespace is that one.
pub fn own_namespaces() -> Result<HostNamespaces, NamespaceError> {
    of_files(
        Path::new("/proc/self/ns/pid"),
        Path::new("/proc/self/ns/net"),
        Path::new("/proc/self/ns/user"),
    )
}

/// The namespaces named by three namespace files (`/proc/PID/ns/*`, or a
/// bind mount of one such as `/run/netns/NAME`).
pub fn of_files(pid: &Path, net: &Path, user: &Path) -> Result<HostNamespaces, NamespaceError> {
    let inum = |path: &Path| -> Result<u32, NamespaceError> {
        let meta = std::fs::metadata(path).map_err(|source| NamespaceError {
            path: path.to_owned(),
            source,
        })?;
        // `ns_common.inum` is an `unsigned int`: a namespace inode number
        // above that is not one.
        u32::try_from(meta.ino()).map_err(|_| NamespaceError {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "inode number {} is not a namespace's",
                meta.ino()
            )),
        })
    };
    Ok(HostNamespaces {
        valid: HostNamespaces::VALID,
        pid: inum(pid)?,
        net: inum(net)?,
        user: inum(user)?,
    })
}

/// Writes what the programs were loaded with into `map` (`RESOLVED`):
/// `bounds` are those of the build loaded.
pub fn record(
    map: &mut Map,
    offsets: &Offsets,
    host: &HostNamespaces,
    bounds: Bounds,
) -> Result<(), MapError> {
    let access = maps::access(common::MAP_RESOLVED);
    let mut array: Array<&mut MapData, Resolved> = Array::try_from(map).map_err(&access)?;
    let resolved = Resolved {
        offsets: *offsets,
        host: *host,
        max_groups: bounds.groups,
    };
    array.set(0, resolved, 0).map_err(access)
}

/// What a pinned `RESOLVED` map holds; `None` when nothing was written
/// (an agent that did not record it).
pub fn read(map: &Map) -> Result<Option<Resolved>, MapError> {
    let access = maps::access(common::MAP_RESOLVED);
    let array: Array<&MapData, Resolved> = Array::try_from(map).map_err(&access)?;
    let resolved = array.get(&0, 0).map_err(access)?;
    Ok((resolved.offsets.valid == Offsets::VALID).then_some(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_namespaces_and_they_are_what_proc_says() {
        let own = own_namespaces().expect("/proc/self/ns is readable");
        assert_eq!(own.valid, HostNamespaces::VALID);
        // `readlink /proc/self/ns/net` is `net:[INODE]`.
        let link = std::fs::read_link("/proc/self/ns/net").expect("readlink");
        assert_eq!(link.to_string_lossy(), format!("net:[{}]", own.net));
        assert!(own.pid != 0 && own.user != 0 && own.pid != own.net);
    }

    #[test]
    fn a_missing_namespace_file_says_which() {
        let e = of_files(
            Path::new("/proc/self/ns/pid"),
            Path::new("/nonexistent/ns/net"),
            Path::new("/proc/self/ns/user"),
        )
        .expect_err("no such file");
        assert!(e.to_string().contains("/nonexistent/ns/net"), "{e}");
    }
}
