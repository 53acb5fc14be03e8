//! Finding the binaries the tests run: the `imds-probe` and `imds-churn`
//! of this crate and the `imds-guard` agent.
//!
//! `env!("CARGO_BIN_EXE_<name>")` exists only in this package's integration
//! tests and never for another package's binary, so the harness looks
//! beside the running test executable instead: cargo puts tests in
//! `target/<profile>/deps/` and binaries in `target/<profile>/`.

use std::{
    env,
    path::{Path, PathBuf},
};

/// `IMDS_PROBE_BIN`, else `imds-probe` in the test's `target/<profile>/`.
/// Panics, saying how to build it, if neither exists.
pub fn probe_bin() -> PathBuf {
    find(
        "IMDS_PROBE_BIN",
        "imds-probe",
        "cargo build -p imds-guard-e2e --bins",
    )
}

/// `IMDS_CHURN_BIN`, else `imds-churn` in the test's `target/<profile>/`.
pub fn churn_bin() -> PathBuf {
    find(
        "IMDS_CHURN_BIN",
        "imds-churn",
        "cargo build -p imds-guard-e2e --bins",
    )
}

/// `IMDS_GUARD_BIN`, else `imds-guard` in the test's `target/<profile>/`.
/// Panics, saying how to build it, if neither exists. `cargo test` does not
/// build another package's binaries, so the agent must be built first (with
/// the same `CARGO_TARGET_DIR` and profile) or named by the variable.
pub fn imds_guard_bin() -> PathBuf {
    find("IMDS_GUARD_BIN", "imds-guard", "cargo build -p imds-guard")
}

fn find(var: &str, name: &str, build: &str) -> PathBuf {
    if let Some(path) = env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{var}={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = env::current_exe().unwrap_or_else(|e| panic!("finding the test executable: {e}"));
    let candidate = profile_dir(&exe).join(name);
    assert!(
        candidate.is_file(),
        "{name} not found at {}: run `{build}` with the same target directory and profile, \
         or set {var}",
        candidate.display()
    );
    candidate
}

/// `target/<profile>/` for an executable in it or in its `deps/`.
fn profile_dir(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_live_in_deps() {
        assert_eq!(
            profile_dir(Path::new("/t/debug/deps/harness-0123abcd")),
            Path::new("/t/debug")
        );
        assert_eq!(
            profile_dir(Path::new("/t/release/imds-guard")),
            Path::new("/t/release")
        );
    }
}
