//! The `.deb` under a real systemd: this machine's own system, booted in
//! `systemd-nspawn` on a throw-away overlay of `/` with a private network,
//! installs the package and runs the service as shipped (its capability
//! bounding set, sandbox and system-call filter; only the cgroup is a test
//! child, never the root), then checks readiness, the journal fields of a
//! real denial, reload (refused: `systemctl reload` fails), stop (the guard
//! stays), a broken policy while pinned, upgrades while stopped or failed,
//! a reinstall after `dpkg -r`, the line each install prints (enforcing,
//! auditing, the fallback, policy-rc.d) and purge (it goes).
//!
//! It caught what no manual imitation of the sandbox did:
//! `ProtectKernelTunables=` makes `/sys/fs/bpf` read-only beyond the reach
//! of `ReadWritePaths=`.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::Build;
use crate::process::{fresh_dir, run, workspace_root};

const FILES: [(&str, &str, u32); 5] = [
    ("boot.sh", include_str!("boot/boot.sh"), 0o755),
    ("run.sh", include_str!("boot/run.sh"), 0o755),
    ("mkcg.sh", include_str!("boot/mkcg.sh"), 0o755),
    (
        "imds-test.service",
        include_str!("boot/imds-test.service"),
        0o644,
    ),
    ("test.conf", include_str!("boot/test.conf"), 0o644),
];

/// What the service's process must hold: CAP_NET_ADMIN (12), CAP_PERFMON
/// (38), CAP_BPF (39), and nothing else.
const CAPS: &str = "000000c000001000";

pub fn check(build: &Build, deb: &Path) -> Result<()> {
    let dir = build.work.join("boot");
    let test = dir.join("test");
    let out = dir.join("out");
    let overlay = dir.join("overlay");
    fresh_dir(&test)?;
    fresh_dir(&out)?;
    fresh_dir(&overlay)?;
    for (name, text, mode) in FILES {
        let path = test.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    fs::copy(deb, test.join("imds-guard.deb"))
        .with_context(|| format!("cannot copy {}", deb.display()))?;
    // What the test writes to /etc before installing is derived from it.
    let policy = workspace_root().join("config/imds-guard.toml");
    fs::copy(&policy, test.join("policy.toml"))
        .with_context(|| format!("cannot copy {}", policy.display()))?;
    let cgroup = format!("imds-guard-dist-{}", std::process::id());
    fs::write(test.join("cgroup-name"), &cgroup).context("cannot write the cgroup name")?;

    eprintln!("xtask: dist check: booting this system in systemd-nspawn to install the .deb");
    let nspawn_cgroups: Vec<_> = nspawn_cgroups()
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
    let booted = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(test.join("boot.sh"))
        .arg(&test)
        .arg(&out)
        .arg(&overlay));
    let log = fs::read_to_string(out.join("run.log")).unwrap_or_default();
    let results = fs::read_to_string(out.join("results")).unwrap_or_default();
    remove_leftover_cgroup(&cgroup);
    for dir in &nspawn_cgroups {
        remove_cgroup_tree(dir);
    }
    if let Err(e) = booted {
        bail!("{e:#}\ninside the container:\n{log}");
    }
    verify(&parse(&results)).map_err(|e| anyhow::anyhow!("{e:#}\ninside the container:\n{log}"))
}

/// `KEY=VALUE` lines; a key seen twice keeps its first value.
fn parse(results: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in results.lines() {
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        }
    }
    map
}

/// What `run.sh` must have found, by key.
const EXPECTED: &[(&str, &str)] = &[
    // Without a terminal, over a policy written first, which is used.
    ("install_rc", "0"),
    ("active", "active"),
    ("enforcing_line", "1"),
    ("status_matches_seeded", "0"),
    // 5: differs from the policy in force.
    ("status_matches_default", "5"),
    // The status file, for monitors that are not root.
    ("status_file_mode", "644"),
    ("status_file_running", "1"),
    ("cap_eff", CAPS),
    ("cap_bnd", CAPS),
    ("no_new_privs", "1"),
    ("seccomp", "2"),
    ("connect", "bash: connect: Operation not permitted"),
    ("deny_EVENT", "deny"),
    ("deny_UID", "65534"),
    ("deny_USER", "nobody"),
    ("deny_GID", "65534"),
    ("deny_COMM", "bash"),
    ("deny_DST", "169.254.169.254"),
    ("deny_PORT", "80"),
    ("deny_HOOK", "connect4"),
    ("deny_PRIORITY", "4"),
    ("deny_SYSLOG_IDENTIFIER", "imds-guard"),
    ("reload_rc", "0"),
    ("reload_OUTCOME", "applied"),
    // ExecReload waits for the answer: a refused policy fails the
    // reload, and the journal says where at warning priority.
    ("refused_reload_rc", "1"),
    ("refused_reload_warning", "1"),
    ("refused_reload_active", "active"),
    // /etc's policy removed: the reload fell back to the default.
    ("status_matches_default_after_reload", "0"),
    ("stopped", "inactive"),
    // The unit keeps it: it says the agent stopped.
    ("status_file_stopped", "1"),
    // Stopping leaves the guard pinned and enforcing.
    ("status_after_stop", "0"),
    // An upgrade starts a stopped service, and says what is in force.
    ("upgrade_stopped_active", "active"),
    ("upgrade_stopped_line", "1"),
    // A broken policy while pinned: exit 1, not restarted; the journal
    // says where and that the pinned guard keeps enforcing.
    ("broken_start_active", "failed"),
    ("broken_start_where", "1"),
    ("broken_start_kept", "1"),
    ("status_after_broken_start", "0"),
    // An upgrade starts a failed service.
    ("upgrade_failed_active", "active"),
    ("purge_rc", "0"),
    ("pins_after_purge", "0"),
    ("unit_after_purge", "0"),
    // Installed over a policy that does not validate: the fallback,
    // said as such, never "enforcing".
    ("fallback_active", "active"),
    ("fallback_line", "1"),
    ("fallback_enforcing", "0"),
    ("audit_line", "1"),
    // A reinstall after `apt remove` starts the guard again.
    ("remove_rc", "0"),
    ("pins_after_remove", "0"),
    // Removal deletes it with the guard: it would say "still pinned".
    ("status_file_after_remove", "0"),
    ("reinstall_active", "active"),
    ("reinstall_enabled", "enabled"),
    ("reinstall_line", "1"),
    ("reinstall_purge_rc", "0"),
    // policy-rc.d forbids starting: enabled for the next boot only.
    ("policy_rc_install_rc", "0"),
    ("policy_rc_active", "inactive"),
    ("policy_rc_enabled", "enabled"),
    ("policy_rc_line", "1"),
    ("policy_rc_purge_rc", "0"),
    ("pins_after_second_purge", "0"),
    ("done", "yes"),
];

fn verify(got: &BTreeMap<String, String>) -> Result<()> {
    let mut problems = Vec::new();
    for (key, want) in EXPECTED {
        match got.get(*key) {
            Some(v) if v == want => {}
            Some(v) => problems.push(format!("{key} is {v:?}, expected {want:?}")),
            None => problems.push(format!("{key} is missing, expected {want:?}")),
        }
    }
    let status = got
        .get("status_text")
        .map(String::as_str)
        .unwrap_or_default();
    if !status.starts_with("enforce") {
        problems.push(format!(
            "the READY=1 status is {status:?}, expected \"enforce…\""
        ));
    }
    for key in ["deny_PID", "deny_REASON", "deny_CGROUP_ID", "deny_MESSAGE"] {
        if got.get(key).is_none_or(String::is_empty) {
            problems.push(format!("the denial's journal entry has no {}", &key[5..]));
        }
    }
    if problems.is_empty() {
        eprintln!("xtask: dist check: the .deb under systemd: ok");
        return Ok(());
    }
    bail!("the .deb under systemd:\n  - {}", problems.join("\n  - "))
}

/// Where `systemd-nspawn --keep-unit` makes its `payload` and `supervisor`
/// cgroups: below ours, in the cgroup2 and the name=systemd hierarchies.
/// It leaves them behind when it exits; those it made are removed.
fn nspawn_cgroups() -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(kind), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let mounts: &[&str] = match kind {
            "" => &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"],
            "name=systemd" => &["/sys/fs/cgroup/systemd"],
            _ => continue,
        };
        for mount in mounts {
            let base = Path::new(mount).join(path.trim_start_matches('/'));
            if base.join("cgroup.procs").exists() {
                dirs.push(base.join("payload"));
                dirs.push(base.join("supervisor"));
            }
        }
    }
    dirs
}

/// Removes an empty cgroup and its empty descendants (rmdir only: a cgroup
/// with processes stays).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The container removes its test cgroup; this is for when it could not.
fn remove_leftover_cgroup(name: &str) {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let dir = Path::new(root).join(name);
        if dir.is_dir() {
            let _ = fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_first_value_of_a_key() {
        let got = parse("a=1\nb=x=y\na=2\nnot a pair\n");
        assert_eq!(got.get("a").map(String::as_str), Some("1"));
        assert_eq!(got.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_missing_result_is_named() {
        let err = verify(&BTreeMap::new()).expect_err("nothing ran");
        let text = format!("{err:#}");
        assert!(
            text.contains("install_rc is missing, expected \"0\""),
            "{text}"
        );
        assert!(
            text.contains("the denial's journal entry has no REASON"),
            "{text}"
        );
    }
}
