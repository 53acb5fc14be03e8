//! IPFW output: pinned texts, every line checked against the part of the
//! ipfw(8) grammar the renderer uses, and the rules evaluated the way IPFW
//! does (first match wins) against the eBPF guard's decision.

use std::net::IpAddr;

use super::*;
use crate::render::{
    Target, render,
    test_support::{CORPUS, assert_text, clean, guard, policy, processes, resolve_id, rule_lines},
};

/// The part of FreeBSD ipfw(8) that these lines use: "RULE FORMAT",
/// "RULE ACTIONS" (allow, deny, count), "RULE BODY" and "RULE OPTIONS"
/// (uid, gid, setup), and for the file the command syntax read by
/// `ipfw /absolute/path` (sbin/ipfw/main.c: one command per line, `#`
/// starts a comment):
///
/// ```text
/// file-line = "delete" "set" set | "add" number "set" set rule
/// rule      = action [ "log" ] body        ; the commands format: a rule
/// action    = "allow" | "deny" | "count"
/// body      = "tcp" "from" "any" "to" address { option }
/// option    = "uid" id | "gid" id | "setup"
/// id        = a word without '#' or ',' (ipfw has no quoting)
/// number    = 1..65534    set = 0..30      ; 31 holds the default rule
/// ```
#[derive(Debug, PartialEq, Eq)]
struct IpfwRule {
    /// `allow`, `deny` or `count`.
    action: String,
    log: bool,
    to: IpAddr,
    /// `(is_group, value)` of `uid X` / `gid X`.
    owner: Option<(bool, String)>,
    setup: bool,
}

fn parse_ipfw_rule(line: &str) -> Result<IpfwRule, String> {
    let mut words = line.split_whitespace().peekable();
    let action = match words.next() {
        Some(a @ ("allow" | "deny" | "count")) => a.to_owned(),
        other => return Err(format!("expected an action, found {other:?} in {line:?}")),
    };
    let log = words.next_if_eq(&"log").is_some();
    for want in ["tcp", "from", "any", "to"] {
        match words.next() {
            Some(w) if w == want => {}
            other => return Err(format!("expected {want:?}, found {other:?} in {line:?}")),
        }
    }
    let to: IpAddr = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("expected an address after `to` in {line:?}"))?;
    let mut owner = None;
    let mut setup = false;
    while let Some(word) = words.next() {
        match word {
            "uid" | "gid" if owner.is_none() => {
                let id = words
                    .next()
                    .filter(|id| !id.contains(['#', ',']))
                    .ok_or_else(|| format!("{word} without a valid id in {line:?}"))?;
                owner = Some((word == "gid", id.to_owned()));
            }
            "setup" if !setup => setup = true,
            other => return Err(format!("unexpected {other:?} in {line:?}")),
        }
    }
    Ok(IpfwRule {
        action,
        log,
        to,
        owner,
        setup,
    })
}

/// A line of the file: `(rule number, rule)` for `add`, `None` for the
/// `delete set` line.
fn parse_file_line(line: &str) -> Result<Option<(u32, IpfwRule)>, String> {
    if line == format!("delete set {SET}") {
        return Ok(None);
    }
    let rest = line
        .strip_prefix("add ")
        .ok_or_else(|| format!("expected add or delete set, found {line:?}"))?;
    let (number, rest) = rest
        .split_once(' ')
        .ok_or_else(|| format!("no rule after the number in {line:?}"))?;
    let number: u32 = number
        .parse()
        .ok()
        .filter(|n| (1..=65534).contains(n))
        .ok_or_else(|| format!("bad rule number in {line:?}"))?;
    let rule = rest
        .strip_prefix(&format!("set {SET} "))
        .ok_or_else(|| format!("rule not in set {SET}: {line:?}"))?;
    Ok(Some((number, parse_ipfw_rule(rule)?)))
}

#[test]
fn the_grammar_rejects_what_ipfw_would_misread() {
    for bad in [
        "allow tcp from any to 169.254.169.254 uid",
        "allow tcp from any to 169.254.169.254 uid a#b",
        "allow tcp from 169.254.169.254 to any uid root",
        "pass tcp from any to 169.254.169.254",
        "deny tcp from any to 169.254.169.254 uid root uid alice",
        "deny log logamount 5 tcp from any to 169.254.169.254",
    ] {
        assert!(
            parse_ipfw_rule(bad).is_err(),
            "the test grammar must reject {bad:?}"
        );
    }
    for bad in [
        "add 70000 set 19 deny tcp from any to 169.254.169.254",
        "add 1000 set 3 deny tcp from any to 169.254.169.254",
        "add deny tcp from any to 169.254.169.254",
        "delete set 3",
    ] {
        assert!(
            parse_file_line(bad).is_err(),
            "the test grammar must reject {bad:?}"
        );
    }
}

#[test]
fn every_line_follows_the_ipfw_grammar() {
    for toml in CORPUS {
        let spec = policy(toml);
        let commands = render(&spec, Target::Ipfw, Format::Commands).text;
        for line in rule_lines(&commands) {
            if let Err(e) = parse_ipfw_rule(line) {
                panic!("{e}\n--- in the output for:\n{toml}\n{commands}");
            }
        }
        let file = render(&spec, Target::Ipfw, Format::File).text;
        let lines = rule_lines(&file);
        assert_eq!(
            lines.first(),
            Some(&format!("delete set {SET}").as_str()),
            "the file empties its set first, so loading it twice leaves one copy"
        );
        let mut previous = 0;
        for line in &lines[1..] {
            match parse_file_line(line) {
                Ok(Some((number, _))) => {
                    assert!(number > previous, "rule numbers must rise: {line}");
                    previous = number;
                }
                Ok(None) => panic!("a second delete in:\n{file}"),
                Err(e) => panic!("{e}\n--- in the output for:\n{toml}\n{file}"),
            }
        }
        let bodies: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.splitn(5, ' ').nth(4).unwrap_or_default())
            .collect();
        assert_eq!(
            bodies,
            rule_lines(&commands),
            "the file numbers the same rules the commands list"
        );
    }
}

/// What IPFW does with a connection opening (a SYN) from `uid`:`gid` to
/// `to`: the first `allow`/`deny` that matches decides, `count` only
/// records; `None` when no rule decides (the rest of the ruleset does).
/// Returns the verdict and whether any matching rule logged.
fn evaluate(rules: &[IpfwRule], to: IpAddr, uid: u32, gid: u32) -> (Option<bool>, bool) {
    let mut logged = false;
    for rule in rules.iter().filter(|r| r.to == to) {
        let matches = match &rule.owner {
            None => true,
            Some((false, user)) => resolve_id(user, false) == uid,
            Some((true, group)) => resolve_id(group, true) == gid,
        };
        if !matches {
            continue;
        }
        logged |= rule.log;
        match rule.action.as_str() {
            "allow" => return (Some(true), logged),
            "deny" => return (Some(false), logged),
            _ => {}
        }
    }
    (None, logged)
}

#[test]
fn the_first_matching_rule_gives_the_guards_decision() {
    for toml in CORPUS {
        let spec = policy(toml);
        let text = clean(toml, Target::Ipfw, Format::Commands);
        let rules: Vec<IpfwRule> = rule_lines(&text)
            .into_iter()
            .map(|l| parse_ipfw_rule(l).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        for endpoint in &spec.endpoints {
            for (uid, gid) in processes() {
                let (verdict, logged) = evaluate(&rules, endpoint.addr, uid, gid);
                let denied = guard(&spec, uid, gid) == Action::Deny;
                let ok = match spec.mode {
                    // A process the policy allows may also fall through to
                    // the rest of the ruleset (a deny-list adds no allow).
                    Mode::Enforce => (verdict == Some(false)) == denied && !logged,
                    // Nothing is denied; exactly the would-be-denied log.
                    Mode::Audit => verdict != Some(false) && logged == denied,
                };
                assert!(
                    ok,
                    "uid {uid} gid {gid} to {}: {verdict:?} (logged {logged}) but the guard \
                     says {} for:\n{toml}\n{text}",
                    endpoint.addr,
                    if denied { "deny" } else { "allow" }
                );
            }
        }
    }
}

#[test]
fn several_identities_keep_the_first_match_order() {
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
    let text = clean(toml, Target::Ipfw, Format::File);
    let expected = "\
# imds-guard render --ipfw --format file
# policy: policy.toml, mode enforce
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# IPFW: the first matching rule wins, so denies come first and the default last.
# gid matches supplementary groups too (groupmember(9)), as the eBPF guard does.
# deny drops: a denied connect waits for its timeout.
# Load with: ipfw -q /absolute/path/to/FILE (the first line deletes set 19: loading twice leaves one copy).
delete set 19
add 1000 set 19 deny tcp from any to 169.254.169.254 uid 33
add 1010 set 19 deny tcp from any to 169.254.169.254 gid staff
add 1020 set 19 allow tcp from any to 169.254.169.254 uid root
add 1030 set 19 allow tcp from any to 169.254.169.254 uid alice
add 1040 set 19 allow tcp from any to 169.254.169.254 gid 10
add 1050 set 19 deny tcp from any to 169.254.169.254
add 1060 set 19 deny tcp from any to fd00:ec2::254 uid 33
add 1070 set 19 deny tcp from any to fd00:ec2::254 gid staff
add 1080 set 19 allow tcp from any to fd00:ec2::254 uid root
add 1090 set 19 allow tcp from any to fd00:ec2::254 uid alice
add 1100 set 19 allow tcp from any to fd00:ec2::254 gid 10
add 1110 set 19 deny tcp from any to fd00:ec2::254
";
    assert_text(&text, expected, "IPFW file for several identities");
}

#[test]
fn audit_allows_and_logs_what_would_be_denied() {
    let toml = r#"
mode = "audit"
[endpoints]
addresses = ["169.254.169.254"]
[allow]
users = ["root"]
[deny]
users = ["apache"]
"#;
    let text = clean(toml, Target::Ipfw, Format::Commands);
    let expected = "\
# imds-guard render --ipfw --format commands
# policy: policy.toml, mode audit: would-deny connections are logged and let through
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# IPFW: the first matching rule wins, so denies come first and the default last.
# log reaches syslog only with sysctl net.inet.ip.fw.verbose=1.
# Rule bodies for ipfw add. To apply: ipfw -q delete set 19, then ipfw -q add 1000 set 19 LINE for each line, in order.
allow log tcp from any to 169.254.169.254 uid apache setup
allow tcp from any to 169.254.169.254 uid root
count log tcp from any to 169.254.169.254 setup
";
    assert_text(&text, expected, "IPFW rules in audit mode");
}
