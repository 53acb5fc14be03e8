//! The program's algorithm over the tables against the agent's matcher.

use imds_guard_common::MAX_CGROUP_PATTERNS;

use super::{super::entry::stored_rule, Tables, build, simulate};
use crate::policy::{
    Action,
    cgroups::{CgroupRule, Component, Pattern, pattern::components},
};

/// A small deterministic generator: no dependency for a test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }

    /// A short word over few letters, so that patterns and names meet.
    fn word(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max as u64 + 1);
        (0..len).map(|_| b"ab."[self.below(3)]).collect()
    }
}

fn rule(pattern: &str, action: Action, index: usize) -> CgroupRule {
    CgroupRule {
        pattern: Pattern::parse(pattern).unwrap_or_else(|e| panic!("{e}")),
        action,
        index,
    }
}

fn check(rules: &[CgroupRule], path: &str) {
    check_with(&[build(0, rules), build(1, rules)], rules, path);
}

/// [`check`] with the tables of both generations built already.
fn check_with(tables: &[Tables; 2], rules: &[CgroupRule], path: &str) {
    for generation in 0..2 {
        let tables = &tables[generation as usize];
        let parts = components(path.as_bytes());
        assert_eq!(
            simulate(tables, generation, &parts),
            stored_rule(rules, path.as_bytes()),
            "{path} under {:?}",
            rules
                .iter()
                .map(|r| r.pattern.to_string())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_examples_of_the_policy_reference_classify_alike() {
    let rules = [
        rule("/system.slice/evil.service/**", Action::Deny, 0),
        rule("/system.slice/docker-*.scope", Action::Allow, 1),
        rule("/kubepods.slice/**", Action::Allow, 2),
        rule("/user.slice/user-*.slice/*", Action::Allow, 3),
        rule("/", Action::Allow, 4),
    ];
    for path in [
        "/",
        "/system.slice",
        "/system.slice/evil.service",
        "/system.slice/evil.service/x/y",
        "/system.slice/docker-1234.scope",
        "/system.slice/docker-1234.scope/inner",
        "/system.slice/docker.scope",
        "/kubepods.slice",
        "/kubepods.slice/a/b/c/d",
        "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1000.slice",
    ] {
        check(&rules, path);
    }
}

#[test]
fn prefixes_and_suffixes_that_overlap_a_name_do_not_match_it() {
    // "ab*ba" against "aba": both literals match, but not side by side.
    let rules = [
        rule("/ab*ba", Action::Allow, 0),
        rule("/a*", Action::Deny, 1),
    ];
    for path in ["/aba", "/abba", "/abxba", "/a", "/b"] {
        check(&rules, path);
    }
}

#[test]
fn long_names_compare_on_their_first_and_last_bytes() {
    let head = "h".repeat(128);
    let tail = "t".repeat(128);
    let rules = [
        rule(&format!("/{head}*{tail}"), Action::Allow, 0),
        rule(&format!("/{head}"), Action::Deny, 1),
    ];
    for middle in ["", "x", &"m".repeat(200)] {
        let name: String = format!("{head}{middle}{tail}").chars().take(255).collect();
        check(&rules, &format!("/{name}"));
    }
    check(&rules, &format!("/{head}"));
    check(&rules, &format!("/{head}h"));
}

#[test]
fn deep_cgroups_and_deep_patterns() {
    let deep = "/a".repeat(16);
    let rules = [
        rule(&deep, Action::Allow, 0),
        rule(&format!("{deep}/**"), Action::Deny, 1),
    ];
    for level in [15, 16, 17, 63, 64, 65] {
        check(&rules, &"/a".repeat(level));
    }
}

#[test]
fn random_patterns_and_paths_classify_alike() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..400 {
        let count = 1 + rng.below(u64::from(MAX_CGROUP_PATTERNS));
        let mut rules: Vec<CgroupRule> = (0..count)
            .map(|index| {
                let depth = rng.below(4);
                let components = (0..depth)
                    .map(|_| {
                        if rng.below(3) == 0 {
                            Component::Glob {
                                prefix: rng.word(2),
                                suffix: rng.word(2),
                            }
                        } else {
                            let mut w = rng.word(3);
                            if w.is_empty() || w == b"." || w == b".." {
                                w = b"a".to_vec();
                            }
                            Component::Literal(w)
                        }
                    })
                    .collect();
                let action = if rng.below(3) == 0 {
                    Action::Deny
                } else {
                    Action::Allow
                };
                CgroupRule {
                    pattern: Pattern {
                        components,
                        subtree: rng.below(2) == 0,
                    },
                    action,
                    index,
                }
            })
            .collect();
        rules.sort_by_key(|r| (r.action == Action::Allow, r.index));
        let tables = [build(0, &rules), build(1, &rules)];
        for _ in 0..50 {
            let depth = rng.below(6);
            let mut path = String::new();
            for _ in 0..depth {
                let mut name = rng.word(4);
                if name.is_empty() {
                    name = b"b".to_vec();
                }
                path.push('/');
                path.push_str(&String::from_utf8_lossy(&name));
            }
            if path.is_empty() {
                path.push('/');
            }
            check_with(&tables, &rules, &path);
        }
    }
}
