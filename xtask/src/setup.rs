//! Installing what the project needs on a bare machine, idempotently.
//!
//! Two routes build the eBPF programs (see `imds-guard/build.rs`): rustup's
//! `nightly` with `rust-src` where a machine has it, else Debian's rustc
//! with its prebuilt `core` for `bpfel-unknown-none`, linked into rustup as
//! the `bpf-debian` toolchain, and a `bpf-linker` built against Debian's
//! LLVM 22 (`../shared/EBPF-TOOLCHAIN.md` has the measured recipe).
//!
//! The release build (`cargo xtask dist`) needs more, installed when it
//! runs rather than by every `setup`: cargo-zigbuild and zig from PyPI
//! (`zigbuild`), and for another CPU Debian's std for it and qemu-user
//! (`foreign_cpu`). `dist/compile.rs` says why that route.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    arch::Arch,
    process::{cmd, fresh_dir, is_root, run, stdout},
};

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
/// rpm for rpmbuild, binutils for readelf (the binary's symbol versions),
/// systemd for systemd-analyze, systemd-container for systemd-nspawn,
/// man-db (with groff) for the man page checks, uidmap for the newuidmap
/// and newgidmap the identity suite runs as a user with subordinate ids,
/// podman (4.3 here) to build the container image and play the DaemonSet's
/// pod, catatonit for the pod's infra container (so that podman builds its
/// pause image here rather than pull one), runc to run them (crun refuses
/// a hybrid cgroup layout whose cgroup2 has controllers).
const TEST_TOOLS: &[&str] = &[
    "iproute2",
    "util-linux",
    "iptables",
    "nftables",
    "binutils",
    "rpm",
    "systemd",
    "systemd-container",
    "man-db",
    "uidmap",
    "podman",
    "catatonit",
    "runc",
];
/// What `vm-test` needs besides QEMU: depmod for the guest kernel's
/// modules, objcopy to strip the binaries, the archive keyring its private
/// apt checks Debian's lists with.
const VM_TOOLS: &[&str] = &["kmod", "binutils", "debian-archive-keyring"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The release build's linker driver and linker, pinned together: the
/// cargo-zigbuild wheel is its static binary, and its CI tests zig 0.16.
const CARGO_ZIGBUILD: &str = "0.24.1";
const ZIG: &str = "0.16.0";

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
        let path = format!("{LLVM_PREFIX}/bin:{}", env::var("PATH").unwrap_or_default());
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
pub fn vm_tools(arch: Arch) -> Result<()> {
    let mut packages = VM_TOOLS.to_vec();
    packages.push(match arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Aarch64 => "qemu-system-arm",
    });
    // The host's objcopy strips only its own architecture's binaries.
    if !arch.is_host() {
        packages.push(match arch {
            Arch::X86_64 => "binutils-x86-64-linux-gnu",
            Arch::Aarch64 => "binutils-aarch64-linux-gnu",
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

/// cargo-zigbuild and the zig it drives.
pub struct Zigbuild {
    pub cargo_zigbuild: PathBuf,
    pub zig: PathBuf,
}

/// Installs the pinned cargo-zigbuild and zig (PyPI's `ziglang`) with pip,
/// unless they are there: into a directory of their own under
/// `~/.local/share/imds-guard` (`pip --target`), which needs no virtual
/// environment, touches no system Python and is allowed where Debian marks
/// its Python externally managed. The directory is named after both
/// versions, so changing a pin installs afresh.
pub fn zigbuild() -> Result<Zigbuild> {
    let dir = data_dir()?.join(format!("imds-guard/zigbuild-{CARGO_ZIGBUILD}-zig-{ZIG}"));
    let tools = Zigbuild {
        cargo_zigbuild: dir.join("bin/cargo-zigbuild"),
        zig: dir.join("ziglang/zig"),
    };
    let installed = || {
        says(&tools.cargo_zigbuild, "--version", CARGO_ZIGBUILD) && says(&tools.zig, "version", ZIG)
    };
    if installed() {
        eprintln!("xtask: cargo-zigbuild {CARGO_ZIGBUILD} with zig {ZIG}: installed");
        return Ok(tools);
    }
    eprintln!(
        "xtask: installing cargo-zigbuild {CARGO_ZIGBUILD} and zig {ZIG} from PyPI into {}",
        dir.display()
    );
    pip_install(
        &dir,
        &[
            &format!("cargo-zigbuild=={CARGO_ZIGBUILD}"),
            &format!("ziglang=={ZIG}"),
        ],
    )?;
    ensure!(
        installed(),
        "pip installed cargo-zigbuild and ziglang into {} but {} or {} does not run",
        dir.display(),
        tools.cargo_zigbuild.display(),
        tools.zig.display()
    );
    Ok(tools)
}

/// The pinned kubernetes-validate (PyPI), which checks manifests against
/// the Kubernetes API's schemas, bundled for 1.25 to 1.37.
pub const KUBERNETES_VALIDATE: &str = "1.37.0";

/// Installs kubernetes-validate as [`zigbuild`] installs its tools, unless
/// it is there; the directory to put on `PYTHONPATH` (its script's
/// shebang names whichever Python installed it, so it is run as
/// `python3 -m kubernetes_validate`).
pub fn kubernetes_validate() -> Result<PathBuf> {
    let dir = data_dir()?.join(format!(
        "imds-guard/kubernetes-validate-{KUBERNETES_VALIDATE}"
    ));
    let installed = || {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--version"])
            .env("PYTHONPATH", &dir)
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains(KUBERNETES_VALIDATE)
            })
    };
    if installed() {
        return Ok(dir);
    }
    eprintln!(
        "xtask: installing kubernetes-validate {KUBERNETES_VALIDATE} from PyPI into {}",
        dir.display()
    );
    pip_install(
        &dir,
        &[&format!("kubernetes-validate=={KUBERNETES_VALIDATE}")],
    )?;
    ensure!(
        installed(),
        "pip installed kubernetes-validate into {} but python3 -m kubernetes_validate does not run \
         with it",
        dir.display()
    );
    Ok(dir)
}

/// `pip install --target DIR PACKAGES` into an emptied `dir`.
fn pip_install(dir: &Path, packages: &[&str]) -> Result<()> {
    let python = python_with_pip()?;
    // A directory left by an interrupted install would make pip refuse.
    fresh_dir(dir)?;
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args([
            "--root-user-action=ignore",
            "--no-warn-script-location",
            "--target",
        ])
        .arg(dir)
        .args(packages))
}

/// `$XDG_DATA_HOME`, else `~/.local/share`.
fn data_dir() -> Result<PathBuf> {
    Ok(
        match env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(env::var_os("HOME").context("HOME is not set")?).join(".local/share")
            }
        },
    )
}

/// Whether `program arg` prints `version`.
fn says(program: &Path, arg: &str, version: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
}

/// A Python with pip: the one on PATH, else Debian's with python3-pip.
fn python_with_pip() -> Result<&'static str> {
    let has_pip = |python: &str| {
        Command::new(python)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_pip("python3") {
        return Ok("python3");
    }
    apt_install(&["python3-pip"])?;
    ensure!(
        has_pip("/usr/bin/python3"),
        "python3-pip is installed but /usr/bin/python3 -m pip does not run"
    );
    Ok("/usr/bin/python3")
}

/// What building for another CPU needs: Debian's std for that CPU (for its
/// rustc, the `bpf-debian` toolchain: rustup here cannot add a target),
/// installed as a multiarch package (`dpkg --add-architecture`), and
/// qemu-user to run the result (`--version`, `generate`). Only qemu-user:
/// its recommended qemu-user-binfmt would register binfmt_misc handlers on
/// this machine, and `apt_install` takes no recommends.
pub fn foreign_cpu(deb_arch: &str) -> Result<()> {
    let known = stdout(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if !known.lines().any(|a| a.trim() == deb_arch) {
        ensure!(
            is_root(),
            "building for {deb_arch} needs its Debian packages, and adding the {deb_arch} \
             architecture to dpkg needs root: dpkg --add-architecture {deb_arch}"
        );
        eprintln!("xtask: dpkg --add-architecture {deb_arch}");
        run(Command::new("dpkg").args(["--add-architecture", deb_arch]))?;
    }
    // The package is new to dpkg's lists now, so apt_install updates them.
    apt_install(&[&format!("libstd-rust-web-dev:{deb_arch}"), "qemu-user"])
}
