//! The `.rpm`: a generated spec whose `%install` copies the staged tree,
//! built by `rpmbuild -bb`. The scriptlets use plain `systemctl` rather
//! than the `%systemd_*` macros, which rpmbuild outside Fedora's family
//! (Debian's `rpm` here) does not define.

use std::{fmt::Write as _, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};

use super::{
    Build, RELEASE,
    layout::{self, DOC_DIR, Format},
};
use crate::process::{fresh_dir, run};

/// The scriptlets, by spec section, the state snippet in place
/// ([`super::scripts::filled`]).
pub fn scriptlets() -> [(&'static str, String); 3] {
    [
        ("%post", include_str!("scripts/rpm-post")),
        ("%preun", include_str!("scripts/rpm-preun")),
        ("%postun", include_str!("scripts/rpm-postun")),
    ]
    .map(|(section, text)| (section, super::scripts::filled(text)))
}

pub fn build(build: &Build) -> Result<PathBuf> {
    let arch = build.arch.rpm();
    let entries = layout::entries(build, Format::Rpm)?;
    let stage = build.work.join("rpm-root");
    layout::stage(&entries, &stage)?;

    // No %config: the packaged policy is in /usr/share (an upgrade
    // replaces it), the administrator's in /etc is not the package's.
    let mut files = String::from("%defattr(-,root,root,-)\n%dir /usr/share/imds-guard\n");
    writeln!(files, "%dir {DOC_DIR}")?;
    writeln!(files, "%dir {DOC_DIR}/docs")?;
    for e in &entries {
        if e.path.starts_with(DOC_DIR) {
            writeln!(files, "%doc {}", e.path)?;
        } else {
            writeln!(files, "{}", e.path)?;
        }
    }
    let mut scripts = String::new();
    for (section, body) in scriptlets() {
        writeln!(scripts, "{section}\n{body}")?;
    }
    // The binary is built and the man pages compressed already: no
    // debuginfo subpackage, build-id links or brp-* post-processing (which
    // would also need binutils).
    let spec = format!(
        "%global debug_package %{{nil}}\n\
         %global _build_id_links none\n\
         %global __os_install_post %{{nil}}\n\
         Name: imds-guard\n\
         Version: {version}\n\
         Release: {RELEASE}\n\
         Summary: Decides which local processes may reach the cloud instance metadata service\n\
         License: MIT OR Apache-2.0\n\
         Requires: nftables\n\
         \n\
         %description\n\
         eBPF cgroup programs refuse a connection, datagram or packet to the\n\
         instance metadata service (169.254.169.254, fd00:ec2::254) unless the\n\
         policy in /etc/imds-guard/policy.toml (by default the packaged\n\
         /usr/share/imds-guard/policy.toml: root only) allows the caller, and\n\
         an nftables table drops what the host would forward to it. The guard\n\
         stays pinned when the service stops: `imds-guard detach` turns it off,\n\
         and erasing the package does that.\n\
         \n\
         %install\n\
         mkdir -p %{{buildroot}}\n\
         cp -a '{stage}/.' %{{buildroot}}/\n\
         \n\
         {scripts}\n\
         %files\n\
         {files}",
        version = build.version,
        stage = stage.display(),
    );

    let top = build.work.join("rpmbuild");
    fresh_dir(&top)?;
    let spec_path = top.join("imds-guard.spec");
    fs::write(&spec_path, spec).with_context(|| format!("cannot write {}", spec_path.display()))?;
    run(Command::new("rpmbuild")
        .args(["-bb", "--quiet", "--target", arch, "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec_path))?;

    let name = format!("imds-guard-{}-{RELEASE}.{arch}.rpm", build.version);
    let built = top.join("RPMS").join(arch).join(&name);
    ensure!(
        built.is_file(),
        "rpmbuild succeeded but did not write {}",
        built.display()
    );
    let out = build.dist.join(&name);
    fs::rename(&built, &out)
        .with_context(|| format!("cannot move {} to {}", built.display(), out.display()))?;
    Ok(out)
}
