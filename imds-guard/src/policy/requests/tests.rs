//! Request-level tables: what validates and what does not (the full text
//! a user sees), what they compile to for the kernel's maps, and the
//! userspace twin of the kernel's judgement.

use std::path::Path;

use imds_guard_common::{ENTRY_ANY, EntryFlags, EntryKey, entry_flags, req_method, req_reason};

use super::*;
use crate::policy::{Action, FakeResolver, Identity, Policy, PolicySpec, Process};

fn spec(text: &str) -> PolicySpec {
    PolicySpec::parse(Path::new("p.toml"), text)
        .unwrap_or_else(|e| panic!("the policy was refused:\n{e}\n--- policy:\n{text}"))
}

fn errors(text: &str) -> String {
    match PolicySpec::parse(Path::new("p.toml"), text) {
        Ok(spec) => panic!("the policy was accepted as {spec:#?}\n--- policy:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn resolved(text: &str) -> Policy {
    spec(text)
        .resolve(&FakeResolver::new(
            &[("root", 0), ("cw", 900), ("legacy", 901)],
            &[("adm", 4)],
        ))
        .expect("resolves")
}

const MONITORING: &str = r#"[allow]
users = ["root"]

[requests.monitoring]
users = ["cw"]
uids = [902]
rules = [
  "GET /latest/meta-data/placement/",
  "GET /latest/meta-data/instance-id",
  "GET /latest/meta-data/",
  "PUT /latest/api/token",
]

[requests.legacy]
users = ["legacy"]
imdsv2 = "optional"
rules = ["GET /latest/meta-data/placement/region"]

[imdsv2]
required = true
exempt = { users = ["root"] }

[attribution]
whole_service = true
"#;

#[test]
fn request_tables_are_read_in_file_order_after_allow() {
    let s = spec(MONITORING);
    let ids: Vec<&Identity> = s.entries.iter().map(|e| &e.identity).collect();
    assert_eq!(
        ids,
        [
            &Identity::User("root".into()),
            &Identity::User("cw".into()),
            &Identity::Uid(902),
            &Identity::User("legacy".into()),
        ]
    );
    assert!(s.entries.iter().all(|e| e.action == Action::Allow));
    let r = &s.requests;
    assert_eq!(r.sets.len(), 2);
    assert_eq!(r.sets[0].name, "monitoring");
    assert_eq!(r.sets[0].rules.len(), 4);
    assert_eq!(
        r.sets[0].rules[0].text(),
        "GET /latest/meta-data/placement/"
    );
    assert_eq!(r.sets[0].rules[0].at, Location { line: 8, col: 3 });
    assert_eq!(r.sets[1].rules[0].number, 5);
    assert_eq!(r.sets[1].imdsv2, Some(false));
    assert_eq!(r.members.get(&1), Some(&0));
    assert_eq!(r.members.get(&2), Some(&0));
    assert_eq!(r.members.get(&3), Some(&1));
    assert_eq!(r.members.get(&0), None);
    assert!(r.imdsv2.required);
    assert_eq!(r.imdsv2.exempt.iter().copied().collect::<Vec<_>>(), [0]);
    assert!(r.whole_service);
    // The `requests` of the first header.
    assert_eq!(r.at, Some(Location { line: 4, col: 2 }));
}

#[test]
fn a_policy_without_request_tables_has_none() {
    let s = spec("[allow]\nusers = [\"root\"]\n");
    assert!(s.requests.is_empty());
    assert_eq!(s.requests, Requests::default());
    // Nothing judged, nothing compiled.
    assert_eq!(s.requests.compile(&s, 0), Compiled::default());
}

#[test]
fn scope_and_flags_of_each_entry() {
    let s = spec(MONITORING);
    let r = &s.requests;
    // root: [allow], exempt from IMDSv2, recorded.
    assert_eq!(
        r.scope(Some(0)),
        RequestScope {
            set: None,
            v2_required: false,
            attribute: true
        }
    );
    // cw: the monitoring set, IMDSv2 (required = true).
    assert_eq!(
        r.scope(Some(1)),
        RequestScope {
            set: Some(0),
            v2_required: true,
            attribute: false
        }
    );
    // legacy: its set says optional, above [imdsv2] required.
    assert!(!r.scope(Some(3)).v2_required);
    // The default (no entry): required, recorded.
    assert_eq!(
        r.scope(None).flags(),
        EntryFlags {
            ruleset: 0,
            flags: entry_flags::V2_REQUIRED | entry_flags::ATTRIBUTE,
            _pad: 0
        }
    );
}

#[test]
fn compiles_rules_and_entry_flags_for_a_generation() {
    let s = spec(MONITORING);
    let c = s.requests.compile(&s, 1);
    assert_eq!(c.rules.len(), 5);
    let first = &c.rules[0];
    assert_eq!(first.value.rule, 1);
    assert_eq!(first.key.generation, 1);
    assert_eq!(first.key.ruleset, [0, 1]);
    assert_eq!(first.key.method, req_method::GET);
    let subtree = "/latest/meta-data/placement/";
    assert_eq!(&first.key.path[..subtree.len()], subtree.as_bytes());
    assert_eq!(first.prefix_len, (4 + subtree.len() as u32) * 8);
    let exact = &c.rules[1];
    let id = "/latest/meta-data/instance-id";
    assert_eq!(exact.prefix_len, (4 + id.len() as u32 + 1) * 8);
    assert_eq!(exact.key.path[id.len()], 0);
    assert_eq!(c.rules[4].key.ruleset, [0, 2]);
    let row = |entry| EntryKey {
        generation: 1,
        entry,
    };
    let flags = |ruleset, flags| EntryFlags {
        ruleset,
        flags,
        _pad: 0,
    };
    assert_eq!(
        c.flags,
        [
            (
                row(ENTRY_ANY),
                flags(0, entry_flags::V2_REQUIRED | entry_flags::ATTRIBUTE)
            ),
            // root (entry 1): exempt, recorded.
            (row(1), flags(0, entry_flags::ATTRIBUTE)),
            (
                row(2),
                flags(1, entry_flags::JUDGE | entry_flags::V2_REQUIRED)
            ),
            (
                row(3),
                flags(1, entry_flags::JUDGE | entry_flags::V2_REQUIRED)
            ),
            (row(4), flags(2, entry_flags::JUDGE)),
        ]
    );
}

#[test]
fn entries_with_the_default_flags_have_no_row() {
    let s = spec(
        "[allow]\nuids = [0, 1]\n[requests.r]\nuids = [5]\nrules = [\"GET /latest/meta-data/\"]\n\
         [deny]\nuids = [7]\n",
    );
    let c = s.requests.compile(&s, 0);
    // No default flags, so no ENTRY_ANY row; uids 0 and 1 have the
    // whole service (no row); the deny has none.
    assert_eq!(
        c.flags,
        [(
            EntryKey {
                generation: 0,
                entry: 3
            },
            EntryFlags {
                ruleset: 1,
                flags: entry_flags::JUDGE,
                _pad: 0
            }
        )]
    );
}

#[test]
fn non_canonical_rules_are_refused_where_they_are_written() {
    let text = r#"[requests.r]
uids = [5]
rules = [
  "GET /latest/meta-data/%69am/",
  "GET /latest//meta-data/",
  "get /latest/meta-data/",
  "GET /latest/meta-data/iam/../x",
  "POST /latest/api/token",
  "GET latest/meta-data",
  "GET /latest/meta-data/ ",
  "GET",
  "GET /latest/meta-data/?x",
  "GET /latest/meta-data/",
  "GET /latest/meta-data/",
  7,
]
"#;
    let got = errors(text);
    let expected = [
        "p.toml:4:3: [requests.r] rules: \"GET /latest/meta-data/%69am/\": the path is not canonical: percent-encoding ('%'), which is never decoded",
        "p.toml:5:3: [requests.r] rules: \"GET /latest//meta-data/\": the path is not canonical: an empty segment ('//')",
        "p.toml:6:3: [requests.r] rules: \"get /latest/meta-data/\": the method must be GET, HEAD or PUT (uppercase), found \"get\"",
        "p.toml:7:3: [requests.r] rules: \"GET /latest/meta-data/iam/../x\": the path is not canonical: a segment ending in '.' ('.', '..', 'name.')",
        "p.toml:8:3: [requests.r] rules: \"POST /latest/api/token\": the method must be GET, HEAD or PUT (uppercase), found \"POST\"",
        "p.toml:9:3: [requests.r] rules: \"GET latest/meta-data\": the path is not canonical: a target that is not a path (absolute, authority or asterisk form)",
        "p.toml:10:3: [requests.r] rules: \"GET /latest/meta-data/ \": the path is not canonical: no version, or one other than HTTP/1.0 and HTTP/1.1",
        "p.toml:11:3: [requests.r] rules: \"GET\" is not a rule: expected a method and a path separated by one space, like \"GET /latest/meta-data/instance-id\"",
        "p.toml:12:3: [requests.r] rules: \"GET /latest/meta-data/?x\": the path is not canonical: a query ('?') or fragment ('#')",
        "p.toml:14:3: [requests.r] rules: duplicate rule \"GET /latest/meta-data/\", already at line 13, column 3",
        "p.toml:15:3: [requests.r] rules: expected a rule string like \"GET /latest/meta-data/\", found integer 7",
    ];
    for line in &expected {
        assert!(
            got.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in\n{got}"
        );
    }
    assert_eq!(got.lines().count(), expected.len(), "{got}");
}

#[test]
fn an_identity_is_in_one_table_only() {
    let got = errors(
        r#"[allow]
uids = [5]
[requests.a]
uids = [5, 6]
rules = ["GET /latest/meta-data/"]
[requests.b]
uids = [6]
rules = ["GET /latest/meta-data/"]
[deny]
uids = [7]
[requests.c]
uids = [7]
rules = []
"#,
    );
    assert_eq!(
        got,
        "p.toml:4:9: uid 5 is in [requests.a] here and in [allow] at line 2, column 9: an \
         identity may be in one of [allow], [allow.host], [requests.*] and [deny] only\n\
         p.toml:7:9: uid 6 is in [requests.b] here and in [requests.a] at line 4, column 12: an \
         identity may be in one of [allow], [allow.host], [requests.*] and [deny] only\n\
         p.toml:10:9: uid 7 is in [deny] here and in [requests.c] at line 12, column 9: an \
         identity may be in one of [allow], [allow.host], [requests.*] and [deny] only"
    );
}

#[test]
fn imdsv2_must_name_an_allowed_entry() {
    let got = errors(
        r#"[allow]
uids = [0]
[deny]
uids = [9]
[imdsv2]
required = true
exempt = { uids = [1, 0, 9], users = ["x y"] }
require = { uids = [0] }
"#,
    );
    assert_eq!(
        got,
        "p.toml:7:20: [imdsv2] exempt uids: uid 1 names no entry of [allow], [allow.host] or \
         [requests.*]: [imdsv2] changes what an allowed caller may send, so allow it first\n\
         p.toml:7:26: [imdsv2] exempt uids: uid 9 names no entry of [allow], [allow.host] or \
         [requests.*]: [imdsv2] changes what an allowed caller may send, so allow it first\n\
         p.toml:7:39: [imdsv2] exempt users: \"x y\" is not a valid user name: it contains \
         whitespace\n\
         p.toml:8:1: [imdsv2] require: only with required = false: it would change nothing"
    );
}

#[test]
fn request_table_keys_are_checked() {
    let got = errors(
        r#"[requests.r]
units = ["a.service"]
host = true
imdsv2 = "always"
rule = ["GET /"]
[requests.s]
uids = [3]
[requests]
t = 5
[attribution]
whole_service = "yes"
"#,
    );
    let expected = [
        "p.toml:1:1: [requests.r]: no `rules`",
        "p.toml:2:1: [requests.r] units: units, cgroups and pods cannot be limited to the host (the guard does not tell a cgroup's processes apart by namespace); remove `host = true` from [requests.r]",
        "p.toml:4:10: [requests.r] imdsv2: expected \"required\" or \"optional\", found string \"always\"",
        "p.toml:5:1: unknown key \"rule\" in [requests.r]",
        "p.toml:6:1: [requests.s]: no `rules`",
        "p.toml:9:5: [requests] t: expected a table",
        "p.toml:11:17: [attribution] whole_service: expected true or false, found string \"yes\"",
    ];
    for line in &expected {
        assert!(
            got.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in\n{got}"
        );
    }
    assert_eq!(got.lines().count(), expected.len(), "{got}");
}

#[test]
fn rules_outside_the_documented_tree_warn() {
    let s = spec(
        r#"[requests.r]
uids = [5]
rules = [
  "GET /latest/meta-data/iam/info",
  "GET /2021-03-23/dynamic/instance-identity/document",
  "GET /latest/user-data",
  "PUT /latest/api/token",
  "GET /",
  "GET /metadata/instance",
  "GET /latest/user-data/x",
  "GET /2021-3-23/meta-data/",
]
"#,
    );
    let warnings: Vec<String> = s.warnings().iter().map(ToString::to_string).collect();
    let lines: Vec<u32> = s.warnings().iter().map(|d| d.at.line).collect();
    assert_eq!(lines, [9, 10, 11], "{warnings:#?}");
    assert!(warnings[0].contains("outside the metadata service's documented tree"));
}

#[test]
fn documented_tree() {
    for p in [
        "/",
        "/latest",
        "/latest/",
        "/latest/meta-data/",
        "/latest/meta-data",
        "/latest/dynamic/x",
        "/latest/user-data",
        "/latest/api/token",
        "/2021-03-23/meta-data/iam/",
        "/1.0/"[..0].trim(),
    ] {
        if p.is_empty() {
            continue;
        }
        assert!(documented(p), "{p}");
    }
    for p in [
        "/metadata/instance",
        "/latest/api/other",
        "/2021-03-23/api/token",
        "/latest/user-data/x",
        "/2021-3-23/meta-data/",
        "/latestx/",
        "/latest/meta-dataX/",
    ] {
        assert!(!documented(p), "{p}");
    }
}

/// The twin of the kernel's verdict, request by request.
#[test]
fn judges_requests_as_the_kernel_does() {
    let p = resolved(MONITORING);
    let cw = p.decide(900, 900);
    assert_eq!(cw.action, Action::Allow);
    let judge = |d, text: &str, token| {
        p.judge_request(d, &request_message(text, token))
            .expect("let through at connect")
    };
    let allowed_by = |v: RequestVerdict| match v {
        RequestVerdict::Allowed { rule, .. } => rule.map(|r| r.number),
        other => panic!("refused: {other:?}"),
    };
    let refused = |v: RequestVerdict| match v {
        RequestVerdict::Refused { reason, .. } => reason,
        other => panic!("allowed: {other:?}"),
    };
    // The longest rule names it: /latest/meta-data/placement/ (rule 1)
    // over /latest/meta-data/ (rule 3).
    assert_eq!(
        allowed_by(judge(&cw, "GET /latest/meta-data/placement/region", true)),
        Some(1)
    );
    assert_eq!(
        allowed_by(judge(&cw, "GET /latest/meta-data/ami-id", true)),
        Some(3)
    );
    assert_eq!(
        allowed_by(judge(&cw, "GET /latest/meta-data/instance-id", true)),
        Some(2)
    );
    // IMDSv2 required of cw: v1 refused, the token PUT passes without.
    assert_eq!(
        refused(judge(&cw, "GET /latest/meta-data/instance-id", false)),
        req_reason::V1_REFUSED
    );
    assert_eq!(
        allowed_by(judge(&cw, "PUT /latest/api/token", false)),
        Some(4)
    );
    // Not in the set: the credentials, another method, outside.
    assert_eq!(
        refused(judge(&cw, "GET /latest/user-data", true)),
        req_reason::NOT_IN_RULES
    );
    assert_eq!(
        refused(judge(&cw, "HEAD /latest/meta-data/", true)),
        req_reason::NOT_IN_RULES
    );
    // Not canonical: refused before any rule.
    assert_eq!(
        refused(judge(
            &cw,
            "GET /latest/meta-data/placement/../../user-data",
            true
        )),
        req_reason::DOT_SEGMENT
    );
}

/// Another set, with IMDSv1; a whole-service caller; a denied one.
#[test]
fn judges_other_callers_as_the_kernel_does() {
    let p = resolved(MONITORING);
    let judge = |d, text: &str, token| {
        p.judge_request(d, &request_message(text, token))
            .expect("let through at connect")
    };
    let allowed_by = |v: RequestVerdict| match v {
        RequestVerdict::Allowed { rule, .. } => rule.map(|r| r.number),
        other => panic!("refused: {other:?}"),
    };
    let refused = |v: RequestVerdict| match v {
        RequestVerdict::Refused { reason, .. } => reason,
        other => panic!("allowed: {other:?}"),
    };
    // legacy: its own set, IMDSv1 allowed.
    let legacy = p.decide(901, 901);
    assert_eq!(
        allowed_by(judge(
            &legacy,
            "GET /latest/meta-data/placement/region",
            false
        )),
        Some(5)
    );
    assert_eq!(
        refused(judge(
            &legacy,
            "GET /latest/meta-data/placement/regionX",
            false
        )),
        req_reason::NOT_IN_RULES
    );
    // root: the whole service, recorded, never refused.
    let root = p.decide(0, 0);
    assert!(matches!(
        judge(
            &root,
            "GET /latest/meta-data/iam/security-credentials/r",
            false
        ),
        RequestVerdict::Whole { recorded: true, .. }
    ));
    assert!(matches!(
        p.judge_request(&root, b"GET /a%2f HTTP/1.1\r\n\r\n"),
        Some(RequestVerdict::Whole { recorded: true, .. })
    ));
    // Nobody else connects.
    assert_eq!(
        p.judge_request(&p.decide(1000, 1000), b"GET / HTTP/1.1\r\n\r\n"),
        None
    );
}

#[test]
fn explains_a_request_for_check() {
    let p = resolved(MONITORING);
    let cw = p.decide(900, 900);
    let (ok, why) = p.explain_request(&cw, "GET /latest/meta-data/placement/region", true);
    assert!(ok);
    assert_eq!(
        why,
        "IMDSv2: rule 1 \"GET /latest/meta-data/placement/\" of [requests.monitoring] at 8:3 \
         (the longest matching rule)"
    );
    let (ok, why) = p.explain_request(&cw, "GET /latest/user-data", true);
    assert!(!ok);
    assert_eq!(why, "IMDSv2: no rule of [requests.monitoring] matches");
    let (ok, why) = p.explain_request(&cw, "GET /latest/meta-data/instance-id", false);
    assert!(!ok);
    assert!(why.starts_with("IMDSv1: an IMDSv1 request"), "{why}");
    let (ok, why) = p.explain_request(&cw, "GET /latest/%2e%2e/x", true);
    assert!(!ok);
    assert_eq!(why, "percent-encoding ('%'), which is never decoded");
}

#[test]
fn check_refuses_udp_to_a_judged_caller_and_names_the_set() {
    use imds_guard_common::Bounds;

    use crate::policy::{Destination, Outcome, Protocol, check};
    let p = resolved(MONITORING);
    let udp = Destination {
        addr: [169, 254, 169, 254].into(),
        port: Some(53),
        protocol: Protocol::Udp,
    };
    let cw = Process::on_host(900, 900);
    let r = check(&p, &cw, &udp, Bounds::LOOP);
    assert_eq!(r.outcome, Outcome::Deny, "{}", r.why);
    assert!(r.why.contains("TCP only"), "{}", r.why);
    let tcp = Destination::from(std::net::IpAddr::from([169, 254, 169, 254]));
    let r = check(&p, &cw, &tcp, Bounds::LOOP);
    assert_eq!(r.outcome, Outcome::Allow);
    assert!(
        r.why
            .contains("only the requests of [requests.monitoring] (4 rules"),
        "{}",
        r.why
    );
    assert!(r.why.contains("IMDSv2 required"), "{}", r.why);
    // A whole-service caller keeps UDP as before.
    let r = check(&p, &Process::on_host(0, 0), &udp, Bounds::LOOP);
    assert_eq!(r.outcome, Outcome::Allow, "{}", r.why);
}

#[test]
fn request_tables_change_the_digest_and_others_keep_theirs() {
    let base = "[allow]\nusers = [\"root\"]\n";
    let d = |t: &str| resolved(t).digest();
    let with = |extra: &str| d(&format!("{base}{extra}"));
    let rules = "[requests.r]\nuids = [5]\nrules = [\"GET /latest/meta-data/\"]\n";
    assert_ne!(d(base), with(rules));
    assert_ne!(
        with(rules),
        with("[requests.r]\nuids = [5]\nrules = [\"GET /latest/meta-data/x\"]\n")
    );
    // uid 5 allowed the whole service is another decision.
    assert_ne!(with(rules), d("[allow]\nusers = [\"root\"]\nuids = [5]\n"));
    assert_ne!(
        with(rules),
        with(&format!("{rules}[imdsv2]\nrequired = true\n"))
    );
    // Rule order does not matter (allow-only: the verdict is the same).
    assert_eq!(
        with("[requests.r]\nuids = [5]\nrules = [\"GET /a\", \"GET /b/\"]\n"),
        with("[requests.r]\nuids = [5]\nrules = [\"GET /b/\", \"GET /a\"]\n")
    );
}

/// The recipes of docs/policy.md's "Request rules", as written there: they
/// validate, and do what their text says.
#[test]
fn the_request_recipes_of_the_policy_reference_do_what_they_say() {
    let recipes = crate::policy::presets::tests::recipes_in("Request rules");
    assert_eq!(recipes.len(), 2, "{recipes:?}");
    let monitoring = spec(&recipes[0].1);
    assert!(
        monitoring.warnings().is_empty(),
        "{:?}",
        monitoring.warnings()
    );
    let requests = &monitoring.requests;
    let set = requests.scope(Some(1)).set.expect("the units' rule set");
    let get = |path: &str| requests.longest_match(set, req_method::GET, path.as_bytes());
    assert!(get("/latest/meta-data/placement/region").is_some());
    assert!(get("/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/subnet-id").is_some());
    assert!(get("/latest/meta-data/iam/security-credentials/role").is_none());
    assert!(get("/latest/meta-data/iam/info").is_none());
    assert!(get("/latest/user-data").is_none());
    let v2 = spec(&recipes[1].1);
    let scopes: Vec<bool> = (0..v2.entries.len())
        .map(|i| v2.requests.scope(Some(i)).v2_required)
        .collect();
    // [allow] first: app.service required, legacy.service exempt; then
    // [allow.host]'s root, required.
    assert_eq!(scopes, [true, false, true], "{}", recipes[1].0);
}

#[test]
fn every_reason_the_programs_give_has_a_name_and_words_of_its_own() {
    let mut names = BTreeSet::new();
    for &reason in REASONS {
        let name = reason_name(reason);
        assert_ne!(name, "unknown", "reason {reason}");
        assert_ne!(reason_text(reason), "an unknown reason", "reason {reason}");
        assert!(names.insert(name), "{name} twice");
    }
    assert!(REASONS.contains(&req_reason::INCOMPLETE));
    assert!(REASONS.contains(&req_reason::NOT_KEPT));
    assert_eq!(reason_name(req_reason::NOT_KEPT + 1), "unknown");
    assert_eq!(reason_name(req_reason::INCOMPLETE + 1), "unknown");
}
