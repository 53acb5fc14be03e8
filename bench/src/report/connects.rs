//! Sections 1 to 3: connects, to an address no policy protects and to a
//! protected one, their rates and the programs' run time.

use std::fmt::Write as _;

use super::{rate, ratio, secs};
use crate::{
    hotpath::{self, HotResult},
    runtime::{self, RuntimeResult},
    scale::ScaleResult,
    setup::Kind,
    stats::{Table, mib, ms, ns, pct, thousands},
};

pub(super) fn hot(md: &mut String, h: &HotResult) {
    let _ = writeln!(
        md,
        "## 1. Hot path: connect to a destination that is not protected\n\n\
         connect()+close() to 127.0.0.1:8080 in the bench namespace as uid 65534, the path \
         every connect on a guarded host takes. Policy: root only (`{}`), the shipped \
         default; for it `render --iptables --format commands` prints AWS's own rule \
         (`--match owner ! --uid-owner root --jump REJECT` on OUTPUT), loaded here as \
         printed; nftables gets `render --nftables --format file` (`nft -f`). \
         {} rounds.\n",
        hotpath::POLICY.trim().replace('\n', " "),
        h.rounds
    );
    let mut t = Table::new(&[
        "configuration",
        "connects/s",
        "vs no guard",
        "set up in",
        "a denied connect",
    ]);
    for (i, row) in h.rows.iter().enumerate() {
        t.row(vec![
            row.label.to_owned(),
            rate(&row.rate),
            if i == 0 {
                "100% (baseline)".to_owned()
            } else {
                ratio(&row.ratio)
            },
            match row.kind {
                Kind::None => "–".to_owned(),
                Kind::ImdsGuard => format!("{} (spawn to ready)", secs(row.load_time)),
                _ => format!("{} (load)", secs(row.load_time)),
            },
            row.denied.show(),
        ]);
    }
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\n\"A denied connect\" is one connect() by uid 65534 to 169.254.169.254:80, made \
         while checking each configuration before the measurement: what it returned and how \
         long it took. The eBPF guard refuses the call itself, before any packet exists. \
         Behind a REJECT rule the call failed here only after about a second, TCP's initial \
         SYN retransmission timeout: the ICMP error answering the first SYN did not end it, \
         the one answering the retransmitted SYN did (most likely because on loopback the \
         first error arrives while connect() still holds its socket, where Linux records it \
         as a soft error only).\n"
    );
}

pub(super) fn run_time(md: &mut String, rt: &RuntimeResult) {
    let _ = writeln!(
        md,
        "## 2. Program run time per invocation\n\n\
         The kernel's own accounting: `run_time_ns / run_cnt` of the program, read from its \
         descriptor before and after each timed loop, with the accounting {}. Policy `{}`; \
         allowed = uid 1001, denied = uid 65534. The share is that time against the whole \
         connect()+close() (or send() of a datagram) the client timed in the same loop. \
         \"Every program\" is the run time of all the guard's programs (those `imds-guard \
         status` lists: {}) together, per connect or datagram: each packet of a connect goes \
         through the egress program as well (here SYN, ACK and the RST of close). The \
         datagrams are {} bytes, sent as uid 65534 on one connected UDP socket, where only \
         the egress program runs. {} rounds. run_cnt grew by exactly the number of connects \
         (or datagrams) in every loop: {}.\n",
        rt.stats_how,
        runtime::POLICY.trim().replace('\n', " "),
        rt.programs.join(", "),
        runtime::DATAGRAM,
        rt.rounds,
        if rt.counts_exact { "yes" } else { "**no**" }
    );
    let mut t = Table::new(&[
        "path",
        "program",
        "ns per run",
        "share of the call",
        "every program, per connect or datagram",
        "runs counted",
    ]);
    for row in &rt.rows {
        t.row(vec![
            row.path.to_owned(),
            row.program.to_owned(),
            row.ns.show(ns),
            row.share.show(pct),
            row.all_ns.show(ns),
            thousands(row.runs as f64),
        ]);
    }
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\nbpf_stats times the program with two clock reads around it, so a few ns of each \
         figure are the measurement's own, and so is anything that interrupts the program on \
         its CPU. A denied decision writes an event to the ring buffer; an allowed one is \
         counted, and written only when the agent logs allowed decisions (at debug level). \
         No event wakes the agent: it reads the ring on a short timer, and is woken only when \
         the ring passes a quarter full. An allowed connect also creates the socket's \
         storage, where egress finds that the connection was decided. \"allowed, agent \
         stopped\" is the allowed IPv4 path with the agent stopped (SIGSTOP, at most {} \
         connects, fewer than the ring holds): its difference to \"allowed\" is what reading \
         the ring on the agent's side costs the connecting process, which should be noise \
         now.\n",
        thousands(runtime::STOPPED_CONNECTS as f64)
    );
}

pub(super) fn scale(md: &mut String, sc: &ScaleResult, plot: Option<&str>) {
    let _ = writeln!(
        md,
        "## 3. Scale: 1 to {} allowed uids\n\n\
         The policy allows root and then N−1 other uids (`[allow] uids = [0, 100000, \
         100001, ...]`); iptables gets the chain `render --iptables --format file` emits \
         (`iptables-restore --noflush`, then the OUTPUT hook its header gives: one `--uid-owner` \
         RETURN rule per uid, in order, then REJECT), nftables the set `render --nftables \
         --format file` emits (`nft -f`). **Hot**: uid 65534 to 127.0.0.1:8080. **Protected**: \
         the uid listed last (the worst case for a chain walked in order) to \
         169.254.169.254:80, where the bench's listener answers; root is listed first because \
         the firewalls also judge the listener's own packets (its SYN-ACK carries the \
         listening socket as owner). The baseline, no guard, runs {} (hot) and {} (protected). \
         {} rounds.\n",
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
        "\n\"Set up in\" is, for imds-guard, the agent's spawn to its `ready` record (policy \
         parsed and resolved, programs loaded, maps filled, attached); for the firewalls, the \
         load command alone (the rules rendered beforehand).\n\n\
         The agent at each size: connect4 run time on the protected path (bpf_stats, \
         interleaved across sizes, {} rounds), SIGHUP reloads of the same policy (the agent's \
         `micros`: read, validate, resolve, write the other generation, flip, clear the old \
         one; and SIGHUP to its record), and its resident memory.\n",
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
