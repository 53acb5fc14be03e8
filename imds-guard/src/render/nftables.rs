//! nftables: one `table inet imds_guard` for both address families.
//!
//! The identities live in named sets (`denied_uids`, `allowed_gids`...), so
//! the owner chain has at most five rules however long the policy's lists
//! are: a set lookup is a hash lookup, not a rule per id. The `output` base
//! chain sends TCP to the protected addresses (`ip daddr`, `ip6 daddr`) to
//! `by_owner`, which checks the sets in the guard's order.
//!
//! Idempotence: the file starts with `table inet imds_guard {}` then
//! `delete table inet imds_guard`, the usual idiom: the first line creates
//! the table if it is missing, so the delete never fails, and `nft -f`
//! applies the whole file as one transaction, so loading it replaces the
//! table atomically. The commands run the same three steps one by one.
//! (`destroy table` would do it in one line, but needs nft 1.0.8.)

use super::{
    Format, LOG_PREFIX, Out, names,
    plan::{Dest, Family},
};
use crate::policy::Action;

/// The table's name.
pub(super) const TABLE: &str = "imds_guard";

/// The table, ready to print as a file or as commands.
struct Table {
    /// Name, type (`uid`/`gid`) and elements of each non-empty set.
    sets: Vec<(&'static str, &'static str, Vec<String>)>,
    /// Rules of the regular chain `by_owner`.
    by_owner: Vec<String>,
    /// Rules of the base chain `output`.
    output: Vec<String>,
}

/// The declaration of the base chain.
const OUTPUT_CHAIN: &str = "type filter hook output priority filter; policy accept;";

pub(super) fn render(out: &mut Out) {
    notes(out);
    let ready = out.ready();
    let v4 = out.plan.destinations(Family::V4);
    let v6 = out.plan.destinations(Family::V6);
    if ready && v4.is_empty() && v6.is_empty() {
        out.nothing_to_render("the policy protects no address");
    }
    let table = (ready && !(v4.is_empty() && v6.is_empty())).then(|| table(out, &v4, &v6));
    match (out.format, table) {
        // Commands that do nothing are better than commands that delete.
        (Format::Commands, None) => {}
        (Format::Commands, Some(table)) => commands(out, &table),
        // An empty file still deletes the table: it says "protect nothing".
        (Format::File, table) => file(out, table.as_ref()),
    }
}

fn notes(out: &mut Out) {
    if out.rules.iter().any(|r| r.group) {
        out.comment(
            "meta skgid is the socket's primary gid only: supplementary groups do not \
             match here, unlike in the eBPF guard (see the warnings).",
        );
    }
    if out.audit() {
        out.comment(
            "log writes to the kernel log; in a network namespace other than the host's \
             it needs sysctl net.netfilter.nf_log_all_netns=1.",
        );
    }
    match out.format {
        Format::Commands => out.comment(
            "Run as root. Adding, deleting and adding the table again makes a re-run \
             replace it; --format file does the same in one transaction.",
        ),
        Format::File => out.comment(
            "Load with: nft -f FILE. The empty table and the delete before it make \
             loading twice replace the table, in one transaction.",
        ),
    }
}

fn table(out: &Out, v4: &[Dest], v6: &[Dest]) -> Table {
    let steps = [
        ("denied_uids", "uid", Action::Deny, false),
        ("denied_gids", "gid", Action::Deny, true),
        ("allowed_uids", "uid", Action::Allow, false),
        ("allowed_gids", "gid", Action::Allow, true),
    ];
    // `flags skuid`: the log line names the socket's owner, which is the
    // point of auditing an owner policy.
    let log = format!("log prefix \"{LOG_PREFIX}\" flags skuid");
    let mut sets = Vec::new();
    let mut by_owner = Vec::new();
    for (i, (set, kind, action, group)) in steps.into_iter().enumerate() {
        // The cgroups after the gids, denies then allows: the guard's order.
        if i == 2 {
            by_owner.extend(cgroup_rules(out, Action::Deny, &log));
        }
        let elements: Vec<String> = out
            .first_match()
            .filter(|r| r.action == action && r.group == group)
            .map(|r| r.text.clone())
            .collect();
        if elements.is_empty() {
            continue;
        }
        let key = if group { "skgid" } else { "skuid" };
        by_owner.push(match (action, out.audit()) {
            (Action::Deny, false) => format!("meta {key} @{set} reject"),
            // `return` so that the default's log does not log it again.
            (Action::Deny, true) => format!("meta {key} @{set} {log} return"),
            (Action::Allow, _) => format!("meta {key} @{set} return"),
        });
        sets.push((set, kind, elements));
    }
    by_owner.extend(cgroup_rules(out, Action::Allow, &log));
    if out.plan.default == Action::Deny {
        by_owner.push(if out.audit() {
            log
        } else {
            "reject".to_owned()
        });
    }
    // In audit mode only connection openings go to the chain, so the log
    // has one line per connection, as the guard's has.
    let what = if out.audit() {
        "tcp flags & (fin | syn | rst | ack) == syn"
    } else {
        "meta l4proto tcp"
    };
    let output = output_rules(out, v4, v6, what);
    Table {
        sets,
        by_owner,
        output,
    }
}

/// The base chain's rules: TCP to the bare addresses of each family in one
/// rule, as before ports; each port in its own; a fragment after the first
/// to an address with ports (it has none to match).
fn output_rules(out: &Out, v4: &[Dest], v6: &[Dest], what: &str) -> Vec<String> {
    let mut output = Vec::new();
    for (family, dests, plan_family) in [("ip", v4, Family::V4), ("ip6", v6, Family::V6)] {
        let every: Vec<String> = dests
            .iter()
            .filter(|d| d.port.is_none())
            .map(|d| d.addr.to_string())
            .collect();
        if !every.is_empty() {
            output.push(format!(
                "{family} daddr {} {what} jump by_owner",
                set_of(every)
            ));
        }
        for d in dests.iter().filter(|d| d.port.is_some()) {
            let port = d.port.unwrap_or_default();
            let syn = if out.audit() && d.is_tcp() {
                " tcp flags & (fin | syn | rst | ack) == syn"
            } else {
                ""
            };
            output.push(format!(
                "{family} daddr {} {} dport {port}{syn} jump by_owner",
                d.addr,
                d.proto()
            ));
        }
        // A fragment after the first has no port: judged as going to a
        // protected one.
        for addr in out.plan.ported(plan_family) {
            let fragment = match plan_family {
                Family::V4 => "ip frag-off & 0x1fff != 0",
                Family::V6 => "exthdr frag exists",
            };
            output.push(format!("{family} daddr {addr} {fragment} jump by_owner"));
        }
    }
    output
}

/// A rule per cgroup match of `action`: `socket cgroupv2 level N "P"`,
/// the cgroup at P (N components from the root) and every one below it;
/// no match at all for the root.
fn cgroup_rules(out: &Out, action: Action, log: &str) -> Vec<String> {
    out.cgroups
        .iter()
        .filter(|m| m.action == action)
        .map(|m| {
            let matched = if m.level == 0 {
                String::new()
            } else {
                format!("socket cgroupv2 level {} {} ", m.level, m.text)
            };
            match (action, out.audit()) {
                (Action::Deny, false) => format!("{matched}reject"),
                (Action::Deny, true) => format!("{matched}{log} return"),
                (Action::Allow, _) => format!("{matched}return"),
            }
        })
        .collect()
}

/// `a` for one element, `{ a, b }` for more.
fn set_of(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

/// The lines that make a re-load replace the table.
fn replace_lines() -> [String; 2] {
    [
        format!("table inet {TABLE} {{}}"),
        format!("delete table inet {TABLE}"),
    ]
}

fn file(out: &mut Out, table: Option<&Table>) {
    for line in replace_lines() {
        out.line(&line);
    }
    let Some(table) = table else {
        return;
    };
    out.line(&format!("table inet {TABLE} {{"));
    for (name, kind, elements) in &table.sets {
        out.line(&format!("\tset {name} {{"));
        out.line(&format!("\t\ttype {kind}"));
        out.line(&format!("\t\telements = {{ {} }}", elements.join(", ")));
        out.line("\t}");
        out.line("");
    }
    out.line("\tchain by_owner {");
    for rule in &table.by_owner {
        out.line(&format!("\t\t{rule}"));
    }
    out.line("\t}");
    out.line("");
    out.line("\tchain output {");
    out.line(&format!("\t\t{OUTPUT_CHAIN}"));
    for rule in &table.output {
        out.line(&format!("\t\t{rule}"));
    }
    out.line("\t}");
    out.line("}");
}

/// `nft ARGS`, with ARGS one shell word when any part needs quoting.
fn nft(args: &str) -> String {
    let plain = args
        .split(' ')
        .all(|word| matches!(names::shell_word(word), std::borrow::Cow::Borrowed(_)));
    if plain {
        format!("nft {args}")
    } else {
        format!("nft {}", names::shell_word(args))
    }
}

fn commands(out: &mut Out, table: &Table) {
    out.line(&nft(&format!("add table inet {TABLE}")));
    out.line(&nft(&format!("delete table inet {TABLE}")));
    out.line(&nft(&format!("add table inet {TABLE}")));
    for (name, kind, elements) in &table.sets {
        out.line(&nft(&format!(
            "add set inet {TABLE} {name} {{ type {kind}; elements = {{ {} }}; }}",
            elements.join(", ")
        )));
    }
    // The regular chain first: a jump needs its target to exist.
    out.line(&nft(&format!("add chain inet {TABLE} by_owner")));
    for rule in &table.by_owner {
        out.line(&nft(&format!("add rule inet {TABLE} by_owner {rule}")));
    }
    out.line(&nft(&format!(
        "add chain inet {TABLE} output {{ {OUTPUT_CHAIN} }}"
    )));
    for rule in &table.output {
        out.line(&nft(&format!("add rule inet {TABLE} output {rule}")));
    }
    out.comment(&format!("To remove: nft delete table inet {TABLE}"));
}

#[cfg(test)]
mod tests;
