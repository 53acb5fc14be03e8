//! The binary as the packages ship it, for either CPU: the same bytes the
//! build checked (`binary.rs`: machine, loader, libraries, glibc floor,
//! embedded eBPF object), checked again as extracted from the `.deb`; the
//! metadata that promises the floor (the `.deb`'s `Depends`, the `.rpm`'s
//! `Requires`); and, for a binary of another CPU, which cannot be installed
//! here, a smoke run of the packaged copy under qemu user-mode emulation.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{
    Build, binary, compile, deb,
    glibc::{self, Version},
    layout::{BIN, POLICY},
};
use crate::{
    arch::Arch,
    process::{fresh_dir, output, stdout},
};

/// Problems with the binary in the `.deb` and with its `Depends`.
pub fn deb(build: &Build, deb: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let depends = stdout(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg("Depends"),
    )?;
    if depends.trim() != deb::depends() {
        problems.push(format!(
            "Depends is {:?}, expected {:?} (glibc at the floor, and nftables)",
            depends.trim(),
            deb::depends()
        ));
    }

    let root = build.work.join("deb-extract");
    fresh_dir(&root)?;
    output(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(deb)
            .arg(&root),
    )?;
    let packaged = root.join(BIN.trim_start_matches('/'));
    if fs::read(&packaged).ok() != Some(read(&build.bin)?) {
        problems.push(format!(
            "{BIN} in the .deb is not the binary the build checked ({})",
            build.bin.display()
        ));
    }
    match binary::check(&packaged, build.arch) {
        Ok(floor) => eprintln!(
            "xtask: dist check: {BIN} in the .deb is for {} and needs {floor}",
            build.arch.rpm()
        ),
        Err(e) => problems.push(format!("{e:#}")),
    }
    if build.arch != Arch::host()? {
        problems.extend(emulated(
            build,
            &packaged,
            &root.join(POLICY.trim_start_matches('/')),
        )?);
    }
    Ok(problems)
}

/// The packaged binary of another CPU, run under qemu: it starts, reads
/// the shipped policy, and resolves a user through NSS to a verdict.
fn emulated(build: &Build, bin: &Path, policy: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let runs = [
        (vec!["--version"], 0),
        (vec!["validate", "--config"], 0),
        // The shipped policy lets only root reach the service: exit 4.
        (
            vec![
                "check",
                "--user",
                "nobody",
                "--dst",
                "169.254.169.254",
                "--config",
            ],
            4,
        ),
    ];
    for (args, want) in runs {
        let mut c = compile::exec(build.arch, bin)?;
        c.args(&args);
        if args.last() == Some(&"--config") {
            c.arg(policy);
        }
        let out = c.output().with_context(|| format!("cannot run {c:?}"))?;
        let code = out.status.code();
        if code == Some(want) {
            eprintln!(
                "xtask: dist check: under {}: imds-guard {}: exit {want}",
                build.arch.qemu(),
                args.join(" ")
            );
        } else {
            problems.push(format!(
                "under {}, imds-guard {} exited {code:?}, expected {want}: {}{}",
                build.arch.qemu(),
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(problems)
}

/// Problems with the binary in the `.rpm` and with its glibc `Requires`
/// (rpmbuild derives `libc.so.6(GLIBC_2.28)(64bit)` and the like from the
/// binary's version needs, as Fedora's and RHEL's rpmbuild do).
pub fn rpm(build: &Build, rpm: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let qp = |args: &[&str]| stdout(Command::new("rpm").arg("-qp").args(args).arg(rpm));

    // `path size mtime digest mode owner group isconfig isdoc rdev symlink`
    let dump = qp(&["--dump"])?;
    let digest = dump
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{BIN} ")))
        .and_then(|rest| rest.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_owned();
    let tool = if digest.len() == 32 {
        "md5sum"
    } else {
        "sha256sum"
    };
    let ours = stdout(Command::new(tool).arg(&build.bin))?;
    let ours = ours.split_whitespace().next().unwrap_or_default();
    if digest != ours {
        problems.push(format!(
            "{BIN} in the .rpm has digest {digest:?}, the binary the build checked {ours:?}"
        ));
    }

    let requires = qp(&["--requires"])?;
    let glibc = glibc::rpm_requires(&requires);
    if !glibc.iter().any(|(lib, _)| lib == "libc.so.6") {
        problems.push(format!(
            "the .rpm requires no libc.so.6(GLIBC_…) version (rpmbuild's ELF dependency \
             generator did not run?):\n{requires}"
        ));
    }
    for above in glibc::rpm_requires_above(&glibc, &Version::floor()) {
        problems.push(format!(
            "the .rpm requires {above}, newer than the floor, glibc {}",
            glibc::FLOOR
        ));
    }
    for library in requires
        .lines()
        .filter_map(|l| l.split_once('('))
        .map(|(l, _)| l)
    {
        if library.contains(".so") && !binary::GLIBC_LIBRARIES.contains(&library) {
            problems.push(format!(
                "the .rpm requires {library}, which is not part of glibc"
            ));
        }
    }
    Ok(problems)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
