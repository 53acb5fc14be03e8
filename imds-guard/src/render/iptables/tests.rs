//! iptables and ip6tables output, pinned in full, and a model of the
//! filter table that runs the commands and loads the restore file twice
//! (the second time must change nothing) and sends packets through the
//! result (they must meet the eBPF guard's decision).

use std::{collections::BTreeMap, net::IpAddr};

use super::*;
use crate::{
    policy::Mode,
    render::{
        Target, render,
        test_support::{
            CORPUS, assert_text, clean, guard, policy, processes, resolve_id, rule_lines,
            shell_commands, shell_words,
        },
    },
};

/// Allows two users and a gid, denies a group and a uid.
const MULTI: &str = r#"
[endpoints]
addresses = ["169.254.169.254"]
[allow]
users = ["root", "alice"]
gids = [10]
[deny]
groups = ["staff"]
uids = [33]
"#;

const HEADER: &str = "\
# imds-guard render --iptables --format commands
# policy: policy.toml, mode enforce
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
";

const SUPPL_GROUPS_NOTE: &str = "\
# --suppl-groups: the AWS note that the owner match sees only a process's primary group predates this option,
# which makes --gid-owner match supplementary groups too, as the eBPF guard does.
";

#[test]
fn several_identities_use_a_dedicated_chain() {
    let text = clean(MULTI, Target::Iptables, Format::Commands);
    let expected = format!(
        "{HEADER}{SUPPL_GROUPS_NOTE}\
# Run as root. Each --insert into OUTPUT is guarded by --check, so running these commands twice adds nothing; --format file replaces a policy atomically.
# Inserted first in OUTPUT: an earlier ACCEPT (ufw's ruleset) would otherwise let every connection through. Check after loading: iptables --list OUTPUT 1 --numeric names the rule.
iptables --new-chain IMDS_GUARD 2>/dev/null || iptables --flush IMDS_GUARD
iptables --new-chain IMDS_GUARD_OWNER 2>/dev/null || iptables --flush IMDS_GUARD_OWNER
iptables --append IMDS_GUARD_OWNER --match owner --uid-owner 33 --jump REJECT
iptables --append IMDS_GUARD_OWNER --match owner --gid-owner staff --suppl-groups --jump REJECT
iptables --append IMDS_GUARD_OWNER --match owner --uid-owner root --jump RETURN
iptables --append IMDS_GUARD_OWNER --match owner --uid-owner alice --jump RETURN
iptables --append IMDS_GUARD_OWNER --match owner --gid-owner 10 --suppl-groups --jump RETURN
iptables --append IMDS_GUARD_OWNER --jump REJECT
iptables --append IMDS_GUARD --proto tcp --destination 169.254.169.254 --jump IMDS_GUARD_OWNER
iptables --check OUTPUT --jump IMDS_GUARD 2>/dev/null ||
iptables --insert OUTPUT 1 --jump IMDS_GUARD
# To remove: iptables --delete OUTPUT --jump IMDS_GUARD; iptables --flush IMDS_GUARD; iptables --delete-chain IMDS_GUARD; iptables --flush IMDS_GUARD_OWNER; iptables --delete-chain IMDS_GUARD_OWNER
"
    );
    assert_text(&text, &expected, "iptables commands for several identities");
}

#[test]
fn the_file_is_a_restore_file_of_the_two_chains() {
    let text = clean(MULTI, Target::Iptables, Format::File);
    let expected = "\
# imds-guard render --iptables --format file
# policy: policy.toml, mode enforce
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# --suppl-groups: the AWS note that the owner match sees only a process's primary group predates this option,
# which makes --gid-owner match supplementary groups too, as the eBPF guard does.
# Load with: iptables-restore --noflush < FILE (declaring a chain under --noflush flushes it: loading twice leaves one copy).
# Then hook the chain into OUTPUT, once: iptables --check OUTPUT --jump IMDS_GUARD 2>/dev/null || iptables --insert OUTPUT 1 --jump IMDS_GUARD
*filter
:IMDS_GUARD - [0:0]
:IMDS_GUARD_OWNER - [0:0]
--append IMDS_GUARD_OWNER --match owner --uid-owner 33 --jump REJECT
--append IMDS_GUARD_OWNER --match owner --gid-owner staff --suppl-groups --jump REJECT
--append IMDS_GUARD_OWNER --match owner --uid-owner root --jump RETURN
--append IMDS_GUARD_OWNER --match owner --uid-owner alice --jump RETURN
--append IMDS_GUARD_OWNER --match owner --gid-owner 10 --suppl-groups --jump RETURN
--append IMDS_GUARD_OWNER --jump REJECT
--append IMDS_GUARD --proto tcp --destination 169.254.169.254 --jump IMDS_GUARD_OWNER
COMMIT
";
    assert_text(
        &text,
        expected,
        "iptables-restore file for several identities",
    );
}

#[test]
fn ip6tables_filters_the_ipv6_addresses() {
    let toml = r#"
[endpoints]
addresses = ["fd00:ec2::254", "fd00:ec2::253"]
[allow]
users = ["root", "alice"]
"#;
    let text = clean(toml, Target::Ip6tables, Format::File);
    assert_eq!(
        rule_lines(&text),
        [
            "*filter",
            ":IMDS_GUARD - [0:0]",
            ":IMDS_GUARD_OWNER - [0:0]",
            "--append IMDS_GUARD_OWNER --match owner --uid-owner root --jump RETURN",
            "--append IMDS_GUARD_OWNER --match owner --uid-owner alice --jump RETURN",
            "--append IMDS_GUARD_OWNER --jump REJECT",
            "--append IMDS_GUARD --proto tcp --destination fd00:ec2::254 --jump IMDS_GUARD_OWNER",
            "--append IMDS_GUARD --proto tcp --destination fd00:ec2::253 --jump IMDS_GUARD_OWNER",
            "COMMIT",
        ]
    );
    assert!(
        text.contains("ip6tables-restore --noflush")
            && text.contains("ip6tables --insert OUTPUT 1 --jump IMDS_GUARD"),
        "the loading instructions name ip6tables:\n{text}"
    );
}

#[test]
fn one_allowed_group_is_the_aws_line_with_suppl_groups() {
    let toml = r#"
[endpoints]
addresses = ["169.254.169.254"]
[allow]
groups = ["imds"]
"#;
    let text = clean(toml, Target::Iptables, Format::Commands);
    let expected = format!(
        "{HEADER}{SUPPL_GROUPS_NOTE}\
# Run as root. Each --insert into OUTPUT is guarded by --check, so running these commands twice adds nothing; --format file replaces a policy atomically.
# Inserted first in OUTPUT: an earlier ACCEPT (ufw's ruleset) would otherwise let every connection through. Check after loading: iptables --list OUTPUT 1 --numeric names the rule.
iptables --check OUTPUT --proto tcp --destination 169.254.169.254 --match owner ! --gid-owner imds --suppl-groups --jump REJECT 2>/dev/null ||
iptables --insert OUTPUT 1 --proto tcp --destination 169.254.169.254 --match owner ! --gid-owner imds --suppl-groups --jump REJECT
# To remove: iptables --delete OUTPUT --proto tcp --destination 169.254.169.254 --match owner ! --gid-owner imds --suppl-groups --jump REJECT
"
    );
    assert_text(&text, &expected, "one allowed group");
}

#[test]
fn a_deny_and_an_allow_need_the_chain() {
    // One line per identity on OUTPUT cannot say "deny everyone but root,
    // and deny apache even if it is in an allowed group".
    let toml = r#"
[endpoints]
addresses = ["169.254.169.254"]
[allow]
users = ["root"]
[deny]
users = ["apache"]
"#;
    let text = clean(toml, Target::Iptables, Format::Commands);
    assert!(
        text.contains("iptables --new-chain IMDS_GUARD_OWNER"),
        "expected the chain form:\n{text}"
    );
}

#[test]
fn audit_logs_connection_openings_instead_of_rejecting() {
    let toml = r#"
mode = "audit"
[endpoints]
addresses = ["169.254.169.254"]
[deny]
users = ["apache"]
"#;
    let text = clean(toml, Target::Iptables, Format::Commands);
    let expected = "\
# imds-guard render --iptables --format commands
# policy: policy.toml, mode audit: would-deny connections are logged and let through
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# LOG writes to the kernel log; in a network namespace other than the host's it needs sysctl net.netfilter.nf_log_all_netns=1.
# Run as root. Each --insert into OUTPUT is guarded by --check, so running these commands twice adds nothing; --format file replaces a policy atomically.
# Inserted first in OUTPUT: an earlier ACCEPT (ufw's ruleset) would otherwise let every connection through. Check after loading: iptables --list OUTPUT 1 --numeric names the rule.
iptables --check OUTPUT --proto tcp --destination 169.254.169.254 --syn --match owner --uid-owner apache --jump LOG --log-prefix 'imds-guard audit: ' --log-uid 2>/dev/null ||
iptables --insert OUTPUT 1 --proto tcp --destination 169.254.169.254 --syn --match owner --uid-owner apache --jump LOG --log-prefix 'imds-guard audit: ' --log-uid
# To remove: iptables --delete OUTPUT --proto tcp --destination 169.254.169.254 --syn --match owner --uid-owner apache --jump LOG --log-prefix 'imds-guard audit: ' --log-uid
";
    assert_text(&text, expected, "audit, one denied user");
}

#[test]
fn audit_stops_after_logging_a_denied_identity() {
    let toml = r#"
mode = "audit"
[endpoints]
addresses = ["169.254.169.254"]
[allow]
users = ["root"]
[deny]
users = ["apache"]
"#;
    let text = clean(toml, Target::Iptables, Format::File);
    assert_eq!(
        rule_lines(&text),
        [
            "*filter",
            ":IMDS_GUARD - [0:0]",
            ":IMDS_GUARD_OWNER - [0:0]",
            "--append IMDS_GUARD_OWNER --match owner --uid-owner apache --jump LOG --log-prefix \"imds-guard audit: \" --log-uid",
            "--append IMDS_GUARD_OWNER --match owner --uid-owner apache --jump RETURN",
            "--append IMDS_GUARD_OWNER --match owner --uid-owner root --jump RETURN",
            "--append IMDS_GUARD_OWNER --jump LOG --log-prefix \"imds-guard audit: \" --log-uid",
            "--append IMDS_GUARD --proto tcp --destination 169.254.169.254 --syn --jump IMDS_GUARD_OWNER",
            "COMMIT",
        ],
        "no REJECT in audit mode, and one log line per connection"
    );
}

/// The filter table, as far as these rules touch it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    /// Each rule as its words, quotes removed.
    chains: BTreeMap<String, Vec<Vec<String>>>,
}

/// Targets that are not chains.
const VERDICTS: [&str; 5] = ["ACCEPT", "DROP", "REJECT", "RETURN", "LOG"];

impl Filter {
    fn new() -> Self {
        let chains = ["INPUT", "FORWARD", "OUTPUT"]
            .into_iter()
            .map(|c| (c.to_owned(), Vec::new()))
            .collect();
        Self { chains }
    }

    /// Runs one iptables command (without the tool's name); `false` when
    /// iptables would exit non-zero.
    fn run(&mut self, args: &[String]) -> bool {
        let (op, rest) = match args {
            [op, rest @ ..] => (op.as_str(), rest),
            [] => panic!("iptables without arguments"),
        };
        let (chain, spec) = match rest {
            [chain, spec @ ..] => (chain.clone(), spec.to_vec()),
            [] => panic!("iptables {op} without a chain"),
        };
        match op {
            "--new-chain" => self.chains.insert(chain, Vec::new()).is_none(),
            "--flush" => self.chains.get_mut(&chain).map(Vec::clear).is_some(),
            "--check" => self.chains.get(&chain).is_some_and(|r| r.contains(&spec)),
            "--insert" => {
                let (at, spec) = match spec.split_first() {
                    Some((n, rest)) if n.parse::<usize>().is_ok() => {
                        (n.parse::<usize>().unwrap_or(1), rest.to_vec())
                    }
                    _ => (1, spec),
                };
                let known = self.known_target(&spec);
                match self.chains.get_mut(&chain) {
                    Some(rules) if known && at >= 1 && at <= rules.len() + 1 => {
                        rules.insert(at - 1, spec);
                        true
                    }
                    _ => false,
                }
            }
            "--append" => {
                let target = spec
                    .iter()
                    .position(|w| w == "--jump")
                    .and_then(|i| spec.get(i + 1));
                let known = target
                    .is_none_or(|t| VERDICTS.contains(&t.as_str()) || self.chains.contains_key(t));
                match self.chains.get_mut(&chain) {
                    Some(rules) if known => {
                        rules.push(spec);
                        true
                    }
                    _ => false,
                }
            }
            other => panic!("the model does not know iptables {other}"),
        }
    }

    /// Whether the rule's `--jump` target exists (a verdict or a chain).
    fn known_target(&self, spec: &[String]) -> bool {
        spec.iter()
            .position(|w| w == "--jump")
            .and_then(|i| spec.get(i + 1))
            .is_none_or(|t| VERDICTS.contains(&t.as_str()) || self.chains.contains_key(t))
    }

    /// Runs the commands output as sh would: `a || b` runs b when a fails.
    fn run_script(&mut self, tool: &str, text: &str) {
        for list in shell_commands(text) {
            for command in list.split(" || ") {
                let mut words = shell_words(command);
                words.retain(|w| w != "2>/dev/null");
                assert_eq!(words.first().map(String::as_str), Some(tool), "{command}");
                if self.run(&words[1..]) {
                    break;
                }
            }
        }
    }

    /// Loads a restore file as `iptables-restore --noflush` does: a chain
    /// declaration creates the chain or flushes it, then the appends run.
    fn restore_noflush(&mut self, text: &str) {
        let lines = rule_lines(text);
        assert_eq!(lines.first(), Some(&"*filter"), "a filter table file");
        assert_eq!(lines.last(), Some(&"COMMIT"), "committed at the end");
        for line in &lines[1..lines.len() - 1] {
            if let Some(declaration) = line.strip_prefix(':') {
                let chain = declaration.split(' ').next().unwrap_or_default();
                assert!(
                    !["INPUT", "FORWARD", "OUTPUT"].contains(&chain),
                    "the file must not declare a built-in chain: {line}"
                );
                self.chains.insert(chain.to_owned(), Vec::new());
            } else {
                let words = shell_words(line);
                assert!(self.run(&words), "restore line fails: {line}");
            }
        }
    }

    fn assert_no_duplicates(&self) {
        for (chain, rules) in &self.chains {
            let mut seen = rules.clone();
            seen.sort();
            seen.dedup();
            assert_eq!(
                seen.len(),
                rules.len(),
                "duplicate rules in {chain}: {rules:#?}"
            );
        }
    }
}

const IDEMPOTENCE_CASES: [&str; 5] = [
    "[deny]\nusers = [\"apache\"]\n",
    "[allow]\nusers = [\"trustworthy-user\"]\n",
    "[allow]\ngroups = [\"imds\"]\n",
    MULTI,
    "mode = \"audit\"\n[allow]\nusers = [\"root\", \"alice\"]\n[deny]\ngids = [7]\n",
];

#[test]
fn running_the_commands_twice_changes_nothing() {
    for toml in IDEMPOTENCE_CASES {
        for (target, tool) in [
            (Target::Iptables, "iptables"),
            (Target::Ip6tables, "ip6tables"),
        ] {
            let text = render(&policy(toml), target, Format::Commands).text;
            let mut once = Filter::new();
            once.run_script(tool, &text);
            let mut twice = once.clone();
            twice.run_script(tool, &text);
            assert_eq!(
                once, twice,
                "a second run of --{target} changed the rules:\n{text}"
            );
            once.assert_no_duplicates();
            // MULTI has no IPv6 address, so ip6tables has nothing to add.
            let has_rules = !rule_lines(&text).is_empty();
            assert_eq!(
                !once.chains["OUTPUT"].is_empty(),
                has_rules,
                "the rules must be reachable from OUTPUT:\n{text}"
            );
        }
    }
}

#[test]
fn loading_the_file_twice_changes_nothing_and_replaces_the_policy() {
    for toml in IDEMPOTENCE_CASES {
        let text = render(&policy(toml), Target::Iptables, Format::File).text;
        for line in rule_lines(&text) {
            assert!(
                !line.contains("OUTPUT") && !line.starts_with("--insert"),
                "the restore file touches only its own chains: {line}"
            );
        }
        let mut once = Filter::new();
        once.restore_noflush(&text);
        let mut twice = once.clone();
        twice.restore_noflush(&text);
        assert_eq!(once, twice, "a second load changed the rules:\n{text}");
        once.assert_no_duplicates();
    }
    // Loading another policy's file leaves only the new policy.
    let mut filter = Filter::new();
    filter.restore_noflush(&render(&policy(MULTI), Target::Iptables, Format::File).text);
    let single = render(
        &policy(IDEMPOTENCE_CASES[0]),
        Target::Iptables,
        Format::File,
    )
    .text;
    filter.restore_noflush(&single);
    let mut fresh = Filter::new();
    fresh.restore_noflush(&single);
    assert_eq!(filter, fresh, "the file must replace the previous policy");
}

#[test]
fn the_hook_in_the_file_header_is_idempotent() {
    let text = render(&policy(MULTI), Target::Iptables, Format::File).text;
    let hook = text
        .lines()
        .find_map(|l| l.strip_prefix("# Then hook the chain into OUTPUT, once: "))
        .unwrap_or_else(|| panic!("no hook command in:\n{text}"));
    let mut filter = Filter::new();
    filter.restore_noflush(&text);
    filter.run_script("iptables", hook);
    filter.run_script("iptables", hook);
    assert_eq!(
        filter.chains["OUTPUT"],
        [["--jump", "IMDS_GUARD"]],
        "one hook, however often the command runs"
    );
}

/// How a chain ended for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// RETURN, or the end of the chain.
    Return,
    Reject,
    /// ACCEPT: the packet leaves; nothing after it in any chain sees it.
    Accept,
}

impl Filter {
    /// Sends a TCP SYN from a socket of `uid`:`gid` (no supplementary
    /// groups) to `to` through `chain`, as netfilter would. Returns how the
    /// chain ended and whether a LOG rule saw the packet.
    fn evaluate(&self, chain: &str, to: IpAddr, uid: u32, gid: u32) -> (Flow, bool) {
        let mut logged = false;
        for rule in &self.chains[chain] {
            let mut words = rule.iter().map(String::as_str);
            let mut matches = true;
            let mut target = None;
            while let Some(word) = words.next() {
                let mut value = || {
                    words
                        .next()
                        .unwrap_or_else(|| panic!("{word} without a value: {rule:?}"))
                };
                match word {
                    "--proto" => assert_eq!(value(), "tcp", "{rule:?}"),
                    "--syn" => {}
                    "--destination" => matches &= value().parse::<IpAddr>().ok() == Some(to),
                    "--match" => assert_eq!(value(), "owner", "{rule:?}"),
                    "!" | "--suppl-groups" | "--log-uid" => {}
                    "--uid-owner" | "--gid-owner" => {
                        let group = word == "--gid-owner";
                        let id = resolve_id(value(), group);
                        let hit = id == if group { gid } else { uid };
                        let negated = rule.windows(2).any(|w| w[0] == "!" && w[1] == word);
                        matches &= hit != negated;
                    }
                    "--jump" => target = Some(value()),
                    "--log-prefix" => {
                        value();
                    }
                    other => panic!("the model does not know {other:?} in {rule:?}"),
                }
            }
            if !matches {
                continue;
            }
            match target {
                Some("REJECT") => return (Flow::Reject, logged),
                Some("ACCEPT") => return (Flow::Accept, logged),
                Some("RETURN") => return (Flow::Return, logged),
                Some("LOG") => logged = true,
                Some(next) => {
                    let (flow, log) = self.evaluate(next, to, uid, gid);
                    logged |= log;
                    if flow != Flow::Return {
                        return (flow, logged);
                    }
                }
                None => panic!("a rule without a target: {rule:?}"),
            }
        }
        (Flow::Return, logged)
    }
}

#[test]
fn the_chains_give_the_guards_decision() {
    for toml in CORPUS {
        let spec = policy(toml);
        for (target, tool, v6) in [
            (Target::Iptables, "iptables", false),
            (Target::Ip6tables, "ip6tables", true),
        ] {
            let commands = render(&spec, target, Format::Commands).text;
            let mut from_commands = Filter::new();
            from_commands.run_script(tool, &commands);
            let file = render(&spec, target, Format::File).text;
            let mut from_file = Filter::new();
            from_file.restore_noflush(&file);
            from_file.run_script(tool, &hook_commands(tool).join(" "));
            for (filter, text) in [(&from_commands, &commands), (&from_file, &file)] {
                for endpoint in spec.endpoints.iter().filter(|e| e.addr.is_ipv6() == v6) {
                    for (uid, gid) in processes() {
                        let (flow, logged) = filter.evaluate("OUTPUT", endpoint.addr, uid, gid);
                        let rejected = flow == Flow::Reject;
                        let denied = guard(&spec, uid, gid) == Action::Deny;
                        let expected = match spec.mode {
                            Mode::Enforce => (denied, false),
                            Mode::Audit => (false, denied),
                        };
                        assert_eq!(
                            (rejected, logged),
                            expected,
                            "uid {uid} gid {gid} to {}: (rejected, logged) differs from the \
                             guard for:\n{toml}\n{text}",
                            endpoint.addr
                        );
                    }
                }
            }
        }
    }
}

/// OUTPUT already accepting everything, as ufw's stock ruleset does through
/// its chains: rules appended after it would let every denied caller
/// through. The rendered rules go first, so the guard's verdicts hold, from
/// the commands and from the file with its hook command alike.
#[test]
fn an_earlier_accept_in_output_lets_no_denied_caller_through() {
    let accept_all = ["--append", "OUTPUT", "--jump", "ACCEPT"].map(String::from);
    for toml in CORPUS {
        let spec = policy(toml);
        if spec.mode == Mode::Audit {
            continue;
        }
        let commands = render(&spec, Target::Iptables, Format::Commands).text;
        let mut from_commands = Filter::new();
        assert!(from_commands.run(&accept_all));
        from_commands.run_script("iptables", &commands);
        let file = render(&spec, Target::Iptables, Format::File).text;
        let mut from_file = Filter::new();
        assert!(from_file.run(&accept_all));
        from_file.restore_noflush(&file);
        from_file.run_script("iptables", &hook_commands("iptables").join(" "));
        // Without the rules, everyone gets through: the test can fail.
        let mut bare = Filter::new();
        assert!(bare.run(&accept_all));
        for filter in [&from_commands, &from_file] {
            for endpoint in spec.endpoints.iter().filter(|e| e.addr.is_ipv4()) {
                for (uid, gid) in processes() {
                    let denied = guard(&spec, uid, gid) == Action::Deny;
                    let (flow, _) = filter.evaluate("OUTPUT", endpoint.addr, uid, gid);
                    assert_eq!(
                        flow == Flow::Reject,
                        denied,
                        "uid {uid} gid {gid} to {}:\n{toml}\n{commands}",
                        endpoint.addr
                    );
                    assert_eq!(
                        bare.evaluate("OUTPUT", endpoint.addr, uid, gid).0,
                        Flow::Accept
                    );
                }
            }
        }
    }
}
