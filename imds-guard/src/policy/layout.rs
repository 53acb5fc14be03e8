//! Entries that need systemd's cgroup v2 layout: units, cgroup paths and
//! pods. On a host that boots cgroup v1 only, the agent attaches at the
//! root of a cgroup v2 hierarchy it mounted itself, where every process
//! is; such entries could never match there, and a policy that counts on
//! them (a deny of a unit, an allow of a pod) is refused rather than put in
//! force with rules that are dead.

use super::{Diagnostic, Identity, PolicyError, PolicySpec};

/// Whether the cgroup v2 hierarchy the guard attaches in has systemd's
/// layout (units and pods each in a cgroup of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Units, cgroups and pods can be named.
    Systemd,
    /// Every process at the root: only users, uids, groups and gids.
    Flat,
}

impl CgroupLayout {
    /// `systemd` or `flat`, for records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Flat => "flat",
        }
    }
}

impl PolicySpec {
    /// The policy, or, under a [`CgroupLayout::Flat`] hierarchy, an error
    /// at each entry that names a unit, a cgroup or a pod.
    pub fn for_layout(self, layout: CgroupLayout) -> Result<Self, PolicyError> {
        if layout == CgroupLayout::Systemd {
            return Ok(self);
        }
        let diagnostics: Vec<Diagnostic> = self
            .entries
            .iter()
            .filter(|e| {
                matches!(
                    e.identity,
                    Identity::Unit(_) | Identity::Cgroup(_) | Identity::Pod(_)
                )
            })
            .map(|e| Diagnostic {
                at: e.at,
                message: format!(
                    "{} cannot be guarded on this host: it has no cgroup v2 layout (it boots \
                     cgroup v1 only, and the agent attaches at the root of a cgroup v2 \
                     hierarchy it mounted, where every process is); name the callers by users, \
                     uids, groups or gids",
                    e.identity
                ),
            })
            .collect();
        if diagnostics.is_empty() {
            Ok(self)
        } else {
            Err(PolicyError::invalid(&self.path, diagnostics))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const POLICY: &str = "[allow]\nusers = [\"root\"]\nunits = [\"a.service\"]\n\n\
                          [deny]\ncgroups = [\"/x/*\"]\n";

    #[test]
    fn a_flat_hierarchy_refuses_units_cgroups_and_pods_at_their_place() {
        let spec = PolicySpec::parse(Path::new("p.toml"), POLICY).expect("valid");
        let err = spec.for_layout(CgroupLayout::Flat).expect_err("refused");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("p.toml:3:") && lines[0].contains("unit \"a.service\""),
            "{text}"
        );
        assert!(lines[1].starts_with("p.toml:6:"), "{text}");
        assert!(lines[0].contains("cgroup v1 only"), "{text}");
    }

    #[test]
    fn ids_pass_a_flat_hierarchy_and_anything_passes_systemds() {
        let ids = "[allow]\nusers = [\"root\"]\ngids = [5]\n";
        let spec = PolicySpec::parse(Path::new("p.toml"), ids).expect("valid");
        assert_eq!(
            spec.clone()
                .for_layout(CgroupLayout::Flat)
                .expect("ids pass"),
            spec
        );
        let spec = PolicySpec::parse(Path::new("p.toml"), POLICY).expect("valid");
        spec.for_layout(CgroupLayout::Systemd).expect("all pass");
    }
}
