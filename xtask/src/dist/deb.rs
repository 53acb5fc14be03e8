//! The `.deb`: the staged tree and its `DEBIAN/` directory (control,
//! conffiles, md5sums, maintainer scripts), built by
//! `dpkg-deb --build --root-owner-group`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{
    Build, RELEASE,
    glibc::FLOOR,
    layout::{self, Entry, Format},
};
use crate::process::{fresh_dir, run, stdout};

/// The maintainer scripts (`sh -n` checked by `--check`), the state
/// snippet in place ([`super::scripts::filled`]).
pub fn scripts() -> [(&'static str, String); 3] {
    [
        ("postinst", include_str!("scripts/deb-postinst")),
        ("prerm", include_str!("scripts/deb-prerm")),
        ("postrm", include_str!("scripts/deb-postrm")),
    ]
    .map(|(name, text)| (name, super::scripts::filled(text)))
}

const SUMMARY: &str = "decides which local processes may reach the cloud instance metadata service";
/// The extended description, wrapped; `debian_description` indents it.
const DESCRIPTION: &str = "imds-guard keeps the credentials the cloud instance metadata service
(169.254.169.254, fd00:ec2::254) hands out away from local processes that
should not have them. eBPF cgroup programs refuse a connection, datagram
or packet to a protected address unless the policy allows the caller, and
an nftables table drops what the host would forward to it; every denial
is logged to the journal with who made it and which policy entry decided.
The policy is /etc/imds-guard/policy.toml, written before or after the
install; until there is one, the packaged default (root only) applies.

The guard stays pinned in the kernel when the service stops; run
`imds-guard detach` to turn it off. Removing the package does that.";

/// deb-control(5): continuation lines start with a space, an empty line
/// is " .".
fn debian_description(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                " .\n".to_owned()
            } else {
                format!(" {l}\n")
            }
        })
        .collect()
}

/// `0.1.0-1`.
pub fn version(build: &Build) -> String {
    format!("{}-{RELEASE}", build.version)
}

/// The `.deb`'s `Depends`: glibc at the floor, which `binary.rs` proved
/// from the binary's symbol versions (it needs no other library), and
/// nftables, whose `nft` puts the forward table in force.
///
/// Not `dpkg-shlibdeps`: Debian 12's libc6 symbols file dates `sysconf`
/// (which every Rust program calls) at 2.34, for constants added then that
/// the agent never passes, so it asks for `libc6 (>= 2.34)` and the package
/// would refuse to install on Debian 11 and Ubuntu 20.04 (glibc 2.31).
pub fn depends() -> String {
    format!("libc6 (>= {FLOOR}), nftables")
}

pub fn build(build: &Build) -> Result<PathBuf> {
    let arch = build.arch.deb();
    let entries = layout::entries(build, Format::Deb)?;
    let root = build.work.join("deb-root");
    layout::stage(&entries, &root)?;

    let debian = root.join("DEBIAN");
    fresh_dir(&debian)?;
    let control = format!(
        "Package: imds-guard\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: imds-guard developers <imds-guard@localhost>\n\
         Installed-Size: {size}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: {SUMMARY}\n{description}",
        version = version(build),
        depends = depends(),
        size = installed_size_kib(&entries, &root)?,
        description = debian_description(DESCRIPTION),
    );
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("md5sums"), &md5sums(&entries, &root)?, 0o644)?;
    for (name, script) in scripts() {
        write(&debian.join(name), &script, 0o755)?;
    }

    let out = build
        .dist
        .join(format!("imds-guard_{}_{arch}.deb", version(build)));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&out))?;
    Ok(out)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// `Installed-Size`, in KiB, as dpkg-gencontrol counts it: each file
/// rounded up to a KiB.
fn installed_size_kib(entries: &[Entry], root: &Path) -> Result<u64> {
    let mut kib = 0;
    for e in entries {
        let path = root.join(e.path.trim_start_matches('/'));
        let len = fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        kib += len.div_ceil(1024);
    }
    Ok(kib)
}

/// `DEBIAN/md5sums` for `dpkg --verify` (the package has no conffiles).
fn md5sums(entries: &[Entry], root: &Path) -> Result<String> {
    let relative: Vec<&str> = entries
        .iter()
        .map(|e| e.path.trim_start_matches('/'))
        .collect();
    stdout(Command::new("md5sum").args(&relative).current_dir(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_indented_with_dots_for_blank_lines() {
        assert_eq!(
            debian_description("first line\nsecond\n\nthird"),
            " first line\n second\n .\n third\n"
        );
    }

    #[test]
    fn the_shipped_description_has_no_line_dpkg_would_misread() {
        for line in debian_description(DESCRIPTION).lines() {
            assert!(line.starts_with(' '), "{line:?}");
            assert!(line.len() <= 80, "too long for dpkg -s: {line:?}");
        }
    }
}
