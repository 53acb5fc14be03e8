//! The fail-closed fallback: a host that boots with a policy that does not
//! validate (or names in `[deny]` a user that does not resolve) must not be
//! left open. (An `[allow]` name that does not resolve yet is left out of
//! the policy, see `policy/unresolved.rs`, and retried.)
//! When nothing is pinned, so no earlier policy is in force, the agent puts
//! a policy of its own in force instead: built in (root on the host only), or the
//! `--fallback FILE` the unit names. It says so loudly (the log, systemd's
//! status line, `status`, the `imds_guard_fallback` metric), keeps running,
//! and puts the real policy in force on the first reload that validates.
//!
//! The operator's file never reaches the kernel half-valid: the fallback is
//! ours. When a guard is pinned already, its last good policy stays in
//! force and the agent exits with the policy's error, as before.

use std::path::{Path, PathBuf};

use crate::{
    chain::Chain,
    kernel::pins::Pins,
    policy::{CgroupLayout, Policy, PolicyError, PolicySpec, Resolver, Unresolved},
};

/// What `--fallback` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The built-in policy, [`BUILTIN`].
    Builtin,
    /// No fallback: a policy that cannot be used stops the agent.
    Off,
    /// This policy file (itself validated; the built-in one if it is not).
    File(PathBuf),
}

impl Fallback {
    /// Parses `--fallback`: `builtin`, `none`, or a file.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(Self::Builtin),
            "none" => Ok(Self::Off),
            "" => Err("expected builtin, none or a policy file".to_owned()),
            file => Ok(Self::File(PathBuf::from(file))),
        }
    }
}

/// The built-in fallback, as a policy file would say it.
pub const BUILTIN: &str = "[allow.host]\nuids = [0]\n";
/// How the built-in fallback is named in messages (it has no file).
const BUILTIN_NAME: &str = "(built-in fallback: root on the host only)";

/// The policy to put in force.
pub struct Chosen {
    pub policy: Policy,
    /// `[allow]` names left out of it because they do not resolve yet.
    pub unresolved: Vec<Unresolved>,
    /// Why the configured policy is not the one in force, when it is not:
    /// its error, kept to exit with should the fallback fail too.
    pub fallback_for: Option<PolicyError>,
}

/// Loads the policy at `config`, or, when it cannot be used (in the
/// cgroup `layout` the guard attaches in, too) and nothing is pinned at
/// `pins`, the fallback.
pub fn choose(
    config: &Path,
    fallback: &Fallback,
    pins: &Pins,
    resolver: &dyn Resolver,
    layout: CgroupLayout,
) -> Result<Chosen, PolicyError> {
    let loaded = PolicySpec::load(config)
        .and_then(|s| s.for_layout(layout))
        .and_then(|s| s.resolve_available(resolver));
    let error = match loaded {
        Ok((policy, unresolved)) => {
            super::warnings::say(&policy, resolver);
            return Ok(Chosen {
                policy,
                unresolved,
                fallback_for: None,
            });
        }
        Err(e) => e,
    };
    if *fallback == Fallback::Off || pins.any_link() {
        return Err(error);
    }
    for line in error.to_string().lines() {
        tracing::error!(fallback = true, "{line}");
    }
    let policy = match fallback {
        Fallback::File(file) => match PolicySpec::load(file)
            .and_then(|s| s.for_layout(layout))
            .and_then(|s| s.resolve(resolver))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    fallback = true,
                    "the fallback policy {} does not validate either ({}); using the \
                         built-in one",
                    file.display(),
                    Chain(&e)
                );
                builtin()
            }
        },
        Fallback::Builtin | Fallback::Off => builtin(),
    };
    Ok(Chosen {
        policy,
        unresolved: Vec::new(),
        fallback_for: Some(error),
    })
}

/// The built-in fallback policy.
pub fn builtin() -> Policy {
    Policy::root_only(Path::new(BUILTIN_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, FakeResolver};

    #[test]
    fn the_builtin_fallback_is_the_policy_its_text_says() {
        let parsed = PolicySpec::parse(Path::new(BUILTIN_NAME), BUILTIN)
            .expect("valid")
            .resolve(&FakeResolver::new(&[], &[]))
            .expect("resolves");
        assert_eq!(builtin(), parsed);
        assert_eq!(builtin().digest(), parsed.digest());
    }

    #[test]
    fn the_builtin_fallback_allows_root_only() {
        let p = builtin();
        assert_eq!(p.decide(0, 0).action, Action::Allow);
        assert_eq!(p.decide(1000, 0).action, Action::Deny);
        assert_eq!(p.decide(1000, 1000).action, Action::Deny);
    }

    #[test]
    fn fallback_is_parsed() {
        assert_eq!(Fallback::parse("builtin"), Ok(Fallback::Builtin));
        assert_eq!(Fallback::parse("none"), Ok(Fallback::Off));
        assert_eq!(
            Fallback::parse("/etc/x.toml"),
            Ok(Fallback::File("/etc/x.toml".into()))
        );
        assert!(Fallback::parse("").is_err());
    }

    #[test]
    fn a_bad_policy_with_nothing_pinned_falls_back_and_keeps_its_error() {
        let dir = std::env::temp_dir().join(format!("imds-guard-fallback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[deny]\nusers = [\"nobody-here\"]\n").expect("write");
        let pins = Pins::new(dir.join("no-pins"));
        let r = FakeResolver::new(&[], &[]);
        let chosen =
            choose(&bad, &Fallback::Builtin, &pins, &r, CgroupLayout::Systemd).expect("falls back");
        assert!(chosen.fallback_for.is_some());
        assert_eq!(chosen.policy.decide(0, 0).action, Action::Allow);
        let e = choose(&bad, &Fallback::Off, &pins, &r, CgroupLayout::Systemd)
            .err()
            .expect("no fallback asked for");
        assert!(e.to_string().contains("does not exist on this host"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cgroup_rule_on_a_host_without_a_cgroup_v2_layout_falls_back_and_says_why() {
        let dir = std::env::temp_dir().join(format!("imds-guard-flat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            "[allow]\nuids = [0]\n\n[deny]\ncgroups = [\"/x/*\"]\n",
        )
        .expect("write");
        let pins = Pins::new(dir.join("no-pins"));
        let r = FakeResolver::new(&[], &[]);
        let kept = choose(&policy, &Fallback::Off, &pins, &r, CgroupLayout::Systemd)
            .expect("valid where systemd's layout is");
        assert!(kept.fallback_for.is_none());
        let e = choose(&policy, &Fallback::Off, &pins, &r, CgroupLayout::Flat)
            .err()
            .expect("refused without it");
        assert!(e.to_string().contains("policy.toml:5:"), "{e}");
        assert!(e.to_string().contains("cgroup v1 only"), "{e}");
        let chosen =
            choose(&policy, &Fallback::Builtin, &pins, &r, CgroupLayout::Flat).expect("falls back");
        assert!(chosen.fallback_for.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
