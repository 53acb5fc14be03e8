//! The differential test of `imds-guard render` (issue 3): the rules it
//! prints for iptables, ip6tables and nftables, loaded with the real tools
//! into a test namespace, must decide a matrix of identities and
//! destinations exactly as the eBPF guard decides with the same policy,
//! except where `docs/render-notes.md` ("Where firewall rules differ from
//! the eBPF guard") says they differ, and exactly there.
//!
//! Safety: every `iptables*`/`ip6tables*`/`nft` command runs through
//! `nsenter --net=` inside the test's own namespace (never `ip netns exec`,
//! which remounts /sys), so the host's firewall is never read or written,
//! and deleting the namespace drops the rules. The guard is attached to the
//! test's own child cgroup only. Probes connect from inside the namespace,
//! where the metadata addresses sit on loopback with the fake IMDS behind
//! them: nothing leaves it.
//!
//! Two properties of this setup shape the policies:
//! - Whose ids. Netfilter matches the credentials of the socket's file (fs
//!   uid, fs gid and, for `--suppl-groups`, the supplementary groups); the
//!   guard matches the real uid and real primary gid. The probe sets real =
//!   effective = saved ids with setresuid/setresgid (which set the fs ids
//!   too) and its groups before it opens its socket, so both see the same
//!   uid and primary gid here: only supplementary groups can tell them
//!   apart, which is the documented difference this test expects.
//! - The fake IMDS is local. Its replies go from the root-owned listener to
//!   the client's source address, which is the metadata address itself, so
//!   they cross OUTPUT and meet the rules, where on a real host they would
//!   arrive through INPUT. A rule refusing root would cut the handshake of
//!   every allowed connection (the connect times out), so every enforcing
//!   policy here lets root through. In audit mode only SYNs reach the
//!   rules, and a SYN-ACK is not one.

// A test crate's root resolves modules beside it, as `tests/firewall.rs`.
#[path = "differential/firewall.rs"]
mod firewall;

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use imds_guard::{
    kernel::{Counters, Guard, Stamp},
    policy::{Action as Verdict, Mode, Policy, PolicySpec, Process, Protocol, SystemResolver},
    render::{Format, Target},
};
use imds_guard_e2e::{
    Action, IMDS_PORT, IMDS_V4, IMDS_V6, NOBODY, PLAIN_PORT, Probe, ProbeResult, Sandbox,
    privileged_or_skip,
};

use self::firewall::{
    Side, in_netns, load, logged, rendered, ruleset, tools_or_skip, xtables_backend,
};

/// The rule of `docs/render-notes.md` that explains every difference this
/// test expects.
const SUPPLEMENTARY_GROUPS: &str = "docs/render-notes.md, \"Where firewall rules differ from the \
     eBPF guard\", Supplementary groups: nftables `meta skgid` matches the primary gid only; the \
     guard and iptables `--gid-owner G --suppl-groups` also match a supplementary group";

/// What the probe becomes: uid, primary gid (real = effective = saved =
/// fs) and supplementary groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Who {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

const fn who(uid: u32, gid: u32, groups: &'static [u32]) -> Who {
    Who { uid, gid, groups }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid {} gid {} groups {:?}",
            self.uid, self.gid, self.groups
        )
    }
}

/// The ids the policies name: uid 1001 and gid 1500 (allowed), uid 3003
/// and gid 1600 (denied), and root, nobody and nogroup by name.
const IDENTITIES: [Who; 13] = [
    who(0, 0, &[]),
    who(NOBODY, NOBODY, &[]),
    who(1001, 1001, &[]),
    who(1002, 1500, &[]),
    who(2002, 2002, &[1500]),
    who(3003, 3003, &[]),
    who(1003, 1600, &[]),
    who(2004, 2004, &[1600]),
    who(1001, 1600, &[]),
    who(3003, 1500, &[]),
    who(1005, 1500, &[1600]),
    who(4004, 4004, &[1500, 1600]),
    who(5005, 5005, &[]),
];

/// Both protected addresses, then the fake IMDS's unprotected listeners.
fn destinations() -> [SocketAddr; 4] {
    [
        SocketAddr::new(IMDS_V4.into(), IMDS_PORT),
        SocketAddr::new(IMDS_V6.into(), IMDS_PORT),
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PLAIN_PORT),
        SocketAddr::new(Ipv6Addr::LOCALHOST.into(), PLAIN_PORT),
    ]
}

/// A policy and the identities for which nftables is documented to decide
/// otherwise than the guard (iptables and ip6tables: none).
struct Case {
    name: &'static str,
    toml: &'static str,
    nftables_differ_for: &'static [Who],
}

const ALLOW_LIST: Case = Case {
    name: "allow-list",
    toml: r#"
[endpoints]
addresses = ["169.254.169.254", "fd00:ec2::254"]

[allow]
users = ["root"]
uids = [1001]
gids = [1500]
"#,
    // Allowed by a supplementary 1500, which `meta skgid` does not see.
    nftables_differ_for: &[who(2002, 2002, &[1500]), who(4004, 4004, &[1500, 1600])],
};

const DENY_LIST: Case = Case {
    name: "deny-list",
    toml: r#"
[endpoints]
addresses = ["169.254.169.254", "fd00:ec2::254"]

[deny]
users = ["nobody"]
uids = [3003]
gids = [1600]
"#,
    // Denied by a supplementary 1600, which `meta skgid` does not see.
    nftables_differ_for: &[
        who(2004, 2004, &[1600]),
        who(1005, 1500, &[1600]),
        who(4004, 4004, &[1500, 1600]),
    ],
};

const MIXED: Case = Case {
    name: "mixed allow and deny",
    toml: r#"
[endpoints]
addresses = ["169.254.169.254", "fd00:ec2::254"]

[allow]
users = ["root"]
uids = [1001]
gids = [1500]

[deny]
uids = [3003]
groups = ["nogroup"]
gids = [1600]
"#,
    // 2002 is allowed by a supplementary 1500; 1005 is denied by a
    // supplementary 1600 (deny wins in the guard and iptables). 4004 has
    // both as supplementary groups: the deny wins, as nftables's default
    // does.
    nftables_differ_for: &[who(2002, 2002, &[1500]), who(1005, 1500, &[1600])],
};

/// Endpoints with ports (issue 20): TCP 80 of both metadata addresses is
/// protected, and loopback only on ports nothing connects to here, so the
/// fake IMDS's unprotected listeners (TCP 8080 of 127.0.0.1 and ::1) are
/// neighbouring ports of protected addresses: open to every identity, on
/// every side.
const PORTS: Case = Case {
    name: "port-scoped endpoints",
    toml: r#"
[endpoints]
addresses = ["169.254.169.254:80/tcp", "[fd00:ec2::254]:80", "127.0.0.1:8080/udp", "[::1]:53"]

[allow]
users = ["root"]
uids = [1001]
gids = [1500]
"#,
    nftables_differ_for: ALLOW_LIST.nftables_differ_for,
};

/// The AWS example: one denied user, which renders as the one-liners.
const SINGLE: Case = Case {
    name: "single denied user",
    toml: r#"
[endpoints]
addresses = ["169.254.169.254", "fd00:ec2::254"]

[deny]
users = ["nobody"]
"#,
    nftables_differ_for: &[],
};

/// Whether `target`'s rules are documented to decide otherwise than the
/// guard for `who` on a protected destination, and by which rule of the
/// documentation. The policy matters too: a supplementary group changes
/// nothing unless the policy names it.
fn expected_difference(target: Target, policy: &Policy, who: Who) -> Option<&'static str> {
    let sees_supplementary_groups = match target {
        Target::Iptables | Target::Ip6tables | Target::Ipfw => true,
        Target::Nftables | Target::Pf => false,
    };
    (!sees_supplementary_groups && primary_gid_only(policy, who) != guard_verdict(policy, who))
        .then_some(SUPPLEMENTARY_GROUPS)
}

/// What the guard decides on a protected destination: by the uid, the
/// primary gid and the supplementary groups, as iptables's
/// `--gid-owner G --suppl-groups` does too.
fn guard_verdict(policy: &Policy, who: Who) -> Verdict {
    let process = Process {
        groups: who.groups.to_vec(),
        ..Process::on_host(who.uid, who.gid)
    };
    policy.decide_process(&process).action
}

/// The guard's order with the supplementary groups left out, as nftables's
/// `meta skgid` sees a socket.
fn primary_gid_only(policy: &Policy, who: Who) -> Verdict {
    policy.decide(who.uid, who.gid).action
}

fn probe(sb: &Sandbox, who: Who) -> Probe {
    sb.probe()
        .bin(env!("CARGO_BIN_EXE_imds-probe"))
        .uid(who.uid)
        .gid(who.gid)
        .groups(who.groups)
}

/// Every identity to every destination, one TCP connect each.
fn matrix(sb: &Sandbox) -> Vec<Seen> {
    let mut seen = Vec::new();
    for who in IDENTITIES {
        let probe = probe(sb, who);
        for dst in destinations() {
            let result = probe.run(Action::Connect(dst));
            seen.push(Seen { who, dst, result });
        }
    }
    seen
}

/// Checks that the fake IMDS accepted exactly the connections the
/// probes saw succeed: a refused SYN never reaches it.
fn assert_accepted(sb: &Sandbox, seen: &[Seen], side: &str) {
    for dst in destinations() {
        let ok = seen.iter().filter(|s| s.dst == dst && s.result.ok).count();
        let accepted = sb.imds.tcp_accepted(dst);
        assert_eq!(
            accepted, ok,
            "{side}: the fake IMDS accepted {accepted} connections on {dst}, \
             the probes saw {ok}"
        );
    }
}

/// One probe's outcome.
#[derive(Debug)]
struct Seen {
    who: Who,
    dst: SocketAddr,
    result: ProbeResult,
}

fn spec(case: &Case) -> PolicySpec {
    PolicySpec::parse(Path::new("differential.toml"), case.toml)
        .unwrap_or_else(|e| panic!("{} policy: {e}", case.name))
}

fn resolved(spec: &PolicySpec) -> Policy {
    spec.clone()
        .resolve(&SystemResolver)
        .unwrap_or_else(|e| panic!("resolving the policy: {e}"))
}

/// The matrix with the guard attached to the probes' cgroup, and its
/// counters.
fn under_guard(policy: &Policy) -> (Vec<Seen>, Counters) {
    let world = Sandbox::new();
    // Declared after the world, so it detaches before the cgroup goes.
    let mut guard = Guard::load(0).unwrap_or_else(|e| panic!("loading the guard: {e}"));
    guard
        .apply(policy, &Stamp::default())
        .unwrap_or_else(|e| panic!("applying the policy: {e}"));
    guard
        .attach(world.cgroup.path(), None)
        .unwrap_or_else(|e| panic!("attaching to {}: {e}", world.cgroup.path().display()));
    let seen = matrix(&world);
    assert_accepted(&world, &seen, "guard");
    let counters = guard
        .counters()
        .unwrap_or_else(|e| panic!("reading the guard's counters: {e}"));
    (seen, counters)
}

/// The matrix with only `side`'s rules deciding (no guard on the cgroup),
/// the text loaded, and the ruleset as the tools show it afterwards.
fn under_rules(side: Side, spec: &PolicySpec) -> (Vec<Seen>, String, String) {
    let world = Sandbox::new();
    let loaded = load(&world.netns, side, spec);
    let seen = matrix(&world);
    assert_accepted(&world, &seen, &format!("{side:?}"));
    let ruleset = ruleset(&world.netns, side);
    (seen, loaded, ruleset)
}

/// Whether it connected, or why its failure is not a refusal as `refused`
/// (the errno a refusal gives on that side) says one looks.
fn connected(seen: &Seen, refused: i32) -> Result<bool, String> {
    let r = &seen.result;
    if r.ok || r.errno == Some(refused) {
        Ok(r.ok)
    } else {
        Err(format!(
            "{} to {} failed, but not with errno {refused}: {r:?}",
            seen.who, seen.dst
        ))
    }
}

/// Whether a TCP connect to `dst` is judged: its address is protected on
/// every port, or on this TCP port.
fn protected(policy: &Policy, dst: SocketAddr) -> bool {
    policy.protects_port(dst.ip(), Protocol::Tcp, Some(dst.port()))
}

/// Checks the guard against `Policy::decide`: the reference both sides are
/// compared with must itself be right.
fn check_guard(policy: &Policy, guard: &[Seen]) {
    for seen in guard {
        let expected =
            !protected(policy, seen.dst) || guard_verdict(policy, seen.who) == Verdict::Allow;
        let by_guard = connected(seen, libc::EPERM).unwrap_or_else(|e| panic!("guard: {e}"));
        assert_eq!(
            by_guard, expected,
            "guard: {} to {}: {:?}",
            seen.who, seen.dst, seen.result
        );
    }
}

/// Compares `side`'s verdicts with the guard's, cell by cell; panics with
/// every mismatch and the evidence.
fn compare(policy: &Policy, side: Side, guard: &[Seen], fw: &[Seen], loaded: &str, ruleset: &str) {
    let mut wrong = Vec::new();
    for (g, f) in guard.iter().zip(fw) {
        assert_eq!(
            (g.who, g.dst),
            (f.who, f.dst),
            "the matrices are in the same order"
        );
        let by_guard = connected(g, libc::EPERM).unwrap_or_else(|e| panic!("guard: {e}"));
        // REJECT and reject answer with an ICMP port unreachable. Over IPv6
        // the error for the first SYN arrives while connect() still holds
        // the socket and only counts as a soft error, so the refusal comes
        // with the retransmitted SYN, about 1 s later (IPv4: at once).
        let by_rules = match connected(f, libc::ECONNREFUSED) {
            Ok(ok) => ok,
            Err(e) => {
                wrong.push(e);
                continue;
            }
        };
        let documented = if protected(policy, f.dst) {
            expected_difference(side.target(f.dst), policy, f.who)
        } else {
            None
        };
        let verdict = |ok| if ok { "connects" } else { "refused" };
        match (by_guard == by_rules, documented) {
            (true, None) | (false, Some(_)) => {}
            (true, Some(rule)) => wrong.push(format!(
                "{} to {}: both {}, but the documentation says they differ ({rule})",
                f.who,
                f.dst,
                verdict(by_rules)
            )),
            (false, None) => wrong.push(format!(
                "{} to {}: guard {}, {side:?} {} {:?}: an undocumented difference",
                f.who,
                f.dst,
                verdict(by_guard),
                verdict(by_rules),
                f.result.error
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{side:?} differs from the guard ({}):\n{}\n\nrules loaded:\n{loaded}\nruleset in the \
         namespace:\n{ruleset}",
        xtables_backend(),
        wrong.join("\n")
    );
}

/// Checks that the case's list of documented differences is what
/// `expected_difference` says, so that neither can drift unnoticed.
fn check_documented(case: &Case, policy: &Policy) {
    for target in [Target::Iptables, Target::Ip6tables, Target::Nftables] {
        let differ: Vec<Who> = IDENTITIES
            .into_iter()
            .filter(|&w| expected_difference(target, policy, w).is_some())
            .collect();
        let listed = match target {
            Target::Nftables => case.nftables_differ_for,
            _ => &[][..],
        };
        assert_eq!(
            differ, listed,
            "{}: documented differences for {target}",
            case.name
        );
    }
}

/// The whole comparison for one policy and the sides given.
fn differential(case: &Case, sides: &[Side]) {
    let spec = spec(case);
    let policy = resolved(&spec);
    check_documented(case, &policy);
    eprintln!("{}: {}", case.name, xtables_backend());
    let (guard, _) = under_guard(&policy);
    check_guard(&policy, &guard);
    for &side in sides {
        let (fw, loaded, ruleset) = under_rules(side, &spec);
        compare(&policy, side, &guard, &fw, &loaded, &ruleset);
    }
}

#[test]
fn allow_list_rules_decide_as_the_guard_does() {
    if !privileged_or_skip("allow_list_rules_decide_as_the_guard_does")
        || !tools_or_skip("allow_list_rules_decide_as_the_guard_does")
    {
        return;
    }
    differential(&ALLOW_LIST, &[Side::XtablesFile, Side::NftablesFile]);
}

#[test]
fn deny_list_rules_decide_as_the_guard_does() {
    if !privileged_or_skip("deny_list_rules_decide_as_the_guard_does")
        || !tools_or_skip("deny_list_rules_decide_as_the_guard_does")
    {
        return;
    }
    differential(&DENY_LIST, &[Side::XtablesFile, Side::NftablesFile]);
}

#[test]
fn mixed_rules_decide_as_the_guard_does_deny_winning_in_both_formats() {
    if !privileged_or_skip("mixed_rules_decide_as_the_guard_does_deny_winning_in_both_formats")
        || !tools_or_skip("mixed_rules_decide_as_the_guard_does_deny_winning_in_both_formats")
    {
        return;
    }
    differential(
        &MIXED,
        &[Side::XtablesFile, Side::XtablesCommands, Side::NftablesFile],
    );
}

#[test]
fn port_scoped_rules_decide_as_the_guard_does_and_leave_the_other_ports_open() {
    let name = "port_scoped_rules_decide_as_the_guard_does_and_leave_the_other_ports_open";
    if !privileged_or_skip(name) || !tools_or_skip(name) {
        return;
    }
    let spec = spec(&PORTS);
    let policy = resolved(&spec);
    // The matrix holds both kinds of destination on protected addresses.
    assert!(destinations().iter().any(|&d| protected(&policy, d)));
    assert!(
        destinations()
            .iter()
            .all(|&d| policy.protects(d.ip()) && (protected(&policy, d) == (d.port() == IMDS_PORT)))
    );
    for (target, needle) in [
        (
            Target::Iptables,
            "--proto tcp --destination 169.254.169.254 --dport 80 --jump",
        ),
        (
            Target::Iptables,
            "--destination 169.254.169.254 --fragment --jump",
        ),
        (
            Target::Ip6tables,
            "--proto udp --destination fd00:ec2::254 --dport 80 --jump",
        ),
        (
            Target::Nftables,
            "ip daddr 169.254.169.254 tcp dport 80 jump by_owner",
        ),
        (Target::Nftables, "ip6 daddr ::1 udp dport 53 jump by_owner"),
    ] {
        let text = rendered(&spec, target, Format::File);
        assert!(text.contains(needle), "{target}: no {needle:?} in\n{text}");
    }
    differential(
        &PORTS,
        &[Side::XtablesFile, Side::XtablesCommands, Side::NftablesFile],
    );
}

#[test]
fn the_aws_one_liners_decide_as_the_guard_does() {
    if !privileged_or_skip("the_aws_one_liners_decide_as_the_guard_does")
        || !tools_or_skip("the_aws_one_liners_decide_as_the_guard_does")
    {
        return;
    }
    let text = rendered(&spec(&SINGLE), Target::Iptables, Format::Commands);
    // The AWS rule, inserted first rather than appended (the loaded
    // OUTPUT has an ACCEPT before it: see `accept_first`).
    assert!(
        text.contains(
            "\niptables --insert OUTPUT 1 --proto tcp --destination 169.254.169.254 --match owner \
             --uid-owner nobody --jump REJECT\n"
        ),
        "not the AWS rule:\n{text}"
    );
    differential(
        &SINGLE,
        &[Side::XtablesCommands, Side::XtablesFile, Side::NftablesFile],
    );
}

#[test]
fn in_audit_mode_nothing_is_refused_and_the_would_be_denials_are_counted() {
    if !privileged_or_skip("in_audit_mode_nothing_is_refused_and_the_would_be_denials_are_counted")
        || !tools_or_skip("in_audit_mode_nothing_is_refused_and_the_would_be_denials_are_counted")
    {
        return;
    }
    // The allow-list without root: in audit mode the fake IMDS's replies
    // (SYN-ACKs) never reach the owner rules.
    let case = Case {
        name: "audit allow-list",
        toml: r#"
mode = "audit"

[endpoints]
addresses = ["169.254.169.254", "fd00:ec2::254"]

[allow]
uids = [1001]
gids = [1500]
"#,
        nftables_differ_for: ALLOW_LIST.nftables_differ_for,
    };
    let spec = spec(&case);
    assert_eq!(spec.mode, Mode::Audit);
    let policy = resolved(&spec);
    check_documented(&case, &policy);
    eprintln!("{}: {}", case.name, xtables_backend());

    // Would-deny connects per protected address.
    let guard_denies = IDENTITIES
        .iter()
        .filter(|&&w| guard_verdict(&policy, w) == Verdict::Deny)
        .count() as u64;
    let nftables_denies = IDENTITIES
        .iter()
        .filter(|&&w| primary_gid_only(&policy, w) == Verdict::Deny)
        .count() as u64;
    assert!(
        nftables_denies > guard_denies && guard_denies > 0,
        "the matrix must hit the difference: {guard_denies} and {nftables_denies} would-deny"
    );
    // iptables sees the supplementary groups as the guard does.
    let xtables_denies = guard_denies;

    let (guard, counters) = under_guard(&policy);
    assert!(
        guard.iter().all(|s| s.result.ok),
        "guard in audit mode refused: {guard:#?}"
    );
    assert_eq!(
        (counters.audited, counters.denied),
        (2 * guard_denies, 0),
        "guard counters: {counters:?}"
    );

    for side in [Side::XtablesFile, Side::NftablesFile] {
        let world = Sandbox::new();
        let loaded = load(&world.netns, side, &spec);
        let seen = matrix(&world);
        let ruleset = ruleset(&world.netns, side);
        let refused: Vec<&Seen> = seen.iter().filter(|s| !s.result.ok).collect();
        assert!(
            refused.is_empty(),
            "{side:?} in audit mode refused {refused:#?}\n\
             rules loaded:\n{loaded}\nruleset:\n{ruleset}"
        );
        assert_accepted(&world, &seen, &format!("{side:?}"));
        match side {
            Side::XtablesFile => {
                // LOG writes nothing from a namespace (nf_log_all_netns is
                // the host's to set), but its counters count.
                for tool in ["iptables-save", "ip6tables-save"] {
                    let save = in_netns(&world.netns, tool, &["-c"], None);
                    assert_eq!(
                        logged(&save),
                        xtables_denies,
                        "{tool}: LOG should count one SYN per would-deny connect\n{save}"
                    );
                }
            }
            _ => assert!(
                ruleset.contains("log prefix \"imds-guard audit: \""),
                "no log rule in\n{ruleset}"
            ),
        }
    }
}
