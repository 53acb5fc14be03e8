//! What the packages install and where, in each format's conventions, and
//! the staging of that tree: one list that the builders and the checks
//! share.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use super::Build;
use crate::process::{fresh_dir, output, workspace_root};

/// The shells whose completions are packaged.
pub const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

pub const BIN: &str = "/usr/bin/imds-guard";
/// The packaged default policy (only root may reach the metadata
/// service), read when the administrator's [`ADMIN_POLICY`] does not exist.
/// Outside /etc and not a conffile: an upgrade replaces it, and no package
/// manager ever asks about it, so a policy written in /etc before the
/// install never stops a `dpkg -i` without a terminal at a conffile prompt.
pub const POLICY: &str = "/usr/share/imds-guard/policy.toml";
/// The administrator's policy: no package installs, replaces or removes it
/// (a purge neither: it is the administrator's file).
pub const ADMIN_POLICY: &str = "/etc/imds-guard/policy.toml";
pub const DOC_DIR: &str = "/usr/share/doc/imds-guard";
/// The documents the README links to, installed beside it in `docs/` as in
/// the source tree, so that its links lead somewhere on the host too.
pub const DOCS: [&str; 7] = [
    "threat-model.md",
    "policy.md",
    "operating.md",
    "render.md",
    "render-notes.md",
    "BENCHMARKS.md",
    "bench-scale.svg",
];
/// The `.rpm`'s systemd preset: RHEL's and Amazon Linux's
/// `90-default.preset` disables every service it does not name, so
/// without one of its own `%post`'s `systemctl preset` would leave the
/// guard disabled, and the host open after a reboot. The `.deb` needs none
/// (deb-systemd-helper enables it).
pub const PRESET: &str = "/usr/lib/systemd/system-preset/50-imds-guard.preset";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Deb,
    Rpm,
}

impl Format {
    /// Debian 12 packages still install units in /lib (the /usr move came
    /// with trixie's debhelper); Fedora, RHEL and Amazon Linux use
    /// `%{_unitdir}`, /usr/lib/systemd/system.
    pub fn unit(self) -> &'static str {
        match self {
            Format::Deb => "/lib/systemd/system/imds-guard.service",
            Format::Rpm => "/usr/lib/systemd/system/imds-guard.service",
        }
    }

    /// zsh's directory for packaged completions: Debian's own, or the
    /// upstream default other distributions use.
    fn zsh_dir(self) -> &'static str {
        match self {
            Format::Deb => "/usr/share/zsh/vendor-completions",
            Format::Rpm => "/usr/share/zsh/site-functions",
        }
    }
}

/// Where one installed file comes from.
#[derive(Debug)]
pub enum Source {
    Copy(PathBuf),
    /// Compressed with `gzip -9n` (no name or time: reproducible).
    Gzip(PathBuf),
    Text(&'static str),
}

#[derive(Debug)]
pub struct Entry {
    /// The absolute installed path.
    pub path: String,
    pub source: Source,
    pub mode: u32,
}

impl Entry {
    fn new(path: impl Into<String>, source: Source, mode: u32) -> Self {
        Self {
            path: path.into(),
            source,
            mode,
        }
    }
}

/// Every file the package installs.
pub fn entries(build: &Build, format: Format) -> Result<Vec<Entry>> {
    let root = workspace_root();
    let mut entries = vec![
        Entry::new(BIN, Source::Copy(build.bin.clone()), 0o755),
        Entry::new(
            format.unit(),
            Source::Copy(root.join("config/imds-guard.service")),
            0o644,
        ),
        Entry::new(
            POLICY,
            Source::Copy(root.join("config/imds-guard.toml")),
            0o644,
        ),
        // The presets the policy names, to read (the agent has them built
        // in): /usr/share/imds-guard/presets.toml.
        Entry::new(
            POLICY.replace("policy.toml", "presets.toml"),
            Source::Copy(root.join("config/presets.toml")),
            0o644,
        ),
        Entry::new(
            format!("{DOC_DIR}/README.md"),
            Source::Copy(root.join("README.md")),
            0o644,
        ),
        Entry::new(
            format!("{DOC_DIR}/copyright"),
            Source::Text(COPYRIGHT),
            0o644,
        ),
    ];
    for doc in DOCS {
        entries.push(Entry::new(
            format!("{DOC_DIR}/docs/{doc}"),
            Source::Copy(root.join("docs").join(doc)),
            0o644,
        ));
    }
    if format == Format::Rpm {
        entries.push(Entry::new(PRESET, Source::Text(PRESET_TEXT), 0o644));
    }

    let man = build.generated.join("man");
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .with_context(|| {
            format!(
                "cannot list the generated manual pages in {}",
                man.display()
            )
        })?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", man.display()))?;
    // Commands in section 8, the policy format in section 5.
    pages.retain(|p| p.extension().is_some_and(|e| e == "8" || e == "5"));
    pages.sort();
    for needed in ["imds-guard.8", "imds-guard-policy.5"] {
        ensure!(
            pages.iter().any(|p| p.ends_with(needed)),
            "`imds-guard generate man` wrote no {needed} in {}",
            man.display()
        );
    }
    for page in pages {
        let name = page.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let section = page
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        entries.push(Entry::new(
            format!("/usr/share/man/man{section}/{name}.gz"),
            Source::Gzip(page),
            0o644,
        ));
    }

    let completions = build.generated.join("completions");
    for (file, dir) in [
        ("imds-guard", "/usr/share/bash-completion/completions"),
        ("_imds-guard", format.zsh_dir()),
        ("imds-guard.fish", "/usr/share/fish/vendor_completions.d"),
    ] {
        let source = completions.join(file);
        ensure!(
            source.is_file(),
            "`imds-guard generate completions` wrote no {}",
            source.display()
        );
        entries.push(Entry::new(
            format!("{dir}/{file}"),
            Source::Copy(source),
            0o644,
        ));
    }
    Ok(entries)
}

/// Writes `entries` under `root` (emptied first), with their modes;
/// directories are 0755.
pub fn stage(entries: &[Entry], root: &Path) -> Result<()> {
    fresh_dir(root)?;
    for e in entries {
        let dest = root.join(e.path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match &e.source {
            Source::Copy(src) => fs::copy(src, &dest)
                .map(drop)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?,
            Source::Gzip(src) => {
                let gz = output(Command::new("gzip").args(["-9n", "--stdout"]).arg(src))?;
                fs::write(&dest, gz.stdout)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
            }
            Source::Text(text) => fs::write(&dest, text)
                .with_context(|| format!("cannot write {}", dest.display()))?,
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("cannot set the mode of {}", dest.display()))?;
    }
    // The umask must not leak into the package's directories.
    set_dir_modes(root)
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.is_dir() && !path.is_symlink() {
            set_dir_modes(&path)?;
        }
    }
    Ok(())
}

/// [`PRESET`]: a preset file of a lower number, or one of the same name in
/// /etc/systemd/system-preset, says otherwise.
const PRESET_TEXT: &str = "\
# imds-guard: enabled when the package is installed (systemctl preset): a
# guard that does not start at boot leaves the instance metadata service open
# to every local process. To keep it disabled, write `disable
# imds-guard.service` in /etc/systemd/system-preset/50-imds-guard.preset.
enable imds-guard.service
";

/// The licence statement both packages ship (Debian's machine-readable
/// format, which an RPM reader can read as well).
const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: imds-guard

Files: *
Copyright: the imds-guard authors
License: MIT or Apache-2.0
 imds-guard is dual-licensed: use it under either licence, at your option.
 .
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0; elsewhere see
 https://www.apache.org/licenses/LICENSE-2.0.
 .
 The MIT licence:
 .
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the
 \"Software\"), to deal in the Software without restriction, including
 without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit
 persons to whom the Software is furnished to do so, subject to the
 following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS
 OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
 NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
 USE OR OTHER DEALINGS IN THE SOFTWARE.
";
