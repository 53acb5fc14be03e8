//! Listing the cgroup v2 hierarchy as it is: every cgroup's path from the
//! root, its id (its directory's inode number, which is the id the
//! programs see), its parent's and its owner (who made it, for a cgroup
//! the agent charges: `room.rs`).

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
    /// The parent's id (0 for the root).
    pub(crate) parent: u64,
    /// From the cgroup2 root: `/` for the root, `/a/b` below it.
    pub(crate) path: Vec<u8>,
    /// The directory's owner: the kernel gives a new cgroup's directory its
    /// creator's fsuid.
    pub(crate) uid: u32,
}

impl Found {
    /// The cgroup's own name: the path's last component (empty for the
    /// root).
    pub(crate) fn name(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(at) => &self.path[at + 1..],
            None => &self.path,
        }
    }
}

/// Every cgroup below (and including) `root`, the cgroup2 mount point,
/// parents before their children: one `getdents` pass over each cgroup
/// with children and one `fstatat` per cgroup. A directory removed while it is listed
/// is skipped: it is gone, and so is its entry (the `cgroup_rmdir`
/// program deletes it).
pub(crate) fn list(root: &Path) -> io::Result<Vec<Found>> {
    let meta = std::fs::metadata(root)?;
    let mut found = vec![Found {
        id: meta.ino(),
        parent: 0,
        path: b"/".to_vec(),
        uid: meta.uid(),
    }];
    let mut queue = VecDeque::from([(root.to_path_buf(), Vec::new(), meta.ino())]);
    while let Some((dir, path, parent)) = queue.pop_front() {
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
            // Relative to the directory read (`fstatat`), whatever the
            // length of its path.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(entry.file_name().as_bytes());
            // A cgroup directory's link count is 2 and one per child
            // cgroup (kernfs counts its subdirectories): a leaf, most
            // cgroups, is not read at all.
            if meta.nlink() > 2 {
                queue.push_back((entry.path(), child.clone(), meta.ino()));
            }
            found.push(Found {
                id: meta.ino(),
                parent,
                path: child,
                uid: meta.uid(),
            });
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
    use std::fs;

    use super::*;

    /// A directory tree of the test's own, shaped like a cgroup2 hierarchy
    /// (directories are cgroups, regular files are their interface files):
    /// the listing reads nothing a cgroup filesystem adds, and a new
    /// machine's cgroup2 root may have no child at all.
    struct Tree(PathBuf);

    impl Tree {
        fn new(dirs: &[&str], files: &[&str]) -> Self {
            let root = std::env::temp_dir().join(format!(
                "imds-guard-scan-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir(&root).expect("makes the root");
            for d in dirs {
                fs::create_dir_all(root.join(d)).expect("makes a cgroup");
            }
            for f in files {
                fs::write(root.join(f), b"").expect("makes a file");
            }
            Self(root)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_root_comes_first_and_parents_before_children() {
        let tree = Tree::new(
            &[
                "system.slice/sshd.service",
                "user.slice/user-1000.slice/user@1000.service/app.slice",
                "z/a/b/c",
            ],
            &[
                "cgroup.procs",
                "system.slice/cgroup.procs",
                "z/a/memory.max",
            ],
        );
        let root = &tree.0;
        let found = list(root).expect("lists");
        assert_eq!(found[0].path, b"/");
        assert_eq!(found[0].id, fs::metadata(root).expect("stats").ino());
        let mut paths: Vec<&[u8]> = found.iter().map(|f| f.path.as_slice()).collect();
        paths.sort_unstable();
        let expected: &[&[u8]] = &[
            b"/",
            b"/system.slice",
            b"/system.slice/sshd.service",
            b"/user.slice",
            b"/user.slice/user-1000.slice",
            b"/user.slice/user-1000.slice/user@1000.service",
            b"/user.slice/user-1000.slice/user@1000.service/app.slice",
            b"/z",
            b"/z/a",
            b"/z/a/b",
            b"/z/a/b/c",
        ];
        assert_eq!(paths, expected, "every directory, and no file");
        let index = |p: &[u8]| found.iter().position(|f| f.path == p);
        for (i, f) in found.iter().enumerate().skip(1) {
            let parent = match f.path.iter().rposition(|&b| b == b'/') {
                Some(0) => b"/".as_slice(),
                Some(at) => &f.path[..at],
                None => panic!("{:?} has no /", f.path),
            };
            let p = index(parent).unwrap_or_else(|| panic!("no parent for {:?}", f.path));
            assert!(p < i, "{:?} listed before its parent", f.path);
            assert_eq!(f.parent, found[p].id, "{:?}'s parent id", f.path);
            assert!(still(root, &f.path, f.id));
        }
        let sshd = found
            .iter()
            .find(|f| f.path == b"/system.slice/sshd.service")
            .expect("finds sshd.service");
        assert_eq!(sshd.name(), b"sshd.service");
        assert_eq!(found[0].name(), b"", "the root has no name");
        let me = fs::metadata(root).expect("stats").uid();
        assert!(
            found.iter().all(|f| f.uid == me),
            "owned by whoever made them"
        );
    }

    #[test]
    fn a_removed_cgroup_is_not_still_there() {
        let tree = Tree::new(&["a/b"], &[]);
        let found = list(&tree.0).expect("lists");
        let b = found
            .iter()
            .find(|f| f.path == b"/a/b")
            .expect("finds /a/b");
        assert!(still(&tree.0, b"/a/b", b.id));
        assert!(
            !still(&tree.0, b"/a/b", b.id + 1),
            "another id at that path"
        );
        fs::remove_dir(tree.0.join("a/b")).expect("removes");
        assert!(!still(&tree.0, b"/a/b", b.id));
    }
}
