//! The `.rpm`'s scriptlets, run for real: `rpm --root` installs, upgrades
//! and erases the package in a throw-away root that holds just enough to
//! run them (a shell, the C library, the packaged binary's libraries) and
//! a `systemctl` that records what it is asked. The root has
//! `/run/systemd/system`, so every branch a booted host takes is taken.
//!
//! An RPM-based distribution would also bring its presets and `%systemd_*`
//! macros; the scriptlets use no macro (see `rpm.rs`) and the package
//! brings its own preset, so what is checked here is what runs there: which
//! `systemctl` calls each step makes, the line that says what is in force,
//! that a policy written to /etc before the install is never touched or
//! shadowed by an `.rpmnew`/`.rpmsave`, and that an erase leaves only that
//! policy.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    Build,
    layout::{ADMIN_POLICY, BIN, POLICY, PRESET},
};
use crate::process::{fresh_dir, output, stdout};

/// The stand-in `systemctl`: one line per call, its arguments.
const SYSTEMCTL: &str = "#!/bin/sh\necho \"$*\" >> /var/log/systemctl.log\n";
/// The stand-in `nft` that `detach` runs (the `nftables` dependency), for
/// a ruleset without tables: listing the forward table fails as nft's
/// does ("No such file or directory"), anything else gets its JSON.
const NFT: &str = "#!/bin/sh\n\
                   case \"$*\" in *'list table'*) echo 'Error: No such file or directory' >&2; \
                   exit 1;; esac\n\
                   echo '{\"nftables\": [{\"metainfo\": {\"version\": \"1.0.6\", \
                   \"release_name\": \"stand-in\", \"json_schema_version\": 1}}]}'\n";
/// What the erase's `imds-guard detach` says in a root where nothing is
/// pinned (no bpf file system is mounted in it), and no forward table is.
const NOTHING_PINNED: &str = "nothing is pinned at /sys/fs/bpf/imds-guard: no guard to detach";
/// What an install or an upgrade says is in force in that root.
const NOTHING_IN_FORCE: &str =
    "imds-guard: nothing is in force: no guard is pinned at /sys/fs/bpf/imds-guard";
const LOG: &str = "var/log/systemctl.log";
/// What the administrator wrote before installing.
const SEEDED: &str = "# written before the install by cargo xtask dist --check\n";

pub fn check(build: &Build, rpm: &Path) -> Result<()> {
    let root = build.work.join("rpm-install-root");
    let checked = make_root(&root, &build.bin).and_then(|()| cycle(&root, rpm));
    let _ = fs::remove_dir_all(&root);
    checked
}

fn cycle(root: &Path, rpm: &Path) -> Result<()> {
    let mut problems = Vec::new();

    // A fresh install: presets decide enablement (the package's own
    // enables it), an enabled unit is started, and one line says what is
    // in force (nothing here: no bpf file system is mounted in the root).
    step(
        root,
        &mut problems,
        "-i",
        &["-i", &rpm.to_string_lossy()],
        &[
            "--no-reload preset imds-guard.service",
            "daemon-reload",
            "--quiet is-enabled imds-guard.service",
            "start imds-guard.service",
            "--quiet is-active imds-guard.service",
        ],
        Some(NOTHING_IN_FORCE),
    )?;
    for file in [BIN, POLICY, PRESET] {
        if !root.join(rel(file)).is_file() {
            problems.push(format!("rpm -i did not install {file}"));
        }
    }
    // An upgrade (the same package again): the enabled agent restarts on
    // the new binary and adopts the pinned guard, or starts if it was
    // stopped or had failed; one line says what is in force.
    step(
        root,
        &mut problems,
        "-U --replacepkgs",
        &["-U", "--replacepkgs", &rpm.to_string_lossy()],
        &[
            "daemon-reload",
            "daemon-reload",
            "--quiet is-enabled imds-guard.service",
            "restart imds-guard.service",
            "--quiet is-active imds-guard.service",
        ],
        Some(NOTHING_IN_FORCE),
    )?;
    let preset = fs::read_to_string(root.join(rel(PRESET))).unwrap_or_default();
    if !preset.lines().any(|l| l == "enable imds-guard.service") {
        problems.push(format!("{PRESET} does not enable the service: {preset:?}"));
    }
    // An erase: stopped, detached (nothing is pinned in this root and no
    // forward table is: detach says so, and the erase goes on), disabled.
    step(
        root,
        &mut problems,
        "-e",
        &["-e", "imds-guard"],
        &[
            "stop imds-guard.service",
            "--no-reload disable imds-guard.service",
            "daemon-reload",
        ],
        Some(NOTHING_PINNED),
    )?;
    for file in [BIN, POLICY, "/usr/share/imds-guard"] {
        if root.join(rel(file)).exists() {
            problems.push(format!("{file} is still there after rpm -e"));
        }
    }
    if problems.is_empty() {
        eprintln!("xtask: dist check: the .rpm installed, upgraded and erased in an RPM root: ok");
        return Ok(());
    }
    bail!("the .rpm in an RPM root:\n  - {}", problems.join("\n  - "))
}

/// One rpm run in `root`: what it must print on stdout (`says`: the one
/// line an install says is in force, or detach's, or nothing), the `systemctl` calls its
/// scriptlets must make (`want`), and the administrator's policy, alone
/// in /etc/imds-guard and untouched, after it. Problems go to `problems`.
fn step(
    root: &Path,
    problems: &mut Vec<String>,
    what: &str,
    args: &[&str],
    want: &[&str],
    says: Option<&str>,
) -> Result<()> {
    let _ = fs::remove_file(root.join(LOG));
    let out = output(
        Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["--dbpath", "/var/lib/rpm", "--nodeps"])
            .args(args),
    )
    .with_context(|| format!("rpm {what}"))?;
    let told = String::from_utf8_lossy(&out.stdout);
    if !told.lines().eq(says.iter().copied()) {
        problems.push(format!("rpm {what} printed {told:?}, expected {says:?}"));
    }
    let said = String::from_utf8_lossy(&out.stderr);
    // Debian's rpm warns that it is not dpkg; anything else is news.
    for line in said.lines().filter(|l| !l.starts_with("rpm: ")) {
        problems.push(format!("rpm {what} said: {line}"));
    }
    let calls = fs::read_to_string(root.join(LOG)).unwrap_or_default();
    let calls: Vec<&str> = calls.lines().collect();
    if calls != want {
        problems.push(format!(
            "rpm {what}: the scriptlets called systemctl {calls:?}, expected {want:?}"
        ));
    }
    let policy = fs::read_to_string(root.join(rel(ADMIN_POLICY))).unwrap_or_default();
    if policy != SEEDED {
        problems.push(format!("after rpm {what}, {ADMIN_POLICY} is {policy:?}"));
    }
    let etc: Vec<String> = fs::read_dir(root.join("etc/imds-guard"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if etc != ["policy.toml"] {
        problems.push(format!("after rpm {what}, /etc/imds-guard holds {etc:?}"));
    }
    Ok(())
}

/// A root where the scriptlets can run: /bin/sh, the libraries it and the
/// agent link, /dev/null, the stand-in systemctl, the seeded policy, an
/// empty rpm database.
fn make_root(root: &Path, bin: &Path) -> Result<()> {
    fresh_dir(root)?;
    for dir in [
        "bin",
        "usr/bin",
        "run/systemd/system",
        "var/log",
        "etc/imds-guard",
        "dev",
        "tmp",
    ] {
        fs::create_dir_all(root.join(dir))
            .with_context(|| format!("cannot create {dir} in {}", root.display()))?;
    }
    let sh = fs::canonicalize("/bin/sh").context("cannot resolve /bin/sh")?;
    copy(&sh, &root.join("bin/sh"))?;
    let libs = stdout(Command::new("ldd").arg(&sh).arg(bin))?;
    for lib in libs
        .split_whitespace()
        .filter(|w| w.starts_with('/') && !w.ends_with(':'))
    {
        copy(Path::new(lib), &root.join(rel(lib)))?;
    }
    output(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]),
    )?;
    for (path, text) in [("usr/bin/systemctl", SYSTEMCTL), ("usr/sbin/nft", NFT)] {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write(&path, text)?;
        set_mode(&path, 0o755)?;
    }
    write(&root.join(rel(ADMIN_POLICY)), SEEDED)?;
    output(Command::new("rpm").arg("--root").arg(root).args([
        "--dbpath",
        "/var/lib/rpm",
        "--initdb",
    ]))
    .map(drop)
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}
