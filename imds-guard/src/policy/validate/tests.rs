//! Every check of `validate.rs`, asserted on the full text a user sees:
//! `FILE:LINE:COL: message`, all lines, so an extra or missing diagnostic
//! fails as surely as a wrong one.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::policy::{
    Action, DEFAULT_ADDRESSES, Endpoint, Entry, Identity, Location, Mode, PolicySpec, Scope,
};

fn spec(text: &str) -> PolicySpec {
    PolicySpec::parse(Path::new("p.toml"), text)
        .unwrap_or_else(|e| panic!("the policy was refused:\n{e}\n--- policy:\n{text}"))
}

/// Every line of the error for `text`.
fn errors(text: &str) -> String {
    match PolicySpec::parse(Path::new("p.toml"), text) {
        Ok(spec) => panic!("the policy was accepted as {spec:#?}\n--- policy:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn at(line: u32, col: u32) -> Location {
    Location { line, col }
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} in a test: {e}"))
}

fn entry(action: Action, identity: Identity, line: u32, col: u32) -> Entry {
    Entry {
        action,
        identity,
        at: at(line, col),
        scope: Scope::Anywhere,
    }
}

// ---- what a valid policy becomes ----

#[test]
fn absent_mode_and_endpoints_mean_enforce_and_the_default_addresses() {
    let spec = spec("[allow]\nuids = [0]\n");
    assert_eq!(spec.path, PathBuf::from("p.toml"));
    assert_eq!(spec.mode, Mode::Enforce);
    let defaults: Vec<Endpoint> = DEFAULT_ADDRESSES
        .iter()
        .map(|a| Endpoint {
            addr: ip(a),
            port: None,
            at: None,
        })
        .collect();
    assert_eq!(spec.endpoints, defaults);
    assert_eq!(spec.entries, [entry(Action::Allow, Identity::Uid(0), 2, 9)]);
    assert_eq!(spec.default_action(), Action::Deny);
}

#[test]
fn an_endpoints_table_without_addresses_keeps_the_defaults() {
    let spec = spec("[endpoints]\n[deny]\nusers = [\"apache\"]\n");
    let addrs: Vec<IpAddr> = spec.endpoints.iter().map(|e| e.addr).collect();
    assert_eq!(addrs, [ip("169.254.169.254"), ip("fd00:ec2::254")]);
}

#[test]
fn a_full_policy_keeps_positions_and_the_documented_entry_order() {
    // Keys written out of order: entries still come [allow] then [deny],
    // each users, uids, groups, gids.
    let text = "\
[deny]
gids = [666]
users = [\"apache\"]

[allow]
gids = [1500]
groups = [\"imds\"]
uids = [1001, 1002]
users = [\"root\"]

[endpoints]
addresses = [\"fd00:ec2::254\", \"169.254.170.2\"]
";
    let spec = spec(&format!("mode = \"audit\"\n{text}"));
    assert_eq!(spec.mode, Mode::Audit);
    assert_eq!(
        spec.endpoints,
        [
            Endpoint {
                addr: ip("fd00:ec2::254"),
                port: None,
                at: Some(at(13, 14)),
            },
            Endpoint {
                addr: ip("169.254.170.2"),
                port: None,
                at: Some(at(13, 31)),
            },
        ]
    );
    let user = |n: &str| Identity::User(n.to_owned());
    let group = |n: &str| Identity::Group(n.to_owned());
    assert_eq!(
        spec.entries,
        [
            entry(Action::Allow, user("root"), 10, 10),
            entry(Action::Allow, Identity::Uid(1001), 9, 9),
            entry(Action::Allow, Identity::Uid(1002), 9, 15),
            entry(Action::Allow, group("imds"), 8, 11),
            entry(Action::Allow, Identity::Gid(1500), 7, 9),
            entry(Action::Deny, user("apache"), 4, 10),
            entry(Action::Deny, Identity::Gid(666), 3, 9),
        ]
    );
    assert_eq!(spec.default_action(), Action::Deny);
}

#[test]
fn a_deny_list_alone_allows_everyone_else() {
    let spec = spec("[deny]\nusers = [\"apache\"]\n");
    assert_eq!(
        spec.entries,
        [entry(Action::Deny, Identity::User("apache".into()), 2, 10)]
    );
    assert_eq!(spec.default_action(), Action::Allow);
}

#[test]
fn dotted_keys_and_inline_tables_are_the_same_policy() {
    let spec = spec("allow.users = [\"root\"]\ndeny = { uids = [48] }\n");
    assert_eq!(
        spec.entries,
        [
            entry(Action::Allow, Identity::User("root".into()), 1, 16),
            entry(Action::Deny, Identity::Uid(48), 2, 18),
        ]
    );
}

#[test]
fn the_extreme_ids_and_sixty_four_addresses_are_accepted() {
    let addresses: Vec<String> = (1..=64).map(|i| format!("\"10.0.0.{i}\"")).collect();
    let spec = spec(&format!(
        "[endpoints]\naddresses = [{}]\n[allow]\nuids = [0, 4294967294]\ngids = [4294967294]\n",
        addresses.join(", ")
    ));
    assert_eq!(spec.endpoints.len(), 64);
    let identities: Vec<&Identity> = spec.entries.iter().map(|e| &e.identity).collect();
    assert_eq!(
        identities,
        [
            &Identity::Uid(0),
            &Identity::Uid(4_294_967_294),
            &Identity::Gid(4_294_967_294)
        ]
    );
}

// ---- TOML syntax and types ----

#[test]
fn toml_syntax_errors_point_at_the_problem() {
    assert_eq!(
        errors("mode = \"enforce\"\n[allow\nuids = [0]\n"),
        "p.toml:2:7: invalid TOML: unclosed table, expected `]`"
    );
    assert_eq!(
        errors("mode = \"audit\"\nmode = \"enforce\"\n"),
        "p.toml:2:1: invalid TOML: duplicate key `mode`"
    );
    assert_eq!(
        errors("[allow]\nuids = [0]\n[allow]\nusers = [\"root\"]\n"),
        "p.toml:3:2: invalid TOML: duplicate key `allow`"
    );
    assert_eq!(
        errors("[allow]\n\"uids\" = [0]\nuids = [1]\n"),
        "p.toml:3:1: invalid TOML: duplicate key `uids`"
    );
}

#[test]
fn wrong_types_name_what_was_found_and_what_is_expected() {
    let cases = [
        (
            "mode = 1\n[allow]\nuids = [0]\n",
            "p.toml:1:8: mode: expected \"enforce\" or \"audit\", found integer 1",
        ),
        (
            "mode = 1979-05-27\n[allow]\nuids = [0]\n",
            "p.toml:1:8: mode: expected \"enforce\" or \"audit\", found datetime 1979-05-27",
        ),
        (
            "allow = 1\n",
            "p.toml:1:9: allow: expected a table, found integer 1",
        ),
        (
            "[[deny]]\nuids = [1]\n",
            "p.toml:1:1: deny: expected a table, found an array",
        ),
        (
            "endpoints = [\"169.254.169.254\"]\n[allow]\nuids = [0]\n",
            "p.toml:1:13: endpoints: expected a table, found an array",
        ),
        (
            "[endpoints]\naddresses = \"169.254.169.254\"\n[allow]\nuids = [0]\n",
            "p.toml:2:13: [endpoints] addresses: expected an array of IP address strings, \
             found string \"169.254.169.254\"",
        ),
        (
            "[endpoints]\naddresses = [\"169.254.169.254\", 1]\n[allow]\nuids = [0]\n",
            "p.toml:2:33: [endpoints] addresses: expected an IP address string, found integer 1",
        ),
        (
            "[allow]\nusers = \"root\"\n",
            "p.toml:2:9: [allow] users: expected an array of user names, found string \"root\"",
        ),
        (
            "[deny]\ngids = 5\n",
            "p.toml:2:8: [deny] gids: expected an array of gids, found integer 5",
        ),
        (
            "[allow]\nuids = [\"x\"]\n",
            "p.toml:2:9: [allow] uids: expected an integer uid, found string \"x\"; \
             put names in users",
        ),
        (
            "[allow]\nuids = [\"1001\"]\n",
            "p.toml:2:9: [allow] uids: expected an integer uid, found string \"1001\"; \
             write it without quotes",
        ),
        (
            "[allow]\nusers = [1001]\n",
            "p.toml:2:10: [allow] users: expected a user name string, found integer 1001; \
             put numeric ids in uids",
        ),
        (
            "[deny]\ngroups = [true]\n",
            "p.toml:2:11: [deny] groups: expected a group name string, found boolean true",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), expected, "for {text:?}");
    }
}

#[test]
fn every_bad_value_of_a_list_is_reported() {
    assert_eq!(
        errors("[deny]\ngids = [1.5, 7, true]\n"),
        "p.toml:2:9: [deny] gids: expected an integer gid, found float 1.5\n\
         p.toml:2:17: [deny] gids: expected an integer gid, found boolean true"
    );
}

// ---- unknown keys ----

#[test]
fn unknown_keys_are_named_with_the_keys_valid_there() {
    let cases = [
        (
            "color = \"blue\"\n[allow]\nuids = [0]\n",
            "p.toml:1:1: unknown key \"color\" at the top level \
             (valid keys: mode, endpoints, allow, deny, forward, requests, imdsv2, attribution)",
        ),
        (
            "[endpoints]\nports = [80]\n[allow]\nuids = [0]\n",
            "p.toml:2:1: unknown key \"ports\" in [endpoints] (valid keys: addresses, presets)",
        ),
        (
            "[allow]\nuids = [0]\nexecutables = [\"/usr/bin/curl\"]\n",
            "p.toml:3:1: unknown key \"executables\" in [allow] \
             (valid keys: users, uids, groups, gids, units, cgroups, pods, host)",
        ),
        (
            "[deny]\nuids = [48]\n[deny.extra]\n",
            "p.toml:3:7: unknown key \"extra\" in [deny] (valid keys: users, uids, groups, gids, units, cgroups, pods)",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), expected, "for {text:?}");
    }
}

#[test]
fn likely_typos_get_the_closest_key() {
    let cases = [
        (
            "[allow]\nuser = [\"root\"]\n",
            "p.toml:2:1: unknown key \"user\" in [allow], did you mean \"users\"? \
             (valid keys: users, uids, groups, gids, units, cgroups, pods, host)",
        ),
        (
            "[deny]\nGids = [5]\n",
            "p.toml:2:1: unknown key \"Gids\" in [deny], did you mean \"gids\"? \
             (valid keys: users, uids, groups, gids, units, cgroups, pods)",
        ),
        (
            "[endpoints]\naddress = [\"169.254.169.254\"]\n[allow]\nuids = [0]\n",
            "p.toml:2:1: unknown key \"address\" in [endpoints], did you mean \"addresses\"? \
             (valid keys: addresses, presets)",
        ),
        (
            "[allowed]\nusers = [\"root\"]\n",
            "p.toml:1:2: unknown key \"allowed\" at the top level, did you mean \"allow\"? \
             (valid keys: mode, endpoints, allow, deny, forward, requests, imdsv2, attribution)",
        ),
        (
            "mdoe = \"audit\"\n[allow]\nuids = [0]\n",
            "p.toml:1:1: unknown key \"mdoe\" at the top level, did you mean \"mode\"? \
             (valid keys: mode, endpoints, allow, deny, forward, requests, imdsv2, attribution)",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), expected, "for {text:?}");
    }
}

#[test]
fn misplaced_keys_say_where_they_belong() {
    let cases = [
        // TOML puts a key below a header into that table: the usual slip.
        (
            "[deny]\nusers = [\"apache\"]\nmode = \"audit\"\n",
            "p.toml:3:1: unknown key \"mode\" in [deny], mode belongs at the top level, \
             above the first table header (valid keys: users, uids, groups, gids, units, cgroups, pods)",
        ),
        (
            "users = [\"root\"]\n",
            "p.toml:1:1: unknown key \"users\" at the top level, users belongs in [allow] or \
             [deny] (valid keys: mode, endpoints, allow, deny, forward, requests, imdsv2, attribution)",
        ),
        (
            "[allow]\nuids = [0]\naddresses = [\"169.254.169.254\"]\n",
            "p.toml:3:1: unknown key \"addresses\" in [allow], addresses belongs in [endpoints] \
             (valid keys: users, uids, groups, gids, units, cgroups, pods, host)",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), expected, "for {text:?}");
    }
}

// ---- mode ----

#[test]
fn mode_must_be_enforce_or_audit() {
    assert_eq!(
        errors("mode = \"permissive\"\n[allow]\nuids = [0]\n"),
        "p.toml:1:8: mode: expected \"enforce\" or \"audit\", found string \"permissive\""
    );
    assert_eq!(
        errors("mode = \"Audit\"\n[allow]\nuids = [0]\n"),
        "p.toml:1:8: mode: expected \"enforce\" or \"audit\", found string \"Audit\""
    );
}

// ---- addresses ----

#[test]
fn addresses_must_be_unicast_addresses_with_a_port_or_none() {
    let text = "\
[allow]
uids = [0]
[endpoints]
addresses = [
  \"169.254.169.254/32\",
  \"169.254.169.254:0/tcp\",
  \"[fd00:ec2::254]\",
  \"metadata.google.internal\",
  \"0.0.0.0\",
  \"::\",
  \"224.0.0.251\",
  \"::ffff:169.254.169.254\",
  \"169.254.169.254\",
]
";
    let expected = [
        "p.toml:5:3: [endpoints] addresses: \"169.254.169.254/32\" is a CIDR range, expected a \
         single address without \"/32\" (list each address to protect)",
        "p.toml:6:3: [endpoints] addresses: \"169.254.169.254:0/tcp\" names port 0, expected a \
         port from 1 to 65535",
        "p.toml:7:3: [endpoints] addresses: \"[fd00:ec2::254]\" has brackets, expected the bare \
         address \"fd00:ec2::254\"",
        "p.toml:8:3: [endpoints] addresses: \"metadata.google.internal\" is a host name, \
         expected an IP address (names are not resolved)",
        "p.toml:9:3: [endpoints] addresses: \"0.0.0.0\" is the unspecified address, expected a \
         unicast address",
        "p.toml:10:3: [endpoints] addresses: \"::\" is the unspecified address, expected a \
         unicast address",
        "p.toml:11:3: [endpoints] addresses: \"224.0.0.251\" is a multicast address, expected a \
         unicast address",
        "p.toml:12:3: [endpoints] addresses: \"::ffff:169.254.169.254\" is an IPv4-mapped IPv6 \
         address, expected the IPv4 form \"169.254.169.254\" (mapped forms are protected \
         automatically)",
    ];
    assert_eq!(errors(text), expected.join("\n"));
}

#[test]
fn an_empty_address_list_protects_nothing_and_is_refused() {
    assert_eq!(
        errors("[endpoints]\naddresses = []\n[allow]\nuids = [0]\n"),
        "p.toml:2:13: [endpoints] addresses: the list is empty, which would protect nothing; \
         expected at least one address (remove the key to protect the defaults \
         169.254.169.254 and fd00:ec2::254)"
    );
}

#[test]
fn a_duplicate_address_names_the_first_even_spelled_differently() {
    let text = "\
[endpoints]
addresses = [
  \"fd00:ec2::254\",
  \"169.254.169.254\",
  \"fd00:ec2:0::254\",
  \"169.254.169.254\",
]
[allow]
uids = [0]
";
    assert_eq!(
        errors(text),
        "p.toml:5:3: [endpoints] addresses: duplicate address \"fd00:ec2:0::254\", already \
         listed as \"fd00:ec2::254\" at line 3, column 3\n\
         p.toml:6:3: [endpoints] addresses: duplicate address \"169.254.169.254\", already \
         listed as \"169.254.169.254\" at line 4, column 3"
    );
}

#[test]
fn more_than_sixty_four_addresses_are_refused_at_the_sixty_fifth() {
    let mut text = String::from("[allow]\nuids = [0]\n[endpoints]\naddresses = [\n");
    for i in 1..=65 {
        let _ = writeln!(text, "  \"10.0.1.{i}\",");
    }
    text.push_str("]\n");
    // Line 5 holds the first address, so the 65th is on line 69.
    assert_eq!(
        errors(&text),
        "p.toml:69:3: [endpoints] addresses: 65 addresses, expected at most 64"
    );
}

// ---- ids and names ----

#[test]
fn ids_must_fit_uid_t_and_not_be_minus_one() {
    let cases = [
        (
            "[allow]\nuids = [4294967295]\n",
            "p.toml:2:9: [allow] uids: 4294967295 is (uid_t)-1, not a valid uid; \
             expected 0 to 4294967294",
        ),
        (
            "[deny]\ngids = [4294967295]\n",
            "p.toml:2:9: [deny] gids: 4294967295 is (gid_t)-1, not a valid gid; \
             expected 0 to 4294967294",
        ),
        (
            "[allow]\nuids = [-1]\n",
            "p.toml:2:9: [allow] uids: -1 is not a valid uid, expected 0 to 4294967294",
        ),
        (
            "[allow]\ngids = [4294967296]\n",
            "p.toml:2:9: [allow] gids: 4294967296 is not a valid gid, expected 0 to 4294967294",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), expected, "for {text:?}");
    }
}

#[test]
fn names_must_be_possible_user_and_group_names() {
    let text = "\
[allow]
users = [\"\", \"ro ot\", \"ro:ot\", \"ro\\u0000ot\", \"1001\"]
groups = [\"wheel\\t\", \"500\"]
";
    let expected = [
        "p.toml:2:10: [allow] users: \"\" is not a valid user name: it is empty",
        "p.toml:2:14: [allow] users: \"ro ot\" is not a valid user name: it contains whitespace",
        "p.toml:2:23: [allow] users: \"ro:ot\" is not a valid user name: it contains ':'",
        "p.toml:2:32: [allow] users: \"ro\\0ot\" is not a valid user name: it contains a NUL \
         character",
        "p.toml:2:46: [allow] users: \"1001\" is a number, not a user name; put numeric ids in \
         uids",
        "p.toml:3:11: [allow] groups: \"wheel\\t\" is not a valid group name: it contains \
         whitespace",
        "p.toml:3:22: [allow] groups: \"500\" is a number, not a group name; put numeric ids in \
         gids",
    ];
    assert_eq!(errors(text), expected.join("\n"));
}

// ---- duplicates and contradictions ----

#[test]
fn an_identity_listed_twice_in_a_table_is_a_duplicate() {
    assert_eq!(
        errors("[allow]\nusers = [\"root\", \"root\"]\ngids = [10, 20, 10]\n"),
        "p.toml:2:18: duplicate rule: user \"root\" is already allowed at line 2, column 10\n\
         p.toml:3:17: duplicate rule: gid 10 is already allowed at line 3, column 9"
    );
    assert_eq!(
        errors("[deny]\nuids = [48, 48]\n"),
        "p.toml:2:13: duplicate rule: uid 48 is already denied at line 2, column 9"
    );
}

#[test]
fn ids_in_increasing_order_and_a_repeat_elsewhere_are_each_judged() {
    // The uids increase (no table needed for them): the gids' repeat is
    // still found, and so is a uid repeated in a later table.
    assert_eq!(
        errors("[allow]\nuids = [1, 2, 3]\ngids = [5, 5]\n"),
        "p.toml:3:12: duplicate rule: gid 5 is already allowed at line 3, column 9"
    );
    assert_eq!(
        errors("[allow]\nuids = [1, 2]\n[deny]\nuids = [3, 2]\n"),
        "p.toml:4:12: contradictory rules: uid 2 is denied here and allowed at line 2, column 12"
    );
}

#[test]
fn an_identity_both_allowed_and_denied_is_contradictory_at_the_deny_entry() {
    assert_eq!(
        errors("[allow]\nusers = [\"apache\"]\n[deny]\nusers = [\"apache\"]\n"),
        "p.toml:4:10: contradictory rules: user \"apache\" is denied here and allowed at line 2, \
         column 10"
    );
    // [deny] first in the file: still reported at the [deny] entry.
    assert_eq!(
        errors("[deny]\ngroups = [\"staff\"]\n[allow]\ngroups = [\"staff\"]\n"),
        "p.toml:2:11: contradictory rules: group \"staff\" is denied here and allowed at \
         line 4, column 11"
    );
}

#[test]
fn different_kinds_are_not_compared_before_resolution() {
    // A user and a group of one name, and a uid equal to a gid, are
    // different identities; only `resolve` knows whether "root" is uid 0.
    let spec = spec(
        "[allow]\nusers = [\"root\"]\nuids = [10]\n[deny]\ngroups = [\"root\"]\ngids = [10]\n",
    );
    assert_eq!(spec.entries.len(), 4);
}

// ---- a policy that decides nothing ----

#[test]
fn a_policy_without_entries_decides_nothing() {
    let message = "the policy decides nothing: add an entry to [allow] (only those may \
                   connect) or to [deny] (all others may connect)";
    assert_eq!(errors(""), format!("p.toml:1:1: {message}"));
    assert_eq!(
        errors("mode = \"audit\"\n"),
        format!("p.toml:1:1: {message}")
    );
    assert_eq!(
        errors("mode = \"audit\"\n\n[deny]\nusers = []\n[allow]\n"),
        format!("p.toml:3:1: {message}")
    );
}

#[test]
fn misplaced_entries_are_not_also_reported_as_deciding_nothing() {
    // The one error is enough: the entries exist, in the wrong place.
    assert_eq!(
        errors("[allowed]\nuids = [0]\n"),
        "p.toml:1:2: unknown key \"allowed\" at the top level, did you mean \"allow\"? \
         (valid keys: mode, endpoints, allow, deny, forward, requests, imdsv2, attribution)"
    );
    assert_eq!(
        errors("[allow]\nuid = [0]\n"),
        "p.toml:2:1: unknown key \"uid\" in [allow], did you mean \"uids\"? \
         (valid keys: users, uids, groups, gids, units, cgroups, pods, host)"
    );
}

// ---- several problems at once ----

#[test]
fn every_problem_is_reported_in_file_order() {
    // [deny] is checked after [endpoints] but written before it: the
    // output still follows the file.
    let text = "\
mode = \"strict\"
[deny]
uids = [-5]
user = [\"apache\"]
[endpoints]
addresses = [\"169.254.169.254/32\"]
[allow]
users = [\"apache\"]
";
    let got = errors(text);
    let expected = [
        "p.toml:1:8: mode: expected \"enforce\" or \"audit\", found string \"strict\"",
        "p.toml:3:9: [deny] uids: -5 is not a valid uid, expected 0 to 4294967294",
        "p.toml:4:1: unknown key \"user\" in [deny], did you mean \"users\"? \
         (valid keys: users, uids, groups, gids, units, cgroups, pods)",
        "p.toml:6:14: [endpoints] addresses: \"169.254.169.254/32\" is a CIDR range, expected \
         a single address without \"/32\" (list each address to protect)",
    ];
    assert_eq!(got, expected.join("\n"));
}

#[test]
fn the_identity_keys_table_lists_the_documented_order() {
    let keys: Vec<&str> = super::IDENTITY_KEYS.iter().map(|k| k.key).collect();
    assert_eq!(
        keys,
        [
            "users", "uids", "groups", "gids", "units", "cgroups", "pods"
        ]
    );
}

#[test]
fn closest_only_suggests_near_misses() {
    let valid = [
        "users", "uids", "groups", "gids", "units", "cgroups", "pods",
    ];
    assert_eq!(super::closest("user", &valid), Some("users"));
    assert_eq!(super::closest("uid", &valid), Some("uids"));
    assert_eq!(super::closest("group", &valid), Some("groups"));
    assert_eq!(super::closest("executables", &valid), None);
    assert_eq!(super::closest("x", &valid), None);
    assert_eq!(super::edit_distance("kitten", "sitting"), 3);
    assert_eq!(super::edit_distance("", "abc"), 3);
    assert_eq!(super::edit_distance("é", "e"), 1);
    assert_eq!(super::edit_distance("mdoe", "mode"), 1);
    assert_eq!(super::edit_distance("abc", ""), 3);
}

#[test]
fn an_empty_allow_table_beside_deny_entries_is_refused() {
    // Emptying the last allowed identity would otherwise turn the policy
    // from "only these" into "everyone not denied".
    assert_eq!(
        errors("[allow]\nusers = []\n[deny]\nuids = [1000]\n"),
        "p.toml:1:1: [allow] has no entry, so it would allow everyone not in [deny]: list who \
         may connect, or remove the [allow] table to allow everyone not denied"
    );
    // Without [allow] the deny-list form stands.
    assert_eq!(
        spec("[deny]\nuids = [1000]\n").default_action(),
        Action::Allow
    );
    // Both empty: one diagnostic, "decides nothing".
    let both = errors("[allow]\n[deny]\n");
    assert!(both.contains("decides nothing"), "{both}");
    assert_eq!(both.lines().count(), 1, "{both}");
}

#[test]
fn forward_lists_interfaces_and_prefixes_with_their_positions() {
    let s = spec(
        "[allow]\nuids = [0]\n[forward]\nallow_interfaces = [\"br-vm*\", \"tap0\"]\n\
         allow_sources = [\"10.8.0.0/16\", \"fd00:1::/64\"]\n",
    );
    let names: Vec<_> = s
        .forward
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["br-vm*", "tap0"]);
    assert_eq!(s.forward.interfaces[1].at, at(4, 31));
    let prefixes: Vec<_> = s
        .forward
        .sources
        .iter()
        .map(|p| p.prefix.to_string())
        .collect();
    assert_eq!(prefixes, ["10.8.0.0/16", "fd00:1::/64"]);
    assert!(!s.forward.drops_all());
    assert!(spec("[allow]\nuids = [0]\n").forward.drops_all());
}

#[test]
fn forward_problems_are_each_reported_where_they_are() {
    assert_eq!(
        errors(
            "[allow]\nuids = [0]\n[forward]\nallow_interfaces = [\"eth0:1\", 7, \"tap0\", \"tap0\"]\n\
             allow_sources = [\"10.8.0.1/16\", \"docker0\"]\nallow_ports = [80]\n"
        ),
        "p.toml:4:21: [forward] allow_interfaces: \"eth0:1\" has ':', which no interface name can \
         have (a `*` only at the end)\n\
         p.toml:4:31: [forward] allow_interfaces: expected a string, found integer 7\n\
         p.toml:4:42: [forward] allow_interfaces: duplicate \"tap0\", already listed at line 4, \
         column 34\n\
         p.toml:5:18: [forward] allow_sources: \"10.8.0.1/16\" has host bits set, expected \
         \"10.8.0.0/16\"\n\
         p.toml:5:33: [forward] allow_sources: \"docker0\" is not a prefix, expected ADDRESS/LENGTH \
         such as \"10.8.0.0/16\"\n\
         p.toml:6:1: unknown key \"allow_ports\" in [forward] (valid keys: allow_interfaces, \
         allow_sources)"
    );
}

#[test]
fn ports_of_one_address_are_listed_once_and_never_beside_every_port() {
    let text = "\
[allow]
uids = [0]
[endpoints]
addresses = [
  \"169.254.170.2:80/tcp\",
  \"169.254.170.2:53\",
  \"169.254.170.2:80\",
  \"169.254.170.2\",
  \"169.254.169.254\",
  \"169.254.169.254:80\",
  \"169.254.170.2:53/udp\",
  \"169.254.170.2:80/udp\",
]
";
    let expected = [
        "p.toml:7:3: [endpoints] addresses: duplicate port \"169.254.170.2:80\", already listed \
         as \"169.254.170.2:80/tcp\" at line 5, column 3",
        "p.toml:8:3: [endpoints] addresses: \"169.254.170.2\" protects every port of an address \
         whose ports are listed, as \"169.254.170.2:80/tcp\" at line 5, column 3",
        "p.toml:10:3: [endpoints] addresses: \"169.254.169.254:80\" names a port of an address \
         protected on every port by \"169.254.169.254\" at line 9, column 3",
        "p.toml:11:3: [endpoints] addresses: duplicate port \"169.254.170.2:53/udp\", already \
         listed as \"169.254.170.2:53\" at line 6, column 3",
    ];
    assert_eq!(errors(text), expected.join("\n"));
    // 80/tcp and 80/udp are two entries of one port.
    let ok = spec(
        "[allow]\nuids = [0]\n[endpoints]\naddresses = [\"169.254.170.2:80/tcp\", \
         \"169.254.170.2:80/udp\"]\n",
    );
    assert_eq!(ok.endpoints.len(), 2);
    let nine: Vec<String> = (1..=9).map(|p| format!("\"169.254.170.2:{p}\"")).collect();
    assert_eq!(
        errors(&format!(
            "[allow]\nuids = [0]\n[endpoints]\naddresses = [{}]\n",
            nine.join(", ")
        )),
        "p.toml:4:166: [endpoints] addresses: \"169.254.170.2:9\": more than 8 ports of \
         169.254.170.2"
    );
}
