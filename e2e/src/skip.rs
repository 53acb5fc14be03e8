//! Deciding whether a privileged test can run here, and saying so loudly
//! when it cannot.

use std::{process::Command, sync::OnceLock};

use nix::unistd::geteuid;

use crate::{Netns, TestCgroup, util::run};

/// Returns true when privileged tests can run: root, a writable cgroup2
/// hierarchy, `ip`, and network namespaces. Otherwise prints
/// `skipping: <test>: <reason>` and returns false, except with `CI=true`,
/// where it panics: in CI a skipped test is a failed one.
///
/// The check creates (and removes) a cgroup and a namespace once per test
/// process.
pub fn privileged_or_skip(test: &str) -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let Err(reason) = CHECK.get_or_init(check) else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run privileged tests: {reason} (CI=true: a skip is a failure)");
    }
    eprintln!("skipping: {test}: {reason}");
    false
}

fn check() -> Result<(), String> {
    let euid = geteuid();
    if !euid.is_root() {
        return Err(format!("needs root (euid is {euid})"));
    }
    drop(TestCgroup::try_new().map_err(|e| format!("cgroup2 is not usable: {e}"))?);
    run(Command::new("ip").arg("-V")).map_err(|e| format!("`ip` (iproute2) is not usable: {e}"))?;
    drop(Netns::try_new().map_err(|e| format!("cannot create a network namespace: {e}"))?);
    Ok(())
}
