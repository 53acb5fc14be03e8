//! The guest's user space: Debian packages of the guest's architecture,
//! unpacked with `dpkg-deb -x` into `target/vm/roots/<arch>/` and never
//! configured (nothing of them runs on the host). It is rebuilt when a
//! package's version changes.
//!
//! What their maintainer scripts would have done and the tests rely on is
//! done here: the `iptables` alternatives (the nft backend, as on the
//! host), `/etc/passwd` and `/etc/group` (the agent resolves policy names),
//! `/etc/hosts`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::apt::{Apt, Package};
use crate::process::{cmd, fresh_dir, run};

/// The guest's tools: a shell and its applets for `/init`; `ip`;
/// `nsenter` and `setpriv`; `nft`; `iptables`, `ip6tables` and their
/// `-save` and `-restore`; `modprobe` for module autoload; `capsh` and the
/// `/bin/bash` it runs (the lifecycle suite starts the agent without its
/// capabilities); the base users and groups; `newuidmap` and `newgidmap`
/// (setuid root, as unpacked), which the identity suite runs as a user;
/// `runc`, the OCI runtime the kubernetes suite runs the DaemonSet's pod
/// with (the guest has no podman).
const PACKAGES: &[&str] = &[
    "busybox-static",
    "iproute2",
    "util-linux",
    "nftables",
    "iptables",
    "kmod",
    "libcap2-bin",
    "bash",
    "base-passwd",
    "uidmap",
    "runc",
];

/// The `iptables` package's alternatives and the nft variants `update-
/// alternatives` points them at.
const XTABLES: &[(&str, &str)] = &[
    ("iptables", "iptables-nft"),
    ("iptables-save", "iptables-nft-save"),
    ("iptables-restore", "iptables-nft-restore"),
    ("ip6tables", "ip6tables-nft"),
    ("ip6tables-save", "ip6tables-nft-save"),
    ("ip6tables-restore", "ip6tables-nft-restore"),
];

/// Changed whenever `configure` does something else, so that cached roots
/// are rebuilt.
const LAYOUT: u32 = 2;

/// Lists the packages and versions a root was built from.
pub const MANIFEST: &str = ".packages";

/// Returns the root for `apt`'s architecture, building it if its package
/// versions changed.
pub fn prepare(apt: &Apt, vm_dir: &Path) -> Result<PathBuf> {
    let packages = apt.resolve(PACKAGES)?;
    let manifest = manifest(&packages);
    let dir = vm_dir.join("roots").join(apt.arch());
    if fs::read_to_string(dir.join(MANIFEST)).is_ok_and(|m| m == manifest) {
        return Ok(dir);
    }
    eprintln!(
        "xtask: vm: building the guest's user space from {} Debian packages",
        packages.len()
    );
    let building = vm_dir.join("roots").join(format!("{}.new", apt.arch()));
    let debs = vm_dir.join("roots").join(format!("{}.debs", apt.arch()));
    fresh_dir(&building)?;
    fresh_dir(&debs)?;
    for deb in apt.download(&packages, &debs)? {
        run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&building))?;
    }
    configure(&building)?;
    fs::write(building.join(MANIFEST), &manifest)
        .with_context(|| format!("cannot write {}", building.join(MANIFEST).display()))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::rename(&building, &dir)
        .with_context(|| format!("cannot rename {} to {}", building.display(), dir.display()))?;
    fs::remove_dir_all(&debs).with_context(|| format!("cannot remove {}", debs.display()))?;
    Ok(dir)
}

fn manifest(packages: &[Package]) -> String {
    let mut lines: Vec<String> = packages
        .iter()
        .map(|p| format!("{} {}\n", p.name, p.version))
        .collect();
    lines.sort();
    format!("layout {LAYOUT}\n{}", lines.concat())
}

/// What the packages' maintainer scripts would have set up.
fn configure(root: &Path) -> Result<()> {
    let sbin = root.join("usr/sbin");
    let bin = root.join("bin");
    let links = XTABLES
        .iter()
        .map(|(tool, target)| (sbin.join(tool), *target))
        // No package of the root has a /bin/sh (dash's would); tests run
        // shell scripts.
        .chain([(bin.join("sh"), "busybox")]);
    for (link, target) in links {
        if link.symlink_metadata().is_err() {
            symlink(target, &link).with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    let etc = root.join("etc");
    fs::create_dir_all(&etc).with_context(|| format!("cannot create {}", etc.display()))?;
    for (master, file) in [("passwd.master", "passwd"), ("group.master", "group")] {
        let from = root.join("usr/share/base-passwd").join(master);
        fs::copy(&from, etc.join(file))
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    for (file, text) in [
        (
            "hosts",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        ),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n",
        ),
        ("hostname", "imds-guard-vm\n"),
    ] {
        fs::write(etc.join(file), text)
            .with_context(|| format!("cannot write {}", etc.join(file).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_sorted_name_and_version() {
        let p = |name: &str, version: &str| Package {
            name: name.into(),
            version: version.into(),
        };
        assert_eq!(
            manifest(&[p("libc6", "2.36-9"), p("busybox-static", "1:1.35.0-4")]),
            "layout 2\nbusybox-static 1:1.35.0-4\nlibc6 2.36-9\n"
        );
    }
}
