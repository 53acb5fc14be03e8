//! Tests of the whole API: the AWS golden texts, the header, the warnings.

use std::path::PathBuf;

use super::{
    test_support::{clean, policy, rule_lines, shell_commands, shell_words},
    *,
};
use crate::policy::{Endpoint, Entry, Identity, Scope};

/// The lines of the commands output that add a rule: for iptables, every
/// line but the `--check ... ||` guards, after checking that each guard
/// checks exactly the rule the next line inserts first into OUTPUT.
fn adding_lines(text: &str) -> Vec<&str> {
    let lines = rule_lines(text);
    let mut adding = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(guard) = line.strip_suffix(" 2>/dev/null ||") {
            let next = lines
                .get(i + 1)
                .unwrap_or_else(|| panic!("guard {line:?} guards nothing"));
            assert_eq!(
                guard.replacen("--check OUTPUT", "--insert OUTPUT 1", 1),
                *next,
                "the guard must check the rule the next line inserts"
            );
            i += 1;
            continue;
        }
        adding.push(line);
        i += 1;
    }
    adding
}

const AWS_V4: &str = "[endpoints]\naddresses = [\"169.254.169.254\"]\n";

/// The four rules of the AWS documentation, exactly, but inserted first
/// into OUTPUT rather than appended (see `iptables.rs`: appended, an earlier
/// ACCEPT such as ufw's lets every connection through).
#[test]
fn golden_iptables_deny_one_user() {
    let text = clean(
        &format!("{AWS_V4}[deny]\nusers = [\"apache\"]\n"),
        Target::Iptables,
        Format::Commands,
    );
    assert_eq!(
        adding_lines(&text),
        [
            "iptables --insert OUTPUT 1 --proto tcp --destination 169.254.169.254 \
          --match owner --uid-owner apache --jump REJECT"
        ],
        "the AWS deny line, and no other rule line:\n{text}"
    );
}

#[test]
fn golden_iptables_allow_one_user() {
    let text = clean(
        &format!("{AWS_V4}[allow]\nusers = [\"trustworthy-user\"]\n"),
        Target::Iptables,
        Format::Commands,
    );
    assert_eq!(
        adding_lines(&text),
        [
            "iptables --insert OUTPUT 1 --proto tcp --destination 169.254.169.254 \
          --match owner ! --uid-owner trustworthy-user --jump REJECT"
        ],
        "the AWS allow line, and no other rule line:\n{text}"
    );
}

#[test]
fn golden_pf_allow_root() {
    let text = clean(
        &format!("{AWS_V4}[allow]\nusers = [\"root\"]\n"),
        Target::Pf,
        Format::Commands,
    );
    assert_eq!(
        rule_lines(&text),
        [
            "block out inet proto tcp from any to 169.254.169.254",
            "pass out inet proto tcp from any to 169.254.169.254 user root",
        ],
        "the AWS PF lines, in this order (last match wins):\n{text}"
    );
}

#[test]
fn golden_ipfw_allow_root() {
    let text = clean(
        &format!("{AWS_V4}[allow]\nusers = [\"root\"]\n"),
        Target::Ipfw,
        Format::Commands,
    );
    assert_eq!(
        rule_lines(&text),
        [
            "allow tcp from any to 169.254.169.254 uid root",
            "deny tcp from any to 169.254.169.254",
        ],
        "the AWS IPFW lines, in this order (first match wins):\n{text}"
    );
}

#[test]
fn every_output_starts_with_the_same_header() {
    let spec = policy(&format!("{AWS_V4}[allow]\nusers = [\"root\"]\n"));
    for target in Target::ALL {
        for format in [Format::Commands, Format::File] {
            let text = render(&spec, target, format).text;
            let header: Vec<&str> = text.lines().take(3).collect();
            assert_eq!(
                header,
                [
                    format!("# imds-guard render --{target} --format {format}").as_str(),
                    "# policy: policy.toml, mode enforce",
                    "# TCP only, like the AWS examples: UDP to these addresses is not \
                     filtered here (the eBPF guard filters both)",
                ],
                "header of --{target} --format {format}"
            );
            assert!(
                text.ends_with('\n'),
                "--{target} output ends with a newline"
            );
        }
    }
}

#[test]
fn ipv6_endpoints_with_iptables_ask_for_ip6tables() {
    // No [endpoints]: the defaults, one IPv4 and one IPv6 address.
    let spec = policy("[deny]\nusers = [\"apache\"]\n");
    let rendered = render(&spec, Target::Iptables, Format::Commands);
    assert_eq!(
        rendered.warnings,
        [
            "policy.toml: fd00:ec2::254 is an IPv6 address, which iptables does not filter; \
          render --ip6tables as well"
        ],
        "a built-in address has no line:col"
    );
    assert!(
        !rendered.text.contains("fd00"),
        "iptables output must not name the IPv6 address:\n{}",
        rendered.text
    );
}

#[test]
fn ipv4_endpoints_with_ip6tables_ask_for_iptables() {
    let spec = policy(
        "[endpoints]\naddresses = [\"169.254.169.254\", \"fd00:ec2::254\"]\n\
         [deny]\nusers = [\"apache\"]\n",
    );
    let rendered = render(&spec, Target::Ip6tables, Format::Commands);
    assert_eq!(
        rendered.warnings,
        [
            "policy.toml:2:14: 169.254.169.254 is an IPv4 address, which ip6tables does not \
          filter; render --iptables as well"
        ],
        "the warning points at the address in the file"
    );
    assert_eq!(
        adding_lines(&rendered.text),
        [
            "ip6tables --insert OUTPUT 1 --proto tcp --destination fd00:ec2::254 \
          --match owner --uid-owner apache --jump REJECT"
        ],
        "ip6tables keeps the AWS form for the IPv6 address"
    );
}

#[test]
fn a_family_without_addresses_renders_nothing_and_says_so() {
    let spec = policy(&format!("{AWS_V4}[deny]\nusers = [\"apache\"]\n"));
    let commands = render(&spec, Target::Ip6tables, Format::Commands);
    assert_eq!(
        rule_lines(&commands.text),
        Vec::<&str>::new(),
        "no ip6tables command for a policy without IPv6 addresses"
    );
    assert_eq!(
        commands.warnings.last().map(String::as_str),
        Some("policy.toml: nothing to render for ip6tables: the policy protects no IPv6 address")
    );
    // The file still empties the chains: loading it means "protect nothing".
    let file = render(&spec, Target::Ip6tables, Format::File);
    assert_eq!(
        rule_lines(&file.text),
        [
            "*filter",
            ":IMDS_GUARD - [0:0]",
            ":IMDS_GUARD_OWNER - [0:0]",
            "COMMIT"
        ]
    );
}

#[test]
fn targets_that_filter_both_families_do_not_warn() {
    let spec = policy("[allow]\nusers = [\"root\"]\nuids = [1500]\n");
    for target in [Target::Nftables, Target::Pf, Target::Ipfw] {
        for format in [Format::Commands, Format::File] {
            let rendered = render(&spec, target, format);
            assert_eq!(
                rendered.warnings,
                Vec::<String>::new(),
                "--{target} --format {format} expresses this policy fully"
            );
        }
    }
}

/// A policy [`PolicySpec::parse`] would refuse, to see that rendering is
/// total anyway.
fn unchecked(entries: Vec<Entry>) -> PolicySpec {
    PolicySpec {
        path: PathBuf::from("policy.toml"),
        mode: Mode::Enforce,
        endpoints: vec![Endpoint {
            addr: std::net::IpAddr::from([169, 254, 169, 254]),
            port: None,
            at: None,
        }],
        entries,
        forward: Default::default(),
        presets: Vec::new(),
        workload: Vec::new(),
        requests: Default::default(),
    }
}

#[test]
fn a_policy_without_entries_renders_no_rule_and_warns() {
    let spec = unchecked(Vec::new());
    for target in Target::ALL {
        let rendered = render(&spec, target, Format::Commands);
        assert_eq!(
            rule_lines(&rendered.text),
            Vec::<&str>::new(),
            "--{target}: nothing to enforce"
        );
        assert!(
            rendered
                .warnings
                .iter()
                .any(|w| w.contains("the policy has no [allow] or [deny] entry")),
            "--{target} must warn: {:?}",
            rendered.warnings
        );
    }
}

#[test]
fn unusual_names_are_quoted_and_warned_about() {
    let spec = policy(&format!("{AWS_V4}[deny]\nusers = [\"$(reboot)\"]\n"));
    let rendered = render(&spec, Target::Iptables, Format::Commands);
    assert_eq!(
        rendered.warnings,
        [
            "policy.toml:4:10: user name \"$(reboot)\" is unusual (not [A-Za-z_][A-Za-z0-9._-]*); \
          check that iptables reads it as written before loading the rules"
        ]
    );
    let commands = shell_commands(&rendered.text);
    let append = commands
        .iter()
        .find(|c| c.starts_with("iptables --check"))
        .unwrap_or_else(|| panic!("no rule in:\n{}", rendered.text));
    let words = shell_words(append);
    assert!(
        words.iter().any(|w| w == "$(reboot)"),
        "the shell must see the name as one literal word: {words:?}"
    );
}

#[test]
fn a_name_the_target_cannot_write_is_left_out_and_the_default_still_denies() {
    let spec = policy(&format!(
        "{AWS_V4}[allow]\nusers = [\"root\", \"a\\\"b\"]\n"
    ));
    let rendered = render(&spec, Target::Nftables, Format::File);
    assert_eq!(
        rendered.warnings,
        [
            "policy.toml:4:18: user name \"a\\\"b\" cannot be written for nftables; \
          its allow entry is left out of these rules"
        ]
    );
    assert!(
        rendered
            .text
            .contains("# left out: user \"a\\\"b\" (see the warnings on stderr)\n"),
        "the output says what is missing:\n{}",
        rendered.text
    );
    assert!(
        rendered.text.contains("elements = { root }\n") && rendered.text.contains("\t\treject\n"),
        "root stays allowed and everyone else, a\"b included, is rejected:\n{}",
        rendered.text
    );
}

#[test]
fn every_deny_of_a_name_that_cannot_be_written_is_a_warning() {
    let spec = unchecked(vec![Entry {
        action: Action::Deny,
        identity: Identity::User("0x10".to_owned()),
        at: Location { line: 3, col: 9 },
        scope: Scope::Anywhere,
    }]);
    let rendered = render(&spec, Target::Ipfw, Format::Commands);
    assert_eq!(
        rendered.warnings,
        [
            "policy.toml:3:9: user name \"0x10\" cannot be written for ipfw; \
             its deny entry is left out of these rules",
            "policy.toml: nothing to render for ipfw: \
             no entry of the policy can be written for this target",
        ]
    );
}

#[test]
fn formats_parse_and_print_as_the_cli_spells_them() {
    for format in [Format::Commands, Format::File] {
        assert_eq!(
            format.to_string().parse::<Format>().ok(),
            Some(format),
            "{format} round-trips"
        );
    }
    match "xml".parse::<Format>() {
        Ok(format) => panic!("xml is not a render format, got {format}"),
        Err(err) => assert_eq!(
            err.to_string(),
            "unknown render format \"xml\": expected commands or file"
        ),
    }
    let names: Vec<String> = Target::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["iptables", "ip6tables", "nftables", "pf", "ipfw"]);
}

#[test]
fn what_a_firewall_cannot_match_of_the_callers_identity_is_a_warning() {
    let spec = policy(
        "[endpoints]\naddresses = [\"169.254.169.254\"]\n[allow]\ngroups = [\"imds\"]\n\
         [allow.host]\nuids = [0]\n[deny]\ngids = [666]\n",
    );
    let warnings = |target| render(&spec, target, Format::Commands).warnings;
    let host_only = "policy.toml:6:9: {} cannot tell the host from a container: this [allow.host] \
                     entry is rendered as an allow, so uid 0 in a container that shares the \
                     host's network namespace (or its own pid or user namespace) is allowed \
                     too, while the eBPF guard refuses it";
    // iptables and IPFW match supplementary groups as the guard does: only
    // the host-only entry is beyond them.
    for target in [Target::Iptables, Target::Ipfw] {
        assert_eq!(
            warnings(target),
            [host_only.replace("{}", target.name())],
            "{target}"
        );
    }
    assert!(
        render(&spec, Target::Iptables, Format::Commands)
            .text
            .contains("--gid-owner 666 --suppl-groups"),
    );
    // nftables and PF see the primary gid only: each group entry says what
    // that changes.
    for target in [Target::Nftables, Target::Pf] {
        let name = target.name();
        assert_eq!(
            warnings(target),
            [
                format!(
                    "policy.toml:4:11: {name} matches only the primary gid: a process holding this \
                     allowed group \"imds\" as a supplementary group is refused by these rules, \
                     while the eBPF guard matches it"
                ),
                host_only.replace("{}", name),
                format!(
                    "policy.toml:8:9: {name} matches only the primary gid: a process holding this \
                     denied gid 666 as a supplementary group gets through these rules, while \
                     the eBPF guard matches it"
                ),
            ],
        );
    }
}

/// A `[requests.NAME]` identity is rendered as denied (a firewall cannot
/// read paths), with a warning that `--strict` turns into a failure; the
/// whole-service allow stays an allow. `[imdsv2]` warns too.
#[test]
fn request_sets_are_rendered_as_denied_with_a_warning() {
    let toml = format!(
        "{AWS_V4}[allow]\nusers = [\"root\"]\n[requests.monitoring]\nusers = [\"cw\"]\n\
         rules = [\"GET /latest/meta-data/placement/\"]\n[imdsv2]\nrequired = true\n"
    );
    let rendered = render(&policy(&toml), Target::Iptables, Format::Commands);
    let lines = adding_lines(&rendered.text);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--uid-owner cw --jump REJECT")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--uid-owner root --jump RETURN")),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("--uid-owner cw --jump RETURN")),
        "{lines:#?}"
    );
    assert_eq!(
        rendered.warnings,
        [
            "policy.toml: iptables cannot require IMDSv2 ([imdsv2]): it does not read \
             requests; set HttpTokens=required on the instance when every caller can use IMDSv2",
            "policy.toml:6:10: iptables cannot express request paths: user \"cw\" of \
             [requests.monitoring] is rendered as denied (the eBPF guard lets it send the rule \
             set's requests)",
        ]
    );
}
