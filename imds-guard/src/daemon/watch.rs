//! `run --watch-config`: the policy file is reloaded when it changes, as on
//! SIGHUP, without anyone asking.
//!
//! The agent watches the directory the file is in, not the file: the ways a
//! policy is replaced mostly put a new file (or a new link) where the old
//! one was, and a watch on the old inode would see none of them. The
//! kubelet updates a ConfigMap volume by writing a new `..<timestamp>`
//! directory and renaming a new `..data` link over the old one; the
//! policy's path (`policy.toml -> ..data/policy.toml`) never changes, only
//! what it leads to. An editor writes a temporary file and renames it over
//! the policy. Configuration management writes a temporary file and renames
//! it, or writes the file in place.
//!
//! Any change in the directory starts a quiet period of [`SETTLE`], started
//! again by each later change: a file written in place is read once it has
//! been left alone, not half-written. Then the policy file is read and
//! hashed, and the agent reloads only when the bytes differ from the last
//! ones it saw, so that other files in the directory (the kubelet's old
//! `..<timestamp>` directory going away, a backup an editor leaves) cost a
//! read, not a reload. The reload is the SIGHUP's: a policy that does not
//! validate is refused with its errors, and the one in force stays.

use std::{
    future::pending,
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};
use sha2::{Digest, Sha256};
use tokio::{
    io::unix::AsyncFd,
    time::{Duration, Instant, sleep_until},
};

use crate::{
    chain::Chain,
    policy::{ADMIN_POLICY, PACKAGED_POLICY, PolicySource},
};

/// How long the directory must be left alone before the policy is read: a
/// file written in place is read whole, and a burst of changes (the
/// kubelet's swap is five) is one reload.
pub const SETTLE: Duration = Duration::from_millis(500);

/// What is watched in the policy's directory: every way a file there comes,
/// goes, or is written.
const CHANGES: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The inotify descriptor, as tokio's `AsyncFd` takes it.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The watch on the policy file; one that watches nothing when off.
pub(super) struct PolicyWatch {
    fd: Option<AsyncFd<Fd>>,
    source: PolicySource,
    /// The file as last read: its path and a digest of its bytes (`None`:
    /// it could not be read).
    seen: (PathBuf, Option<[u8; 32]>),
    /// When the directory will have been quiet for [`SETTLE`].
    due: Option<Instant>,
}

impl PolicyWatch {
    /// A watch that never fires (`--watch-config` not given).
    pub(super) fn off(source: PolicySource) -> Self {
        let seen = read(&source);
        Self {
            fd: None,
            source,
            seen,
            due: None,
        }
    }

    /// Watches the directories of the file `source` reads; the file as it
    /// is now is the one in force. Made before the policy is first read:
    /// a change in between reloads the same file once, never misses one.
    pub(super) fn new(source: PolicySource) -> io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut watch = Self::off(source);
        watch.fd = Some(super::rings::pollable(Fd(inotify))?);
        for dir in watch.dirs() {
            watch.add(&dir)?;
        }
        Ok(watch)
    }

    /// Whether the file is watched.
    pub(super) fn on(&self) -> bool {
        self.fd.is_some()
    }

    /// The directories to watch: the nearest existing one of each file
    /// the source may read (the administrator's file may come later), and
    /// of what a link there leads to (a policy kept elsewhere).
    fn dirs(&self) -> Vec<PathBuf> {
        let files = match &self.source {
            PolicySource::File(path) => vec![path.clone()],
            PolicySource::Default => vec![ADMIN_POLICY.into(), PACKAGED_POLICY.into()],
        };
        let mut dirs = Vec::new();
        for file in files {
            let target = file.canonicalize().ok();
            for file in std::iter::once(file).chain(target) {
                if let Some(dir) = existing_parent(&file)
                    && !dirs.contains(&dir)
                {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    fn add(&self, dir: &Path) -> io::Result<()> {
        if let Some(fd) = &self.fd {
            fd.get_ref()
                .0
                .add_watch(dir, CHANGES)
                .map_err(|e| io::Error::other(format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Returns once the policy file differs from the last one seen, after
    /// its directory has been quiet for [`SETTLE`]; never when off.
    /// Cancel-safe: what was seen before a cancel is kept.
    pub(super) async fn changed(&mut self) {
        loop {
            match self.next().await {
                Woke::Changes => self.due = Some(Instant::now() + SETTLE),
                Woke::Quiet => {
                    self.due = None;
                    if self.take_change() {
                        return;
                    }
                }
                Woke::Failed(e) => {
                    tracing::error!(
                        "cannot read the watch on {}, no longer watching it (reload by hand): \
                         {}",
                        self.seen.0.display(),
                        Chain(&e)
                    );
                    self.fd = None;
                }
            }
        }
    }

    /// What happens next: changes in the directory (read and forgotten:
    /// only that there were some matters), or the quiet period's end.
    async fn next(&self) -> Woke {
        let Some(fd) = &self.fd else {
            return pending().await;
        };
        let due = self.due;
        let quiet = async move {
            match due {
                Some(due) => sleep_until(due).await,
                None => pending().await,
            }
        };
        tokio::select! {
            ready = fd.readable() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(e) => return Woke::Failed(e),
                };
                loop {
                    match ready.get_inner().0.read_events() {
                        Ok(_) => {}
                        Err(Errno::EAGAIN) => {
                            ready.clear_ready();
                            return Woke::Changes;
                        }
                        Err(e) => return Woke::Failed(e.into()),
                    }
                }
            }
            () = quiet => Woke::Quiet,
        }
    }

    /// Whether the file differs from the one seen last (which it becomes).
    /// A link may now lead to another directory: it is watched too.
    fn take_change(&mut self) -> bool {
        for dir in self.dirs() {
            if let Err(e) = self.add(&dir) {
                tracing::warn!("cannot watch {}: {}", dir.display(), Chain(&e));
            }
        }
        let now = read(&self.source);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }

    /// The file read now.
    pub(super) fn path(&self) -> &Path {
        &self.seen.0
    }
}

/// What woke the watch.
enum Woke {
    Changes,
    Quiet,
    Failed(io::Error),
}

/// The file `source` reads now, and a digest of its bytes.
fn read(source: &PolicySource) -> (PathBuf, Option<[u8; 32]>) {
    let path = source.path();
    let digest = std::fs::read(&path)
        .ok()
        .map(|bytes| Sha256::digest(bytes).into());
    (path, digest)
}

/// The nearest directory at or above `file`'s parent that exists.
fn existing_parent(file: &Path) -> Option<PathBuf> {
    let mut dir = match file.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return None,
    };
    loop {
        if dir.is_dir() {
            return Some(dir.to_path_buf());
        }
        dir = dir.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink};

    use super::*;
    use crate::testing::TempDir;

    /// Writes `policy` as the kubelet updates a ConfigMap volume: a new
    /// `..<stamp>` directory, a `..data_tmp` link to it renamed over
    /// `..data`, the old directory removed.
    fn kubelet_writes(dir: &Path, stamp: &str, policy: &str) {
        let data = dir.join(format!("..{stamp}"));
        fs::create_dir(&data).expect("the timestamped directory");
        fs::write(data.join("policy.toml"), policy).expect("the new file");
        let old = fs::read_link(dir.join("..data")).ok();
        let tmp = dir.join("..data_tmp");
        symlink(format!("..{stamp}"), &tmp).expect("..data_tmp");
        fs::rename(&tmp, dir.join("..data")).expect("the swap");
        if !dir.join("policy.toml").exists() {
            symlink("..data/policy.toml", dir.join("policy.toml")).expect("the user-visible link");
        }
        if let Some(old) = old {
            fs::remove_dir_all(dir.join(old)).expect("the old directory");
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// Whether the watch fires within `within`.
    fn fires(rt: &tokio::runtime::Runtime, watch: &mut PolicyWatch, within: Duration) -> bool {
        rt.block_on(async { tokio::time::timeout(within, watch.changed()).await.is_ok() })
    }

    const ENOUGH: Duration = Duration::from_secs(5);

    #[test]
    fn a_configmap_swap_is_seen_and_the_same_bytes_again_are_not() {
        let rt = runtime();
        let dir = TempDir::new("watch-configmap");
        kubelet_writes(&dir.0, "2026_01", "[allow]\nuids = [1]\n");
        let file = dir.0.join("policy.toml");
        let mut watch = rt
            .block_on(async { PolicyWatch::new(PolicySource::File(file.clone())) })
            .expect("watch");
        kubelet_writes(&dir.0, "2026_02", "[allow]\nuids = [2]\n");
        assert!(fires(&rt, &mut watch, ENOUGH), "the swap is seen");
        assert_eq!(watch.path(), file);
        // The kubelet writes the same data again (a resync): no reload.
        kubelet_writes(&dir.0, "2026_03", "[allow]\nuids = [2]\n");
        assert!(!fires(&rt, &mut watch, SETTLE * 4), "same bytes, no reload");
        kubelet_writes(&dir.0, "2026_04", "[allow]\nuids = [3]\n");
        assert!(fires(&rt, &mut watch, ENOUGH), "the next change is seen");
    }

    #[test]
    fn a_rename_over_the_file_and_a_write_in_place_are_seen() {
        let rt = runtime();
        let dir = TempDir::new("watch-rename");
        let file = dir.0.join("policy.toml");
        fs::write(&file, "[allow]\nuids = [1]\n").expect("write");
        let mut watch = rt
            .block_on(async { PolicyWatch::new(PolicySource::File(file.clone())) })
            .expect("watch");
        let tmp = dir.0.join(".policy.toml.swp");
        fs::write(&tmp, "[allow]\nuids = [2]\n").expect("write");
        fs::rename(&tmp, &file).expect("rename");
        assert!(fires(&rt, &mut watch, ENOUGH), "the rename is seen");
        fs::write(&file, "[allow]\nuids = [3]\n").expect("write in place");
        assert!(fires(&rt, &mut watch, ENOUGH), "the write is seen");
        fs::write(dir.0.join("unrelated"), "x").expect("write");
        assert!(
            !fires(&rt, &mut watch, SETTLE * 4),
            "another file: no reload"
        );
    }

    #[test]
    fn a_write_in_place_is_read_once_left_alone() {
        let rt = runtime();
        let dir = TempDir::new("watch-slow");
        let file = dir.0.join("policy.toml");
        fs::write(&file, "[allow]\nuids = [1]\n").expect("write");
        let mut watch = rt
            .block_on(async { PolicyWatch::new(PolicySource::File(file.clone())) })
            .expect("watch");
        let writing = std::thread::spawn({
            let file = file.clone();
            move || {
                use std::io::Write as _;
                let mut f = fs::File::create(&file).expect("truncate");
                for line in ["[allow]\n", "uids = [2]\n"] {
                    std::thread::sleep(SETTLE / 3);
                    f.write_all(line.as_bytes()).expect("write");
                }
            }
        });
        assert!(fires(&rt, &mut watch, ENOUGH), "the write is seen");
        writing.join().expect("the writer");
        // Read after the last write, not between: nothing more to see.
        assert!(!fires(&rt, &mut watch, SETTLE * 3), "read once, whole");
    }

    #[test]
    fn off_never_fires() {
        let rt = runtime();
        let dir = TempDir::new("watch-off");
        let file = dir.0.join("policy.toml");
        fs::write(&file, "").expect("write");
        let mut watch = PolicyWatch::off(PolicySource::File(file.clone()));
        assert!(!watch.on());
        fs::write(&file, "[allow]\n").expect("write");
        assert!(!fires(&rt, &mut watch, SETTLE * 2));
    }
}
