//! Building the agent for one CPU so that it runs on glibc 2.28 and newer.
//!
//! The route is `cargo zigbuild --target <triple>.2.28`: zig links against
//! its own stubs of that glibc's symbol versions, whatever glibc the build
//! machine has (Debian 12's 2.36 would otherwise set the floor at 2.34).
//! Why this route, on a bare Debian 12 machine:
//! - it keeps glibc and dynamic linking: name lookups for the policy's
//!   users and groups go through NSS (sssd, LDAP), which a static glibc
//!   binary cannot load reliably, and static musl has no std here (rustup
//!   cannot add targets; Debian ships no musl std);
//! - cargo-zigbuild and zig are both wheels on PyPI, installed by
//!   `setup::zigbuild` with pip, no compiler build and no sysroot to make;
//! - the same linker serves both CPUs, so aarch64 needs only a std for it:
//!   Debian's `libstd-rust-web-dev:arm64`, which fits Debian's rustc (the
//!   `bpf-debian` toolchain), not rustup's, so the toolchain is chosen per
//!   target (`toolchain`).
//!
//! Build scripts run on the build machine as usual, so `imds-guard/build.rs`
//! still builds the eBPF object (with `bpf_target_arch` set to the target's
//! CPU) and the agent embeds it; `binary.rs` checks that it did.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail, ensure};

use super::glibc::FLOOR;
use crate::{
    arch::Arch,
    process::{run, stdout, target_dir, workspace_root},
    setup::{self, Zigbuild},
};

/// The Debian rustc, as linked into rustup by `cargo xtask setup`.
const DEBIAN_TOOLCHAIN: &str = "bpf-debian";

/// The `--target` that asks cargo-zigbuild for the floor:
/// `aarch64-unknown-linux-gnu.2.28`.
pub fn zig_target(arch: Arch) -> String {
    format!("{}.{FLOOR}", arch.triple())
}

/// `cargo zigbuild` for `arch`, with the toolchain that has its std; the
/// caller adds the subcommand's arguments.
pub fn zigbuild(arch: Arch, tools: &Zigbuild, subcommand: &str) -> Result<Command> {
    let toolchain = toolchain(arch)?;
    eprintln!(
        "xtask: building for {} with toolchain {toolchain}, linked by zig for glibc {FLOOR}",
        arch.rpm()
    );
    let mut c = Command::new(&tools.cargo_zigbuild);
    c.current_dir(workspace_root())
        .arg(subcommand)
        .args(["--target", &zig_target(arch)])
        .env("RUSTUP_TOOLCHAIN", &toolchain)
        .env("CARGO_ZIGBUILD_ZIG_PATH", &tools.zig)
        // `cargo run` set these for xtask to its own toolchain; the rustup
        // proxies must pick the one chosen here instead.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    Ok(c)
}

/// Builds the release agent for `arch`; its path.
pub fn release(arch: Arch, tools: &Zigbuild) -> Result<PathBuf> {
    run(zigbuild(arch, tools, "zigbuild")?.args(["--release", "-p", "imds-guard"]))?;
    let bin = target_dir().join(arch.triple()).join("release/imds-guard");
    ensure!(
        bin.is_file(),
        "cargo zigbuild built imds-guard but {} is not there (is CARGO_TARGET_DIR or \
         build.target-dir set to something this task does not know?)",
        bin.display()
    );
    Ok(bin)
}

/// The rustup toolchain that builds for `arch`: the one in use when it has
/// that target's std (a full rustup, or the host's own CPU), else Debian's
/// rustc, given Debian's std for the CPU (installed here if missing).
fn toolchain(arch: Arch) -> Result<String> {
    let active = stdout(
        Command::new("rustup")
            .args(["show", "active-toolchain"])
            .current_dir(workspace_root()),
    )?;
    let active = active
        .split_whitespace()
        .next()
        .unwrap_or("stable")
        .to_owned();
    if has_std(&active, arch) {
        return Ok(active);
    }
    let toolchains = stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(DEBIAN_TOOLCHAIN)) {
        bail!(
            "toolchain {active} has no std for {triple} and there is no {DEBIAN_TOOLCHAIN} \
             toolchain: `rustup target add {triple}`, or `cargo xtask setup` on Debian",
            triple = arch.triple()
        );
    }
    if !has_std(DEBIAN_TOOLCHAIN, arch) {
        setup::foreign_cpu(arch.deb())?;
    }
    ensure!(
        has_std(DEBIAN_TOOLCHAIN, arch),
        "libstd-rust-web-dev:{} is installed but {DEBIAN_TOOLCHAIN} has no std for {}",
        arch.deb(),
        arch.triple()
    );
    Ok(DEBIAN_TOOLCHAIN.to_owned())
}

/// Whether `toolchain` has a compiled std for `arch`.
fn has_std(toolchain: &str, arch: Arch) -> bool {
    let Ok(dir) = stdout(
        Command::new("rustup")
            .args([
                "run",
                toolchain,
                "rustc",
                "--print",
                "target-libdir",
                "--target",
            ])
            .arg(arch.triple()),
    ) else {
        return false;
    };
    fs::read_dir(dir.trim()).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    })
}

/// A command that runs `bin`, built for `arch`: directly on its own CPU,
/// else under qemu user-mode emulation (no binfmt_misc registration: qemu
/// is named). The emulated loader and libc are Debian's multiarch ones,
/// which `setup::foreign_cpu` installed with the std.
pub fn exec(arch: Arch, bin: &Path) -> Result<Command> {
    if arch == Arch::host()? {
        return Ok(Command::new(bin));
    }
    let qemu = arch.qemu();
    if Command::new(qemu).arg("--version").output().is_err() {
        setup::foreign_cpu(arch.deb())?;
    }
    let mut c = Command::new(qemu);
    c.arg(bin);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zig_target_carries_the_floor() {
        assert_eq!(zig_target(Arch::Aarch64), "aarch64-unknown-linux-gnu.2.28");
        assert_eq!(zig_target(Arch::X86_64), "x86_64-unknown-linux-gnu.2.28");
    }
}
