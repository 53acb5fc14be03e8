//! What `validate` warns of in a policy (`policy/warnings.rs`), said by the
//! agent when it loads one, at start and at each reload: at warning
//! level, as `FILE:LINE:COL: ...`, with the line and column as fields. The
//! policy is put in force all the same: a policy that validated before
//! must not put a host on the fallback after an upgrade.

use crate::policy::{Policy, Resolver};

/// Logs the warnings `policy` gives, with `resolver` for the members of
/// its groups.
pub(super) fn say(policy: &Policy, resolver: &dyn Resolver) {
    let path = policy.spec.path.display();
    for w in policy.warnings(resolver) {
        tracing::warn!(
            event = "policy_warning",
            config = %path,
            line = w.at.line,
            col = w.at.col,
            "{path}:{}: {}",
            w.at,
            w.message
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        daemon::logging::captured::Buffer,
        policy::{FakeResolver, PolicySpec},
    };

    #[test]
    fn each_warning_is_a_warning_record_with_its_position() {
        let text = "[allow]\nuids = [0]\n[deny]\ncgroups = [\"/user.slice/user-1000.slice\"]\n";
        let resolver = FakeResolver::new(&[], &[]);
        let policy = PolicySpec::parse(Path::new("/etc/imds-guard/policy.toml"), text)
            .and_then(|s| s.resolve(&resolver))
            .unwrap_or_else(|e| panic!("{e}"));
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || say(&policy, &resolver));
        let out = buffer.text();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains(
                " WARN /etc/imds-guard/policy.toml:4:12: [deny] cgroups \
                 \"/user.slice/user-1000.slice\" names that one cgroup"
            ),
            "{out}"
        );
        assert!(out.contains("line=4 col=12"), "{out}");
    }
}
