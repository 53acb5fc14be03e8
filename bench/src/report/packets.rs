//! Sections 6 and 7: what the egress program costs per packet, and
//! `imds-guard validate` of large policies; and their headline lines.

use std::fmt::Write as _;

use super::{Results, rate, ratio};
use crate::{
    packets::{self, PacketsResult},
    stats::{Summary, Table, ms, ns, pct, thousands},
    validate::ValidateResult,
};

/// Bytes per second as MB/s (10^6), with the range.
fn mbps(s: &Summary) -> String {
    s.show(|x| format!("{} MB/s", thousands(x / 1e6)))
}

pub(super) fn packets(md: &mut String, p: &PacketsResult) {
    let _ = writeln!(
        md,
        "## 6. Per-packet cost: the egress program\n\n\
         The `cgroup_skb/egress` program runs for every packet a socket of the guarded cgroup \
         sends; for a destination no policy protects it loads the destination, looks up one \
         array and one hash. Measured where packets are many and small: {dgram}-byte UDP \
         datagrams from one connected socket to 127.0.0.1:9000 (only the egress program runs \
         per datagram: the kernel does not run sendmsg4 for a send without an address on a \
         connected socket), counted as sent; nothing reads the receiving socket, so once its \
         buffer is full every further datagram travels up to it and is dropped there, alike \
         in every configuration. And where they are few and large: one TCP connection to \
         127.0.0.1:9001 written {chunk} KiB at a time, read to its end by a thread of the \
         bench (on loopback a packet carries up to 64 KiB). Both as uid 65534, policy root \
         only, {rounds} rounds, the same untimed and timed loop lengths as section 1, with a \
         second unguarded namespace as the A/A control. Section 2 has the program's own run \
         time per packet.\n",
        dgram = p.datagram,
        chunk = packets::CHUNK / 1024,
        rounds = p.rounds,
    );
    let mut t = Table::new(&[
        "configuration",
        "datagrams/s",
        "vs no guard",
        "stream",
        "vs no guard",
    ]);
    for (i, row) in p.rows.iter().enumerate() {
        let base = |s: &Summary| {
            if i == 0 {
                "100% (baseline)".to_owned()
            } else {
                ratio(s)
            }
        };
        t.row(vec![
            row.label.to_owned(),
            rate(&row.dgram),
            base(&row.dgram_ratio),
            mbps(&row.stream),
            base(&row.stream_ratio),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
}

pub(super) fn validate(md: &mut String, v: &ValidateResult) {
    let _ = writeln!(
        md,
        "## 7. `imds-guard validate` of large policies\n\n\
         `imds-guard validate --config FILE` of `[allow] uids = [0, 100000, ...]`, every uid on \
         one line, from spawn to exit; the sizes take turns, {} rounds. A 1-uid policy runs in \
         every round too ({}: the process's own start and exit), and \"net\" is each size's \
         time minus that one's in the same round. The growth exponent is the slope of \
         log(net) against log(uids) over the sizes: 1 is linear, 2 quadratic. Here: {}.\n",
        v.rounds,
        v.base_ms.show(ms),
        v.exponent
            .map_or_else(|| "unknown".to_owned(), |e| format!("{e:.2}")),
    );
    let mut t = Table::new(&["uids", "spawn to exit", "net", "net per uid"]);
    for sz in &v.sizes {
        t.row(vec![
            thousands(f64::from(sz.uids)),
            sz.wall_ms.show(ms),
            sz.net_ms.show(ms),
            ns(sz.net_ms.median * 1e6 / f64::from(sz.uids)),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
}

/// The headline lines of sections 6 and 7.
pub(super) fn headline(r: &Results, lines: &mut Vec<String>) {
    if let Some(p) = &r.packets
        && let Some(g) = p.rows.last()
    {
        let mut line = format!(
            "Per packet (egress program), imds-guard against no guard: {} for {}-byte UDP \
             datagrams, {} for a TCP stream",
            pct(g.dgram_ratio.median),
            p.datagram,
            pct(g.stream_ratio.median)
        );
        if let Some(c) = p.rows.get(1) {
            let _ = write!(
                line,
                " (the A/A control: {} and {})",
                ratio(&c.dgram_ratio),
                ratio(&c.stream_ratio)
            );
        }
        if let Some(e) = r
            .runtime
            .as_ref()
            .and_then(|rt| rt.row("not protected, a UDP"))
        {
            let _ = write!(
                line,
                "; the program runs {} per packet to an unprotected address ({} of a send())",
                ns(e.ns.median),
                pct(e.share.median)
            );
        }
        lines.push(line + ".");
    }
    if let Some(v) = &r.validate
        && let Some(l) = v.largest()
    {
        lines.push(format!(
            "`imds-guard validate` of {} uids on one line: {} (growth exponent {}).",
            thousands(f64::from(l.uids)),
            ms(l.wall_ms.median),
            v.exponent
                .map_or_else(|| "unknown".to_owned(), |e| format!("{e:.2}"))
        ));
    }
}
