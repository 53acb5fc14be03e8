//! IPFW (FreeBSD ipfw(8)), where the first matching rule wins.
//!
//! For each protected address: the denied identities, then the allowed
//! ones, then the default, as in the AWS example. `allow` and `deny` end
//! the search, so an allowed user's packets to these addresses skip any
//! later rule of the host's ruleset, exactly as with the AWS lines.
//!
//! The commands format is the rule bodies, as AWS prints them, for
//! `ipfw add`. The file is for `ipfw /absolute/path`: it numbers the rules
//! and puts them in a set of their own, and its first line deletes that set,
//! so loading it twice leaves one copy (deleting an empty set is not an
//! error: `ipfw_delete` in sbin/ipfw/ipfw2.c reports "not found" only for
//! rule numbers).

use super::{Format, Out, Written, plan::Dest};
use crate::policy::{Action, Mode};

/// The rule set (0-30; 31 holds the default rule) that holds these rules.
pub(super) const SET: u8 = 19;
/// The number of the first rule, early enough to come before a typical
/// ruleset's broad `allow` rules (rc.firewall's start at 100 for lo0 and
/// at 65000 for "open").
pub(super) const FIRST_RULE: u32 = 1000;
/// The gap between rule numbers, to leave room for hand-made rules.
const STEP: u32 = 10;
/// The highest number a rule may have (65535 is the default rule).
const LAST_RULE: u32 = 65534;

pub(super) fn render(out: &mut Out) {
    notes(out);
    let ready = out.ready();
    let addresses = out.plan.all_destinations();
    if ready && addresses.is_empty() {
        out.nothing_to_render("the policy protects no address");
    }
    let mut bodies = Vec::new();
    if ready {
        let ordered: Vec<Written> = out.first_match().cloned().collect();
        for dest in addresses {
            let (addr, proto) = (dest.addr, dest.proto());
            let port = dest.port.map_or(String::new(), |p| format!(" {p}"));
            // `setup` (SYN without ACK) limits logging to connection
            // openings, so the log has one line per connection.
            let rule = |action: Action, owner: Option<&Written>| {
                let (verb, setup) = match (action, out.plan.spec.mode, owner) {
                    (Action::Allow, _, _) => ("allow", ""),
                    (Action::Deny, Mode::Enforce, _) => ("deny", ""),
                    // A denied identity stops here, or the default's
                    // `count log` would log it a second time.
                    (Action::Deny, Mode::Audit, Some(_)) => ("allow log", setup_of(&dest)),
                    // The default only counts: the rest of the ruleset
                    // still decides, as it would without these rules.
                    (Action::Deny, Mode::Audit, None) => ("count log", setup_of(&dest)),
                };
                let owner = owner.map_or(String::new(), |w| {
                    format!(" {} {}", if w.group { "gid" } else { "uid" }, w.text)
                });
                format!("{verb} {proto} from any to {addr}{port}{owner}{setup}")
            };
            for written in &ordered {
                bodies.push(rule(written.action, Some(written)));
            }
            if out.plan.default == Action::Deny {
                bodies.push(rule(Action::Deny, None));
            }
        }
    }
    match out.format {
        Format::Commands => {
            for body in &bodies {
                out.line(body);
            }
        }
        Format::File => {
            // An empty file still deletes the set: it says "protect nothing".
            out.line(&format!("delete set {SET}"));
            for (i, body) in bodies.iter().enumerate() {
                // Rules that share a number keep the order they were added
                // in, so saturating keeps the order past the last number.
                let number = u32::try_from(i)
                    .ok()
                    .and_then(|i| i.checked_mul(STEP))
                    .and_then(|n| n.checked_add(FIRST_RULE))
                    .map_or(LAST_RULE, |n| n.min(LAST_RULE));
                out.line(&format!("add {number} set {SET} {body}"));
            }
        }
    }
}

fn notes(out: &mut Out) {
    out.comment("IPFW: the first matching rule wins, so denies come first and the default last.");
    if out.rules.iter().any(|r| r.group) {
        out.comment(
            "gid matches supplementary groups too (groupmember(9)), as the eBPF guard \
             does.",
        );
    }
    if out.audit() {
        out.comment("log reaches syslog only with sysctl net.inet.ip.fw.verbose=1.");
    } else {
        out.comment("deny drops: a denied connect waits for its timeout.");
    }
    match out.format {
        Format::Commands => out.comment(&format!(
            "Rule bodies for ipfw add. To apply: ipfw -q delete set {SET}, then \
             ipfw -q add {FIRST_RULE} set {SET} LINE for each line, in order."
        )),
        Format::File => out.comment(&format!(
            "Load with: ipfw -q /absolute/path/to/FILE (the first line deletes set {SET}: \
             loading twice leaves one copy)."
        )),
    }
}

/// `setup` (TCP only): a connection's opening.
fn setup_of(dest: &Dest) -> &'static str {
    if dest.is_tcp() { " setup" } else { "" }
}

#[cfg(test)]
mod tests;
