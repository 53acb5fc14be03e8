//! `cargo xtask dist`: the Debian and RPM packages, built from the release
//! binary (the eBPF object is embedded in it by `imds-guard/build.rs`), the
//! systemd unit, the shipped policy, and the manual pages and shell
//! completions the binary generates about itself.
//!
//! Everything goes through commands (`cargo`, the built binary, `gzip`,
//! `dpkg-shlibdeps`, `dpkg-deb`, `rpmbuild`), so that xtask keeps building
//! on a bare machine. `--check` then installs and purges the `.deb` on this
//! machine, boots this system in systemd-nspawn to run the installed
//! service under systemd, and inspects the `.rpm` (see `check.rs`,
//! `boot.rs`).

mod boot;
mod check;
mod deb;
mod layout;
mod rpm;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    process::{cargo, output, run, target_dir},
    setup::setup,
};

/// What the release build produced, and where the packages go.
pub struct Build {
    /// The release binary.
    pub bin: PathBuf,
    /// `0.1.0`, from `imds-guard --version`.
    pub version: String,
    /// `target/dist`.
    pub dist: PathBuf,
    /// Man pages (`man/`) and completions (`completions/`) the binary wrote.
    pub generated: PathBuf,
}

/// The package release (Debian revision, RPM `Release`): the first
/// packaging of each upstream version.
pub const RELEASE: &str = "1";

pub fn dist(check: bool) -> Result<()> {
    setup()?;
    let build = build()?;
    let deb = deb::build(&build)?;
    let rpm = rpm::build(&build)?;
    eprintln!("xtask: built {}", deb.display());
    eprintln!("xtask: built {}", rpm.display());
    if check {
        check::deb(&build, &deb)?;
        check::rpm(&build, &rpm)?;
        eprintln!("xtask: dist check: both packages are as expected");
    }
    Ok(())
}

/// Builds the release binary and has it generate its pages and scripts.
fn build() -> Result<Build> {
    run(cargo().args(["build", "--release", "-p", "imds-guard"]))?;
    let target = target_dir();
    let bin = target.join("release/imds-guard");
    ensure!(
        bin.is_file(),
        "cargo built imds-guard but {} is not there (is CARGO_TARGET_DIR or build.target-dir set \
         to something this task does not know?)",
        bin.display()
    );
    let version = version(&bin)?;
    let dist = target.join("dist");
    let generated = dist.join("generated");
    if generated.exists() {
        fs::remove_dir_all(&generated)
            .with_context(|| format!("cannot clear {}", generated.display()))?;
    }
    let generate = || {
        let mut c = Command::new(&bin);
        c.arg("generate");
        c
    };
    run(generate().args(["man", "--out"]).arg(generated.join("man")))?;
    for shell in layout::SHELLS {
        run(generate()
            .args(["completions", "--shell", shell, "--out"])
            .arg(generated.join("completions")))?;
    }
    Ok(Build {
        bin,
        version,
        dist,
        generated,
    })
}

/// The version `imds-guard --version` prints (`imds-guard 0.1.0`): what the
/// packages are named after is what the binary says it is.
fn version(bin: &Path) -> Result<String> {
    let out = output(Command::new(bin).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().split_once(' ') {
        Some(("imds-guard", v)) if !v.is_empty() && !v.contains(char::is_whitespace) => {
            Ok(v.to_owned())
        }
        _ => bail!(
            "{} --version printed {:?}, not \"imds-guard VERSION\"",
            bin.display(),
            text.trim()
        ),
    }
}

/// Host architecture names: (Debian, RPM).
fn arch() -> Result<(&'static str, &'static str)> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("amd64", "x86_64")),
        "aarch64" => Ok(("arm64", "aarch64")),
        other => bail!("packaging for {other} is not supported (x86_64 and aarch64 are)"),
    }
}
