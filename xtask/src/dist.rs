//! `cargo xtask dist [--arch x86_64|aarch64]`: the Debian and RPM packages
//! for one CPU, built from the release binary (the eBPF object is embedded
//! in it by `imds-guard/build.rs`), the systemd unit, the shipped policy,
//! and the manual pages and shell completions the binary generates about
//! itself.
//!
//! The binary runs on glibc 2.28 and newer on both CPUs: `compile.rs`
//! builds it with cargo-zigbuild against that glibc's symbol versions, and
//! `binary.rs` refuses to package it unless its symbol versions say so.
//! A binary for another CPU than this machine's runs under qemu user-mode
//! emulation to say its version and generate its pages.
//!
//! Everything goes through commands (`cargo zigbuild`, the built binary,
//! `readelf`, `gzip`, `dpkg-deb`, `rpmbuild`), so that xtask keeps building
//! on a bare machine. `--check` then inspects both packages and the binary
//! in them; for this machine's CPU it also installs and purges the `.deb`
//! here and boots this system in systemd-nspawn to run the installed
//! service under systemd (see `check.rs`, `shipped.rs`, `boot.rs`).

mod binary;
mod boot;
mod check;
mod compile;
mod deb;
mod e2e;
mod glibc;
mod layout;
mod rpm;
mod rpm_root;
mod scripts;
mod shipped;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub use self::e2e::Built as E2eBinaries;
use crate::{
    arch::Arch,
    process::{output, run, target_dir},
    setup::{self, setup},
};

/// What the release build produced, and where the packages go.
pub struct Build {
    /// The CPU it is for.
    pub arch: Arch,
    /// The release binary.
    pub bin: PathBuf,
    /// `0.1.0`, from `imds-guard --version`.
    pub version: String,
    /// `target/dist`, where the packages land.
    pub dist: PathBuf,
    /// `target/dist/<arch>`: staging trees and scratch space, one per CPU.
    pub work: PathBuf,
    /// Man pages (`man/`) and completions (`completions/`) the binary wrote.
    pub generated: PathBuf,
}

/// The package release (Debian revision, RPM `Release`): the first
/// packaging of each upstream version.
pub const RELEASE: &str = "1";

/// The packages for this machine's CPU (what `cargo xtask test` checks).
pub fn dist(check: bool) -> Result<()> {
    dist_for(check, None, false)
}

/// The packages for `arch`, this machine's CPU by default; with `e2e`,
/// also the end-to-end tests for it (`e2e.rs`).
pub fn dist_for(check: bool, arch: Option<Arch>, e2e: bool) -> Result<()> {
    setup()?;
    let arch = match arch {
        Some(arch) => arch,
        None => Arch::host()?,
    };
    let tools = setup::zigbuild()?;
    let build = build(arch, &tools)?;
    let deb = deb::build(&build)?;
    let rpm = rpm::build(&build)?;
    eprintln!("xtask: built {}", deb.display());
    eprintln!("xtask: built {}", rpm.display());
    if check {
        check::deb(&build, &deb)?;
        check::rpm(&build, &rpm)?;
        eprintln!(
            "xtask: dist check: both {} packages are as expected",
            arch.rpm()
        );
    }
    if e2e {
        e2e::build(arch, &tools)?;
    }
    Ok(())
}

/// The end-to-end tests, the agent and the probe for `arch`, built by the
/// release's route and left where cargo put them (for `cargo xtask
/// vm-test` on another CPU: the tests name the probe by its build path).
/// After `setup()`.
pub fn e2e_binaries(arch: Arch) -> Result<E2eBinaries> {
    let tools = setup::zigbuild()?;
    e2e::compile(arch, &tools)
}

/// The release binary the packages hold, built and checked, and its
/// version (for the container image). After `setup()`.
pub fn release_binary(arch: Arch) -> Result<(PathBuf, String)> {
    let tools = setup::zigbuild()?;
    let bin = compile::release(arch, &tools)?;
    binary::check(&bin, arch)?;
    let version = version(arch, &bin)?;
    Ok((bin, version))
}

/// Builds the release binary, checks it, and has it generate its pages and
/// scripts.
fn build(arch: Arch, tools: &setup::Zigbuild) -> Result<Build> {
    let bin = compile::release(arch, tools)?;
    let floor = binary::check(&bin, arch)?;
    eprintln!(
        "xtask: {} needs {floor} (the floor is glibc {})",
        bin.display(),
        glibc::FLOOR
    );
    let version = version(arch, &bin)?;
    let dist = target_dir().join("dist");
    let work = dist.join(arch.rpm());
    let generated = work.join("generated");
    if generated.exists() {
        fs::remove_dir_all(&generated)
            .with_context(|| format!("cannot clear {}", generated.display()))?;
    }
    let generate = || -> Result<Command> {
        let mut c = compile::exec(arch, &bin)?;
        c.arg("generate");
        Ok(c)
    };
    run(generate()?
        .args(["man", "--out"])
        .arg(generated.join("man")))?;
    for shell in layout::SHELLS {
        run(generate()?
            .args(["completions", "--shell", shell, "--out"])
            .arg(generated.join("completions")))?;
    }
    Ok(Build {
        arch,
        bin,
        version,
        dist,
        work,
        generated,
    })
}

/// The version `imds-guard -V` prints (`imds-guard 0.1.0`): what the
/// packages are named after is what the binary says it is. (`--version`
/// adds what the kernel offers on a second line.)
fn version(arch: Arch, bin: &Path) -> Result<String> {
    let out = output(compile::exec(arch, bin)?.arg("-V"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().split_once(' ') {
        Some(("imds-guard", v)) if !v.is_empty() && !v.contains(char::is_whitespace) => {
            Ok(v.to_owned())
        }
        _ => bail!(
            "{} -V printed {:?}, not \"imds-guard VERSION\"",
            bin.display(),
            text.trim()
        ),
    }
}
