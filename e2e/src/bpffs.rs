//! A private bpf filesystem for one test: the agent pins its links and maps
//! there, never in the host's `/sys/fs/bpf`. Each mount of bpffs is its own
//! instance, so tests cannot see each other's pins, and unmounting releases
//! every pin in it (a pinned link is then detached), even when the test
//! failed before it could run `imds-guard detach`.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct TestBpffs {
    mount_point: PathBuf,
}

impl TestBpffs {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mount_point =
            std::env::temp_dir().join(format!("igt-bpffs-{}-{n}", std::process::id()));
        fs::create_dir_all(&mount_point)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", mount_point.display()));
        mount(
            Some("bpf"),
            &mount_point,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=0700"),
        )
        .unwrap_or_else(|e| panic!("mount bpffs on {}: {e}", mount_point.display()));
        Self { mount_point }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// The pin directory to give the agent (`--pin-dir`).
    pub fn pin_dir(&self) -> PathBuf {
        self.mount_point.join("imds-guard")
    }
}

impl Default for TestBpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBpffs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.mount_point, MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.mount_point.display());
            return;
        }
        let _ = fs::remove_dir(&self.mount_point);
    }
}
