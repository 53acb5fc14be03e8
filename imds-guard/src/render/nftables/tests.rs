//! nftables output, pinned in full, and a model of nft that runs the
//! commands twice to show that the second run changes nothing.

use std::collections::BTreeMap;

use super::*;
use crate::render::{
    Target, render,
    test_support::{assert_text, clean, policy, rule_lines, shell_commands, shell_words},
};

/// Two IPv4 addresses and one IPv6 address; two allowed users and a gid,
/// a denied group and uid.
const MULTI: &str = r#"
[endpoints]
addresses = ["169.254.169.254", "169.254.170.2", "fd00:ec2::254"]
[allow]
users = ["root", "alice"]
gids = [10]
[deny]
groups = ["staff"]
uids = [33]
"#;

#[test]
fn several_identities_become_sets_in_one_inet_table() {
    let text = clean(MULTI, Target::Nftables, Format::File);
    let expected = "\
# imds-guard render --nftables --format file
# policy: policy.toml, mode enforce
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# meta skgid is the socket's primary gid only: supplementary groups do not match here, unlike in the eBPF guard (see the warnings).
# Load with: nft -f FILE. The empty table and the delete before it make loading twice replace the table, in one transaction.
table inet imds_guard {}
delete table inet imds_guard
table inet imds_guard {
\tset denied_uids {
\t\ttype uid
\t\telements = { 33 }
\t}

\tset denied_gids {
\t\ttype gid
\t\telements = { staff }
\t}

\tset allowed_uids {
\t\ttype uid
\t\telements = { root, alice }
\t}

\tset allowed_gids {
\t\ttype gid
\t\telements = { 10 }
\t}

\tchain by_owner {
\t\tmeta skuid @denied_uids reject
\t\tmeta skgid @denied_gids reject
\t\tmeta skuid @allowed_uids return
\t\tmeta skgid @allowed_gids return
\t\treject
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tip daddr { 169.254.169.254, 169.254.170.2 } meta l4proto tcp jump by_owner
\t\tip6 daddr fd00:ec2::254 meta l4proto tcp jump by_owner
\t}
}
";
    assert_text(&text, expected, "nft -f file for several identities");
}

#[test]
fn the_commands_build_the_same_table() {
    let text = clean(MULTI, Target::Nftables, Format::Commands);
    let expected = "\
# imds-guard render --nftables --format commands
# policy: policy.toml, mode enforce
# TCP only, like the AWS examples: UDP to these addresses is not filtered here (the eBPF guard filters both)
# meta skgid is the socket's primary gid only: supplementary groups do not match here, unlike in the eBPF guard (see the warnings).
# Run as root. Adding, deleting and adding the table again makes a re-run replace it; --format file does the same in one transaction.
nft add table inet imds_guard
nft delete table inet imds_guard
nft add table inet imds_guard
nft 'add set inet imds_guard denied_uids { type uid; elements = { 33 }; }'
nft 'add set inet imds_guard denied_gids { type gid; elements = { staff }; }'
nft 'add set inet imds_guard allowed_uids { type uid; elements = { root, alice }; }'
nft 'add set inet imds_guard allowed_gids { type gid; elements = { 10 }; }'
nft add chain inet imds_guard by_owner
nft add rule inet imds_guard by_owner meta skuid @denied_uids reject
nft add rule inet imds_guard by_owner meta skgid @denied_gids reject
nft add rule inet imds_guard by_owner meta skuid @allowed_uids return
nft add rule inet imds_guard by_owner meta skgid @allowed_gids return
nft add rule inet imds_guard by_owner reject
nft 'add chain inet imds_guard output { type filter hook output priority filter; policy accept; }'
nft 'add rule inet imds_guard output ip daddr { 169.254.169.254, 169.254.170.2 } meta l4proto tcp jump by_owner'
nft add rule inet imds_guard output ip6 daddr fd00:ec2::254 meta l4proto tcp jump by_owner
# To remove: nft delete table inet imds_guard
";
    assert_text(&text, expected, "nft commands for several identities");
}

#[test]
fn audit_logs_with_the_owner_instead_of_rejecting() {
    let toml = r#"
mode = "audit"
[endpoints]
addresses = ["fd00:ec2::254"]
[allow]
users = ["root"]
[deny]
users = ["apache"]
"#;
    let text = clean(toml, Target::Nftables, Format::File);
    assert_eq!(
        rule_lines(&text),
        [
            "table inet imds_guard {}",
            "delete table inet imds_guard",
            "table inet imds_guard {",
            "\tset denied_uids {",
            "\t\ttype uid",
            "\t\telements = { apache }",
            "\t}",
            "\tset allowed_uids {",
            "\t\ttype uid",
            "\t\telements = { root }",
            "\t}",
            "\tchain by_owner {",
            "\t\tmeta skuid @denied_uids log prefix \"imds-guard audit: \" flags skuid return",
            "\t\tmeta skuid @allowed_uids return",
            "\t\tlog prefix \"imds-guard audit: \" flags skuid",
            "\t}",
            "\tchain output {",
            "\t\ttype filter hook output priority filter; policy accept;",
            "\t\tip6 daddr fd00:ec2::254 tcp flags & (fin | syn | rst | ack) == syn jump by_owner",
            "\t}",
            "}",
        ],
        "no reject in audit mode, and only connection openings are logged"
    );
}

#[test]
fn a_policy_without_addresses_of_a_family_has_no_rule_for_it() {
    let toml = "[endpoints]\naddresses = [\"fd00:ec2::254\"]\n[deny]\nuids = [33]\n";
    let text = clean(toml, Target::Nftables, Format::File);
    assert!(
        text.contains("\t\tip6 daddr fd00:ec2::254 meta l4proto tcp jump by_owner\n")
            && !text.contains("ip daddr"),
        "only the IPv6 address is filtered:\n{text}"
    );
}

/// nft's state, as far as these commands touch it: per table, its sets,
/// chains and rules in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ruleset {
    tables: BTreeMap<String, Vec<String>>,
}

impl Ruleset {
    /// Runs one `nft` command line; `false` when nft would fail.
    fn run(&mut self, command: &str) -> bool {
        let words = shell_words(command);
        assert_eq!(words.first().map(String::as_str), Some("nft"), "{command}");
        // nft joins its arguments into one command: split that again.
        let joined = words[1..].join(" ");
        let parts: Vec<&str> = joined.split_whitespace().collect();
        match parts.as_slice() {
            ["add", "table", family, name] => {
                self.tables.entry(format!("{family} {name}")).or_default();
                true
            }
            ["delete", "table", family, name] => {
                self.tables.remove(&format!("{family} {name}")).is_some()
            }
            ["add", kind @ ("set" | "chain"), family, table, name, ..] => {
                let object = format!("{kind} {name}");
                match self.tables.get_mut(&format!("{family} {table}")) {
                    Some(objects) if !objects.contains(&object) => {
                        objects.push(object);
                        true
                    }
                    _ => false,
                }
            }
            ["add", "rule", family, table, chain, rule @ ..] => {
                let chain_object = format!("chain {chain}");
                match self.tables.get_mut(&format!("{family} {table}")) {
                    Some(objects) if objects.contains(&chain_object) => {
                        objects.push(format!("rule {chain} {}", rule.join(" ")));
                        true
                    }
                    _ => false,
                }
            }
            _ => panic!("the model does not know: {command}"),
        }
    }

    fn run_script(&mut self, text: &str) {
        for command in shell_commands(text) {
            // A failing command does not stop a script without `set -e`.
            self.run(&command);
        }
    }
}

#[test]
fn running_the_commands_twice_changes_nothing() {
    for toml in [
        MULTI,
        "[deny]\nusers = [\"apache\"]\n",
        "mode = \"audit\"\n[allow]\ngroups = [\"imds\"]\n",
    ] {
        let text = render(&policy(toml), Target::Nftables, Format::Commands).text;
        let mut once = Ruleset::default();
        once.run_script(&text);
        let mut twice = once.clone();
        twice.run_script(&text);
        assert_eq!(once, twice, "a second run changed the ruleset:\n{text}");
        let objects = &once.tables["inet imds_guard"];
        assert!(
            objects.iter().any(|o| o.starts_with("rule output ")),
            "the table must hook into output:\n{text}"
        );
    }
}

#[test]
fn the_file_replaces_only_its_own_table() {
    for toml in [MULTI, "[deny]\nusers = [\"apache\"]\n"] {
        let text = clean(toml, Target::Nftables, Format::File);
        let lines = rule_lines(&text);
        assert_eq!(
            lines[..3],
            [
                "table inet imds_guard {}",
                "delete table inet imds_guard",
                "table inet imds_guard {"
            ],
            "create-if-missing, delete, define: one transaction under nft -f"
        );
        assert_eq!(lines.last(), Some(&"}"), "nothing after the table");
        assert!(
            !text.contains("flush ruleset"),
            "never touch other tables:\n{text}"
        );
    }
}

#[test]
fn an_empty_file_still_deletes_the_table() {
    let spec = crate::policy::PolicySpec {
        entries: Vec::new(),
        ..policy("[deny]\nusers = [\"apache\"]\n")
    };
    let text = render(&spec, Target::Nftables, Format::File).text;
    assert_eq!(
        rule_lines(&text),
        ["table inet imds_guard {}", "delete table inet imds_guard"],
        "loading a policy with nothing to enforce removes the old rules"
    );
}
