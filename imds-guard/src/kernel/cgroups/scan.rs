//! Listing the cgroup v2 hierarchy as it is: every cgroup's path from the
//! root, and its id (its directory's inode number, which is the id the
//! programs see).

use std::{
    collections::VecDeque,
    ffi::OsStr,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// One cgroup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) id: u64,
    /// From the cgroup2 root: `/` for the root, `/a/b` below it.
    pub(crate) path: Vec<u8>,
}

/// Every cgroup below (and including) `root`, the cgroup2 mount point,
/// parents before their children. A directory removed while it is listed
/// is skipped: it is gone, and so is its entry (the `cgroup_rmdir`
/// program deletes it).
pub(crate) fn list(root: &Path) -> io::Result<Vec<Found>> {
    let mut found = vec![Found {
        id: std::fs::metadata(root)?.ino(),
        path: b"/".to_vec(),
    }];
    let mut queue = VecDeque::from([(root.to_path_buf(), Vec::new())]);
    while let Some((dir, path)) = queue.pop_front() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            // Cgroup files are regular files; every directory is a cgroup.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(entry.file_name().as_bytes());
            found.push(Found {
                id: meta.ino(),
                path: child.clone(),
            });
            queue.push_back((entry.path(), child));
        }
    }
    Ok(found)
}

/// Whether the cgroup at `path` (from the root) is still cgroup `id`: not
/// removed, nor removed and made again under the same name.
pub(crate) fn still(root: &Path, path: &[u8], id: u64) -> bool {
    std::fs::metadata(join(root, path)).is_ok_and(|m| m.ino() == id)
}

/// The directory of the cgroup at `path` (from the root).
pub(crate) fn join(root: &Path, path: &[u8]) -> PathBuf {
    let relative = path.strip_prefix(b"/").unwrap_or(path);
    root.join(OsStr::from_bytes(relative))
}

fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::cgroup::cgroup2_root;

    #[test]
    fn the_root_comes_first_and_parents_before_children() {
        let root = cgroup2_root().expect("this machine mounts cgroup2");
        let found = list(&root).expect("lists");
        assert_eq!(found[0].path, b"/");
        assert!(found.len() > 1, "this machine has cgroups below the root");
        let index = |p: &[u8]| found.iter().position(|f| f.path == p);
        for (i, f) in found.iter().enumerate().skip(1) {
            let parent = match f.path.iter().rposition(|&b| b == b'/') {
                Some(0) => b"/".as_slice(),
                Some(at) => &f.path[..at],
                None => panic!("{:?} has no /", f.path),
            };
            let p = index(parent).unwrap_or_else(|| panic!("no parent for {:?}", f.path));
            assert!(p < i);
            assert!(still(&root, &f.path, f.id) || !join(&root, &f.path).exists());
        }
    }
}
