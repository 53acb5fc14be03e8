//! The guest's kernel: which Debian package, downloaded and unpacked with
//! `dpkg-deb -x` under `target/vm/kernels/` (nothing goes into `/boot` or
//! `/lib/modules`), with `modules.dep` made by the host's `depmod` so that
//! the guest's `modprobe` (and the kernel's module autoload through it)
//! finds nftables, xtables and virtio modules.
//!
//! The cloud flavour is the kernel of Debian's cloud images (EC2 among
//! them), the machines imds-guard protects. Debian 11's 5.10 is the
//! generic flavour instead: booted from an initramfs either would do, and
//! the generic one is what `../shared/KERNEL-VM.md`'s 9p route boots too.

use std::{
    fs,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context as _, Result, bail};

use super::apt::{Apt, Suite};
use crate::{
    arch::Arch,
    process::{cmd, fresh_dir, run},
};

/// `--kernel`: a Debian kernel series, or a package file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpec {
    Series(Series),
    Deb(PathBuf),
}

/// The kernel series the guest boots: bookworm's two, and bullseye's
/// 5.10 (the oldest the agent runs on: no `bpf_loop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V5_10,
    V6_1,
    V6_12,
}

impl FromStr for KernelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "5.10" => Ok(KernelSpec::Series(Series::V5_10)),
            "6.1" => Ok(KernelSpec::Series(Series::V6_1)),
            "6.12" => Ok(KernelSpec::Series(Series::V6_12)),
            _ if s.ends_with(".deb") => Ok(KernelSpec::Deb(PathBuf::from(s))),
            _ => Err(format!(
                "`{s}` is neither 5.10, 6.1, 6.12 nor a linux-image .deb file"
            )),
        }
    }
}

impl KernelSpec {
    /// The Debian suite its package comes from (a file: none is asked).
    pub fn suite(&self) -> Suite {
        match self {
            KernelSpec::Series(series) => series.suite(),
            KernelSpec::Deb(_) => Suite::Bookworm,
        }
    }
}

impl Series {
    pub fn suite(self) -> Suite {
        match self {
            Series::V5_10 => Suite::Bullseye,
            Series::V6_1 | Series::V6_12 => Suite::Bookworm,
        }
    }

    /// The metapackage that depends on the series' newest image, and the
    /// prefix that image's name must have: bookworm's plain
    /// `linux-image-cloud-*` is the 6.1 series, `linux-image-6.12-cloud-*`
    /// the 6.12 one; bullseye's generic `linux-image-*` the 5.10 one.
    pub fn packages(self, arch: Arch) -> (String, String) {
        let a = arch.deb();
        match self {
            Series::V5_10 => (format!("linux-image-{a}"), "linux-image-5.10.".to_owned()),
            Series::V6_1 => (
                format!("linux-image-cloud-{a}"),
                "linux-image-6.1.".to_owned(),
            ),
            Series::V6_12 => (
                format!("linux-image-6.12-cloud-{a}"),
                "linux-image-6.12.".to_owned(),
            ),
        }
    }
}

/// An unpacked kernel.
pub struct Kernel {
    /// The package it came from, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The image QEMU boots.
    pub image: PathBuf,
    /// `lib/modules/<release>`, with `modules.dep`.
    pub modules: PathBuf,
}

/// Finds, downloads and unpacks the kernel, or reuses an unpacked one.
pub fn prepare(spec: &KernelSpec, arch: Arch, apt: &Apt, vm_dir: &Path) -> Result<Kernel> {
    let kernels = vm_dir.join("kernels");
    match spec {
        KernelSpec::Series(series) => {
            let (meta, prefix) = series.packages(arch);
            let name = apt.dependency(&meta, &prefix)?;
            let resolved = apt.resolve(&[&name])?;
            let Some(package) = resolved.into_iter().find(|p| p.name == name) else {
                bail!("apt does not install {name} itself");
            };
            let dir = kernels.join(format!("{}_{}", package.name, package.version));
            if !dir.join(DONE).exists() {
                let debs = kernels.join("download");
                fresh_dir(&debs)?;
                let deb = apt.download(std::slice::from_ref(&package), &debs)?;
                unpack(&deb[0], &dir)?;
                let _ = fs::remove_dir_all(&debs);
            }
            unpacked(&dir, package.name)
        }
        KernelSpec::Deb(deb) => {
            let Some(stem) = deb.file_stem() else {
                bail!("{} names no file", deb.display());
            };
            let deb =
                fs::canonicalize(deb).with_context(|| format!("cannot find {}", deb.display()))?;
            let dir = kernels.join(stem);
            // A local file may change under the same name: unpack it anew.
            unpack(&deb, &dir)?;
            let name = stem.to_string_lossy();
            let package = name.split('_').next().unwrap_or(&name).to_owned();
            unpacked(&dir, package)
        }
    }
}

/// Written last into an unpacked kernel's directory.
const DONE: &str = ".unpacked";

fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    eprintln!("xtask: vm: unpacking {}", deb.display());
    fresh_dir(dir)?;
    run(cmd("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    let (release, _) = modules_dir(dir)?;
    run(cmd("depmod").arg("-b").arg(dir).arg(&release))?;
    fs::write(dir.join(DONE), "").with_context(|| format!("cannot mark {}", dir.display()))
}

fn unpacked(dir: &Path, package: String) -> Result<Kernel> {
    let (release, modules) = modules_dir(dir)?;
    let image = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !image.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", dir.display());
    }
    Ok(Kernel {
        package,
        release,
        image,
        modules,
    })
}

/// The one `lib/modules/<release>` (or `usr/lib/modules/<release>`, where
/// packages put it since trixie) of an unpacked kernel package. `depmod
/// -b` wants the former; a merged tree has both through a symlink.
fn modules_dir(dir: &Path) -> Result<(String, PathBuf)> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(dir.join(base)) else {
            continue;
        };
        let releases: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        match releases.as_slice() {
            [one] => return Ok((one.clone(), dir.join(base).join(one))),
            _ => bail!(
                "{} holds {} kernel releases, not one",
                dir.join(base).display(),
                releases.len()
            ),
        }
    }
    bail!("{} has no lib/modules", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_option_takes_a_series_or_a_package_file() {
        assert_eq!("6.1".parse(), Ok(KernelSpec::Series(Series::V6_1)));
        assert_eq!("6.12".parse(), Ok(KernelSpec::Series(Series::V6_12)));
        assert_eq!(
            "/tmp/linux-image-6.1.0-1-amd64_6.1.1-1_amd64.deb".parse(),
            Ok(KernelSpec::Deb(PathBuf::from(
                "/tmp/linux-image-6.1.0-1-amd64_6.1.1-1_amd64.deb"
            )))
        );
        assert_eq!("5.10".parse(), Ok(KernelSpec::Series(Series::V5_10)));
        assert!("6.6".parse::<KernelSpec>().is_err());
        assert!("5.15".parse::<KernelSpec>().is_err());
    }

    #[test]
    fn series_name_the_cloud_metapackages() {
        assert_eq!(
            Series::V6_1.packages(Arch::X86_64),
            (
                "linux-image-cloud-amd64".to_owned(),
                "linux-image-6.1.".to_owned()
            )
        );
        assert_eq!(
            Series::V6_12.packages(Arch::Aarch64),
            (
                "linux-image-6.12-cloud-arm64".to_owned(),
                "linux-image-6.12.".to_owned()
            )
        );
        assert_eq!(
            Series::V5_10.packages(Arch::X86_64),
            (
                "linux-image-amd64".to_owned(),
                "linux-image-5.10.".to_owned()
            )
        );
        assert_eq!(Series::V5_10.suite(), Suite::Bullseye);
        assert_eq!(Series::V6_12.suite(), Suite::Bookworm);
        // The 6.12 image's name must not pass for a 6.1 one.
        let (_, prefix) = Series::V6_1.packages(Arch::X86_64);
        assert!(!"linux-image-6.12.117+deb12-cloud-amd64".starts_with(&prefix));
    }
}
