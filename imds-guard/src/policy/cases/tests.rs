//! The table of cases against [`Policy::decide_process`], and the table
//! against the reasons a record can carry.

use std::collections::BTreeSet;

use imds_guard_common::reason;

use super::{CASES, Case, KERNEL_ONLY, Tested};
use crate::policy::{Place, Policy, Reason};

/// The guarded cgroup, as the unit tests place it (a child of the root,
/// as the e2e test's is).
const BASE: &str = "/imds-guard-test-cases";

/// The record's number for a reason the twin gives.
fn wire(r: Reason) -> u8 {
    match r {
        Reason::UidDenied => reason::UID_DENIED,
        Reason::GidDenied => reason::GID_DENIED,
        Reason::UidAllowed => reason::UID_ALLOWED,
        Reason::GidAllowed => reason::GID_ALLOWED,
        Reason::Default => reason::DEFAULT,
        Reason::GroupDenied => reason::GROUP_DENIED,
        Reason::GroupAllowed => reason::GROUP_ALLOWED,
        Reason::OwnerDenied => reason::OWNER_DENIED,
        Reason::OwnerGidDenied => reason::OWNER_GID_DENIED,
        Reason::OwnerMemberDenied => reason::OWNER_MEMBER_DENIED,
        Reason::HostOnly => reason::HOST_ONLY,
        Reason::TooManyGroups => reason::TOO_MANY_GROUPS,
        Reason::CgroupDenied => reason::CGROUP_DENIED,
        Reason::CgroupAllowed => reason::CGROUP_ALLOWED,
        Reason::CgroupUnknown => reason::CGROUP_UNKNOWN,
        Reason::Workload => reason::WORKLOAD,
    }
}

fn policy(case: &Case) -> Policy {
    case.policy(BASE)
        .unwrap_or_else(|e| panic!("{}: the policy was refused:\n{e}", case.name))
}

#[test]
fn every_case_decides_as_the_table_says() {
    let wrong: Vec<String> = CASES
        .iter()
        .filter_map(|case| {
            let policy = policy(case);
            let got = case.decide(&policy, BASE);
            let want = case.expected.decision();
            (got != want).then(|| format!("{}: expected {want:?}, got {got:?}", case.name))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} cases decide otherwise:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
}

/// The `pub const NAME: u8 = N;` lines of `pub mod reason` in the common
/// crate's source: every reason a record can carry, including one added
/// after this test was written.
fn reasons_in_the_contract() -> Vec<(String, u8)> {
    let source = include_str!("../../../../imds-guard-common/src/event.rs");
    let (_, body) = source
        .split_once("pub mod reason {")
        .unwrap_or_else(|| panic!("no `pub mod reason` in event.rs"));
    let (body, _) = body
        .split_once("\n}")
        .unwrap_or_else(|| panic!("`pub mod reason` does not end"));
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .map(|decl| {
            let parsed = decl.split_once(": u8 = ").and_then(|(name, value)| {
                let value = value.strip_suffix(';')?.parse().ok()?;
                Some((name.to_owned(), value))
            });
            parsed.unwrap_or_else(|| panic!("not a reason constant: {decl}"))
        })
        .collect()
}

#[test]
fn every_reason_a_record_can_carry_has_a_case_or_says_where_it_is_tested() {
    let contract = reasons_in_the_contract();
    // The parse found the constants: the ones this crate names are there.
    assert!(
        contract.iter().any(|&(_, v)| v == reason::CGROUP_UNKNOWN)
            && contract.iter().any(|&(_, v)| v == reason::UID_DENIED),
        "{contract:?}"
    );
    let expected: BTreeSet<u8> = CASES.iter().map(|c| wire(c.expected.reason)).collect();
    let kernel_only: BTreeSet<u8> = KERNEL_ONLY.iter().map(|&(r, _)| r).collect();
    let missing: Vec<&str> = contract
        .iter()
        .filter(|(_, v)| !expected.contains(v) && !kernel_only.contains(v))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "reasons no case expects and KERNEL_ONLY does not list: {missing:?}"
    );
    // What KERNEL_ONLY lists is the programs' own: no case could expect it.
    let overlap: Vec<&u8> = expected.intersection(&kernel_only).collect();
    assert!(overlap.is_empty(), "listed as kernel-only: {overlap:?}");
}

#[test]
fn the_tests_kernel_only_reasons_cite_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (r, tested) in KERNEL_ONLY {
        match tested {
            Tested::By { file, test } => {
                let path = root.join(file);
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reason {r}: {}: {e}", path.display()));
                assert!(
                    text.contains(&format!("fn {test}()")),
                    "reason {r}: {file} has no test {test}"
                );
            }
            Tested::Not(why) => assert!(!why.is_empty(), "reason {r}: say why"),
        }
    }
}

#[test]
fn every_case_can_be_made() {
    let mut names = BTreeSet::new();
    for case in CASES {
        assert!(names.insert(case.name), "two cases named {:?}", case.name);
        let c = &case.caller;
        // A user namespace of its own is not the host's.
        assert!(
            c.owners.is_empty() || c.place == Place::Container,
            "{}: owners on the host",
            case.name
        );
        // The e2e test runs the probe as these ids: never root, whom it
        // would not tell from the harness, nor an id the kernel refuses.
        let ids = [c.uid, c.gid].into_iter().chain(c.groups.iter().copied());
        let owners = c.owners.iter().flat_map(|&(uid, gid)| [uid, gid]);
        assert!(
            ids.chain(owners).all(|id| id != 0 && id != u32::MAX),
            "{}: ids",
            case.name
        );
    }
}

/// The request-level cases: the twin decides as the table says, its
/// entry's scope is the expected one, and the flags the maps hold for
/// that entry (its row, or the generation's default row) are that scope's.
#[test]
fn request_cases_decide_and_scope_as_the_table_says() {
    use imds_guard_common::{ENTRY_ANY, EntryFlags};

    use super::REQUEST_CASES;
    for rc in &REQUEST_CASES {
        let case = &rc.case;
        let p = policy(case);
        let d = case.decide(&p, BASE);
        assert_eq!(d, case.expected.decision(), "{}", case.name);
        let Some(scope) = rc.scope else {
            assert_eq!(d.action, crate::policy::Action::Deny, "{}", case.name);
            continue;
        };
        assert_eq!(p.spec.requests.scope(d.index), scope, "{}", case.name);
        let compiled = p.spec.requests.compile(&p.spec, 0);
        let row = |entry: u32| {
            compiled
                .flags
                .iter()
                .find(|(k, _)| k.entry == entry)
                .map(|&(_, f)| f)
        };
        let entry = case.expected.entry;
        let looked_up = row(entry)
            .or_else(|| row(ENTRY_ANY))
            .unwrap_or(EntryFlags::default());
        assert_eq!(looked_up, scope.flags(), "{}", case.name);
    }
}
