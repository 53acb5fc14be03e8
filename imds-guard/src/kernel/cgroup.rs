//! Finding the cgroup v2 hierarchy the guard attaches to.
//!
//! Unified hosts mount it at `/sys/fs/cgroup`; hybrid ones (this project's
//! CI) at `/sys/fs/cgroup/unified`; hosts that boot cgroup v1 only (Amazon
//! Linux 2) nowhere, and the agent mounts one of its own
//! ([`place`](super::place)). Read it from mountinfo, never guess.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::sys::statfs::CGROUP2_SUPER_MAGIC;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo")]
    MountInfo(#[source] procfs::ProcError),
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo)")]
    NotMounted,
    #[error(
        "the cgroup v2 mount at {mount_point} shows only the subtree {root} (a cgroup namespace?): \
         attaching there would leave the rest of the host unguarded; run in the host's cgroup \
         namespace, or guard only this container on purpose with --container --cgroup DIR"
    )]
    Subtree { mount_point: PathBuf, root: String },
    #[error("cannot open cgroup {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
}

/// The mount point of the whole cgroup v2 hierarchy, from
/// `/proc/self/mountinfo`. A mount that shows only a subtree (inside a
/// cgroup namespace) is refused: attached there the guard would miss every
/// process outside it.
///
/// A mount's root is shown relative to the reader's cgroup namespace: a
/// mount made inside a container's namespace shows `/` there, which is why
/// [`place`](super::place) leaves a namespace that is not the host's first.
/// Read from the calling thread's view (`/proc/thread-self`), which is the
/// process's unless the thread changed its namespaces.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    use procfs::FromRead as _;
    let mounts = procfs::process::MountInfos::from_file("/proc/thread-self/mountinfo")
        .map_err(CgroupError::MountInfo)?;
    let cgroup2: Vec<_> = mounts
        .0
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2")
        .collect();
    if let Some(m) = cgroup2.iter().find(|m| m.root == "/") {
        return Ok(m.mount_point.clone());
    }
    match cgroup2.into_iter().next() {
        Some(m) => Err(CgroupError::Subtree {
            mount_point: m.mount_point,
            root: m.root,
        }),
        None => Err(CgroupError::NotMounted),
    }
}

/// The id of an open cgroup v2 directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` and link info report.
pub fn id(file: &File, path: &Path) -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    file.metadata()
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Finds the directory of cgroup `id` below `root` (breadth first, at most
/// `limit` directories looked at), for reports.
pub fn find_by_id(root: &Path, id: u64, limit: usize) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        seen += 1;
        if seen >= limit {
            return None;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            queue.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// The paths (from the cgroup v2 root, `/a/b`) of the cgroups of `wanted`
/// ids, found in one breadth-first walk of the hierarchy (a cgroup's id is
/// its directory's inode number), at most `limit` directories looked at;
/// empty without a cgroup v2 root. For reports.
pub fn paths_of(
    wanted: &std::collections::HashSet<u64>,
    limit: usize,
) -> std::collections::HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut found = std::collections::HashMap::new();
    let Ok(root) = cgroup2_root() else {
        return found;
    };
    let mut queue = std::collections::VecDeque::from([root.clone()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        if let Ok(meta) = std::fs::metadata(&dir)
            && wanted.contains(&meta.ino())
        {
            let rel = dir.strip_prefix(&root).unwrap_or(&dir);
            found.insert(meta.ino(), format!("/{}", rel.display()));
        }
        seen += 1;
        if seen >= limit || found.len() == wanted.len() {
            break;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            queue.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// Opens `path` and checks that it is a directory of a cgroup v2 hierarchy.
pub fn open(path: &Path) -> Result<File, CgroupError> {
    let file = File::open(path).map_err(|source| CgroupError::Open {
        path: path.to_owned(),
        source,
    })?;
    let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
    let magic = nix::sys::statfs::fstatfs(&file).map(|s| s.filesystem_type());
    if !is_dir || magic.ok() != Some(CGROUP2_SUPER_MAGIC) {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cgroup2_root_that_opens() {
        let root = cgroup2_root().expect("this machine mounts cgroup2");
        open(&root).expect("the root is a cgroup2 directory");
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_cgroup() {
        let err = open(Path::new("/tmp")).expect_err("/tmp is no cgroup");
        assert_eq!(err.to_string(), "/tmp is not a cgroup v2 directory");
    }
}
