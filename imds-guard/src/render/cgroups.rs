//! Units, cgroups and pods as firewall matches, where a firewall has one:
//! iptables' `--match cgroup --path P` and nftables' `socket cgroupv2
//! level N "P"` both match the cgroup at P and every cgroup below it.
//! What they cannot say is left out with a warning, and never rendered
//! broader than the guard: a glob, a pod (its cgroup follows a uid the
//! kubelet assigns at run time), and an allow of one cgroup without its
//! descendants. A deny of one cgroup is rendered for its subtree (stricter).
//! PF and IPFW match no cgroup at all.
//!
//! Both Linux firewalls look the path up when the rules are loaded: a unit
//! that restarts gets a new cgroup, which the loaded rules no longer match.

use super::{Out, Target, names, names::Syntax};
use crate::policy::{
    Action, Identity, Location,
    cgroups::{Component, Pattern, units},
};

/// A cgroup subtree a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CgroupMatch {
    pub(super) action: Action,
    /// From the cgroup2 root, without the leading `/` (empty for the root),
    /// as both firewalls take it.
    pub(super) path: String,
    /// Components in `path`: nftables' `level`.
    pub(super) level: usize,
    /// `path` written for the target (quoted as its syntax needs; `/` for
    /// the root).
    pub(super) text: String,
}

/// Where a unit's cgroup is, as far as `render` can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitPath {
    /// As systemd says.
    Known(String),
    /// Where systemd would put it by default (systemd was not asked).
    Assumed(String),
    /// Not known, and why.
    Unknown(String),
}

/// Units placed without systemd: a service in `system.slice`, a slice
/// where its name says.
pub fn default_unit_path(unit: &str) -> UnitPath {
    struct NoSystemd;
    impl units::Systemd for NoSystemd {
        fn running(&self) -> bool {
            false
        }
        fn show(&self, _: &str) -> Result<String, String> {
            Err("systemd is not running".to_owned())
        }
    }
    match units::cgroup_of(unit, &NoSystemd) {
        Ok(Some(path)) => UnitPath::Assumed(path),
        Ok(None) => UnitPath::Unknown(format!("systemd does not know {unit:?}")),
        Err(why) => UnitPath::Unknown(why),
    }
}

impl Out<'_> {
    /// Turns the unit, cgroup and pod entries into matches the target can
    /// write, with a warning for each it cannot.
    pub(super) fn write_cgroups(&mut self, unit_path: &dyn Fn(&str) -> UnitPath) {
        let spec = self.plan.spec;
        let mut any = false;
        for (index, entry) in spec.entries.iter().enumerate() {
            let action = super::plan::action_of(spec, index);
            let pattern = match &entry.identity {
                Identity::Unit(unit) => match unit_path(unit) {
                    UnitPath::Known(path) => Pattern::subtree_of(&path),
                    UnitPath::Assumed(path) => {
                        self.warn(
                            Some(entry.at),
                            format!(
                                "unit {unit:?} is rendered at {path}, where systemd puts it by \
                                 default (systemd was not asked); check with systemctl show -p \
                                 ControlGroup {unit}"
                            ),
                        );
                        Pattern::subtree_of(&path)
                    }
                    UnitPath::Unknown(why) => Err(why),
                },
                Identity::Cgroup(text) => Pattern::parse(text),
                Identity::Pod(pod) => {
                    self.left_out(
                        entry.at,
                        action,
                        &if pod.ends_with('*') {
                            format!(
                                "pods {pod:?} cannot be written: their cgroups follow the uids \
                                 the kubelet gives the pods when they start"
                            )
                        } else {
                            format!(
                                "pod {pod:?} cannot be written: its cgroup follows the uid the \
                                 kubelet gives the pod when it starts"
                            )
                        },
                    );
                    continue;
                }
                _ => continue,
            };
            let what = entry.identity.to_string();
            let pattern = match pattern {
                Ok(pattern) => pattern,
                Err(why) => {
                    self.left_out(entry.at, action, &format!("{what}: {why}"));
                    continue;
                }
            };
            if let Some(m) = self.cgroup_match(&what, &pattern, action, entry.at) {
                self.cgroups.push(m);
                any = true;
            }
        }
        if any {
            self.warn(
                None,
                format!(
                    "{} looks each cgroup path up when the rules are loaded: a unit that \
                     restarts, or any cgroup made again, is a new cgroup these rules do not \
                     match (an allow then refuses it, a deny lets it through) until they are \
                     loaded again; the eBPF guard classifies every cgroup as it is made",
                    self.target
                ),
            );
        }
    }

    /// `pattern` as a match of this target, or `None` with a warning.
    fn cgroup_match(
        &mut self,
        what: &str,
        pattern: &Pattern,
        action: Action,
        at: Location,
    ) -> Option<CgroupMatch> {
        if !matches!(
            self.target,
            Target::Iptables | Target::Ip6tables | Target::Nftables
        ) {
            let why = format!("{} cannot match a process's cgroup", self.target);
            self.left_out(at, action, &format!("{what}: {why}"));
            return None;
        }
        let mut parts = Vec::new();
        for c in &pattern.components {
            match c {
                Component::Literal(name) => parts.push(String::from_utf8_lossy(name).into_owned()),
                Component::Glob { .. } => {
                    let why = format!("{what} has a *, which {} cannot match", self.target);
                    self.left_out(at, action, &why);
                    return None;
                }
            }
        }
        if !pattern.subtree {
            if action == Action::Allow {
                let why = format!(
                    "{what} names one cgroup, and {} matches a cgroup with everything below it",
                    self.target
                );
                self.left_out(at, action, &why);
                return None;
            }
            self.warn(
                Some(at),
                format!(
                    "{what} names one cgroup, and {} matches a cgroup with everything below it: \
                     the deny is rendered for the cgroups below it too",
                    self.target
                ),
            );
        }
        let path = parts.join("/");
        let shown = if path.is_empty() { "/" } else { path.as_str() };
        let syntax = self.syntax();
        let Some(mut text) = names::write(shown, syntax) else {
            let why = format!("{what}: its path cannot be written for {}", self.target);
            self.left_out(at, action, &why);
            return None;
        };
        // nft reads a bare word as a symbol, not a path.
        if syntax == Syntax::Nft && !text.starts_with('"') {
            text = format!("\"{text}\"");
        }
        Some(CgroupMatch {
            action,
            level: parts.len(),
            path,
            text,
        })
    }

    /// Warns that an entry is not in these rules, and what follows.
    fn left_out(&mut self, at: Location, action: Action, why: &str) {
        let then = match action {
            Action::Allow => "its allow entry is left out of these rules (they refuse it)",
            Action::Deny => "its deny entry is left out of these rules (they let it through)",
        };
        self.warn(Some(at), format!("{why}; {then}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{
        Format, render, render_with,
        test_support::{policy, rule_lines},
    };

    const POLICY: &str = "[allow]\nusers = [\"root\"]\nunits = [\"amazon-ssm-agent.service\"]\n\
                          cgroups = [\"/kubepods.slice/**\", \"/system.slice/docker-*.scope\"]\n\
                          pods = [\"kube-system/aws-node\", \"kube-system/ebs-csi-node-*\"]\n\
                          [deny]\ncgroups = \
                          [\"/system.slice/evil.service\"]\n";

    fn known(unit: &str) -> UnitPath {
        UnitPath::Known(format!("/system.slice/{unit}"))
    }

    #[test]
    fn iptables_matches_each_subtree_by_path_denies_first() {
        let r = render_with(&policy(POLICY), Target::Iptables, Format::Commands, &known);
        let lines: Vec<&str> = rule_lines(&r.text)
            .into_iter()
            .filter(|l| l.contains("--match cgroup"))
            .collect();
        assert_eq!(lines.len(), 3, "{}", r.text);
        assert!(
            lines[0].contains("--match cgroup --path system.slice/evil.service"),
            "{lines:?}"
        );
        assert!(lines[0].contains("REJECT"), "{lines:?}");
        assert!(
            lines[1].contains("--match cgroup --path system.slice/amazon-ssm-agent.service"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("--match cgroup --path kubepods.slice"),
            "{lines:?}"
        );
        let warned = r.warnings.join("\n");
        // What it cannot say: the glob, the pod, the one-cgroup deny made a
        // subtree, and restarts.
        assert!(
            warned.contains("has a *, which iptables cannot match"),
            "{warned}"
        );
        assert!(warned.contains("its allow entry is left out"), "{warned}");
        assert!(
            warned.contains("pod \"kube-system/aws-node\" cannot be written"),
            "{warned}"
        );
        assert!(
            warned.contains("pods \"kube-system/ebs-csi-node-*\" cannot be written"),
            "{warned}"
        );
        assert!(
            warned.contains("the deny is rendered for the cgroups below it too"),
            "{warned}"
        );
        assert!(warned.contains("a unit that restarts"), "{warned}");
    }

    #[test]
    fn nftables_matches_by_level_and_quoted_path() {
        let r = render_with(&policy(POLICY), Target::Nftables, Format::Commands, &known);
        let cgroup_lines: Vec<&str> = rule_lines(&r.text)
            .into_iter()
            .filter(|l| l.contains("socket cgroupv2"))
            .collect();
        assert_eq!(cgroup_lines.len(), 3, "{}", r.text);
        assert!(
            cgroup_lines[0].contains("socket cgroupv2 level 2 \"system.slice/evil.service\""),
            "{cgroup_lines:?}"
        );
        assert!(
            cgroup_lines[1]
                .contains("socket cgroupv2 level 2 \"system.slice/amazon-ssm-agent.service\""),
            "{cgroup_lines:?}"
        );
        assert!(
            cgroup_lines[2].contains("socket cgroupv2 level 1 \"kubepods.slice\""),
            "{cgroup_lines:?}"
        );
        assert!(!r.warnings.is_empty());
    }

    #[test]
    fn pf_and_ipfw_leave_every_cgroup_entry_out_and_say_so() {
        for target in [Target::Pf, Target::Ipfw] {
            let r = render_with(&policy(POLICY), target, Format::Commands, &known);
            let warned = r.warnings.join("\n");
            assert_eq!(
                warned.matches("cannot match a process's cgroup").count(),
                4,
                "{target}: {warned}"
            );
            assert!(
                warned.contains("its deny entry is left out"),
                "{target}: {warned}"
            );
        }
    }

    #[test]
    fn units_are_placed_where_systemd_would_without_it_and_said_so() {
        let r = render(
            &policy("[deny]\nunits = [\"app.service\", \"docker-1.scope\"]\n"),
            Target::Iptables,
            Format::Commands,
        );
        assert!(
            r.text
                .contains("--match cgroup --path system.slice/app.service"),
            "{}",
            r.text
        );
        let warned = r.warnings.join("\n");
        assert!(
            warned.contains("where systemd puts it by default"),
            "{warned}"
        );
        assert!(
            warned.contains("unit \"docker-1.scope\": systemd is not running"),
            "{warned}"
        );
        assert!(warned.contains("its deny entry is left out"), "{warned}");
    }
}
