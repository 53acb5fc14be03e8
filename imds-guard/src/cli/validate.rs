//! `imds-guard validate`: a policy checked without touching the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use super::{CliError, Outcome, ValidateArgs, out::outln};
use crate::{
    kernel::features::Build,
    policy::{
        Action, DEFAULT_ADDRESSES, Diagnostic, Policy, PolicyError, PolicySpec, Resolver,
        SystemResolver, Unresolved, hex,
    },
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
    // What presets expand to: a laptop shows what a preset protects.
    if !spec.presets.is_empty() {
        outln!(
            "{}: presets {} protect {}",
            config.display(),
            spec.presets.join(", "),
            spec.addresses().join(", ")
        )?;
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
    let (policy, left_out, warnings) = resolved(spec, &SystemResolver)?;
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
    warn(&config, &warnings, args.strict)?;
    // Which build the kernel takes is read from its BTF (a parse of
    // megabytes): only a policy with group rules needs it.
    if policy.scans_groups() {
        if let Some(note) = group_bound_note(&policy, Build::running(), &over_group_bound_here) {
            outln!("{}: note: {note}", config.display())?;
        }
    }
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

/// `spec` resolved through `resolver` as the agent would put it in force
/// (an `[allow]` unit systemd does not know here is left out, and retried
/// until it exists), what was left out, and its warnings.
fn resolved(
    spec: PolicySpec,
    resolver: &dyn Resolver,
) -> Result<(Policy, Vec<Unresolved>, Vec<Diagnostic>), PolicyError> {
    let (policy, left_out) = spec.resolve_known_units(resolver)?;
    let warnings = policy.warnings(resolver);
    Ok((policy, left_out, warnings))
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
         default lets through; an [allow] list has no such gap (docs/threat-model.md: Prefer \
         allow lists)"
            .to_owned()
    })
}

/// The users of this host's account files whose login holds more than
/// `bound` groups ([`over_group_bound`] of `/etc/passwd` and
/// `/etc/group`); none when either cannot be read.
fn over_group_bound_here(bound: u32) -> Vec<(String, usize)> {
    match (
        std::fs::read_to_string("/etc/passwd"),
        std::fs::read_to_string("/etc/group"),
    ) {
        (Ok(passwd), Ok(group)) => over_group_bound(&passwd, &group, bound),
        _ => Vec::new(),
    }
}

/// The users of `passwd` whose login session holds more than `bound`
/// groups (`initgroups`: the primary gid and every group of `group` that
/// lists the user), each with how many, most first. Only what the files
/// say: users and memberships from a directory (LDAP, sssd) are not
/// listed here.
fn over_group_bound(passwd: &str, group: &str, bound: u32) -> Vec<(String, usize)> {
    let fields = |line: &str| -> Vec<String> { line.split(':').map(str::to_owned).collect() };
    let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for g in group.lines().map(fields).filter(|g| g.len() >= 4) {
        for user in g[3].split(',').filter(|u| !u.is_empty()) {
            member_of
                .entry(user.to_owned())
                .or_default()
                .insert(g[2].clone());
        }
    }
    let mut over: Vec<(String, usize)> = passwd
        .lines()
        .map(fields)
        .filter(|u| u.len() >= 4 && !u[0].starts_with('#'))
        .filter_map(|u| {
            let mut groups = member_of.get(&u[0]).cloned().unwrap_or_default();
            groups.insert(u[3].clone());
            (groups.len() > bound as usize).then(|| (u[0].clone(), groups.len()))
        })
        .collect();
    over.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    over
}

/// Who the guard on this kernel refuses for holding more groups than its
/// programs read, under a policy with group rules: the users `over`
/// finds past the bound of `build`.
fn group_bound_note(
    policy: &Policy,
    build: Build,
    over: &dyn Fn(u32) -> Vec<(String, usize)>,
) -> Option<String> {
    if !policy.scans_groups() {
        return None;
    }
    let bound = build.bounds().groups;
    let users = over(bound);
    if users.is_empty() {
        return None;
    }
    let named: Vec<String> = users
        .iter()
        .take(10)
        .map(|(name, n)| format!("{name} ({n})"))
        .collect();
    let more = users.len().saturating_sub(named.len());
    Some(format!(
        "this policy has group rules, and the guard on this kernel (the {} build of its \
         programs) reads at most {bound} supplementary groups, refusing a process that holds \
         more; these users hold more at login (/etc/passwd, /etc/group): {}{}",
        build.name(),
        named.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FakeResolver;

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
    fn users_past_the_group_bound_are_named_under_group_rules() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                      alice:x:1000:1000::/home/alice:/bin/sh\n\
                      bob:x:1001:1001::/home/bob:/bin/sh\n";
        // alice: her own group and three more; bob: his own and one, and
        // a group listing him twice counts once.
        let group = "alice:x:1000:\nbob:x:1001:\nadm:x:4:alice,bob,bob\n\
                     docker:x:999:alice\nvideo:x:44:alice\n";
        assert_eq!(
            over_group_bound(passwd, group, 2),
            [("alice".to_owned(), 4)]
        );
        assert_eq!(
            over_group_bound(passwd, group, 1),
            [("alice".to_owned(), 4), ("bob".to_owned(), 2)]
        );
        assert!(over_group_bound(passwd, group, 4).is_empty());

        let resolver = FakeResolver::default();
        let with_groups = spec("[allow]\ngids = [44]\n")
            .resolve(&resolver)
            .expect("resolves");
        let some = |_| vec![("alice".to_owned(), 17)];
        let note = group_bound_note(&with_groups, Build::Unrolled, &some).expect("named");
        assert!(
            note.contains(
                "the unrolled build of its programs) reads at most 16 supplementary \
                           groups"
            ) && note.ends_with(
                "these users hold more at login (/etc/passwd, /etc/group): \
                                   alice (17)"
            ),
            "{note}"
        );
        // The bound asked for is the build's.
        let asked = std::cell::Cell::new(0);
        let record = |bound| {
            asked.set(bound);
            Vec::new()
        };
        assert_eq!(group_bound_note(&with_groups, Build::Loop, &record), None);
        assert_eq!(asked.get(), imds_guard_common::MAX_GROUPS);
        // No group rule: the groups are never read, nobody is refused.
        let uids_only = spec("[allow]\nuids = [0]\n")
            .resolve(&resolver)
            .expect("resolves");
        assert_eq!(group_bound_note(&uids_only, Build::Unrolled, &some), None);
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

    /// The policies the documents hand an operator: the shipped default,
    /// the README's quick start and its recipes, each also in audit mode
    /// (the README says any of them may start so). `(where, text)`.
    fn documented_policies() -> Vec<(String, String)> {
        const README: &str = include_str!("../../../README.md");
        const SHIPPED: &str = include_str!("../../../config/imds-guard.toml");
        let mut found = vec![("config/imds-guard.toml".to_owned(), SHIPPED.to_owned())];
        // The quick start writes its policy with a here-document.
        let mut lines = README.lines();
        while let Some(line) = lines.next() {
            if line.trim_end().ends_with("<<'TOML'") {
                let text: Vec<&str> = lines
                    .by_ref()
                    .take_while(|l| l.trim() != "TOML")
                    .map(str::trim)
                    .collect();
                found.push(("the quick start".to_owned(), text.join("\n") + "\n"));
            }
        }
        // The recipes: the indented blocks of their section that hold a
        // table.
        let recipes = README
            .split_once("\n### Recipes\n")
            .and_then(|(_, rest)| rest.split("\n## ").next())
            .unwrap_or_default();
        let mut block = String::new();
        for line in recipes.lines().chain([""]) {
            match line.strip_prefix("    ") {
                Some(toml) => block.push_str(&format!("{toml}\n")),
                None if block.contains('[') => {
                    found.push((format!("the recipe {block:?}"), std::mem::take(&mut block)));
                }
                None => block.clear(),
            }
        }
        let audited: Vec<_> = found
            .iter()
            .filter(|(_, text)| !text.contains("mode ="))
            .map(|(name, text)| {
                (
                    format!("{name} in audit mode"),
                    format!("mode = \"audit\"\n{text}"),
                )
            })
            .collect();
        found.extend(audited);
        found
    }

    #[test]
    fn the_shipped_policy_and_every_readme_recipe_pass_strict() {
        // A host with what the recipes name: root, an application's user,
        // the web server's, a group of users with a member, the units.
        let host = FakeResolver::new(
            &[
                ("root", 0),
                ("app", 1000),
                ("alice", 1001),
                ("www-data", 33),
            ],
            &[("imds", 1500)],
        )
        .with_members(&[(1001, 1500)])
        .with_units(&[
            (
                "amazon-ssm-agent.service",
                "/system.slice/amazon-ssm-agent.service",
            ),
            ("app.service", "/system.slice/app.service"),
        ]);
        let documented = documented_policies();
        assert!(
            documented.len() >= 12,
            "the README's recipes moved: {documented:?}"
        );
        let path = Path::new("/etc/imds-guard/policy.toml");
        for (name, text) in documented {
            let spec = PolicySpec::parse(path, &text)
                .unwrap_or_else(|e| panic!("{name} does not validate: {e}"));
            let (_, left_out, warnings) =
                resolved(spec, &host).unwrap_or_else(|e| panic!("{name} does not resolve: {e}"));
            assert!(left_out.is_empty(), "{name}: {left_out:?}");
            let refused = warn(path, &warnings, true).err().map(|e| e.to_string());
            assert_eq!(refused, None, "validate --strict refuses {name}");
        }
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
