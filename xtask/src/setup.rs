//! Installing what the project needs on a bare machine, idempotently.
//!
//! Two routes build the eBPF programs (see `imds-guard/build.rs`): rustup's
//! `nightly` with `rust-src` where a machine has it, else Debian's rustc
//! with its prebuilt `core` for `bpfel-unknown-none`, linked into rustup as
//! the `bpf-debian` toolchain, and a `bpf-linker` built against Debian's
//! LLVM 22 (`../shared/EBPF-TOOLCHAIN.md` has the measured recipe).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::process::{cmd, is_root, run};

/// What the Debian route needs to build the programs.
const DEBIAN_BUILD: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// What the tests, the demo and the packaging (`dist`) use on every route:
/// dpkg-dev for dpkg-shlibdeps, rpm for rpmbuild, systemd for
/// systemd-analyze, systemd-container for systemd-nspawn, man-db (with
/// groff) for the man page checks.
const TEST_TOOLS: &[&str] = &[
    "iproute2",
    "util-linux",
    "iptables",
    "nftables",
    "dpkg-dev",
    "rpm",
    "systemd",
    "systemd-container",
    "man-db",
];
/// What `vm-test` needs besides QEMU: depmod for the guest kernel's
/// modules, objcopy to strip the binaries, the archive keyring its private
/// apt checks Debian's lists with.
const VM_TOOLS: &[&str] = &["kmod", "binutils", "debian-archive-keyring"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Which way the eBPF programs are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Nightly,
    Debian,
}

pub fn setup() -> Result<Route> {
    let route = if nightly_has_rust_src() {
        eprintln!("xtask: eBPF toolchain: rustup nightly with rust-src");
        Route::Nightly
    } else {
        eprintln!(
            "xtask: eBPF toolchain: Debian rustc (no rustup nightly with rust-src on this machine)"
        );
        Route::Debian
    };

    let mut packages: Vec<&str> = TEST_TOOLS.to_vec();
    if route == Route::Debian {
        packages.extend_from_slice(DEBIAN_BUILD);
    }
    apt_install(&packages)?;

    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("xtask: bpf-linker: installed");
    } else if route == Route::Debian {
        eprintln!("xtask: bpf-linker: building against LLVM 22 (about 2 minutes)");
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(cmd("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))?;
    } else {
        run(cmd("cargo").args(["install", "bpf-linker"]))?;
    }

    if route == Route::Debian {
        let list = Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .context("rustup is needed to build: install it from your distribution")?;
        if String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.starts_with("bpf-debian"))
        {
            eprintln!("xtask: toolchain bpf-debian: linked");
        } else {
            run(cmd("rustup").args(["toolchain", "link", "bpf-debian", "/usr"]))?;
        }
        if !Path::new("/usr/lib/rustlib/bpfel-unknown-none").is_dir() {
            bail!("libstd-rust-web-dev-bpf did not install /usr/lib/rustlib/bpfel-unknown-none");
        }
    }
    Ok(route)
}

/// Installs what `vm-test` needs for a guest of `arch`.
pub fn vm_tools(arch: crate::vm::Arch) -> Result<()> {
    let mut packages = VM_TOOLS.to_vec();
    packages.push(match arch {
        crate::vm::Arch::X86_64 => "qemu-system-x86",
        crate::vm::Arch::Aarch64 => "qemu-system-arm",
    });
    // The host's objcopy strips only its own architecture's binaries.
    if crate::vm::Arch::host() != Some(arch) {
        packages.push(match arch {
            crate::vm::Arch::X86_64 => "binutils-x86-64-linux-gnu",
            crate::vm::Arch::Aarch64 => "binutils-aarch64-linux-gnu",
        });
    }
    apt_install(&packages)
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

/// Installs the Debian packages that are missing; says so when it can't.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages: all installed");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(cmd("apt-get").arg("update").arg("-q"))?;
    run(cmd("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
