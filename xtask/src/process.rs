//! The process and path helpers every task uses (aya's `xtask` keeps them in
//! its `lib.rs`). Tasks import this module and nothing of each other's but
//! what they call, so there is no import circle among them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// A command run from the workspace root.
pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c
}

/// `cargo`, as the one that runs xtask (`CARGO`), from the workspace root.
pub fn cargo() -> Command {
    cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Runs `c` with inherited stdio; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("cannot run {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// Runs `c`, capturing its output; fails with its stderr unless it exits 0.
pub fn output(c: &mut Command) -> Result<Output> {
    let out = c.output().with_context(|| format!("cannot run {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `c`'s stdout as text, when it exits 0.
pub fn stdout(c: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&output(c)?.stdout).into_owned())
}

/// The workspace, whose `config/`, `README.md` and `docs/` are packaged.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// The target directory cargo used: `CARGO_TARGET_DIR` when set, else
/// `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Empties (or creates) `dir`.
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
