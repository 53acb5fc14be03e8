//! Section 6: what the egress program costs per packet, and its headline
//! line.

use std::fmt::Write as _;

use super::{Results, rate, ratio};
use crate::{
    packets::{self, PacketsResult},
    stats::{Summary, Table, ns, pct, thousands},
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

/// The headline line of section 6.
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
}
