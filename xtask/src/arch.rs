//! The CPUs the packages are built for and the `vm-test` guests run on, and
//! what each is called by rustc, Debian, RPM, readelf and qemu: one table,
//! so that a package's name, its metadata, the checks of its binary and the
//! guest booted for it cannot disagree.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    /// The CPU this xtask runs on (it is built for the host).
    pub fn host() -> Result<Self> {
        Self::from_rust(std::env::consts::ARCH)
    }

    /// Whether this is the CPU this xtask runs on.
    pub fn is_host(self) -> bool {
        Self::host().is_ok_and(|host| host == self)
    }

    /// From Rust's name of a CPU (`std::env::consts::ARCH`).
    pub fn from_rust(name: &str) -> Result<Self> {
        match name {
            "x86_64" => Ok(Self::X86_64),
            "aarch64" => Ok(Self::Aarch64),
            other => bail!("packaging for {other} is not supported (x86_64 and aarch64 are)"),
        }
    }

    /// Rust's name of the CPU, which `uname -m` also prints.
    pub fn rust(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The Rust target the agent is built for (glibc, not musl: see
    /// `compile.rs` for why).
    pub fn triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-gnu",
            Self::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// dpkg's architecture: the `.deb`'s `Architecture` and name, and the
    /// multiarch qualifier of Debian packages for this CPU.
    pub fn deb(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// RPM's `%{ARCH}`, and the `.rpm`'s name.
    pub fn rpm(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// What `readelf -h` prints as `Machine:` for a binary of this CPU.
    pub fn elf_machine(self) -> &'static str {
        match self {
            Self::X86_64 => "Advanced Micro Devices X86-64",
            Self::Aarch64 => "AArch64",
        }
    }

    /// `e_machine` of an ELF header for this CPU (`EM_X86_64`,
    /// `EM_AARCH64`).
    pub fn e_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Aarch64 => 183,
        }
    }

    /// The glibc dynamic loader a binary of this CPU names (`PT_INTERP`).
    pub fn interpreter(self) -> &'static str {
        match self {
            Self::X86_64 => "/lib64/ld-linux-x86-64.so.2",
            Self::Aarch64 => "/lib/ld-linux-aarch64.so.1",
        }
    }

    /// The qemu user-mode emulator (Debian's `qemu-user`) that runs a
    /// binary of this CPU on another.
    pub fn qemu(self) -> &'static str {
        match self {
            Self::X86_64 => "qemu-x86_64",
            Self::Aarch64 => "qemu-aarch64",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn each_cpu_has_its_names_in_every_vocabulary() {
        assert_eq!(Arch::X86_64.triple(), "x86_64-unknown-linux-gnu");
        assert_eq!(Arch::X86_64.deb(), "amd64");
        assert_eq!(Arch::X86_64.rpm(), "x86_64");
        assert_eq!(Arch::Aarch64.triple(), "aarch64-unknown-linux-gnu");
        assert_eq!(Arch::Aarch64.deb(), "arm64");
        assert_eq!(Arch::Aarch64.rpm(), "aarch64");
        assert_eq!(Arch::Aarch64.qemu(), "qemu-aarch64");
    }

    #[test]
    fn the_triple_starts_with_rusts_name_of_the_cpu() {
        for arch in Arch::value_variants() {
            let rust = arch.triple().split('-').next().unwrap_or_default();
            assert_eq!(rust, arch.rust());
            assert_eq!(Arch::from_rust(rust).ok(), Some(*arch));
        }
    }

    #[test]
    fn the_option_takes_rust_and_debian_names() {
        for (name, want) in [
            ("x86_64", Arch::X86_64),
            ("amd64", Arch::X86_64),
            ("aarch64", Arch::Aarch64),
            ("arm64", Arch::Aarch64),
        ] {
            assert_eq!(Arch::from_str(name, false).ok(), Some(want), "{name}");
        }
        assert!(Arch::from_str("riscv64", false).is_err());
    }

    #[test]
    fn an_unsupported_host_is_named() {
        let err = Arch::from_rust("riscv64").expect_err("not packaged");
        assert!(format!("{err}").contains("riscv64"), "{err}");
    }
}
