//! Temporary files for a test: a private directory removed on drop, and the
//! policy file written into it.

use std::{
    fs::{self, DirBuilder},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::util::{cleanup_failed, unique_name};

/// `$TMPDIR/imds-guard-e2e-<pid>-<n>`, mode 0700, removed with its contents
/// on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name("imds-guard-e2e"));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            cleanup_failed(&format!("removing {}: {e}", self.path.display()));
        }
    }
}

/// Writes `toml` to `dir/policy.toml` and returns its path. Mode 0644,
/// owned by the test's user (root): the ownership a real policy file has.
///
/// The file is written beside and renamed into place, so rewriting it for a
/// reload test never shows the agent half a policy.
pub fn write_policy(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    let staged = dir.join(".policy.toml.new");
    fs::write(&staged, toml).unwrap_or_else(|e| panic!("writing {}: {e}", staged.display()));
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", staged.display()));
    fs::rename(&staged, &path)
        .unwrap_or_else(|e| panic!("renaming {} into place: {e}", staged.display()));
    path
}

/// Writes `toml` into `dir` as the kubelet updates a ConfigMap volume, and
/// returns the path the agent reads (`dir/policy.toml`): a new
/// `..<stamp>` directory holding the file, a `..data_tmp` link to it
/// renamed over `..data` (the one atomic step), the user-visible
/// `policy.toml -> ..data/policy.toml` made the first time, the old
/// directory removed (the kubelet's `AtomicWriter`). `stamp` names the
/// version, and differs from one call to the next.
pub fn configmap_write(dir: &Path, stamp: &str, toml: &str) -> PathBuf {
    let fail = |what: &str, e: std::io::Error| -> ! { panic!("{what} in {}: {e}", dir.display()) };
    let version = format!("..{stamp}");
    let data = dir.join(&version);
    fs::create_dir_all(&data).unwrap_or_else(|e| fail("the version directory", e));
    fs::write(data.join("policy.toml"), toml).unwrap_or_else(|e| fail("the new file", e));
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&version, &tmp).unwrap_or_else(|e| fail("..data_tmp", e));
    fs::rename(&tmp, dir.join("..data")).unwrap_or_else(|e| fail("the ..data swap", e));
    let path = dir.join("policy.toml");
    if path.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("..data/policy.toml", &path)
            .unwrap_or_else(|e| fail("policy.toml", e));
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).unwrap_or_else(|e| fail("the old version", e));
    }
    path
}
