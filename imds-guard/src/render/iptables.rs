//! iptables and ip6tables, which differ only in the tool's name and the
//! address family they filter.
//!
//! A policy with a single identity, in the commands format, renders as the
//! AWS one-liner on OUTPUT. Every other policy, and every file, uses two
//! dedicated chains:
//! - `IMDS_GUARD`, reached from OUTPUT by one rule that never changes with
//!   the policy, picks the protected destinations and jumps to
//! - `IMDS_GUARD_OWNER`, which decides by owner in the guard's order: a
//!   REJECT per denied id, a RETURN per allowed id, REJECT at the end when
//!   the default denies.
//!
//! First in OUTPUT. The rules that OUTPUT reaches are inserted at its top
//! (`--insert OUTPUT 1`), not appended as in the AWS one-liner: appended,
//! they never see a packet that an earlier rule accepts, and ufw's stock
//! ruleset (OUTPUT jumps to its chains, which accept new outgoing
//! connections) lets a denied user through. nftables output is immune: its
//! own table's base chain sees every packet whatever another table accepts.
//!
//! Idempotence. Commands: each `--insert` into OUTPUT is guarded by
//! `--check ... ||` on the line before it (so the AWS line itself stays a
//! line of its own), and the chains are created or flushed before they are
//! filled. File: an `iptables-restore --noflush` file holding only the two
//! chains; declaring a user chain under `--noflush` flushes it, so loading
//! the file twice leaves one copy and replaces the policy in one commit. A
//! restore file has no "append unless present", so the OUTPUT hook cannot
//! live in it without duplicating on every load; the file's header gives
//! the guarded command that installs the hook once, as kube-proxy does for
//! its KUBE-* chains. The hook names no address, so changing the policy
//! never needs it touched.

use std::net::IpAddr;

use super::{
    Format, LOG_PREFIX, Out, Target, Written,
    cgroups::CgroupMatch,
    names,
    plan::{Dest, Family},
};
use crate::policy::Action;

/// The chain OUTPUT jumps to; it selects the protected destinations.
pub(super) const HOOK_CHAIN: &str = "IMDS_GUARD";
/// The chain that decides by socket owner.
pub(super) const OWNER_CHAIN: &str = "IMDS_GUARD_OWNER";

pub(super) fn render(out: &mut Out, family: Family) {
    let (tool, other_tool, other_family, other) = match family {
        Family::V4 => ("iptables", "ip6tables", "IPv6", Target::Ip6tables),
        Family::V6 => ("ip6tables", "iptables", "IPv4", Target::Iptables),
    };
    // Rendered together, the other tool covers the other family.
    let covered = out.together.contains(&other);
    for endpoint in &out.plan.spec.endpoints {
        if Family::of(endpoint.addr) != family && !covered {
            let message = format!(
                "{} is an {other_family} address, which {tool} does not filter; \
                 render --{other_tool} as well",
                endpoint.addr
            );
            out.warn(endpoint.at, message);
        }
    }
    notes(out, tool);
    let addresses = out.plan.destinations(family);
    let ready = out.ready();
    if ready && addresses.is_empty() {
        let family = match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        out.nothing_to_render(&format!("the policy protects no {family} address"));
    }
    let addresses = if ready { addresses } else { Vec::new() };
    match out.format {
        // Commands that do nothing are better than commands that flush.
        Format::Commands if addresses.is_empty() => {}
        Format::Commands => match single(out) {
            Some(rule) if out.plan.ported(family).is_empty() => {
                one_liners(out, tool, &addresses, &rule)
            }
            _ => chain_commands(out, tool, family, &addresses),
        },
        // An empty file still empties the chains: it says "protect nothing".
        Format::File => restore_file(out, family, &addresses),
    }
}

/// The comments that explain this output.
fn notes(out: &mut Out, tool: &str) {
    if out.rules.iter().any(|r| r.group) {
        out.comment(
            "--suppl-groups: the AWS note that the owner match sees only a process's \
             primary group predates this option,",
        );
        out.comment(
            "which makes --gid-owner match supplementary groups too, as the eBPF guard \
             does.",
        );
    }
    if out.audit() {
        out.comment(
            "LOG writes to the kernel log; in a network namespace other than the host's \
             it needs sysctl net.netfilter.nf_log_all_netns=1.",
        );
    }
    match out.format {
        Format::Commands => {
            out.comment(
                "Run as root. Each --insert into OUTPUT is guarded by --check, so running \
                 these commands twice adds nothing; --format file replaces a policy atomically.",
            );
            out.comment(&format!(
                "Inserted first in OUTPUT: an earlier ACCEPT (ufw's ruleset) would otherwise \
                 let every connection through. Check after loading: {tool} --list OUTPUT 1 \
                 --numeric names the rule."
            ));
        }
        Format::File => {
            out.comment(&format!(
                "Load with: {tool}-restore --noflush < FILE (declaring a chain under \
                 --noflush flushes it: loading twice leaves one copy)."
            ));
            out.comment(&format!(
                "Then hook the chain into OUTPUT, once: {}",
                hook_commands(tool).join(" ")
            ));
        }
    }
}

/// The rule of a policy that the AWS one-liner expresses: a single
/// identity whose verdict differs from the default (deny one user, or
/// allow one user and deny the rest).
fn single(out: &Out) -> Option<Written> {
    if !out.cgroups.is_empty() {
        return None;
    }
    match out.rules.as_slice() {
        [rule] if rule.action != out.plan.default => Some(rule.clone()),
        _ => None,
    }
}

/// `--match owner [!] --uid-owner X` or the `--gid-owner` form.
fn owner_match(rule: &Written, negate: bool) -> String {
    let not = if negate { "! " } else { "" };
    if rule.group {
        format!(
            "--match owner {not}--gid-owner {} --suppl-groups",
            rule.text
        )
    } else {
        format!("--match owner {not}--uid-owner {}", rule.text)
    }
}

/// What a rule does to a would-be-denied packet.
fn deny_verdict(out: &Out) -> String {
    if out.audit() {
        let prefix = match out.format {
            Format::Commands => names::shell_word(LOG_PREFIX).into_owned(),
            Format::File => format!("\"{LOG_PREFIX}\""),
        };
        // --log-uid: the log line names the socket's owner, which is the
        // point of auditing an owner policy.
        format!("--jump LOG --log-prefix {prefix} --log-uid")
    } else {
        "--jump REJECT".to_owned()
    }
}

/// `--proto tcp --destination A` (with `--dport N` for a port), TCP
/// limited to connection openings in audit mode so that the log has one
/// line per connection, as the guard's has.
fn destination(out: &Out, dest: &Dest) -> String {
    let syn = if out.audit() && dest.is_tcp() {
        " --syn"
    } else {
        ""
    };
    let port = dest.port.map_or(String::new(), |p| format!(" --dport {p}"));
    format!(
        "--proto {} --destination {}{port}{syn}",
        dest.proto(),
        dest.addr
    )
}

/// A fragment after the first to an address protected on some ports: no
/// port to match, so it is judged as going to a protected one
/// (`--fragment` for IPv4; ip6tables' `frag` match for any packet with a
/// fragment header).
fn fragments(family: Family, addr: IpAddr) -> String {
    match family {
        Family::V4 => format!("--destination {addr} --fragment"),
        Family::V6 => format!("--destination {addr} --match frag --fragid 0:4294967295"),
    }
}

/// The AWS form: one rule on OUTPUT per protected address.
fn one_liners(out: &mut Out, tool: &str, addresses: &[Dest], rule: &Written) {
    let specs: Vec<String> = addresses
        .iter()
        .map(|dest| {
            format!(
                "{} {} {}",
                destination(out, dest),
                owner_match(rule, rule.action == Action::Allow),
                deny_verdict(out)
            )
        })
        .collect();
    for spec in &specs {
        out.line(&format!("{tool} --check OUTPUT {spec} 2>/dev/null ||"));
        out.line(&format!("{tool} --insert OUTPUT 1 {spec}"));
    }
    for spec in &specs {
        out.comment(&format!("To remove: {tool} --delete OUTPUT {spec}"));
    }
}

/// `--match cgroup --path P`: the cgroup at P and every one below it.
fn cgroup_match(m: &CgroupMatch) -> String {
    format!("--match cgroup --path {}", m.text)
}

/// The rules of the owner chain, without `--append CHAIN`: denies by owner
/// then by cgroup, allows by owner then by cgroup, the guard's order.
fn owner_rules(out: &Out) -> Vec<String> {
    let mut rules = Vec::new();
    for action in [Action::Deny, Action::Allow] {
        let owners = out
            .first_match()
            .filter(|r| r.action == action)
            .map(|r| owner_match(r, false));
        let cgroups = out
            .cgroups
            .iter()
            .filter(|m| m.action == action)
            .map(cgroup_match);
        for matched in owners.chain(cgroups) {
            match action {
                Action::Deny => {
                    rules.push(format!("{matched} {}", deny_verdict(out)));
                    // LOG does not end the chain: stop here, or a later deny
                    // or the default would log the same connection again.
                    if out.audit() {
                        rules.push(format!("{matched} --jump RETURN"));
                    }
                }
                Action::Allow => rules.push(format!("{matched} --jump RETURN")),
            }
        }
    }
    if out.plan.default == Action::Deny {
        rules.push(deny_verdict(out));
    }
    rules
}

/// The rules of the hook chain, without `--append CHAIN`.
fn hook_rules(out: &Out, family: Family, addresses: &[Dest]) -> Vec<String> {
    let mut rules: Vec<String> = addresses
        .iter()
        .map(|dest| format!("{} --jump {OWNER_CHAIN}", destination(out, dest)))
        .collect();
    for addr in out.plan.ported(family) {
        rules.push(format!("{} --jump {OWNER_CHAIN}", fragments(family, addr)));
    }
    rules
}

/// The guarded commands that hook the chain into OUTPUT, one per line.
fn hook_commands(tool: &str) -> [String; 2] {
    [
        format!("{tool} --check OUTPUT --jump {HOOK_CHAIN} 2>/dev/null ||"),
        format!("{tool} --insert OUTPUT 1 --jump {HOOK_CHAIN}"),
    ]
}

/// The chains, as commands. The hook chain is emptied first and filled
/// last, so that a re-run never sends traffic into a half-built owner
/// chain; in between, the protected addresses are briefly unfiltered
/// (the file format has no such window).
fn chain_commands(out: &mut Out, tool: &str, family: Family, addresses: &[Dest]) {
    for chain in [HOOK_CHAIN, OWNER_CHAIN] {
        out.line(&format!(
            "{tool} --new-chain {chain} 2>/dev/null || {tool} --flush {chain}"
        ));
    }
    for rule in owner_rules(out) {
        out.line(&format!("{tool} --append {OWNER_CHAIN} {rule}"));
    }
    for rule in hook_rules(out, family, addresses) {
        out.line(&format!("{tool} --append {HOOK_CHAIN} {rule}"));
    }
    for line in hook_commands(tool) {
        out.line(&line);
    }
    out.comment(&format!(
        "To remove: {tool} --delete OUTPUT --jump {HOOK_CHAIN}; \
         {tool} --flush {HOOK_CHAIN}; {tool} --delete-chain {HOOK_CHAIN}; \
         {tool} --flush {OWNER_CHAIN}; {tool} --delete-chain {OWNER_CHAIN}"
    ));
}

/// The chains as an `iptables-restore --noflush` file.
fn restore_file(out: &mut Out, family: Family, addresses: &[Dest]) {
    let (owner, hook) = if addresses.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (owner_rules(out), hook_rules(out, family, addresses))
    };
    out.line("*filter");
    out.line(&format!(":{HOOK_CHAIN} - [0:0]"));
    out.line(&format!(":{OWNER_CHAIN} - [0:0]"));
    for rule in owner {
        out.line(&format!("--append {OWNER_CHAIN} {rule}"));
    }
    for rule in hook {
        out.line(&format!("--append {HOOK_CHAIN} {rule}"));
    }
    out.line("COMMIT");
}

#[cfg(test)]
mod tests;
