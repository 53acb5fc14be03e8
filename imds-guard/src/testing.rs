//! What more than one module's unit tests need of the machine.

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

/// Runs `f` on a thread of its own in a private mount namespace with a
/// tmpfs on `/run`; skips (loudly; fails in CI) without `CAP_SYS_ADMIN`.
pub(crate) fn in_private_run(f: impl FnOnce() + Send + 'static) {
    let joined = std::thread::spawn(move || {
        // A mount namespace is per thread: this one dies with the thread.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
            let reason = format!("skipping: cannot make a mount namespace ({e}); run as root");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
            eprintln!("{reason}");
            return;
        }
        // Private first, so that nothing mounted below propagates back to
        // the host's namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("making / private in the test's mount namespace");
        mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .expect("mounting a tmpfs on /run in the test's mount namespace");
        f();
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

/// A directory of its own under the temporary directory, removed on drop:
/// `imds-guard-NAME-PID`.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("imds-guard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
