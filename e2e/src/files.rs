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
