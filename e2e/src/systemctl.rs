//! A stand-in for `systemctl`, which the agent runs instead of the host's
//! (`IMDS_GUARD_SYSTEMCTL`): it knows the units a test names, each running
//! in a cgroup of its name below the test cgroup, as `systemctl show`
//! would report a running unit's `ControlGroup`; tests never touch the
//! host's units.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use crate::{Sandbox, TestCgroup, cgroup2_root};

/// `cgroup`'s path from the cgroup v2 root, as policies name it.
pub fn cgroup_path(cgroup: &TestCgroup) -> String {
    let root = cgroup2_root();
    let rel = cgroup.path().strip_prefix(&root).unwrap_or_else(|_| {
        panic!(
            "{} is not below {}",
            cgroup.path().display(),
            root.display()
        )
    });
    format!("/{}", rel.display())
}

/// Writes a `systemctl` that knows `units`, each running in a cgroup of
/// its name below the sandbox's cgroup, and no other unit.
pub fn fake_systemctl(sb: &Sandbox, units: &[&str]) -> PathBuf {
    let base = cgroup_path(&sb.cgroup);
    let mut script = String::from(
        "#!/bin/sh\n# imds-guard runs: systemctl show --property=... -- UNIT\nunit=\"$4\"\ncase \
         \"$unit\" in\n",
    );
    for unit in units {
        script.push_str(&format!(
            "  {unit}) printf 'LoadState=loaded\\nControlGroup={base}/{unit}\\nSlice=system.slice\\n' ;;\n"
        ));
    }
    script.push_str("  *) printf 'LoadState=not-found\\nControlGroup=\\nSlice=\\n' ;;\nesac\n");
    let path = sb.dir.path().join("systemctl");
    std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    path
}
