//! PF (pf.conf(5)), where the last matching rule wins unless a rule says
//! `quick`.
//!
//! As in the AWS example, no rule is `quick`: for each protected address the
//! default comes first, then the allowed identities, then the denied ones,
//! so that a deny overrides an allow as it does in the eBPF guard.
//!
//! The commands format is the rule lines themselves, as AWS prints them.
//! The file is the same lines for an anchor: `pfctl -a imds-guard -f FILE`
//! replaces the anchor's rules, so loading twice leaves one copy. Because
//! the last match wins across the whole ruleset, the main pf.conf must
//! reference the anchor after its other filter rules, or a later `pass`
//! would override these.

use super::{Format, Out, Written, plan::Family};
use crate::policy::{Action, Mode};

/// The anchor the file is meant for.
pub(super) const ANCHOR: &str = "imds-guard";

pub(super) fn render(out: &mut Out) {
    notes(out);
    if !out.ready() {
        return;
    }
    let addresses = out.plan.all_destinations();
    if addresses.is_empty() {
        out.nothing_to_render("the policy protects no address");
        return;
    }
    let ordered: Vec<Written> = out.last_match().cloned().collect();
    for dest in addresses {
        let addr = dest.addr;
        let proto = dest.proto();
        let port = dest.port.map_or(String::new(), |p| format!(" port {p}"));
        let af = match Family::of(addr) {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        };
        let rule = |action: Action, owner: Option<&Written>| {
            let (verb, log) = match (action, out.plan.spec.mode) {
                (Action::Allow, _) => ("pass", ""),
                (Action::Deny, Mode::Enforce) => ("block", ""),
                (Action::Deny, Mode::Audit) => ("pass", " log"),
            };
            let owner = owner.map_or(String::new(), |w| {
                format!(" {} {}", if w.group { "group" } else { "user" }, w.text)
            });
            format!("{verb} out{log} {af} proto {proto} from any to {addr}{port}{owner}")
        };
        let mut lines = Vec::new();
        if out.plan.default == Action::Deny {
            lines.push(rule(Action::Deny, None));
        }
        for written in &ordered {
            lines.push(rule(written.action, Some(written)));
        }
        for line in lines {
            out.line(&line);
        }
    }
}

fn notes(out: &mut Out) {
    out.comment("PF: the last matching rule wins, so the default comes first and denies last.");
    if out.rules.iter().any(|r| r.group) {
        out.comment(
            "group is the socket's effective gid only: supplementary groups do not match \
             here, unlike in the eBPF guard (see the warnings).",
        );
    }
    if out.audit() {
        out.comment(
            "pass ... log sends the packet that opens each connection to pflog0 \
             (tcpdump -n -e -i pflog0).",
        );
    } else {
        out.comment(
            "block follows set block-policy (drop by default): a denied connect waits \
             for its timeout.",
        );
    }
    match out.format {
        Format::Commands => out.comment(
            "Add these lines to /etc/pf.conf after your other filter rules, \
             or use --format file to load them into an anchor.",
        ),
        Format::File => {
            out.comment(&format!(
                "Load with: pfctl -a {ANCHOR} -f FILE (this replaces the anchor's rules: \
                 loading twice leaves one copy)."
            ));
            out.comment(&format!(
                "Reference the anchor once in /etc/pf.conf, after the other filter rules \
                 so that none overrides these: anchor \"{ANCHOR}\""
            ));
        }
    }
}

#[cfg(test)]
mod tests;
