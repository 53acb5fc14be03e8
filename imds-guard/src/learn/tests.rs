//! Tests of `suggest` and `report` on recorded streams: the agent's JSON
//! log lines (and the journal's form of the same records) for units,
//! pods, root on the host, groups and a flood the rate limiter
//! suppressed. The learned policy goes through the policy's own parser
//! and resolver, and its decisions are asked of [`Policy`]: the callers
//! seen get through, others do not.

use std::{collections::BTreeMap, path::Path};

use serde_json::{Value, json};

use super::{
    Decision, Records, ask,
    directory::fake::FakeDirectory,
    merge, records,
    report::report,
    suggest,
    suggest::{Form, Item, Key, Suggestion, Table},
    time::parse_rfc3339,
    write::policy_text,
};
use crate::policy::{
    Action, CgroupRules, FakeResolver, Mode, Place, Policy, PolicySpec, Process,
    cgroups::{PodName, Pods},
};

const POD_UID: &str = "3f8a55c2-7b1e-4b8e-9d2a-0c1d2e3f4a5b";
const POD_CGROUP: &str = "/kubepods.slice/kubepods-besteffort.slice/\
                          kubepods-besteffort-pod3f8a55c2_7b1e_4b8e_9d2a_0c1d2e3f4a5b.slice/\
                          cri-containerd-0a1b.scope";

/// A decision record as the agent writes it with `--log-format json`.
fn rec(second: u32, event: &str, uid: u32, place: &str, cgroup: &str, pid: u32) -> Value {
    let mut r = json!({
        "timestamp": format!("2026-12-07T04:{:02}:{:02}.000123Z", second / 60, second % 60),
        "level": "WARN",
        "event": event,
        "uid": uid,
        "gid": uid,
        "pid": pid,
        "tid": pid,
        "comm": "curl",
        "dst": "169.254.169.254",
        "port": 80,
        "hook": "connect4",
        "cgroup_id": 7,
        "place": place,
        "cgroup": cgroup,
        "reason": "neither uid nor gid is in [allow]",
        "message": "would deny (audit mode) connection to 169.254.169.254:80",
    });
    let names = [
        (0, "root"),
        (1001, "alice"),
        (1002, "bob"),
        (65534, "nobody"),
    ];
    if let Some((_, name)) = names.iter().find(|(u, _)| *u == uid) {
        r["user"] = json!(name);
    }
    r
}

/// A rate limiter's summary for `uid`'s records to the IPv4 endpoint.
fn summary(second: u32, uid: u32, count: u64, pid: u32) -> Value {
    json!({
        "timestamp": format!("2026-12-07T04:{:02}:{:02}Z", second / 60, second % 60),
        "level": "WARN",
        "event": "suppressed",
        "suppressed": count,
        "outcome": "audit",
        "uid": uid,
        "pid": pid,
        "comm": "curl",
        "dst": "169.254.169.254",
        "port": 80,
        "message": format!("suppressed {count} more audit records like these"),
    })
}

fn stream(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

fn directory() -> FakeDirectory {
    FakeDirectory {
        users: vec![
            (0, "root", 0),
            (1001, "alice", 1001),
            (1002, "bob", 1002),
            (1003, "carol", 1500),
            (65534, "nobody", 65534),
        ],
        groups: vec![(1500, "imds", vec![1001, 1002])],
    }
}

fn resolver() -> FakeResolver {
    FakeResolver::new(
        &[
            ("root", 0),
            ("alice", 1001),
            ("bob", 1002),
            ("carol", 1003),
            ("nobody", 65534),
        ],
        &[("imds", 1500)],
    )
    .with_units(&[("app.service", "/system.slice/app.service")])
    .with_members(&[(1001, 1500), (1002, 1500), (1003, 1500)])
}

/// The audit phase of a host: root and alice and bob on the host (alice
/// and bob in group imds), a service running as nobody and as root, a pod.
fn audit_phase() -> Vec<Value> {
    let mut pod = rec(30, "audit", 0, "container", POD_CGROUP, 500);
    pod["pod"] = json!("kube-system/aws-node");
    vec![
        json!({"timestamp": "2026-12-07T04:00:00Z", "level": "INFO", "ready": true, "message": "enforcing"}),
        rec(
            1,
            "audit",
            0,
            "host",
            "/user.slice/user-0.slice/session-1.scope",
            100,
        ),
        rec(
            2,
            "audit",
            1001,
            "host",
            "/user.slice/user-1001.slice/session-2.scope",
            101,
        ),
        rec(
            3,
            "audit",
            1002,
            "host",
            "/user.slice/user-1002.slice/session-3.scope",
            102,
        ),
        rec(4, "audit", 65534, "host", "/system.slice/app.service", 103),
        rec(
            5,
            "audit",
            0,
            "host",
            "/system.slice/app.service/worker",
            104,
        ),
        pod,
        json!("not an object"),
    ]
}

fn forms(s: &Suggestion, pick: usize) -> Vec<&Form> {
    s.proposals
        .iter()
        .filter_map(|p| p.forms.get(pick).or_else(|| p.forms.first()))
        .collect()
}

fn pods() -> Pods {
    let pod = PodName::parse("kube-system/aws-node").unwrap_or_else(|e| panic!("{e}"));
    BTreeMap::from([(pod, vec![POD_UID.to_owned()])])
}

/// The policy `text` resolved, as the agent would load it.
fn load(text: &str) -> Policy {
    PolicySpec::parse(Path::new("learned.toml"), text)
        .unwrap_or_else(|e| panic!("the learned policy does not parse: {e}\n{text}"))
        .resolve(&resolver())
        .unwrap_or_else(|e| panic!("the learned policy does not resolve: {e}\n{text}"))
}

/// What `policy` decides for the caller of `d`, holding the groups the
/// directory gives its uid.
fn decides(policy: &Policy, d: &Decision) -> Action {
    let uid = d.uid.unwrap_or(u32::MAX);
    let (rules, _) = policy.cgroups.patterns(&pods());
    let cgroup = CgroupRules::classify(&rules, d.cgroup.as_deref().unwrap_or("/").as_bytes());
    let groups = super::Directory::groups_of(&directory(), uid).unwrap_or_default();
    let process = Process {
        uid,
        gid: d.gid.unwrap_or(uid),
        groups,
        place: if d.on_host() {
            Place::Host
        } else {
            Place::Container
        },
        cgroup,
        ..Process::default()
    };
    policy.decide_process(&process).action
}

fn caller(uid: u32, place: &str, cgroup: &str) -> Decision {
    Decision {
        uid: Some(uid),
        gid: Some(uid),
        place: Some(place.to_owned()),
        cgroup: Some(cgroup.to_owned()),
        ..Decision::default()
    }
}

#[test]
fn units_pods_host_root_and_groups_each_get_their_narrowest_entry() {
    let found = records::parse(&stream(&audit_phase()), None);
    assert_eq!(found.skipped, 1, "a JSON string is not a record");
    let s = suggest(&found, &directory());
    let whos: Vec<&str> = s.proposals.iter().map(|p| p.who.as_str()).collect();
    assert_eq!(
        whos,
        [
            "pod kube-system/aws-node",
            "unit app.service",
            "group 1500 (imds): uid 1001 (alice), uid 1002 (bob)",
            "uid 0 (root)",
        ]
    );
    let first: Vec<String> = forms(&s, 0)
        .iter()
        .flat_map(|f| f.lines.iter().map(ToString::to_string))
        .collect();
    assert_eq!(
        first,
        [
            "[allow] pods = [\"kube-system/aws-node\"]",
            "[allow] units = [\"app.service\"]",
            "[allow.host] users = [\"alice\"]",
            "[allow.host] users = [\"bob\"]",
            "[allow.host] users = [\"root\"]",
        ]
    );
    let unit = &s.proposals[1];
    assert_eq!(
        unit.seen.uids.iter().copied().collect::<Vec<_>>(),
        [0, 65534]
    );
    assert!(
        unit.forms[0].admits.contains("whatever its uid"),
        "{:?}",
        unit.forms
    );
    // Widening: the group, which admits carol too; root everywhere.
    let group = &s.proposals[2].forms[1];
    assert_eq!(
        group.lines[0].to_string(),
        "[allow.host] groups = [\"imds\"]"
    );
    assert!(
        group.admits.contains("uid 1003 (carol)"),
        "{}",
        group.admits
    );
    let root = &s.proposals[3].forms[1];
    assert_eq!(root.lines[0].to_string(), "[allow] users = [\"root\"]");
    assert!(s.left.is_empty(), "{:?}", s.left);
    assert!(s.extra_endpoints.is_empty());
}

#[test]
fn the_learned_policy_validates_admits_the_callers_seen_and_refuses_the_rest() {
    let found = records::parse(&stream(&audit_phase()), None);
    let s = suggest(&found, &directory());
    for pick in [0, 1] {
        let text = policy_text(
            &forms(&s, pick),
            Mode::Enforce,
            "learned",
            &s.extra_endpoints,
        );
        let policy = load(&text);
        assert!(policy.spec.warnings().is_empty(), "{text}");
        for d in &found.decisions {
            assert_eq!(decides(&policy, d), Action::Allow, "{d:?} under\n{text}");
        }
        // Not seen: carol on the host (admitted only by the wider group
        // form), root in a container, nobody outside the unit.
        let carol = decides(&policy, &caller(1003, "host", "/user.slice"));
        assert_eq!(carol == Action::Allow, pick == 1, "carol under\n{text}");
        let root_in_container = decides(&policy, &caller(0, "container", "/x"));
        assert_eq!(root_in_container == Action::Allow, pick == 1, "{text}");
        let nobody = decides(&policy, &caller(65534, "host", "/user.slice"));
        assert_eq!(nobody, Action::Deny, "{text}");
    }
    let text = policy_text(&forms(&s, 0), Mode::Enforce, "learned", &[]);
    assert!(text.contains("mode = \"enforce\""), "{text}");
    assert!(
        text.contains("\"root\",  # 1 audit, 2026-12-07T04:00:01Z, by curl"),
        "every value says what it lets through:\n{text}"
    );
}

#[test]
fn root_seen_in_a_container_is_allowed_everywhere_and_a_lone_user_by_uid() {
    let lines = [
        rec(1, "deny", 0, "container", "/imds-guard-test-1", 1),
        rec(2, "deny", 4242, "host", "/imds-guard-test-1", 2),
    ];
    let s = suggest(&records::parse(&stream(&lines), None), &directory());
    let only: Vec<(Table, Key, Item, usize)> = s
        .proposals
        .iter()
        .map(|p| {
            let l = &p.forms[0].lines[0];
            (l.table, l.key, l.item.clone(), p.forms.len())
        })
        .collect();
    assert_eq!(
        only,
        [
            (Table::Allow, Key::Users, Item::Name("root".into()), 1),
            (Table::AllowHost, Key::Uids, Item::Id(4242), 2),
        ]
    );
}

#[test]
fn a_flood_counts_what_the_rate_limiter_suppressed_where_it_was_logged() {
    let mut lines: Vec<Value> = (0..5)
        .map(|i| rec(10 + i, "audit", 1001, "host", "/user.slice", 300))
        .collect();
    lines.push(summary(20, 1001, 995, 300));
    // A window that began before the period: its summary stands alone.
    lines.push(summary(21, 4243, 40, 301));
    lines.push(
        json!({"timestamp": "2026-12-07T04:00:22Z", "event": "suppressed", "suppressed": 12,
        "callers": "uid 1003: 12", "message": "suppressed 12 decision records"}),
    );
    lines.push(
        json!({"timestamp": "2026-12-07T04:00:23Z", "event": "lost", "lost": 3, "lost_total": 3}),
    );
    let found = records::parse(&stream(&lines), None);
    assert_eq!(found.decisions.len(), 6, "{:?}", found.decisions);
    assert_eq!((found.overflow, found.lost), (12, 3));

    let s = suggest(&found, &directory());
    let alice = s.proposals.iter().find(|p| p.who.contains("alice"));
    let alice = alice.unwrap_or_else(|| panic!("{:?}", s.proposals));
    assert_eq!((alice.seen.audited, alice.seen.suppressed), (1000, 995));
    assert!(
        alice
            .seen
            .summary()
            .starts_with("1000 audits (995 suppressed)"),
        "{}",
        alice.seen.summary()
    );

    let r = report(&found, None);
    assert_eq!((r.total.audit, r.total.suppressed), (1040, 1035));
    assert_eq!(r.by_identity[0].0, "uid 1001 (alice)");
    assert_eq!(r.by_identity[0].1.audit, 1000);
    assert_eq!(r.by_identity[1].0, "uid 4243");
    let hooks: Vec<(&str, u64)> = r
        .by_hook
        .iter()
        .map(|(h, c)| (h.as_str(), c.audit))
        .collect();
    assert_eq!(hooks, [("connect4", 1000), ("unknown", 40)]);
    assert_eq!(r.by_destination[0].0, "169.254.169.254:80");
    let json = r.json();
    assert_eq!(json["total"]["suppressed"], 1035);
    assert_eq!(json["overflow"], 12);
    assert_eq!(json["lost"], 3);
    assert_eq!(json["by_identity"][0]["identity"], "uid 1001 (alice)");
    let text = r.text();
    assert!(text.contains("0 denied, 1040 audited"), "{text}");
    assert!(
        text.contains("12 more suppressed past the tracked callers (uid 1003: 12)"),
        "{text}"
    );
}

/// The same records as `journalctl -o json` prints them: upper-case
/// fields, every value a string, the time in microseconds.
fn as_journal(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (key, value) in v.as_object().into_iter().flatten() {
        if key == "timestamp" {
            let at = value.as_str().and_then(parse_rfc3339).unwrap_or(0);
            out.insert("__REALTIME_TIMESTAMP".into(), json!(at.to_string()));
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.insert(key.to_ascii_uppercase(), json!(text));
    }
    out.insert("_UID".into(), json!("0"));
    out.insert("SYSLOG_IDENTIFIER".into(), json!("imds-guard"));
    Value::Object(out)
}

#[test]
fn the_journal_s_form_of_the_records_reads_the_same() {
    let phase = audit_phase();
    let from_log = records::parse(&stream(&phase), None);
    let journal: Vec<Value> = phase
        .iter()
        .filter(|v| v.is_object())
        .map(as_journal)
        .collect();
    let from_journal: Records = records::parse(&stream(&journal), None);
    assert_eq!(from_journal.decisions, from_log.decisions);
    assert_eq!(
        suggest(&from_journal, &directory()),
        suggest(&from_log, &directory())
    );
}

#[test]
fn since_drops_older_records_and_nested_fields_are_read() {
    let mut nested = rec(50, "deny", 1002, "host", "/", 9);
    let fields = nested.clone();
    nested = json!({"timestamp": fields["timestamp"], "level": "WARN", "fields": fields});
    let lines = [rec(1, "deny", 1001, "host", "/", 8), nested];
    let since = parse_rfc3339("2026-12-07T04:00:30Z");
    let found = records::parse(&stream(&lines), since);
    let uids: Vec<Option<u32>> = found.decisions.iter().map(|d| d.uid).collect();
    assert_eq!(uids, [Some(1002)]);
    assert_eq!(report(&found, since).total.deny, 1);
}

#[test]
fn forwarded_packets_nobody_and_deny_entries_are_left_out_and_other_endpoints_kept() {
    let mut forward = json!({"timestamp": "2026-12-07T04:00:01Z", "event": "deny", "src": "10.0.0.2",
        "interface": "docker0", "dst": "169.254.169.254", "port": 80, "hook": "forward"});
    forward["proto"] = json!("tcp");
    let mut nobody = rec(2, "deny", 0, "host", "/", 0);
    nobody.as_object_mut().map(|o| o.remove("uid"));
    let mut apache = rec(4, "deny", 48, "host", "/system.slice/httpd.service", 6);
    apache["reason"] =
        json!("uid 48 is denied by [deny] users \"apache\" at /etc/imds-guard/policy.toml:4:10");
    let mut other = rec(3, "audit", 1001, "host", "/", 5);
    other["dst"] = json!("::ffff:10.1.2.3");
    let s = suggest(
        &records::parse(&stream(&[forward, nobody, other, apache]), None),
        &directory(),
    );
    let left: Vec<String> = s.left.iter().map(|l| l.who.to_string()).collect();
    assert_eq!(
        left,
        [
            "unit httpd.service",
            "forwarded from 10.0.0.2",
            "no identity"
        ]
    );
    assert_eq!(s.proposals.len(), 1, "alice only: {:?}", s.proposals);
    assert_eq!(
        s.extra_endpoints,
        ["10.1.2.3"
            .parse::<std::net::IpAddr>()
            .unwrap_or_else(|e| panic!("{e}"))]
    );
    let text = policy_text(&forms(&s, 0), Mode::Audit, "learned", &s.extra_endpoints);
    let policy = load(&text);
    assert_eq!(policy.spec.mode, Mode::Audit);
    assert_eq!(
        policy.spec.addresses(),
        ["169.254.169.254", "fd00:ec2::254", "10.1.2.3"]
    );
}

#[test]
fn against_a_policy_the_change_keeps_its_comments_and_validates() {
    let found = records::parse(&stream(&audit_phase()), None);
    let s = suggest(&found, &directory());
    let original = "# the admins' policy\nmode = \"audit\"\n[allow.host]\nusers = [\"root\"] # \
                    the admin\n";
    let path = Path::new("/etc/imds-guard/policy.toml");
    let merged =
        merge::merge(original, path, &forms(&s, 0), &resolver()).unwrap_or_else(|e| panic!("{e}"));
    let present: Vec<String> = merged.present.iter().map(ToString::to_string).collect();
    assert_eq!(present, ["[allow.host] users = [\"root\"]"]);
    assert_eq!(merged.added.len(), 4);
    assert!(merged.text.contains("# the admin"), "{}", merged.text);
    let policy = load(&merged.text);
    for d in &found.decisions {
        assert_eq!(
            decides(&policy, d),
            Action::Allow,
            "{d:?} under\n{}",
            merged.text
        );
    }
    let diff = merge::unified_diff(path, original, &merged.text);
    assert!(diff.starts_with("--- /etc/imds-guard/policy.toml\n+++ /etc/imds-guard/policy.toml (suggested)\n@@ -1,4 +1,"), "{diff}");
    assert!(diff.contains("\n+    \"alice\",  # 1 audit"), "{diff}");
    assert!(diff.contains("\n+[allow]\n+units = [\n"), "{diff}");

    // An identity the file denies is left to the operator.
    let denying = "[deny]\nusers = [\"alice\"]\n[allow]\nuids = [7]\n";
    let merged =
        merge::merge(denying, path, &forms(&s, 0), &resolver()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.conflicts.len(), 1, "{:?}", merged.conflicts);
    let policy = load(&merged.text);
    assert_eq!(
        policy
            .spec
            .entries
            .iter()
            .filter(|e| e.action == Action::Allow)
            .count(),
        5
    );

    // Root by number is root by name: nothing to add for it.
    let by_number = "[allow.host]\nuids = [0, 1001]\n";
    let merged =
        merge::merge(by_number, path, &forms(&s, 0), &resolver()).unwrap_or_else(|e| panic!("{e}"));
    let present: Vec<String> = merged.present.iter().map(ToString::to_string).collect();
    assert_eq!(
        present,
        [
            "[allow.host] users = [\"alice\"]",
            "[allow.host] users = [\"root\"]"
        ]
    );
    load(&merged.text);
}

#[test]
fn interactive_answers_accept_refuse_and_widen() {
    let found = records::parse(&stream(&audit_phase()), None);
    let s = suggest(&found, &directory());
    let mut out = Vec::new();
    let answers = "a\nr\nwiden\nbogus\nn\nw\na\nq\n";
    let chosen =
        ask::ask(&s.proposals, &mut answers.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chosen, [Some(0), None, Some(1), None]);
    let said = String::from_utf8_lossy(&out);
    assert!(said.contains("[3/4] group 1500 (imds)"), "{said}");
    assert!(
        said.contains("\"bogus\" is not one of the answers"),
        "{said}"
    );
    assert!(said.contains("(w)iden"), "{said}");

    let short = ask::ask(&s.proposals, &mut "a\n".as_bytes(), &mut Vec::new());
    assert!(
        matches!(short, Err(super::LearnError::Unanswered(2))),
        "{short:?}"
    );
}
