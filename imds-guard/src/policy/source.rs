//! Which file the policy is read from when no `--config` names one: the
//! administrator's [`ADMIN_POLICY`] when there is one, else the default the
//! package ships, [`PACKAGED_POLICY`].
//!
//! The packaged default lives outside /etc so that no package manager ever
//! has a configuration file to ask about: a policy dropped in /etc before
//! the package is installed, or after, is never in conflict with a packaged
//! one, and `dpkg -i` without a terminal (cloud-init, Packer, SSM) never
//! stops at a conffile prompt. The /etc file replaces the default whole;
//! the two are never merged, so the policy in force is one file that
//! `validate` can check.
//!
//! "There is one" means anything at the path, even a dangling link or a
//! file that cannot be read: the administrator's file is then reported as
//! broken, never passed over for the default (which may allow more).

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

/// The administrator's policy, read in preference to the packaged one.
pub const ADMIN_POLICY: &str = "/etc/imds-guard/policy.toml";
/// The packaged default (only root may reach the metadata service).
pub const PACKAGED_POLICY: &str = "/usr/share/imds-guard/policy.toml";

/// Where the policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// `--config FILE`: that file, and nothing else.
    File(PathBuf),
    /// No `--config`: [`ADMIN_POLICY`] if there is one, else
    /// [`PACKAGED_POLICY`], looked up again at each load, so that a policy
    /// dropped in /etc after the agent started is read by the next reload.
    Default,
}

impl PolicySource {
    /// The source `--config` asks for (`None`: the default).
    pub fn new(config: Option<PathBuf>) -> Self {
        config.map_or(Self::Default, Self::File)
    }

    /// The file to read now.
    pub fn path(&self) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Default => first_present(&[Path::new(ADMIN_POLICY), Path::new(PACKAGED_POLICY)]),
        }
    }
}

/// The first of `candidates` that something is at; the first of them when
/// none is there (so that the error names the file to write).
fn first_present(candidates: &[&Path]) -> PathBuf {
    let present =
        |path: &Path| !matches!(path.symlink_metadata(), Err(e) if e.kind() == ErrorKind::NotFound);
    candidates
        .iter()
        .find(|p| present(p))
        .or(candidates.first())
        .map_or_else(PathBuf::new, |p| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn the_administrators_file_wins_when_there_is_one() {
        let dir = TempDir::new("source-both");
        let (admin, packaged) = (dir.0.join("etc.toml"), dir.0.join("usr.toml"));
        fs::write(&packaged, "").expect("write");
        assert_eq!(first_present(&[&admin, &packaged]), packaged);
        fs::write(&admin, "").expect("write");
        assert_eq!(first_present(&[&admin, &packaged]), admin);
    }

    #[test]
    fn a_broken_administrators_file_is_not_passed_over() {
        let dir = TempDir::new("source-broken");
        let (admin, packaged) = (dir.0.join("etc.toml"), dir.0.join("usr.toml"));
        fs::write(&packaged, "").expect("write");
        std::os::unix::fs::symlink(dir.0.join("nowhere"), &admin).expect("symlink");
        assert_eq!(first_present(&[&admin, &packaged]), admin);
        fs::remove_file(&admin).expect("remove");
        fs::create_dir(&admin).expect("a directory where the file should be");
        assert_eq!(first_present(&[&admin, &packaged]), admin);
    }

    #[test]
    fn with_neither_the_error_names_the_administrators_file() {
        let dir = TempDir::new("source-none");
        let (admin, packaged) = (dir.0.join("etc.toml"), dir.0.join("usr.toml"));
        assert_eq!(first_present(&[&admin, &packaged]), admin);
    }

    #[test]
    fn config_names_one_file_and_nothing_else() {
        let given = PolicySource::new(Some("/srv/p.toml".into()));
        assert_eq!(given.path(), Path::new("/srv/p.toml"));
        assert_eq!(PolicySource::new(None), PolicySource::Default);
    }
}
