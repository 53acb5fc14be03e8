//! Sections 1 to 3: connects, to an address no policy protects and to a
//! protected one, their rates and the programs' run time.

use std::fmt::Write as _;

use super::{policy, rate, ratio, secs};
use crate::{
    flowsink::DGRAM_V4,
    hotpath::{self, HotResult},
    job::REQUEST_PATH,
    runtime::{self, RuntimeResult},
    scale::ScaleResult,
    setup::{Arm, Kind},
    stats::{Table, mib, ms, ns, ns_diff, pct, thousands},
};

pub(super) fn hot(md: &mut String, h: &HotResult) {
    let _ = writeln!(
        md,
        "## 1. Hot path: connect to a destination that is not protected\n\n\
         uid 65534 to 127.0.0.1:8080; policy {}; {} rounds.\n",
        policy(hotpath::POLICY),
        h.rounds
    );
    let mut t = Table::new(&[
        "configuration",
        "connects/s",
        "vs no guard",
        "set up in",
        "a denied connect",
    ]);
    for row in &h.rows {
        t.row(vec![
            row.arm.label().to_owned(),
            rate(&row.rate),
            if row.arm == Arm::Baseline {
                "100% (baseline)".to_owned()
            } else {
                ratio(&row.ratio)
            },
            match row.arm.kind() {
                Kind::None => "–".to_owned(),
                Kind::ImdsGuard => format!("{} (spawn to ready)", secs(row.load_time)),
                _ => format!("{} (load)", secs(row.load_time)),
            },
            row.denied.show(),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
}

pub(super) fn run_time(md: &mut String, rt: &RuntimeResult) {
    let _ = writeln!(
        md,
        "## 2. Program run time per invocation\n\n\
         Policy {}; allowed uid 1001, denied 65534; {}-byte datagrams to {}, out of a veth; \
         the guard's programs: {}; beside them, the same loops in a cgroup of their own with \
         an empty program of the same type (`r0 = 1; exit`), in the same rounds; accounting \
         on with {}; {} rounds. run_cnt grew by exactly the connects (datagrams, requests) of \
         every loop: {}.\n",
        policy(runtime::POLICY),
        runtime::DATAGRAM,
        DGRAM_V4,
        rt.programs.join(", "),
        rt.stats_how,
        rt.rounds,
        if rt.counts_exact { "yes" } else { "**no**" }
    );
    let mut t = Table::new(&[
        "path",
        "program",
        "ns per run",
        "empty program, ns per run",
        "over it",
        "share of the call",
        "every program, per connect or datagram",
        "runs counted",
    ]);
    for row in &rt.rows {
        t.row(vec![
            row.route.label().to_owned(),
            row.route.program().to_owned(),
            row.ns.show(ns),
            row.floor_ns.map_or_else(|| "–".to_owned(), |f| f.show(ns)),
            row.floor_ns
                .map_or_else(|| "–".to_owned(), |f| ns_diff(row.ns.median - f.median)),
            row.share.show(pct),
            row.all_ns.show(ns),
            thousands(row.runs as f64),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
    if !rt.requests.is_empty() {
        requests(md, rt);
    }
}

/// The request loops of section 2 (issue 23): a path-judged request
/// against a whole-service one, on kept-alive connections.
fn requests(md: &mut String, rt: &RuntimeResult) {
    let _ = writeln!(
        md,
        "### Request-level judgement: a path-judged request against a whole-service one\n\n\
         Policy {}, in a configuration of its own whose addresses the fake IMDS serves; each \
         caller sends `GET {}` on one kept-alive connection to 169.254.169.254:80, one write \
         per request, and reads each response whole; in the same rounds as the rows above. \
         `req_msg` judges each request of the `[requests.bench]` caller, and never runs for \
         the whole-service caller (both checked every round); `req_sockops` runs on the \
         connections' sock_ops events, not per request.\n",
        policy(&runtime::request_policy()),
        REQUEST_PATH,
    );
    let mut t = Table::new(&[
        "caller",
        "time per request",
        "vs whole service",
        "req_msg, ns per run",
        "req_msg runs per request",
        "req_sockops, ns per run",
        "req_sockops runs",
        "every program, per request",
        "requests",
    ]);
    for row in &rt.requests {
        t.row(vec![
            row.caller.label().to_owned(),
            row.per_request_ns.show(ns),
            row.vs_whole
                .map_or_else(|| "100% (baseline)".to_owned(), |r| r.show(pct)),
            row.msg_ns
                .map_or_else(|| "never ran".to_owned(), |m| m.show(ns)),
            row.msg_per_request.show(|x| format!("{x:.2}")),
            row.sockops_ns.show(ns),
            thousands(row.sockops_runs as f64),
            row.all_ns.show(ns),
            thousands(row.requests as f64),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
}

pub(super) fn scale(md: &mut String, sc: &ScaleResult, plot: Option<&str>) {
    let _ = writeln!(
        md,
        "## 3. Scale: 1 to {} allowed uids\n\n\
         Policy `[allow] uids = [0, 100000, 100001, ...]`; hot: uid 65534 to 127.0.0.1:8080; \
         protected: the uid listed last to 169.254.169.254:80. No guard runs {} (hot) and {} \
         (protected). {} rounds.\n",
        thousands(f64::from(sc.sizes.last().copied().unwrap_or(0))),
        rate(&sc.base_hot),
        rate(&sc.base_protected),
        sc.rounds
    );
    if let Some(p) = plot {
        let _ = writeln!(
            md,
            "![connect rate against the number of allowed uids]({p})\n"
        );
    }
    let mut t = Table::new(&[
        "allowed uids",
        "configuration",
        "hot connects/s",
        "hot vs no guard",
        "protected connects/s",
        "protected vs no guard",
        "set up in",
    ]);
    for &n in &sc.sizes {
        for &k in &sc.kinds {
            let Some(c) = sc.cell(n, k) else { continue };
            t.row(vec![
                thousands(f64::from(n)),
                k.name().to_owned(),
                rate(&c.hot),
                ratio(&c.hot_ratio),
                rate(&c.protected),
                ratio(&c.protected_ratio),
                secs(c.load_time),
            ]);
        }
    }
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\nThe agent at each size ({} rounds of connect4 run time on the protected path):\n",
        sc.rounds
    );
    let mut t = Table::new(&[
        "allowed uids",
        "connect4 ns per run",
        "spawn to ready",
        "reload (agent's micros)",
        "SIGHUP to record",
        "RSS",
    ]);
    for a in &sc.agents {
        t.row(vec![
            thousands(f64::from(a.n)),
            a.prog_ns.show(ns),
            secs(a.ready),
            a.reload_us.show(|x| ms(x / 1e3)),
            a.reload_wall_ms.show(ms),
            mib(a.rss_kib as f64),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
}
