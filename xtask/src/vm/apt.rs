//! A private apt for the guest's architecture: its own sources, package
//! lists, and an empty dpkg status, all under `target/vm/apt/<arch>/`.
//!
//! The host's apt configuration is left alone (no `dpkg
//! --add-architecture`), the host need not be bookworm, and the same code
//! fetches amd64 and arm64 packages. `pkgCacheGen::Essential=none` keeps
//! apt from pulling in every Essential package an empty status lacks, as
//! mmdebstrap's `extract` variant does.
//!
//! The guest's root always comes from bookworm; a kernel of another suite
//! (Debian 11 "bullseye"'s 5.10) through a second private apt of that
//! suite, so that the two never mix in one resolution.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    arch::Arch,
    process::{cmd, run, stdout},
};

/// A Debian release a private apt fetches from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Debian 12: the guest's root, and the 6.1 and 6.12 kernels (the
    /// latter in bookworm itself, `linux-image-6.12-cloud-*`).
    Bookworm,
    /// Debian 11: its 5.10 kernels, the oldest line the agent runs on.
    Bullseye,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Bullseye => "bullseye",
        }
    }

    /// The suite, its updates and its security updates. Bullseye's
    /// security suite is `bullseye-security` too (since Debian 11).
    fn sources(self) -> String {
        let s = self.name();
        let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
        format!(
            "deb {key} http://deb.debian.org/debian {s} main\n\
             deb {key} http://deb.debian.org/debian {s}-updates main\n\
             deb {key} http://deb.debian.org/debian-security {s}-security main\n"
        )
    }

    /// The private apt's directory under `base`: bookworm's keeps the
    /// plain architecture name it always had.
    fn dir(self, base: &Path, arch: Arch) -> PathBuf {
        match self {
            Suite::Bookworm => base.join(arch.deb()),
            Suite::Bullseye => base.join(format!("{}-{}", self.name(), arch.deb())),
        }
    }
}

/// Package lists younger than this are not fetched again.
const LISTS_FRESH: Duration = Duration::from_secs(6 * 3600);

/// One binary package at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

pub struct Apt {
    dir: PathBuf,
    arch: &'static str,
    updated: std::cell::Cell<bool>,
}

impl Apt {
    /// Lays out the private apt's directories and configuration.
    pub fn new(base: &Path, arch: Arch, suite: Suite) -> Result<Apt> {
        let dir = suite.dir(base, arch);
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, "")
                .with_context(|| format!("cannot create {}", status.display()))?;
        }
        write(&dir.join("etc/sources.list"), &suite.sources())?;
        write(&dir.join("apt.conf"), &config(&dir, arch.deb()))?;
        Ok(Apt {
            dir,
            arch: arch.deb(),
            updated: std::cell::Cell::new(false),
        })
    }

    /// Debian's name of the architecture.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = cmd(program);
        c.env("APT_CONFIG", self.dir.join("apt.conf"));
        c
    }

    /// Fetches the package lists unless they are fresh.
    pub fn update(&self) -> Result<()> {
        if self.updated.get() {
            return Ok(());
        }
        let lists = self.dir.join("state/lists");
        let fresh = fs::read_dir(&lists)
            .with_context(|| format!("cannot list {}", lists.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
            .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
            .any(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .is_ok_and(|age| age < LISTS_FRESH)
            });
        if !fresh {
            eprintln!(
                "xtask: vm: fetching Debian package lists ({})",
                self.dir.display()
            );
            run(self.cmd("apt-get").args(["update", "-q"]))?;
        }
        self.updated.set(true);
        Ok(())
    }

    /// The package `meta` depends on whose name starts with `prefix` (the
    /// versioned image behind a kernel metapackage).
    pub fn dependency(&self, meta: &str, prefix: &str) -> Result<String> {
        self.update()?;
        let out = stdout(self.cmd("apt-cache").args(["depends", meta]))?;
        match depends(&out).into_iter().find(|d| d.starts_with(prefix)) {
            Some(name) => Ok(name),
            None => bail!("{meta} depends on no {prefix}* package:\n{out}"),
        }
    }

    /// `packages` and everything they depend on (not their recommendations),
    /// as apt would install them on an empty system.
    pub fn resolve(&self, packages: &[&str]) -> Result<Vec<Package>> {
        self.update()?;
        let out = stdout(
            self.cmd("apt-get")
                .args(["--simulate", "--quiet", "install"])
                .args(packages),
        )?;
        let resolved = installs(&out);
        if resolved.is_empty() {
            bail!("apt resolves {packages:?} to nothing:\n{out}");
        }
        Ok(resolved)
    }

    /// Downloads these exact versions into `dest`; returns the `.deb` files.
    pub fn download(&self, packages: &[Package], dest: &Path) -> Result<Vec<PathBuf>> {
        run(self
            .cmd("apt-get")
            .args(["download", "--quiet"])
            .args(packages.iter().map(|p| format!("{}={}", p.name, p.version)))
            .current_dir(dest))?;
        let mut debs: Vec<PathBuf> = fs::read_dir(dest)
            .with_context(|| format!("cannot list {}", dest.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        debs.sort();
        if debs.len() != packages.len() {
            bail!(
                "apt downloaded {} files for {} packages into {}",
                debs.len(),
                packages.len(),
                dest.display()
            );
        }
        Ok(debs)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The private apt's configuration (`APT_CONFIG`). The host's
/// `apt.conf.d` still applies, so a proxy configured there is used.
fn config(dir: &Path, arch: &str) -> String {
    let d = dir.display();
    format!(
        "Dir::State \"{d}/state\";
Dir::State::status \"{d}/state/status\";
Dir::Cache \"{d}/cache\";
Dir::Etc::SourceList \"{d}/etc/sources.list\";
Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";
Dir::Etc::Preferences \"{d}/etc/preferences\";
Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";
APT::Architecture \"{arch}\";
APT::Architectures {{ \"{arch}\"; }};
APT::Install-Recommends \"false\";
APT::Sandbox::User \"root\";
Acquire::Languages \"none\";
pkgCacheGen::Essential \"none\";
Debug::NoLocking \"true\";
"
    )
}

/// The `Depends:` of `apt-cache depends` output, in order.
fn depends(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().trim_matches(|c| c == '<' || c == '>').to_owned())
        .collect()
}

/// The packages of `apt-get --simulate install` output: lines like
/// `Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64]) []`.
fn installs(out: &str) -> Vec<Package> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(' ')?;
            let version = rest.strip_prefix('(')?.split_whitespace().next()?;
            Some(Package {
                name: name.to_owned(),
                version: version.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_installs_give_names_and_versions() {
        let out = "NOTE: This is only a simulation!\n\
            Reading package lists...\n\
            Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [arm64])\n\
            Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64]) []\n\
            Inst libcap2 (1:2.66-4+deb12u3+b1 Debian:12.15/oldstable [arm64])\n\
            Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64])\n";
        assert_eq!(
            installs(out),
            vec![
                Package {
                    name: "gcc-12-base".into(),
                    version: "12.2.0-14+deb12u1".into()
                },
                Package {
                    name: "libc6".into(),
                    version: "2.36-9+deb12u14".into()
                },
                Package {
                    name: "libcap2".into(),
                    version: "1:2.66-4+deb12u3+b1".into()
                },
            ]
        );
    }

    #[test]
    fn metapackage_dependencies_in_order() {
        let out = "linux-image-cloud-arm64\n  Depends: linux-image-6.1.0-56-cloud-arm64\n  \
            Depends: <virtual>\n";
        assert_eq!(
            depends(out),
            vec!["linux-image-6.1.0-56-cloud-arm64", "virtual"]
        );
    }

    #[test]
    fn each_suite_has_its_own_sources_and_directory() {
        let bookworm = Suite::Bookworm.sources();
        assert_eq!(bookworm.lines().count(), 3);
        assert!(bookworm.contains("/debian bookworm main\n"));
        assert!(bookworm.contains("/debian-security bookworm-security main\n"));
        assert!(!bookworm.contains("bullseye"));
        let bullseye = Suite::Bullseye.sources();
        assert!(bullseye.contains("/debian bullseye-updates main\n"));
        assert!(!bullseye.contains("bookworm"));
        let base = Path::new("/t/vm/apt");
        assert_eq!(
            Suite::Bookworm.dir(base, Arch::X86_64),
            Path::new("/t/vm/apt/amd64")
        );
        assert_eq!(
            Suite::Bullseye.dir(base, Arch::Aarch64),
            Path::new("/t/vm/apt/bullseye-arm64")
        );
    }

    #[test]
    fn config_names_the_architecture_and_no_essentials() {
        let c = config(Path::new("/t/vm/apt/arm64"), "arm64");
        assert!(c.contains("APT::Architectures { \"arm64\"; };"));
        assert!(c.contains("Dir::State::status \"/t/vm/apt/arm64/state/status\";"));
        assert!(c.contains("pkgCacheGen::Essential \"none\";"));
    }
}
