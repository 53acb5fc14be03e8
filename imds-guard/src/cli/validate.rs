//! `imds-guard validate`: a policy checked without touching the kernel.

use std::{net::IpAddr, path::Path};

use super::{CliError, Outcome, ValidateArgs, out::outln};
use crate::policy::{
    Action, DEFAULT_ADDRESSES, Diagnostic, PolicyError, PolicySpec, SystemResolver, hex,
};

pub fn execute(args: &ValidateArgs) -> Result<Outcome, CliError> {
    let config = super::policy_file(args.config.as_deref());
    let spec = PolicySpec::load(&config)?;
    let (entries, endpoints) = (spec.entries.len(), spec.endpoints.len());
    let mut all = notes(&spec);
    all.extend(deny_only_note(&spec, subordinate_ids()));
    for note in all {
        outln!("{}: note: {note}", config.display())?;
    }
    if args.offline {
        warn(&config, &spec.warnings(), args.strict)?;
        // Without the names' ids there is no digest: it covers the ids.
        outln!(
            "{}: valid ({entries} {}, {endpoints} {}, names not resolved)",
            config.display(),
            plural(entries, "entry", "entries"),
            plural(endpoints, "endpoint", "endpoints"),
        )?;
        return Ok(Outcome::Success);
    }
    // As the agent does: an [allow] unit systemd does not know here is
    // left out, and retried until it exists.
    let (policy, left_out) = spec.resolve_known_units(&SystemResolver)?;
    for unit in &left_out {
        outln!(
            "{}:{}: note: {} {}: the agent leaves it out (what it would allow stays denied) and \
             tries it again until it resolves",
            config.display(),
            unit.at,
            unit.identity,
            unit.why
        )?;
    }
    warn(&config, &policy.warnings(&SystemResolver), args.strict)?;
    outln!(
        "{}: valid ({entries} {}, {endpoints} {}); sha256 {} (what `imds-guard status` shows \
         once it is in force)",
        config.display(),
        plural(entries, "entry", "entries"),
        plural(endpoints, "endpoint", "endpoints"),
        hex(&policy.digest()),
    )?;
    Ok(Outcome::Success)
}

/// Prints `warnings` as `FILE:LINE:COL: warning: ...` on stderr, or with
/// `strict` refuses the policy for them (exit 1, as an invalid one).
fn warn(config: &Path, warnings: &[Diagnostic], strict: bool) -> Result<(), CliError> {
    if strict && !warnings.is_empty() {
        return Err(PolicyError::strict(config, warnings).into());
    }
    for w in warnings {
        eprintln!("{}:{}: warning: {}", config.display(), w.at, w.message);
    }
    Ok(())
}

/// What is valid but likely not meant: a default endpoint of one family
/// listed without the other's (the IPv6 endpoint serves the same
/// credentials on Nitro instances with IPv6 IMDS enabled).
fn notes(spec: &PolicySpec) -> Vec<String> {
    let listed = |a: &str| {
        a.parse::<IpAddr>()
            .is_ok_and(|a| spec.endpoints.iter().any(|e| e.addr == a))
    };
    let [v4, v6] = DEFAULT_ADDRESSES;
    let mut notes = Vec::new();
    if listed(v4) && !listed(v6) {
        notes.push(format!(
            "{v6} is not protected: it serves the same credentials as {v4} on instances with \
             IPv6 IMDS enabled (Nitro); add it to endpoints unless no instance has it"
        ));
    }
    if listed(v6) && !listed(v4) {
        notes.push(format!(
            "{v4} is not protected: every EC2 instance serves the credentials there"
        ));
    }
    notes
}

/// Whether this host gives users subordinate ids (`/etc/subuid` or
/// `/etc/subgid` with an entry), which a deny rule cannot follow.
fn subordinate_ids() -> bool {
    ["/etc/subuid", "/etc/subgid"].iter().any(|p| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
    })
}

/// The caveat of a policy that only denies, on a host with subordinate
/// ids: a user with a range can run as ids no rule names.
fn deny_only_note(spec: &PolicySpec, subordinate_ids: bool) -> Option<String> {
    let denies = spec.entries.iter().any(|e| e.action == Action::Deny);
    let allows = spec.entries.iter().any(|e| e.action == Action::Allow);
    (denies && !allows && subordinate_ids).then(|| {
        "this policy only denies, and this host gives users subordinate ids (/etc/subuid, \
         /etc/subgid): a user with a range can run as ids no [deny] rule names, which the \
         default lets through; an [allow] list has no such gap (README: Prefer allow lists)"
            .to_owned()
    })
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> PolicySpec {
        PolicySpec::parse(Path::new("p.toml"), toml).expect("valid")
    }

    #[test]
    fn one_family_of_the_default_endpoints_is_noted() {
        let v4 = spec("[endpoints]\naddresses = [\"169.254.169.254\"]\n[allow]\nuids = [0]\n");
        let n = notes(&v4);
        assert_eq!(n.len(), 1, "{n:?}");
        assert!(n[0].starts_with("fd00:ec2::254 is not protected"), "{n:?}");
        assert!(notes(&spec("[allow]\nuids = [0]\n")).is_empty());
    }

    #[test]
    fn strict_refuses_a_policy_for_its_warnings_and_says_which() {
        let text = "[allow]\nuids = [0]\n[deny]\ncgroups = [\"/user.slice\"]\n";
        let warnings = spec(text).warnings();
        assert_eq!(warnings.len(), 1);
        let path = Path::new("/etc/imds-guard/policy.toml");
        assert!(
            warn(path, &warnings, false).is_ok(),
            "a warning alone refuses nothing"
        );
        assert!(warn(path, &[], true).is_ok(), "nothing to refuse");
        let Err(CliError::Policy(e)) = warn(path, &warnings, true) else {
            panic!("--strict let a warning through");
        };
        let message = e.to_string();
        assert!(
            message.starts_with(
                "/etc/imds-guard/policy.toml:4:12: refused by --strict: [deny] cgroups \
                 \"/user.slice\" names that one cgroup"
            ),
            "{message}"
        );
        assert_eq!(e.diagnostics().len(), 1);
    }

    #[test]
    fn a_deny_only_policy_is_noted_where_users_have_subordinate_ids() {
        let deny_only = spec("[deny]\nuids = [33]\n");
        assert!(deny_only_note(&deny_only, true).is_some());
        assert!(deny_only_note(&deny_only, false).is_none());
        let mixed = spec("[allow]\nuids = [0]\n[deny]\nuids = [33]\n");
        assert!(deny_only_note(&mixed, true).is_none());
    }
}
