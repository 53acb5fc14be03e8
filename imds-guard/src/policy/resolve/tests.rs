//! Resolution against a fake user database (and, once, the host's), with
//! the checks that only ids make possible.

use std::{collections::BTreeMap, path::Path};

use imds_guard_common::MAX_ID_RULES;

use super::{Resolver, SystemResolver, fake::FakeResolver};
use crate::policy::{Action, Entry, IdRule, Identity, Location, Mode, Policy, PolicySpec, Scope};

fn hosts_db() -> FakeResolver {
    FakeResolver::new(
        &[("root", 0), ("toor", 0), ("apache", 48), ("alice", 1001)],
        &[("root", 0), ("wheel", 10), ("imds", 1500)],
    )
}

fn spec(text: &str) -> PolicySpec {
    PolicySpec::parse(Path::new("p.toml"), text)
        .unwrap_or_else(|e| panic!("the policy was refused before resolution:\n{e}"))
}

fn resolved(text: &str, resolver: &dyn Resolver) -> Policy {
    spec(text)
        .resolve(resolver)
        .unwrap_or_else(|e| panic!("resolution failed:\n{e}\n--- policy:\n{text}"))
}

fn errors(text: &str, resolver: &dyn Resolver) -> String {
    match spec(text).resolve(resolver) {
        Ok(policy) => panic!("resolution succeeded: {policy:#?}\n--- policy:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn rule(action: Action, index: usize) -> IdRule {
    IdRule::new(action, index)
}

#[test]
fn names_become_ids_and_rules_point_at_their_entries() {
    let text = "\
mode = \"audit\"
[allow]
users = [\"root\"]
uids = [1001]
groups = [\"imds\"]
[deny]
users = [\"apache\"]
gids = [666]
";
    let policy = resolved(text, &hosts_db());
    assert_eq!(policy.spec, spec(text));
    assert_eq!(policy.spec.mode, Mode::Audit);
    assert_eq!(policy.default_action, Action::Deny);
    // Entries: 0 root, 1 uid 1001, 2 imds, 3 apache, 4 gid 666.
    assert_eq!(
        policy.uids,
        BTreeMap::from([
            (0, rule(Action::Allow, 0)),
            (48, rule(Action::Deny, 3)),
            (1001, rule(Action::Allow, 1)),
        ])
    );
    assert_eq!(
        policy.gids,
        BTreeMap::from([(666, rule(Action::Deny, 4)), (1500, rule(Action::Allow, 2)),])
    );
    assert_eq!(
        policy.spec.entries[3].identity,
        Identity::User("apache".into())
    );
}

#[test]
fn a_deny_only_policy_resolves_to_default_allow() {
    let policy = resolved("[deny]\nusers = [\"apache\"]\n", &hosts_db());
    assert_eq!(policy.default_action, Action::Allow);
    assert_eq!(policy.uids, BTreeMap::from([(48, rule(Action::Deny, 0))]));
    assert!(policy.gids.is_empty(), "{:?}", policy.gids);
}

#[test]
fn a_missing_name_is_reported_where_it_is_written() {
    assert_eq!(
        errors(
            "[allow]\nusers = [\"root\", \"nginx\"]\n[deny]\ngroups = [\"docker\"]\n",
            &hosts_db()
        ),
        "p.toml:2:18: user \"nginx\" does not exist on this host\n\
         p.toml:4:11: group \"docker\" does not exist on this host"
    );
}

#[test]
fn a_failed_lookup_is_reported_with_its_cause() {
    let mut db = hosts_db();
    db.failing.push("ldapuser".to_owned());
    assert_eq!(
        errors("[allow]\nusers = [\"ldapuser\"]\n", &db),
        "p.toml:2:10: cannot look up user \"ldapuser\": connection to the directory server \
         timed out"
    );
}

#[test]
fn a_name_and_a_number_for_one_id_are_a_duplicate() {
    assert_eq!(
        errors("[allow]\nusers = [\"root\"]\nuids = [0]\n", &hosts_db()),
        "p.toml:3:9: duplicate rule: uid 0 is already allowed by user \"root\" (uid 0) at \
         line 2, column 10"
    );
    // The number written first: the name is the duplicate, though it comes
    // first among the entries.
    assert_eq!(
        errors("[deny]\ngids = [10]\ngroups = [\"wheel\"]\n", &hosts_db()),
        "p.toml:3:11: duplicate rule: group \"wheel\" (gid 10) is already denied by gid 10 at \
         line 2, column 9"
    );
    // Two names of one uid.
    assert_eq!(
        errors("[allow]\nusers = [\"root\", \"toor\"]\n", &hosts_db()),
        "p.toml:2:18: duplicate rule: user \"toor\" (uid 0) is already allowed by user \"root\" \
         (uid 0) at line 2, column 10"
    );
}

#[test]
fn an_id_both_allowed_and_denied_is_contradictory_at_the_deny_entry() {
    assert_eq!(
        errors(
            "[deny]\ngids = [10]\n[allow]\ngroups = [\"wheel\"]\n",
            &hosts_db()
        ),
        "p.toml:2:9: contradictory rules: gid 10 is denied here and allowed by group \"wheel\" \
         (gid 10) at line 4, column 11"
    );
    assert_eq!(
        errors(
            "[allow]\nuids = [48]\n[deny]\nusers = [\"apache\"]\n",
            &hosts_db()
        ),
        "p.toml:4:10: contradictory rules: user \"apache\" (uid 48) is denied here and allowed \
         by uid 48 at line 2, column 9"
    );
}

#[test]
fn a_uid_and_a_gid_of_one_number_do_not_meet() {
    // uid 0 and gid 0 live in different maps.
    let policy = resolved(
        "[allow]\nusers = [\"root\"]\n[deny]\ngroups = [\"root\"]\n",
        &hosts_db(),
    );
    assert_eq!(policy.uids, BTreeMap::from([(0, rule(Action::Allow, 0))]));
    assert_eq!(policy.gids, BTreeMap::from([(0, rule(Action::Deny, 1))]));
}

#[test]
fn every_resolution_problem_is_reported_in_file_order() {
    let text = "\
[deny]
users = [\"ghost\"]
uids = [1001]
[allow]
users = [\"alice\", \"nobody2\"]
";
    assert_eq!(
        errors(text, &hosts_db()),
        "p.toml:2:10: user \"ghost\" does not exist on this host\n\
         p.toml:3:9: contradictory rules: uid 1001 is denied here and allowed by user \"alice\" \
         (uid 1001) at line 5, column 10\n\
         p.toml:5:19: user \"nobody2\" does not exist on this host"
    );
}

/// A spec with `n` uid entries, one per line, and one gid entry.
fn many_uids(n: u32) -> PolicySpec {
    let entry = |identity, line| Entry {
        action: Action::Allow,
        identity,
        at: Location { line, col: 9 },
        scope: Scope::Anywhere,
    };
    let mut entries: Vec<Entry> = (0..n).map(|i| entry(Identity::Uid(i), i + 1)).collect();
    entries.push(entry(Identity::Gid(7), n + 1));
    PolicySpec {
        path: "big.toml".into(),
        mode: Mode::Enforce,
        endpoints: Vec::new(),
        entries,
        forward: Default::default(),
        presets: Vec::new(),
        workload: Vec::new(),
        requests: Default::default(),
    }
}

#[test]
fn the_rules_must_fit_the_kernel_maps() {
    let full = many_uids(MAX_ID_RULES);
    let policy = full
        .resolve(&hosts_db())
        .unwrap_or_else(|e| panic!("a full uid map was refused: {e}"));
    assert_eq!(policy.uids.len(), MAX_ID_RULES as usize);
    assert_eq!(policy.gids.len(), 1);

    let over = many_uids(MAX_ID_RULES + 1);
    let message = match over.resolve(&hosts_db()) {
        Ok(_) => panic!("{} uid rules were accepted", MAX_ID_RULES + 1),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        message,
        format!(
            "big.toml:{}:9: too many uid rules: the kernel map holds at most {MAX_ID_RULES}",
            MAX_ID_RULES + 1
        )
    );
}

#[test]
fn ids_out_of_order_meet_at_one_rule_as_in_order() {
    // A name after the numbers, for an id among them: the numbers
    // increase, the claims do not, and the clash is found.
    let spec = PolicySpec::parse(
        Path::new("p.toml"),
        "[allow]\nuids = [0, 1001, 1002]\n[deny]\nusers = [\"alice\"]\n",
    )
    .expect("validates");
    let message = match spec.resolve(&hosts_db()) {
        Ok(_) => panic!("uid 1001 both allowed and denied was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("p.toml:4:10: contradictory rules: user \"alice\" (uid 1001) is denied"),
        "{message}"
    );
}

#[test]
fn the_system_resolver_reads_the_host_database() {
    let system = SystemResolver;
    assert_eq!(system.user_id("root"), Ok(Some(0)));
    assert_eq!(system.user_name(0).as_deref(), Some("root"));
    let missing = "imds-guard-test-no-such-name";
    assert_eq!(system.user_id(missing), Ok(None));
    assert_eq!(system.group_id(missing), Ok(None));
    // The spec rejects such names, but the resolver must not be the one
    // to trip on them.
    assert_eq!(system.user_id("nul\0name"), Ok(None));
}

#[test]
fn the_fake_resolver_answers_like_the_real_one() {
    let db = hosts_db();
    assert_eq!(db.user_id("apache"), Ok(Some(48)));
    assert_eq!(db.group_id("imds"), Ok(Some(1500)));
    assert_eq!(db.user_id("nobody2"), Ok(None));
    assert_eq!(db.user_name(48).as_deref(), Some("apache"));
}

#[test]
fn the_members_of_denied_groups_are_read_at_load_each_with_its_lowest_denied_group() {
    // alice (1001) is a member of wheel (10) and of gid 666, apache (48)
    // of imds (1500, allowed), root of root.
    let db = hosts_db().with_members(&[(1001, 10), (1001, 666), (48, 1500), (0, 0)]);
    let text = "[allow]\nusers = [\"alice\"]\ngroups = [\"imds\"]\n[deny]\ngids = [666, 10]\n";
    let policy = resolved(text, &db);
    assert_eq!(
        policy.members,
        BTreeMap::from([(1001, 10)]),
        "members of allowed or unnamed groups are no one's concern"
    );
    // No group denied: nothing is looked up, nobody is a member.
    let allow_only = resolved("[allow]\ngroups = [\"imds\"]\n", &db);
    assert!(allow_only.members.is_empty());
}

#[test]
fn members_that_cannot_be_read_refuse_the_policy_at_the_first_denied_group() {
    let mut db = hosts_db();
    db.failing.push("members".to_owned());
    let message = errors(
        "[allow]\nuids = [1001]\n[deny]\nuids = [48]\ngids = [666]\n",
        &db,
    );
    assert_eq!(
        message,
        "p.toml:5:9: cannot read the members of the denied groups, which a deny covers in the \
         user namespaces they create: connection to the directory server timed out"
    );
    // Without a group deny, the lookup is not made: nothing fails.
    resolved("[allow]\nuids = [1001]\n[deny]\nuids = [48]\n", &db);
}
