//! The guest's initramfs: the packages' root, the kernel's modules, the
//! binaries (each at its path on the host, stripped of debug information: a
//! tenth of the size, so the guest unpacks it in seconds), `/init` (`init.sh`) and `/vm/env`, its
//! settings.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{
    bins::{AGENT, PROBE, Payload},
    cpio::Writer,
    kernel::Kernel,
};
use crate::{
    arch::Arch,
    process::{cmd, output},
};

const INIT: &str = include_str!("init.sh");

/// A suite that runs longer than this is stopped (its unfinished test
/// fails) and the next one starts; the longest, `differential`, takes
/// about 5 minutes under TCG.
const SUITE_TIMEOUT_SECS: u32 = 20 * 60;

/// What `/init` runs.
pub struct Config {
    pub suites: Vec<String>,
    /// libtest arguments for every suite.
    pub filter: Vec<String>,
    pub slowdown: u32,
    /// Whether `/init` mounts cgroup2 (else cgroup v1 hierarchies only).
    pub cgroup2: bool,
    /// `IMDS_GUARD_PROGRAMS` for the suites (none: the kernel chooses).
    pub programs: Option<super::Programs>,
}

/// What goes into the initramfs besides `/init` and its settings.
pub struct Contents<'a> {
    /// The packages' root.
    pub root: &'a Path,
    pub kernel: &'a Kernel,
    pub payload: &'a Payload,
    /// The container image's OCI archive, put at [`IMAGE`].
    pub image: Option<&'a Path>,
}

/// Where the guest has the container image's OCI archive, which `/init`
/// names to the suites (`IMDS_GUARD_TEST_IMAGE`).
const IMAGE: &str = "vm/image.oci.tar";

/// Writes the initramfs to `path`; `scratch` holds the stripped binaries.
pub fn initramfs(
    path: &Path,
    contents: &Contents,
    config: &Config,
    arch: Arch,
    scratch: &Path,
) -> Result<()> {
    let Contents {
        root,
        kernel,
        payload,
        image,
    } = *contents;
    let mut w = Writer::create(path)?;
    w.tree(root, "", &|rel| {
        // Documentation the guest never reads: a third of the packages.
        [
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
        ]
        .iter()
        .any(|p| rel == Path::new(p))
            || rel == Path::new(super::root::MANIFEST)
    })?;
    w.tree(
        &kernel.modules,
        &format!("lib/modules/{}", kernel.release),
        &|_| false,
    )?;
    // Each binary at its path on the host, where the tests look for them
    // (`env!("CARGO_BIN_EXE_imds-probe")`, the test's own profile
    // directory), and under /vm/ for /init.
    let mut binaries = vec![
        (format!("vm/bin/{AGENT}"), payload.agent.clone()),
        (format!("vm/bin/{PROBE}"), payload.probe.clone()),
    ];
    for helper in &payload.helpers {
        let Some(name) = helper.file_name() else {
            continue;
        };
        binaries.push((format!("vm/bin/{}", name.to_string_lossy()), helper.clone()));
    }
    for suite in &payload.suites {
        binaries.push((format!("vm/tests/{}", suite.name), suite.path.clone()));
    }
    let stripped = scratch.join("stripped");
    fs::create_dir_all(&stripped)
        .with_context(|| format!("cannot create {}", stripped.display()))?;
    w.dir("vm/bin")?;
    w.dir("vm/tests")?;
    for (link, src) in binaries {
        let src =
            fs::canonicalize(&src).with_context(|| format!("cannot find {}", src.display()))?;
        let at = src.to_string_lossy().trim_start_matches('/').to_owned();
        if let Some(parent) = Path::new(&at).parent() {
            w.dir(&parent.to_string_lossy())?;
        }
        let small = strip(&src, arch, &stripped)?;
        let data = fs::read(&small).with_context(|| format!("cannot read {}", small.display()))?;
        w.file(&at, 0o755, &data)?;
        w.symlink(&link, &format!("/{at}"))?;
    }
    let _ = fs::remove_dir_all(&stripped);
    if let Some(image) = image {
        let data = fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
        w.file(IMAGE, 0o644, &data)?;
    }
    w.file("init", 0o755, INIT.as_bytes())?;
    w.file("vm/env", 0o644, env(config).as_bytes())?;
    w.finish()
}

/// A copy of `bin` without debug information, or `bin` itself where
/// `objcopy` cannot read it. The host's `objcopy` knows only the host's
/// architecture; Debian's `binutils-<triple>` bring the others'.
fn strip(bin: &Path, arch: Arch, dir: &Path) -> Result<PathBuf> {
    let Some(name) = bin.file_name() else {
        return Ok(bin.to_owned());
    };
    let out = dir.join(name);
    let objcopy = if arch.is_host() {
        "objcopy".to_owned()
    } else {
        format!("{}-linux-gnu-objcopy", arch.rust())
    };
    match output(cmd(&objcopy).arg("--strip-debug").arg(bin).arg(&out)) {
        Ok(_) => Ok(out),
        Err(e) => {
            eprintln!(
                "xtask: vm: keeping the debug information of {}: {e:#}",
                bin.display()
            );
            Ok(bin.to_owned())
        }
    }
}

/// `/vm/env`, sourced by `/init`.
fn env(config: &Config) -> String {
    let args: Vec<String> = config.filter.iter().map(|a| quote(a)).collect();
    format!(
        "SUITES={}\nSLOWDOWN={}\nSUITE_TIMEOUT={}\nNO_CGROUP2={}\nPROGRAMS={}\nset -- {}\n",
        quote(&config.suites.join(" ")),
        config.slowdown,
        SUITE_TIMEOUT_SECS,
        u8::from(!config.cgroup2),
        quote(config.programs.map_or("", super::Programs::env)),
        args.join(" ")
    )
}

/// One word for a POSIX shell, whatever it holds.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_quotes_every_word() {
        let config = Config {
            suites: vec!["guard".into(), "lifecycle".into()],
            filter: vec!["it's".into(), "--exact".into()],
            slowdown: 10,
            cgroup2: true,
            programs: Some(super::super::Programs::Unrolled),
        };
        assert_eq!(
            env(&config),
            "SUITES='guard lifecycle'\nSLOWDOWN=10\nSUITE_TIMEOUT=1200\nNO_CGROUP2=0\n\
             PROGRAMS='unrolled'\nset -- 'it'\\''s' '--exact'\n"
        );
    }

    #[test]
    fn no_filter_clears_the_arguments() {
        let config = Config {
            suites: vec!["kernel".into()],
            filter: vec![],
            slowdown: 1,
            cgroup2: false,
            programs: None,
        };
        assert!(env(&config).ends_with("SUITE_TIMEOUT=1200\nNO_CGROUP2=1\nPROGRAMS=''\nset -- \n"));
    }
}
