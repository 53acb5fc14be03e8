//! systemd units to cgroup paths: a unit's cgroup is its slice's cgroup
//! and its own (escaped) name below it, whether the unit runs or not, so a
//! unit named in the policy is covered from its first start, including
//! starts after boot (the guard starts before ordinary services).
//!
//! systemd says where when it runs (`systemctl show`): `ControlGroup` for
//! a unit that has a cgroup now, its `Slice` otherwise. Without systemd
//! (an image build, a container), a service is in `system.slice` and a
//! slice's place follows from its name, as systemd would put them.

use std::{path::Path, process::Command};

/// The unit types that have a cgroup of their own.
const CGROUP_UNIT_TYPES: [&str; 6] = ["service", "scope", "slice", "socket", "mount", "swap"];

/// What systemd says of a unit, or that it does not run.
pub trait Systemd {
    /// Whether systemd is the running init (`/run/systemd/system` exists,
    /// as `sd_booted(3)` checks).
    fn running(&self) -> bool;
    /// `systemctl show` of `unit`: `KEY=value` lines for `LoadState`,
    /// `ControlGroup` and `Slice`.
    fn show(&self, unit: &str) -> Result<String, String>;
}

/// The environment variable naming another `systemctl` to ask, which is
/// then taken as the running systemd's: for tests, which cannot make units
/// of the host's systemd, and for a host whose `systemctl` is not on PATH.
pub const SYSTEMCTL_ENV: &str = "IMDS_GUARD_SYSTEMCTL";

/// The host's systemd, through `systemctl`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemSystemd;

impl SystemSystemd {
    fn systemctl() -> Option<std::ffi::OsString> {
        std::env::var_os(SYSTEMCTL_ENV).filter(|s| !s.is_empty())
    }
}

impl Systemd for SystemSystemd {
    fn running(&self) -> bool {
        Self::systemctl().is_some() || Path::new("/run/systemd/system").is_dir()
    }

    fn show(&self, unit: &str) -> Result<String, String> {
        let systemctl = Self::systemctl().unwrap_or_else(|| "systemctl".into());
        let out = Command::new(&systemctl)
            .args([
                "show",
                "--property=LoadState,ControlGroup,Slice",
                "--",
                unit,
            ])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", systemctl.to_string_lossy()))?;
        if !out.status.success() {
            return Err(format!(
                "systemctl show failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8(out.stdout).map_err(|_| "systemctl printed non-UTF-8".to_owned())
    }
}

/// Checks a unit name as the policy writes it: a name systemd could hold,
/// of a type that has a cgroup.
pub fn check_name(unit: &str) -> Result<(), String> {
    let Some((stem, kind)) = unit.rsplit_once('.') else {
        return Err(format!(
            "{unit:?} has no unit type: write it in full, such as {unit}.service"
        ));
    };
    if !CGROUP_UNIT_TYPES.contains(&kind) {
        return Err(format!(
            "{unit:?} is a .{kind} unit, which has no cgroup; expected one of .{}",
            CGROUP_UNIT_TYPES.join(", .")
        ));
    }
    // unit_name_is_valid() in systemd: these characters, 255 at most.
    let valid = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if stem.is_empty() || unit.len() > 255 || !unit.chars().all(valid) {
        return Err(format!(
            "{unit:?} is not a valid unit name (letters, digits and :-_.\\@, 255 at most)"
        ));
    }
    if stem.ends_with('@') {
        return Err(format!(
            "{unit:?} is a template, which never runs itself: name an instance, such as \
             {}NAME.{kind}",
            stem
        ));
    }
    Ok(())
}

/// The cgroup path of `unit`; `None` when systemd does not know it.
pub fn cgroup_of(unit: &str, systemd: &dyn Systemd) -> Result<Option<String>, String> {
    let kind = unit.rsplit_once('.').map_or("", |(_, kind)| kind);
    if !systemd.running() {
        return match kind {
            "slice" => Ok(Some(slice_path(unit))),
            "service" => Ok(Some(format!("/system.slice/{}", escape(unit)))),
            _ => Err(format!(
                "systemd is not running, and without it only a service's or a slice's cgroup is \
                 known, not {unit:?}'s"
            )),
        };
    }
    let shown = systemd.show(unit)?;
    let property = |key: &str| {
        shown
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
    };
    if property("LoadState") == "not-found" {
        return Ok(None);
    }
    let running = property("ControlGroup");
    if !running.is_empty() {
        return Ok(Some(running.to_owned()));
    }
    if kind == "slice" {
        return Ok(Some(slice_path(unit)));
    }
    match property("Slice") {
        "" => Err(format!(
            "systemd does not say which slice {unit:?} belongs to"
        )),
        slice => Ok(Some(join(&slice_path(slice), &escape(unit)))),
    }
}

/// The cgroup of slice `slice`: each dash opens a level
/// (`a-b.slice` is `/a.slice/a-b.slice`), `-.slice` is the root.
pub fn slice_path(slice: &str) -> String {
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    if stem == "-" || stem.is_empty() {
        return "/".to_owned();
    }
    let mut path = String::new();
    for (i, _) in stem.match_indices('-').chain([(stem.len(), "")]) {
        path.push('/');
        path.push_str(&escape(&format!("{}.slice", &stem[..i])));
    }
    path
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// A unit name as systemd names its cgroup (`cg_escape` in
/// src/basic/cgroup-util.c): a `_` in front of names a kernel file could
/// have, or that start with `_` or `.`.
pub fn escape(name: &str) -> String {
    const CONTROLLERS: [&str; 13] = [
        "cpu",
        "cpuacct",
        "cpuset",
        "io",
        "blkio",
        "memory",
        "devices",
        "pids",
        "bpf-firewall",
        "bpf-devices",
        "bpf-foreign",
        "bpf-socket-bind",
        "bpf-restrict-network-interfaces",
    ];
    let controller = name
        .rsplit_once('.')
        .is_some_and(|(stem, _)| CONTROLLERS.contains(&stem));
    let clash = name.starts_with(['_', '.'])
        || ["notify_on_release", "release_agent", "tasks"].contains(&name)
        || name.starts_with("cgroup.")
        || controller;
    if clash {
        format!("_{name}")
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// systemd as a table of `systemctl show` outputs.
    pub(crate) struct FakeSystemd {
        pub(crate) running: bool,
        pub(crate) units: HashMap<String, String>,
    }

    impl FakeSystemd {
        /// Units by name: (ControlGroup, Slice).
        pub(crate) fn new(units: &[(&str, &str, &str)]) -> Self {
            Self {
                running: true,
                units: units
                    .iter()
                    .map(|&(unit, cgroup, slice)| {
                        let shown =
                            format!("LoadState=loaded\nControlGroup={cgroup}\nSlice={slice}\n");
                        (unit.to_owned(), shown)
                    })
                    .collect(),
            }
        }
    }

    impl Systemd for FakeSystemd {
        fn running(&self) -> bool {
            self.running
        }

        fn show(&self, unit: &str) -> Result<String, String> {
            if unit == "broken.service" {
                return Err("Failed to connect to bus: No such file or directory".to_owned());
            }
            // What systemctl prints for a unit it has no file for.
            Ok(self
                .units
                .get(unit)
                .cloned()
                .unwrap_or_else(|| "LoadState=not-found\nControlGroup=\nSlice=\n".to_owned()))
        }
    }

    #[test]
    fn a_running_unit_is_where_systemd_says() {
        let sd = FakeSystemd::new(&[(
            "amazon-ssm-agent.service",
            "/system.slice/amazon-ssm-agent.service",
            "system.slice",
        )]);
        assert_eq!(
            cgroup_of("amazon-ssm-agent.service", &sd),
            Ok(Some("/system.slice/amazon-ssm-agent.service".to_owned()))
        );
    }

    #[test]
    fn a_stopped_unit_is_below_its_slice() {
        let sd = FakeSystemd::new(&[
            ("app.service", "", "apps-web.slice"),
            ("cpu.service", "", "system.slice"),
        ]);
        assert_eq!(
            cgroup_of("app.service", &sd),
            Ok(Some("/apps.slice/apps-web.slice/app.service".to_owned()))
        );
        assert_eq!(
            cgroup_of("cpu.service", &sd),
            Ok(Some("/system.slice/_cpu.service".to_owned())),
            "a name that looks like a controller's file is escaped"
        );
    }

    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(slice_path("-.slice"), "/");
        assert_eq!(slice_path("system.slice"), "/system.slice");
        assert_eq!(slice_path("user-1000.slice"), "/user.slice/user-1000.slice");
        assert_eq!(slice_path("a-b-c.slice"), "/a.slice/a-b.slice/a-b-c.slice");
        let sd = FakeSystemd::new(&[("kubepods.slice", "", "-.slice")]);
        assert_eq!(
            cgroup_of("kubepods.slice", &sd),
            Ok(Some("/kubepods.slice".to_owned()))
        );
    }

    #[test]
    fn an_unknown_unit_is_none_and_a_failure_is_an_error() {
        let sd = FakeSystemd::new(&[]);
        assert_eq!(cgroup_of("nope.service", &sd), Ok(None));
        assert_eq!(
            cgroup_of("broken.service", &sd),
            Err("Failed to connect to bus: No such file or directory".to_owned())
        );
    }

    #[test]
    fn without_systemd_services_are_in_system_slice() {
        let mut sd = FakeSystemd::new(&[]);
        sd.running = false;
        assert_eq!(
            cgroup_of("app.service", &sd),
            Ok(Some("/system.slice/app.service".to_owned()))
        );
        assert_eq!(
            cgroup_of("foo-bar.slice", &sd),
            Ok(Some("/foo.slice/foo-bar.slice".to_owned()))
        );
        assert!(
            cgroup_of("docker-1.scope", &sd)
                .expect_err("a scope has no known place")
                .contains("systemd is not running")
        );
    }

    #[test]
    fn unit_names_are_checked_before_any_lookup() {
        assert_eq!(check_name("sshd.service"), Ok(()));
        assert_eq!(check_name("getty@tty1.service"), Ok(()));
        assert!(
            check_name("sshd")
                .expect_err("no type")
                .contains("sshd.service")
        );
        assert!(
            check_name("a.timer")
                .expect_err("timer")
                .contains("has no cgroup")
        );
        assert!(
            check_name("getty@.service")
                .expect_err("template")
                .contains("template")
        );
        assert!(
            check_name("a b.service")
                .expect_err("space")
                .contains("not a valid")
        );
    }
}
