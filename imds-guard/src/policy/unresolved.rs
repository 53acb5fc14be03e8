//! Names that do not resolve yet, as the agent treats them: a host boots
//! before cloud-init or a package creates the user a policy names, or
//! while SSSD is still starting. Stopping the agent then would leave the
//! host open after a reboot.
//!
//! An `[allow]` name that does not resolve is left out: what it would allow
//! stays denied (fail closed), the rest of the policy is in force, and the
//! agent retries. A `[deny]` name cannot be left out (that would fail open):
//! [`resolve`](super::resolve) refuses it, and the fail-closed fallback
//! applies. `validate` and `check` keep refusing every unknown name.

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
        mut self,
        resolver: &dyn Resolver,
    ) -> Result<(Policy, Vec<Unresolved>), PolicyError> {
        let default_action = self.default_action();
        let mut unresolved = Vec::new();
        self.entries.retain(|entry| {
            if entry.action != Action::Allow {
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
