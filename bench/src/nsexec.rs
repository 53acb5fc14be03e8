//! Commands run inside a bench namespace, through `nsenter --net=` (setns
//! only; never `ip netns exec`, which remounts /sys), after a check that
//! the namespace is not the bench's own: whatever they read or change per
//! network namespace (the firewalls' rules, the agent's forward table) is
//! the bench namespace's, never the machine's.

use std::{
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};
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

/// Runs `program args` in `netns`, feeding it `stdin`; returns its stdout.
pub fn run(
    netns: &Netns,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let mut child = command(netns, program)?
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning nsenter {program}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed in {} ({}): {}",
            netns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
