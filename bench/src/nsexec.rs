//! Commands run inside a bench namespace, through `nsenter --net=` (setns
//! only; never `ip netns exec`, which remounts /sys), after a check that
//! the namespace is not the bench's own: whatever they read or change per
//! network namespace (the firewalls' rules, the agent's forward table) is
//! the bench namespace's, never the machine's.

use std::{fs, os::unix::fs::MetadataExt, path::Path, process::Command};

use anyhow::{Context, ensure};
use imds_guard_e2e::Netns;

/// `nsenter --net=NETNS -- PROGRAM`, to which the caller adds arguments.
pub fn command(netns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    refuse_own_namespace(netns)?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(program);
    Ok(cmd)
}

/// Fails unless `netns` is another namespace than the bench's own.
fn refuse_own_namespace(netns: &Netns) -> anyhow::Result<()> {
    let id = |p: &Path| -> anyhow::Result<(u64, u64)> {
        let m = fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        Ok((m.dev(), m.ino()))
    };
    ensure!(
        id(netns.path())? != id(Path::new("/proc/self/ns/net"))?,
        "{} is the bench's own network namespace",
        netns.path().display()
    );
    Ok(())
}
