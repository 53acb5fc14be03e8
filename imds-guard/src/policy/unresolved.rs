//! Names that do not resolve yet, as the agent treats them: a host boots
//! before cloud-init or a package creates the user a policy names, or
//! while SSSD is still starting. Stopping the agent then would leave the
//! host open after a reboot.
//!
//! An `[allow]` name that does not resolve is left out: what it would allow
//! stays denied (fail closed), the rest of the policy is in force, and the
//! agent retries. A `[deny]` name cannot be left out (that would fail open):
//! [`resolve`](super::resolve) refuses it, and the fail-closed fallback
//! applies.
//!
//! `validate` leaves out the `[allow]` units systemd does not know, as the
//! agent does, and says so in a note: a fleet's policy names units that
//! only some of its hosts have (`amazon-ssm-agent.service` and Ubuntu's
//! snap unit for the same agent). It keeps refusing unknown users and
//! groups, which are more often typos; `check` refuses every unknown name.

use super::{Action, Identity, Location, Policy, PolicyError, PolicySpec, Resolver};

/// An `[allow]` entry left out because its name did not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub identity: Identity,
    pub at: Location,
    /// "does not exist on this host", or why the lookup failed.
    pub why: String,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.identity,
            self.at.in_words(),
            self.why
        )
    }
}

impl PolicySpec {
    /// Resolves what can be resolved: `[allow]` names that do not resolve
    /// are left out and returned; everything else is as
    /// [`PolicySpec::resolve`]. The policy keeps the default it was written
    /// with: leaving out its last `[allow]` entry must not turn "only these
    /// may connect" into "everyone may".
    pub fn resolve_available(
        self,
        resolver: &dyn Resolver,
    ) -> Result<(Policy, Vec<Unresolved>), PolicyError> {
        self.resolve_leaving_out(resolver, |_| true)
    }

    /// As [`PolicySpec::resolve_available`] for `[allow]` units only: an
    /// `[allow]` unit systemd does not know (or that cannot be looked up)
    /// is left out and returned, as the agent leaves it out; every other
    /// name must resolve, as [`PolicySpec::resolve`] requires. For
    /// `validate`.
    pub fn resolve_known_units(
        self,
        resolver: &dyn Resolver,
    ) -> Result<(Policy, Vec<Unresolved>), PolicyError> {
        self.resolve_leaving_out(resolver, |identity| matches!(identity, Identity::Unit(_)))
    }

    /// Resolves, leaving out the `[allow]` entries that do not resolve and
    /// that `may_leave_out` accepts.
    fn resolve_leaving_out(
        mut self,
        resolver: &dyn Resolver,
        may_leave_out: fn(&Identity) -> bool,
    ) -> Result<(Policy, Vec<Unresolved>), PolicyError> {
        let default_action = self.default_action();
        let mut unresolved = Vec::new();
        self.entries.retain(|entry| {
            if entry.action != Action::Allow || !may_leave_out(&entry.identity) {
                return true;
            }
            let found = match &entry.identity {
                Identity::User(name) => resolver.user_id(name).map(|id| id.map(drop)),
                Identity::Group(name) => resolver.group_id(name).map(|id| id.map(drop)),
                Identity::Unit(name) => resolver.unit_cgroup(name).map(|path| path.map(drop)),
                Identity::Uid(_) | Identity::Gid(_) | Identity::Cgroup(_) | Identity::Pod(_) => {
                    return true;
                }
            };
            let why = match found {
                Ok(Some(_)) => return true,
                Ok(None) => "does not exist on this host (yet)".to_owned(),
                Err(cause) => format!("cannot be looked up: {cause}"),
            };
            unresolved.push(Unresolved {
                identity: entry.identity.clone(),
                at: entry.at,
                why,
            });
            false
        });
        let mut policy = self.resolve(resolver)?;
        policy.default_action = default_action;
        Ok((policy, unresolved))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::FakeResolver;

    fn spec(text: &str) -> PolicySpec {
        PolicySpec::parse(Path::new("p.toml"), text).expect("valid")
    }

    #[test]
    fn an_allow_name_that_does_not_resolve_is_left_out_and_denied() {
        let r = FakeResolver::new(&[("root", 0)], &[]);
        let (policy, left_out) = spec("[allow]\nusers = [\"root\", \"app\"]\n")
            .resolve_available(&r)
            .expect("resolves what it can");
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].identity, Identity::User("app".to_owned()));
        assert_eq!(
            left_out[0].to_string(),
            "user \"app\" at line 2, column 18: does not exist on this host (yet)"
        );
        assert_eq!(policy.decide(0, 0).action, Action::Allow);
        assert_eq!(policy.decide(1000, 1000).action, Action::Deny);
    }

    #[test]
    fn leaving_out_every_allow_entry_still_denies_everyone_else() {
        let r = FakeResolver::new(&[], &[]);
        let (policy, left_out) = spec("[allow]\nusers = [\"app\"]\ngroups = [\"imds\"]\n")
            .resolve_available(&r)
            .expect("resolves what it can");
        assert_eq!(left_out.len(), 2);
        assert_eq!(policy.default_action, Action::Deny);
        assert_eq!(policy.decide(1000, 1000).action, Action::Deny);
        assert_eq!(policy.decide(0, 0).action, Action::Deny);
    }

    #[test]
    fn a_deny_name_that_does_not_resolve_is_refused() {
        let r = FakeResolver::new(&[("root", 0)], &[]);
        let e = spec("[deny]\nusers = [\"contractor\"]\n")
            .resolve_available(&r)
            .expect_err("a deny cannot be left out");
        assert!(e.to_string().contains("does not exist on this host"), "{e}");
    }

    #[test]
    fn validate_leaves_out_unknown_allow_units_only() {
        let r = FakeResolver::new(&[("root", 0)], &[]).with_units(&[(
            "amazon-ssm-agent.service",
            "/system.slice/amazon-ssm-agent.service",
        )]);
        let fleet = "[allow]\nunits = [\"amazon-ssm-agent.service\", \
                     \"snap.amazon-ssm-agent.amazon-ssm-agent.service\"]\n";
        let (policy, left_out) = spec(fleet).resolve_known_units(&r).expect("valid here");
        assert_eq!(left_out.len(), 1, "{left_out:?}");
        assert_eq!(
            left_out[0].identity,
            Identity::Unit("snap.amazon-ssm-agent.amazon-ssm-agent.service".to_owned())
        );
        assert_eq!(policy.cgroups.fixed.len(), 1);
        // What the agent puts in force, so the digest validate prints is
        // the one status will show.
        let (agent, _) = spec(fleet).resolve_available(&r).expect("resolves");
        assert_eq!(policy.digest(), agent.digest());
        // An unknown user stays an error, and so does a [deny] unit.
        assert!(
            spec("[allow]\nusers = [\"app\"]\n")
                .resolve_known_units(&r)
                .is_err()
        );
        assert!(
            spec("[deny]\nunits = [\"gone.service\"]\n")
                .resolve_known_units(&r)
                .is_err()
        );
    }

    #[test]
    fn a_failing_lookup_leaves_the_name_out_too() {
        let mut r = FakeResolver::new(&[("root", 0)], &[]);
        r.failing.push("app".to_owned());
        let (_, left_out) = spec("[allow]\nusers = [\"root\", \"app\"]\n")
            .resolve_available(&r)
            .expect("resolves what it can");
        assert!(
            left_out[0].why.starts_with("cannot be looked up"),
            "{left_out:?}"
        );
    }
}
