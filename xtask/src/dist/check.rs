//! `cargo xtask dist --check`: the packages hold what the layout says, with
//! the right modes, no conffiles, the scriptlets, and the binary and
//! metadata `shipped.rs` checks (the glibc floor among them); the `.deb`
//! installs on this machine without a terminal over a policy written to
//! /etc first, its binary runs, its unit verifies, the policy is never
//! touched by a reinstall or a purge, and a purge leaves nothing else
//! behind. The `.rpm` is inspected with `rpm -qp`, and `rpm_root.rs`
//! installs, upgrades and erases it in an RPM root, scriptlets and all.
//!
//! Then `boot.rs` installs it again under a real systemd, in a container.
//! Both are refused on a machine booted with systemd: there the postinst
//! would start the guard for real. Packages for another CPU are not
//! installed here at all (an arm64 guest runs them); their binary runs
//! under qemu instead.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    Build, RELEASE, deb,
    layout::{self, ADMIN_POLICY, BIN, DOC_DIR, Format, POLICY},
    rpm, shipped,
};
use crate::{
    arch::Arch,
    process::{fresh_dir, is_root, output, stdout, workspace_root},
};

/// Where the postinst's offline `systemctl enable` puts its symlink (the
/// unit's `WantedBy=sysinit.target`).
const ENABLE_LINK: &str = "/etc/systemd/system/sysinit.target.wants/imds-guard.service";

/// Problems found, all reported at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn expect(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn into_result(self, what: &str) -> Result<()> {
        if self.0.is_empty() {
            eprintln!("xtask: dist check: {what}: ok");
            return Ok(());
        }
        bail!("{what}:\n  - {}", self.0.join("\n  - "))
    }
}

/// The installed paths the layout puts in a package of `format`.
fn expected_files(build: &Build, format: Format) -> Result<BTreeSet<String>> {
    Ok(layout::entries(build, format)?
        .into_iter()
        .map(|e| e.path)
        .collect())
}

pub fn deb(build: &Build, deb: &Path) -> Result<()> {
    let mut p = Problems::default();
    check_scripts(&mut p, deb::scripts().iter().map(|(n, s)| (*n, s.as_str())));

    let arch = build.arch.deb();
    let fields = stdout(Command::new("dpkg-deb").arg("--field").arg(deb).args([
        "Package",
        "Version",
        "Architecture",
    ]))?;
    let want = format!(
        "Package: imds-guard\nVersion: {}\nArchitecture: {arch}\n",
        deb::version(build)
    );
    p.expect(fields == want, || {
        format!("control fields are {fields:?}, expected {want:?}")
    });

    // `-rwxr-xr-x root/root  1234 2025-01-01 00:00 ./usr/bin/imds-guard`
    let contents = stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let mut files = BTreeSet::new();
    for line in contents.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(mode), Some(owner), Some(path)) = (cols.first(), cols.get(1), cols.last()) else {
            continue;
        };
        let path = path.trim_start_matches('.');
        p.expect(*owner == "root/root", || {
            format!("{path} is owned by {owner}, not root/root")
        });
        if mode.starts_with('-') {
            let want = if path == BIN {
                "-rwxr-xr-x"
            } else {
                "-rw-r--r--"
            };
            p.expect(*mode == want, || {
                format!("{path} has mode {mode}, not {want}")
            });
            files.insert(path.to_owned());
        } else if mode.starts_with('d') {
            p.expect(*mode == "drwxr-xr-x", || {
                format!("directory {path} has mode {mode}, not drwxr-xr-x")
            });
        }
    }
    compare(
        &mut p,
        "the .deb's files",
        &files,
        &expected_files(build, Format::Deb)?,
    );

    let control = build.work.join("deb-control");
    fresh_dir(&control)?;
    output(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(&control),
    )?;
    // A conffile would have dpkg ask, without a terminal, about a policy
    // written before the install: there must be none.
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    p.expect(conffiles.is_empty(), || {
        format!("DEBIAN/conffiles is {conffiles:?}, expected none")
    });
    p.into_result("the .deb's contents")?;
    Problems(shipped::deb(build, deb)?).into_result("the .deb's binary and Depends")?;

    if build.arch != Arch::host()? {
        eprintln!(
            "xtask: dist check: the {arch} .deb is not installed on this {} machine: install \
             and boot it on {arch}",
            Arch::host()?.deb()
        );
        return Ok(());
    }
    if let Some(reason) = cannot_install() {
        let message = format!("skipping the .deb install checks: {reason}");
        ensure!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("xtask: dist check: {message}");
        return Ok(());
    }
    install_cycle(build, deb)?;
    super::boot::check(build, deb)
}

/// What a cloud-init or Packer run does: a policy written to /etc, then
/// `dpkg -i` without a terminal; checks, a reinstall, `dpkg --purge`,
/// checks that nothing but the administrator's policy is left. The purge
/// runs whatever failed before it; the policy is removed at the end.
fn install_cycle(build: &Build, deb: &Path) -> Result<()> {
    let status = package_status();
    ensure!(
        !status.contains(" installed") && !status.contains("config-files"),
        "imds-guard is already on this machine ({status}); the check installs and purges it, so \
         remove it first: dpkg --purge imds-guard"
    );
    let admin = Path::new(ADMIN_POLICY);
    ensure!(
        !admin.exists() && !admin.is_symlink(),
        "{ADMIN_POLICY} exists on this machine; the check writes its own there, so move it away \
         first"
    );
    let seeded = seed_policy()?;

    eprintln!("xtask: dist check: dpkg -i {} (no terminal)", deb.display());
    let installed = dpkg(&["-i"], deb).and_then(|()| installed_checks(build, deb, &seeded));
    eprintln!("xtask: dist check: dpkg --purge imds-guard");
    let purged = dpkg(&["--purge", "imds-guard"], Path::new(""));
    let kept = fs::read_to_string(admin).unwrap_or_default();
    let removed = fs::remove_dir_all("/etc/imds-guard")
        .with_context(|| "cannot remove the check's /etc/imds-guard".to_owned());
    installed?;
    purged?;
    removed?;

    let mut p = Problems::default();
    p.expect(kept == seeded, || {
        format!("{ADMIN_POLICY} was changed or removed by dpkg --purge: {kept:?}")
    });
    for gone in [
        BIN,
        Format::Deb.unit(),
        POLICY,
        "/usr/share/imds-guard",
        ENABLE_LINK,
        DOC_DIR,
    ] {
        p.expect(
            !Path::new(gone).exists() && !Path::new(gone).is_symlink(),
            || format!("{gone} is still there after dpkg --purge"),
        );
    }
    let status = package_status();
    p.expect(
        !status.contains("installed") || status.contains("not-installed"),
        || format!("dpkg still knows imds-guard after the purge: {status}"),
    );
    p.into_result("dpkg --purge")
}

/// Why this machine cannot take the install test, if it cannot.
fn cannot_install() -> Option<String> {
    if Path::new("/run/systemd/system").is_dir() {
        return Some(
            "this machine is booted with systemd, and the postinst would start the guard on it"
                .to_owned(),
        );
    }
    (!is_root()).then(|| "installing a package needs root".to_owned())
}

/// `${Status}` of imds-guard, empty when dpkg never heard of it.
fn package_status() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "imds-guard"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn dpkg(args: &[&str], deb: &Path) -> Result<()> {
    let mut c = Command::new("dpkg");
    c.args(args).stdin(Stdio::null());
    if !deb.as_os_str().is_empty() {
        c.arg(deb);
    }
    let out = output(c.env("DEBIAN_FRONTEND", "noninteractive"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The policy an operator writes before installing: the packaged one with
/// a line of their own. Returns its text.
fn seed_policy() -> Result<String> {
    let shipped = workspace_root().join("config/imds-guard.toml");
    let text = fs::read_to_string(&shipped)
        .with_context(|| format!("cannot read {}", shipped.display()))?
        + "\n# written before the install by cargo xtask dist --check\n";
    fs::create_dir_all("/etc/imds-guard").context("cannot create /etc/imds-guard")?;
    fs::write(ADMIN_POLICY, &text).with_context(|| format!("cannot write {ADMIN_POLICY}"))?;
    Ok(text)
}

fn installed_checks(build: &Build, deb: &Path, seeded: &str) -> Result<()> {
    let mut p = Problems::default();

    match stdout(Command::new(BIN).arg("-V")) {
        Ok(v) => p.expect(v.trim() == format!("imds-guard {}", build.version), || {
            format!(
                "{BIN} -V printed {:?}, expected \"imds-guard {}\"",
                v.trim(),
                build.version
            )
        }),
        Err(e) => p.0.push(format!("{BIN} -V: {e:#}")),
    }

    let unit = Format::Deb.unit();
    let verify = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .context("cannot run systemd-analyze (package systemd)")?;
    let said = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    p.expect(
        verify.status.success() && !said.contains("imds-guard"),
        || format!("systemd-analyze verify {unit}: {}\n{said}", verify.status),
    );

    let conffiles =
        stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "imds-guard"]))?;
    p.expect(conffiles.trim().is_empty(), || {
        format!("dpkg-query ${{Conffiles}} is {conffiles:?}, expected none")
    });
    p.expect(Path::new(POLICY).is_file(), || {
        format!("the packaged default {POLICY} is not installed")
    });

    let listed: BTreeSet<String> = stdout(Command::new("dpkg").args(["-L", "imds-guard"]))?
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_owned)
        .collect();
    compare(
        &mut p,
        "dpkg -L imds-guard (files)",
        &listed,
        &expected_files(build, Format::Deb)?,
    );
    if let Err(e) = output(Command::new("dpkg").args(["--verify", "imds-guard"])) {
        p.0.push(format!("dpkg --verify: {e:#}"));
    }
    let link = fs::read_link(ENABLE_LINK).unwrap_or_default();
    p.expect(link == Path::new(unit), || {
        format!(
            "the postinst did not enable the service: {ENABLE_LINK} -> {link:?}, expected {unit}"
        )
    });
    if Command::new("man").arg("--version").output().is_ok() {
        for (section, name) in [("8", "imds-guard"), ("5", "imds-guard-policy")] {
            let page = stdout(Command::new("man").args(["-w", section, name])).unwrap_or_default();
            let want = format!("/usr/share/man/man{section}/{name}.{section}.gz");
            p.expect(page.trim() == want, || {
                format!("man -w {section} {name} found {:?}", page.trim())
            });
        }
    }

    // The policy written before the install is untouched by it and by a
    // reinstall (an upgrade), which does not ask either.
    dpkg(&["-i"], deb)?;
    let after = fs::read_to_string(ADMIN_POLICY).unwrap_or_default();
    p.expect(after == seeded, || {
        format!("installing the package changed the administrator's {ADMIN_POLICY}")
    });
    p.into_result("the installed .deb")
}

pub fn rpm(build: &Build, rpm: &Path) -> Result<()> {
    let mut p = Problems::default();
    check_scripts(
        &mut p,
        rpm::scriptlets().iter().map(|(n, s)| (*n, s.as_str())),
    );
    let qp = |args: &[&str]| stdout(Command::new("rpm").arg("-qp").args(args).arg(rpm));

    let arch = build.arch.rpm();
    let nvra = qp(&["--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}"])?;
    let want = format!("imds-guard {} {RELEASE} {arch}", build.version);
    p.expect(nvra == want, || {
        format!("rpm -qp reports {nvra:?}, expected {want:?}")
    });

    let listed: BTreeSet<String> = qp(&["-l"])?.lines().map(str::to_owned).collect();
    let mut want = expected_files(build, Format::Rpm)?;
    want.insert("/usr/share/imds-guard".to_owned());
    want.insert(DOC_DIR.to_owned());
    want.insert(format!("{DOC_DIR}/docs"));
    compare(&mut p, "rpm -qlp", &listed, &want);

    let config = qp(&["--configfiles"])?;
    p.expect(config.trim().is_empty(), || {
        format!(
            "rpm -qp --configfiles lists {:?}, expected none",
            config.trim()
        )
    });

    // `-rwxr-xr-x 1 root root 1234 Jan 1 00:00 /usr/bin/imds-guard`
    for line in qp(&["-lv"])?.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(mode), Some(user), Some(group), Some(path)) =
            (cols.first(), cols.get(2), cols.get(3), cols.last())
        else {
            continue;
        };
        p.expect(*user == "root" && *group == "root", || {
            format!("{path} is owned by {user}:{group} in the .rpm")
        });
        if path == &BIN {
            p.expect(*mode == "-rwxr-xr-x", || {
                format!("{BIN} has mode {mode} in the .rpm")
            });
        }
    }

    let scripts = qp(&["--scripts"])?;
    for ((section, body), header) in rpm::scriptlets().iter().zip([
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
    ]) {
        p.expect(
            scripts.contains(header) && scripts.contains(body.trim()),
            || format!("rpm -qp --scripts has no {header} with the {section} body:\n{scripts}"),
        );
    }
    let count = scripts.matches("scriptlet (using").count();
    p.expect(count == 3, || {
        format!("rpm -qp --scripts shows {count} scriptlets, expected 3:\n{scripts}")
    });
    p.0.extend(shipped::rpm(build, rpm)?);
    p.into_result("the .rpm")?;

    if build.arch != Arch::host()? {
        return Ok(());
    }
    if !is_root() {
        let message = "skipping the .rpm install checks: rpm --root needs root";
        ensure!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("xtask: dist check: {message}");
        return Ok(());
    }
    super::rpm_root::check(build, rpm)
}

/// `sh -n` on each script: a syntax error would only show at install time.
fn check_scripts<'a>(p: &mut Problems, scripts: impl Iterator<Item = (&'a str, &'a str)>) {
    for (name, body) in scripts {
        let ok = Command::new("sh")
            .args(["-n", "-c", body])
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            });
        match ok {
            Ok((true, _)) => {}
            Ok((false, err)) => p.0.push(format!("{name}: sh -n: {err}")),
            Err(e) => p.0.push(format!("{name}: cannot run sh -n: {e}")),
        }
    }
}

fn compare(p: &mut Problems, what: &str, got: &BTreeSet<String>, want: &BTreeSet<String>) {
    let missing: Vec<&String> = want.difference(got).collect();
    let extra: Vec<&String> = got.difference(want).collect();
    p.expect(missing.is_empty(), || {
        format!("{what}: missing {missing:?}")
    });
    p.expect(extra.is_empty(), || format!("{what}: unexpected {extra:?}"));
}
