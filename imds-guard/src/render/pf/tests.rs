//! PF output: pinned texts, every line checked against the part of the
//! pf.conf(5) grammar the renderer uses, and the rules evaluated the way
//! PF does (last match wins) against the eBPF guard's decision.

use std::net::IpAddr;

use super::*;
use crate::render::{
    Target, render,
    test_support::{CORPUS, assert_text, clean, guard, policy, processes, resolve_id, rule_lines},
};

/// The part of pf.conf(5) "GRAMMAR" (FreeBSD 14 and OpenBSD 7 agree on it)
/// that these rules use, with the prose constraints the grammar leaves out:
///
/// ```text
/// pf-rule   = action "out" [ "log" ] af protospec hosts [ filteropt ]
/// action    = "pass" | "block"
/// af        = "inet" | "inet6"                 ; must match the address
/// protospec = "proto" "tcp"
/// hosts     = "from" "any" "to" address        ; a single host
/// filteropt = ( "user" | "group" ) ( name | number | '"' name '"' )
/// ```
///
/// pf.conf(5) allows more (`in`, `quick`, lists, ports...); a rule outside
/// this subset is not wrong for PF, but it is not what the renderer means
/// to print, so the test rejects it.
#[derive(Debug, PartialEq, Eq)]
struct PfRule {
    pass: bool,
    log: bool,
    to: IpAddr,
    /// `(is_group, value)` of `user X` / `group X`.
    owner: Option<(bool, String)>,
}

/// Splits a pf.conf line into words; a double-quoted string is one word.
fn pf_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("unterminated string in {line:?}"))?;
            words.push(format!("\"{}\"", &quoted[..end]));
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
    }
    Ok(words)
}

fn parse_pf_rule(line: &str) -> Result<PfRule, String> {
    let words = pf_words(line)?;
    let mut words = words.iter().map(String::as_str).peekable();
    let expect = |want: &str, words: &mut std::iter::Peekable<_>| -> Result<(), String> {
        match words.next() {
            Some(w) if w == want => Ok(()),
            other => Err(format!("expected {want:?}, found {other:?} in {line:?}")),
        }
    };
    let pass = match words.next() {
        Some("pass") => true,
        Some("block") => false,
        other => {
            return Err(format!(
                "expected pass or block, found {other:?} in {line:?}"
            ));
        }
    };
    expect("out", &mut words)?;
    let log = words.next_if_eq(&"log").is_some();
    let af = words.next();
    expect("proto", &mut words)?;
    expect("tcp", &mut words)?;
    expect("from", &mut words)?;
    expect("any", &mut words)?;
    expect("to", &mut words)?;
    let to: IpAddr = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("expected an address after `to` in {line:?}"))?;
    match (af, to) {
        (Some("inet"), IpAddr::V4(_)) | (Some("inet6"), IpAddr::V6(_)) => {}
        _ => return Err(format!("af {af:?} does not match {to} in {line:?}")),
    }
    let owner = match words.next() {
        None => None,
        Some(kind @ ("user" | "group")) => {
            let value = words
                .next()
                .ok_or_else(|| format!("{kind} without a value in {line:?}"))?;
            let bare = value.trim_matches('"');
            let quoted = value.len() == bare.len() + 2;
            let plain = bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if bare.is_empty() || !(plain || quoted) || bare.contains('"') {
                return Err(format!("bad {kind} {value:?} in {line:?}"));
            }
            Some((kind == "group", value.to_owned()))
        }
        Some(other) => return Err(format!("unexpected {other:?} in {line:?}")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} at the end of {line:?}"));
    }
    Ok(PfRule {
        pass,
        log,
        to,
        owner,
    })
}

#[test]
fn the_grammar_rejects_what_pf_would_misread() {
    for bad in [
        "block out inet6 proto tcp from any to 169.254.169.254",
        "pass out inet proto tcp from any to 169.254.169.254 user",
        "pass out inet proto tcp to 169.254.169.254",
        "pass in inet proto tcp from any to 169.254.169.254",
        "pass out inet proto tcp from any to 169.254.169.254 user $x",
        "pass out inet proto tcp from any to 169.254.169.254 user \"a",
        "block out quick inet proto tcp from any to 169.254.169.254",
    ] {
        assert!(
            parse_pf_rule(bad).is_err(),
            "the test grammar must reject {bad:?}"
        );
    }
    assert_eq!(
        parse_pf_rule("pass out log inet6 proto tcp from any to fd00:ec2::254 group \"x$\""),
        Ok(PfRule {
            pass: true,
            log: true,
            to: "fd00:ec2::254".parse().unwrap_or_else(|e| panic!("{e}")),
            owner: Some((true, "\"x$\"".to_owned())),
        })
    );
}

#[test]
fn every_rule_line_follows_the_pf_conf_grammar() {
    let unusual = "[allow]\nusers = [\"root\", \"machine$\"]\n";
    for toml in CORPUS.iter().copied().chain([unusual]) {
        for format in [Format::Commands, Format::File] {
            let text = render(&policy(toml), Target::Pf, format).text;
            let lines = rule_lines(&text);
            assert!(!lines.is_empty(), "no rules for:\n{toml}");
            for line in lines {
                if let Err(e) = parse_pf_rule(line) {
                    panic!("{e}\n--- in the output for:\n{toml}\n{text}");
                }
            }
        }
    }
}

/// What PF does with a connection opening from `uid`:`gid` to `to`: the
/// last matching rule decides, and with no match the packet passes.
fn evaluate(rules: &[PfRule], to: IpAddr, uid: u32, gid: u32) -> (bool, bool) {
    let mut verdict = (true, false);
    for rule in rules.iter().filter(|r| r.to == to) {
        let matches = match &rule.owner {
            None => true,
            Some((false, user)) => resolve_id(user, false) == uid,
            Some((true, group)) => resolve_id(group, true) == gid,
        };
        if matches {
            verdict = (rule.pass, rule.log);
        }
    }
    verdict
}

#[test]
fn the_last_matching_rule_gives_the_guards_decision() {
    for toml in CORPUS {
        let spec = policy(toml);
        let text = clean(toml, Target::Pf, Format::Commands);
        let rules: Vec<PfRule> = rule_lines(&text)
            .into_iter()
            .map(|l| parse_pf_rule(l).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        for endpoint in &spec.endpoints {
            for (uid, gid) in processes() {
                let (pass, log) = evaluate(&rules, endpoint.addr, uid, gid);
                let denied = guard(&spec, uid, gid) == Action::Deny;
                let expected = match spec.mode {
                    Mode::Enforce => (!denied, false),
                    Mode::Audit => (true, denied),
                };
                assert_eq!(
                    (pass, log),
                    expected,
                    "uid {uid} gid {gid} to {}: (pass, log) differs from the guard for:\n{toml}\n{text}",
                    endpoint.addr
                );
            }
        }
    }
}

#[test]
fn several_identities_keep_the_last_match_order() {
    let toml = r#"
[endpoints]
addresses = ["169.254.169.254", "fd00:ec2::254"]
[allow]
users = ["root", "alice"]
gids = [10]
[deny]
groups = ["staff"]
uids = [33]
"#;
    let text = clean(toml, Target::Pf, Format::Commands);
    let expected = "\
# imds-guard render --pf --format commands
# policy: policy.toml, mode enforce
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# PF: the last matching rule wins, so the default comes first and denies last.
# group is the socket's effective gid only: supplementary groups do not match here, unlike in the eBPF guard (see the warnings).
# block follows set block-policy (drop by default): a denied connect waits for its timeout.
# Add these lines to /etc/pf.conf after your other filter rules, or use --format file to load them into an anchor.
block out inet proto tcp from any to 169.254.169.254
pass out inet proto tcp from any to 169.254.169.254 user root
pass out inet proto tcp from any to 169.254.169.254 user alice
pass out inet proto tcp from any to 169.254.169.254 group 10
block out inet proto tcp from any to 169.254.169.254 user 33
block out inet proto tcp from any to 169.254.169.254 group staff
block out inet6 proto tcp from any to fd00:ec2::254
pass out inet6 proto tcp from any to fd00:ec2::254 user root
pass out inet6 proto tcp from any to fd00:ec2::254 user alice
pass out inet6 proto tcp from any to fd00:ec2::254 group 10
block out inet6 proto tcp from any to fd00:ec2::254 user 33
block out inet6 proto tcp from any to fd00:ec2::254 group staff
";
    assert_text(&text, expected, "PF rules for several identities");
}

#[test]
fn audit_passes_and_logs_what_would_be_blocked() {
    let toml = r#"
mode = "audit"
[endpoints]
addresses = ["fd00:ec2::254"]
[allow]
users = ["root"]
[deny]
groups = ["staff"]
"#;
    let text = clean(toml, Target::Pf, Format::File);
    let expected = "\
# imds-guard render --pf --format file
# policy: policy.toml, mode audit: would-deny connections are logged and let through
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# PF: the last matching rule wins, so the default comes first and denies last.
# group is the socket's effective gid only: supplementary groups do not match here, unlike in the eBPF guard (see the warnings).
# pass ... log sends the packet that opens each connection to pflog0 (tcpdump -n -e -i pflog0).
# Load with: pfctl -a imds-guard -f FILE (this replaces the anchor's rules: loading twice leaves one copy).
# Reference the anchor once in /etc/pf.conf, after the other filter rules so that none overrides these: anchor \"imds-guard\"
pass out log inet6 proto tcp from any to fd00:ec2::254
pass out inet6 proto tcp from any to fd00:ec2::254 user root
pass out log inet6 proto tcp from any to fd00:ec2::254 group staff
";
    assert_text(&text, expected, "PF anchor file in audit mode");
}

#[test]
fn the_file_has_the_same_rules_as_the_commands() {
    for toml in CORPUS {
        let spec = policy(toml);
        let commands = render(&spec, Target::Pf, Format::Commands).text;
        let file = render(&spec, Target::Pf, Format::File).text;
        assert_eq!(
            rule_lines(&commands),
            rule_lines(&file),
            "an anchor file is the rule lines; loading it replaces the anchor"
        );
    }
}
