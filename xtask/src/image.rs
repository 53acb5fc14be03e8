//! `cargo xtask image`: the agent's container image, for the DaemonSet in
//! `deploy/kubernetes/`, built here from files, with no registry pull.
//!
//! The image is one layer on nothing (`FROM scratch`): the release binary
//! `cargo xtask dist` packages (glibc 2.28 and newer), `nft` for the
//! forward path on kernels before 6.4 (the agent runs it, `nft -j -f -`),
//! the shared libraries both need, copied from this Debian system with
//! the paths its loader looks in, and the packaged default policy. Names
//! of users and groups resolve through the node's `/etc/passwd` and
//! `/etc/group`, which the DaemonSet mounts; glibc 2.34 and newer has the
//! `files` NSS module built in, so nothing else is needed for them.
//!
//! `podman import` makes the image of the layer (with its entry point), and
//! `podman save` writes it as an OCI archive,
//! `target/image/imds-guard-VERSION-ARCH.oci.tar`, which `podman load`,
//! `skopeo copy oci-archive:...` and `ctr -n k8s.io images import` take.
//! The image is left in this machine's podman store as
//! `localhost/imds-guard:VERSION`, where the manifest test plays it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    arch::Arch,
    dist,
    process::{fresh_dir, output, run, stdout, target_dir, workspace_root},
    setup::setup,
};

/// The image's name in the local store, without its tag.
pub const NAME: &str = "localhost/imds-guard";

/// Builds the image for this machine's CPU; its OCI archive.
pub fn image() -> Result<PathBuf> {
    setup()?;
    let arch = Arch::host()?;
    let (bin, version) = dist::release_binary(arch)?;
    let work = target_dir().join("image");
    let root = work.join("rootfs");
    fresh_dir(&root)?;
    install(&bin, &root.join("usr/bin/imds-guard"))?;
    let nft = Path::new("/usr/sbin/nft");
    ensure!(
        nft.is_file(),
        "{} is missing (apt-get install nftables)",
        nft.display()
    );
    install(nft, &root.join("usr/sbin/nft"))?;
    for program in [&bin, nft] {
        for lib in libraries(program)? {
            let into = root.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !into.exists() {
                install(&fs::canonicalize(&lib)?, &into)?;
            }
        }
    }
    install(
        &workspace_root().join("config/imds-guard.toml"),
        &root.join("usr/share/imds-guard/policy.toml"),
    )?;
    // Where the agent writes its status file, and mount points that a
    // runtime would otherwise have to make in a read-only root.
    for dir in ["run/imds-guard", "etc/imds-guard", "tmp", "sys", "proc"] {
        fs::create_dir_all(root.join(dir))?;
    }
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let reference = format!("{NAME}:{version}");
    let before = image_id(&reference);
    run(Command::new("podman")
        .arg("import")
        .args(["--change", r#"ENTRYPOINT ["/usr/bin/imds-guard"]"#])
        .args(["--change", r#"CMD ["run"]"#])
        .args([
            "--change",
            &format!("LABEL org.opencontainers.image.version={version}"),
        ])
        .args(["--arch", arch.deb()])
        .arg(&layer)
        .arg(&reference))?;
    // The image this one replaced, untagged now: not kept (nor would a
    // container that still uses it let it go).
    if let Some(old) = before.filter(|old| image_id(&reference).as_ref() != Some(old)) {
        let _ = Command::new("podman").args(["rmi", &old]).output();
    }
    let archive = work.join(format!("imds-guard-{version}-{}.oci.tar", arch.rpm()));
    if archive.exists() {
        fs::remove_file(&archive)?;
    }
    run(Command::new("podman")
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(&reference))?;
    let size = fs::metadata(&archive)?.len();
    eprintln!(
        "xtask: built {} ({reference}, {:.1} MiB)",
        archive.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(archive)
}

/// The id of the image `reference` names in podman's store, if any.
fn image_id(reference: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}

/// Copies `from` to `to`, making its directory; keeps the mode.
fn install(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The shared libraries `program` loads, and its loader, as paths the
/// loader finds them at (what `ldd` prints).
fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let text = stdout(Command::new("ldd").arg(program))?;
    let libs = parse_ldd(&text);
    if libs.is_empty() {
        let out = output(Command::new("file").arg(program)).map(|o| o.stdout);
        bail!(
            "ldd found no library for {} ({})",
            program.display(),
            String::from_utf8_lossy(&out.unwrap_or_default()).trim()
        );
    }
    Ok(libs)
}

/// The paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)`
/// and the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has
/// none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_loader_but_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f24)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f25)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f26)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libnftables.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
