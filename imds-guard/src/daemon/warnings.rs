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
    use std::{
        io,
        path::Path,
        sync::{Arc, Mutex, PoisonError},
    };

    use super::*;
    use crate::policy::{FakeResolver, PolicySpec};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_warning_is_a_warning_record_with_its_position() {
        let text = "[allow]\nuids = [0]\n[deny]\ncgroups = [\"/user.slice/user-1000.slice\"]\n";
        let resolver = FakeResolver::new(&[], &[]);
        let policy = PolicySpec::parse(Path::new("/etc/imds-guard/policy.toml"), text)
            .and_then(|s| s.resolve(&resolver))
            .unwrap_or_else(|e| panic!("{e}"));
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || say(&policy, &resolver));
        let bytes = buffer
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let out = String::from_utf8_lossy(&bytes);
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
