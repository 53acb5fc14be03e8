//! Sections 6 to 8: what the egress program costs per packet,
//! `imds-guard validate` of large policies, and a decision's cost against
//! the groups the caller holds.

use std::fmt::Write as _;

use super::{policy, rate, ratio};
use crate::{
    flowsink::{DGRAM_V4, STREAM_V4},
    groups::{self, GroupsResult},
    hotpath,
    packets::{self, PacketsResult},
    runtime::{Route, RuntimeResult},
    setup::Arm,
    stats::{Summary, Table, ms, ns, thousands},
    validate::ValidateResult,
};

/// Bytes per second as MB/s (10^6), with the range.
fn mbps(s: &Summary) -> String {
    s.show(|x| format!("{} MB/s", thousands(x / 1e6)))
}

pub(super) fn packets(md: &mut String, p: &PacketsResult, rt: Option<&RuntimeResult>) {
    let _ = writeln!(
        md,
        "## 6. Per-packet cost: the egress program\n\n\
         uid 65534, policy {}: {}-byte UDP datagrams on one connected socket to {}, and one \
         TCP connection to {} written {} KiB at a time, both out of a veth to a namespace of \
         their own; the empty programs (`r0 = 1; exit`) in a cgroup of their own; {} rounds.\n",
        policy(hotpath::POLICY),
        p.datagram,
        DGRAM_V4,
        STREAM_V4,
        packets::CHUNK / 1024,
        p.rounds,
    );
    let mut t = Table::new(&[
        "configuration",
        "datagrams/s",
        "vs no guard",
        "vs the empty programs",
        "stream",
        "vs no guard",
    ]);
    for row in &p.rows {
        let base = |s: &Summary| {
            if row.arm == Arm::Baseline {
                "100% (baseline)".to_owned()
            } else {
                ratio(s)
            }
        };
        t.row(vec![
            row.arm.label().to_owned(),
            rate(&row.dgram),
            base(&row.dgram_ratio),
            row.dgram_floor_ratio
                .as_ref()
                .map_or_else(|| "–".to_owned(), ratio),
            mbps(&row.stream),
            base(&row.stream_ratio),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
    let timed = rt.and_then(|rt| rt.row(Route::Datagram4));
    if let Some(row) = timed {
        let _ = writeln!(
            md,
            "The egress program's run time per datagram on the same stream (section 2): {}; \
             the empty program's: {}.\n",
            row.ns.show(ns),
            row.floor_ns
                .map_or_else(|| "not measured".to_owned(), |f| f.show(ns)),
        );
    }
}

pub(super) fn validate(md: &mut String, v: &ValidateResult) {
    let _ = writeln!(
        md,
        "## 7. `imds-guard validate` of large policies\n\n\
         `[allow] uids = [0, 100000, ...]` on one line, spawn to exit; net is minus a 1-uid \
         policy's time in the same round ({}); growth exponent {}; {} rounds.\n",
        v.base_ms.show(ms),
        v.exponent
            .map_or_else(|| "unknown".to_owned(), |e| format!("{e:.2}")),
        v.rounds,
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

pub(super) fn groups(md: &mut String, g: &GroupsResult) {
    let _ = writeln!(
        md,
        "## 8. Supplementary groups scanned per decision\n\n\
         connect4's run time per allowed connect to 169.254.169.254 (uid 1001) holding N \
         groups no rule names, policy {}; at most {} groups; {} rounds.\n",
        policy(groups::POLICY),
        imds_guard_common::MAX_GROUPS,
        g.rounds
    );
    let mut t = Table::new(&["groups held", "ns per run", "over 0 groups", "runs counted"]);
    let base = g.rows.first().map(|r| r.ns.median);
    for row in &g.rows {
        t.row(vec![
            row.groups.to_string(),
            row.ns.show(ns),
            base.map_or_else(String::new, |b| format!("{:+.0} ns", row.ns.median - b)),
            thousands(row.runs as f64),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
}
