//! `test` and `demo`, and the small process helpers they share.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::setup::setup;

/// A command run from the workspace root.
pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c
}

/// Runs `c` with inherited stdio; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("cannot run {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

fn cargo() -> Command {
    cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

pub fn test(extra: &[String]) -> Result<()> {
    setup()?;
    // The end-to-end tests run the real binary and the probe: build them
    // (the default members: the eBPF crate only builds for the BPF target).
    run(cargo().args(["build", "--bins"]))?;
    eprintln!("xtask: unit tests");
    run(cargo().args(["test", "--workspace", "--exclude", "imds-guard-e2e"]))?;
    eprintln!("xtask: privileged end-to-end tests (one at a time)");
    run(cargo()
        .args(["test", "-p", "imds-guard-e2e", "--"])
        .arg("--test-threads=1")
        .args(extra))?;
    if extra.is_empty() {
        eprintln!("xtask: packages (.deb installed and removed again, .rpm inspected)");
        crate::dist::dist(true)?;
    }
    Ok(())
}

pub fn demo() -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--bins"]))?;
    run(cargo().args([
        "run",
        "--quiet",
        "-p",
        "imds-guard-e2e",
        "--bin",
        "imds-guard-demo",
    ]))
}

pub fn bench(extra: &[String]) -> Result<()> {
    setup()?;
    // The bench starts the release agent and its own release binary.
    run(cargo().args(["build", "--release", "--bins"]))?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "imds-guard-e2e",
            "--bin",
            "imds-guard-bench",
            "--",
        ])
        .args(extra))
}
