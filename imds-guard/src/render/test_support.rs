//! Helpers for the render tests: parsing test policies, splitting shell
//! lines as sh would, a user database, the guard's decision as the
//! reference, and the corpus of policies every target is checked with.

use std::path::Path;

use super::{Format, Target, render};
use crate::policy::{Action, PolicySpec, Resolver};

/// Parses a policy, or panics with the diagnostics.
pub(super) fn policy(toml: &str) -> PolicySpec {
    PolicySpec::parse(Path::new("policy.toml"), toml)
        .unwrap_or_else(|e| panic!("test policy does not parse: {e:#}\n{toml}"))
}

/// Renders `toml` and returns the text, panicking if there are warnings
/// other than those every group entry gets for a target that cannot see
/// supplementary groups (`what_a_firewall_cannot_match_...` tests them).
pub(super) fn clean(toml: &str, target: Target, format: Format) -> String {
    let rendered = render(&policy(toml), target, format);
    let unexpected: Vec<&String> = rendered
        .warnings
        .iter()
        .filter(|w| !w.contains("matches only the primary gid"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "expected no warnings for --{target} --format {format}, got {unexpected:#?}"
    );
    rendered.text
}

/// The lines that are neither comments nor blank.
pub(super) fn rule_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

/// Asserts that `actual` is `expected`, showing both in full on failure.
pub(super) fn assert_text(actual: &str, expected: &str, what: &str) {
    assert!(
        actual == expected,
        "{what}: output differs\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// Splits one shell command line into words the way sh would for the
/// subset the renderer prints: blanks separate, single quotes quote
/// everything, double quotes quote all but a backslash, which escapes the
/// next character (iptables-restore splits its lines the same way).
pub(super) fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        other => w.push(other),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.next());
            }
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    words.extend(word);
    words
}

/// Joins the shell lines that end with `||` to the line after them, and
/// drops comments: one entry per command list.
pub(super) fn shell_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in rule_lines(text) {
        pending.push_str(line);
        if line.ends_with("||") {
            pending.push(' ');
        } else {
            commands.push(std::mem::take(&mut pending));
        }
    }
    assert!(pending.is_empty(), "a `||` ends the script: {pending:?}");
    commands
}

/// The user database the semantic tests assume, so they do not depend on
/// the host's.
const USERS: [(&str, u32); 4] = [
    ("root", 0),
    ("alice", 1000),
    ("apache", 48),
    ("trustworthy-user", 1001),
];
const GROUPS: [(&str, u32); 3] = [("wheel", 10), ("staff", 50), ("imds", 60)];

struct Names;

impl Resolver for Names {
    fn user_id(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(USERS.iter().find(|(n, _)| *n == name).map(|(_, id)| *id))
    }

    fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(GROUPS.iter().find(|(n, _)| *n == name).map(|(_, id)| *id))
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        USERS
            .iter()
            .find(|(_, id)| *id == uid)
            .map(|(n, _)| (*n).to_owned())
    }

    fn unit_cgroup(&self, _unit: &str) -> Result<Option<String>, String> {
        Ok(None)
    }

    fn members(&self, _gids: &[u32]) -> Result<Vec<(u32, u32)>, String> {
        Ok(Vec::new())
    }
}

/// The id a `user`/`uid` argument names, as the firewall's loader would
/// resolve it: a number, or a name of [`USERS`] (or [`GROUPS`]).
pub(super) fn resolve_id(text: &str, group: bool) -> u32 {
    let text = text.trim_matches('"');
    if let Ok(id) = text.parse() {
        return id;
    }
    let table: &[(&str, u32)] = if group { &GROUPS } else { &USERS };
    table
        .iter()
        .find(|(n, _)| *n == text)
        .map(|(_, id)| *id)
        .unwrap_or_else(|| panic!("unknown name {text:?} in a rendered rule"))
}

/// What the eBPF guard decides for a process of real `uid` and `gid`: the
/// reference the rendered rules are checked against.
pub(super) fn guard(spec: &PolicySpec, uid: u32, gid: u32) -> Action {
    let policy = spec
        .clone()
        .resolve(&Names)
        .unwrap_or_else(|e| panic!("test policy does not resolve: {e:#}"));
    policy.decide(uid, gid).action
}

/// Every (uid, gid) pair worth trying: each id the corpus names, and a few
/// it does not.
pub(super) fn processes() -> Vec<(u32, u32)> {
    let uids = [0, 1000, 48, 1001, 33, 4242];
    let gids = [0, 10, 50, 60, 7, 4242];
    uids.iter()
        .flat_map(|u| gids.iter().map(move |g| (*u, *g)))
        .collect()
}

/// Policies the grammar and semantic tests render for every target.
pub(super) const CORPUS: [&str; 8] = [
    "[endpoints]\naddresses = [\"169.254.169.254\"]\n[deny]\nusers = [\"apache\"]\n",
    "[endpoints]\naddresses = [\"169.254.169.254\"]\n[allow]\nusers = [\"trustworthy-user\"]\n",
    "[endpoints]\naddresses = [\"169.254.169.254\"]\n[allow]\nusers = [\"root\"]\n",
    "[allow]\nusers = [\"root\", \"alice\"]\ngids = [10]\n[deny]\ngroups = [\"staff\"]\nuids = [33]\n",
    "[allow]\ngroups = [\"imds\"]\n[deny]\ngids = [50]\nusers = [\"apache\"]\n",
    "mode = \"audit\"\n[allow]\nusers = [\"root\", \"alice\"]\ngids = [10]\n[deny]\ngroups = [\"staff\"]\nuids = [33]\n",
    "mode = \"audit\"\n[deny]\nusers = [\"apache\"]\n",
    "[endpoints]\naddresses = [\"169.254.169.254\", \"169.254.170.2\", \"fd00:ec2::254\"]\n[deny]\nusers = [\"apache\"]\nuids = [33]\n",
];
