//! The results as markdown: printed on stdout and written to
//! `docs/BENCHMARKS.md`, so the document is always what a run produced.
//! This file has the frame (headline, goals, where and how, limits); each
//! section's text and tables are in `connects` (1 to 3), `agent` (4, 5)
//! and `packets` (6, 7).

mod agent;
mod connects;
mod packets;

use std::fmt::Write as _;

use super::{
    agent::AgentResult,
    cli::Settings,
    goals,
    groups::{self, GroupsResult},
    hotpath::{self, HotResult},
    machine::{Machine, load},
    packets::PacketsResult,
    quiet,
    runtime::RuntimeResult,
    scale::ScaleResult,
    setup::Kind,
    shortfall,
    stats::{Summary, Table, mib, ms, ns, pct, thousands},
    storm::StormResult,
    validate::ValidateResult,
    worker,
};

/// Everything one run measured; a section not run is `None`.
pub struct Results {
    pub machine: Machine,
    pub legacy: Option<String>,
    pub hot: Option<HotResult>,
    pub runtime: Option<RuntimeResult>,
    pub scale: Option<ScaleResult>,
    pub storm: Option<StormResult>,
    pub agent: Option<AgentResult>,
    pub packets: Option<PacketsResult>,
    pub validate: Option<ValidateResult>,
    pub groups: Option<GroupsResult>,
}

/// The exact checks of this run that failed: the kernel's run count
/// against the connects made, and the storm's accounting.
pub fn failed_checks(r: &Results) -> Vec<String> {
    let mut failed = Vec::new();
    if r.runtime.as_ref().is_some_and(|rt| !rt.counts_exact) {
        failed.push("run_cnt did not grow by exactly the connects made".to_owned());
    }
    for (i, run) in r.storm.iter().flat_map(|st| &st.runs).enumerate() {
        if run.denied_matches() == Some(false) {
            failed.push(format!(
                "storm {}: denied {:?} is not the {} EPERMs seen",
                i + 1,
                run.denied,
                run.eperm
            ));
        }
        if run.accounted() == Some(false) {
            failed.push(format!(
                "storm {}: events received {:?} + lost {:?} != denied {:?}",
                i + 1,
                run.received,
                run.lost,
                run.denied
            ));
        }
    }
    failed
}

fn rate(s: &Summary) -> String {
    s.show(|x| format!("{}/s", thousands(x)))
}

fn ratio(s: &Summary) -> String {
    s.show(pct)
}

fn secs(d: std::time::Duration) -> String {
    ms(d.as_secs_f64() * 1e3)
}

fn yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "**NO**",
        None => "unavailable",
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "unavailable".to_owned(), |v| thousands(v as f64))
}

pub fn markdown(r: &Results, s: &Settings, plot: Option<&str>) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "What imds-guard costs, measured by `imds-guard-bench` (`cargo xtask bench`). \
         This file is written by that command: rerun it rather than edit it.\n"
    );
    if let Some(why) = unreliable() {
        let _ = writeln!(
            md,
            "**Warning: {why}: the figures of this run are not reliable. Rerun on a quiet \
             machine.**\n"
        );
    }
    if s.quick {
        let _ = writeln!(
            md,
            "**A `--quick` smoke run: few, short rounds; the figures are indicative only.**\n"
        );
    }
    headline(&mut md, r);
    goals_table(&mut md, r, s);
    let _ = writeln!(md, "## Where and how\n");
    let mut t = Table::new(&["", ""]);
    let vm = if m.virtual_machine {
        ", virtual machine"
    } else {
        ""
    };
    t.row(vec![
        "machine".into(),
        format!("{} CPUs, {}, {:.1} GiB RAM{vm}", m.cpus, m.model, m.mem_gib),
    ]);
    t.row(vec!["kernel".into(), m.kernel.clone()]);
    t.row(vec![
        "firewall tools".into(),
        format!("{}; {}; {}", m.iptables, m.nft, m.iptables_legacy),
    ]);
    t.row(vec!["commit".into(), m.commit.clone()]);
    t.row(vec!["date".into(), m.date.clone()]);
    t.row(vec![
        "load average (1, 5, 15 min)".into(),
        format!("{} at the start, {} at the end", m.load_start, load()),
    ]);
    t.row(vec!["command".into(), format!("`{}`", s.command)]);
    md.push_str(&t.render());
    let (loops, busy, waited) = quiet::totals();
    let (timed, stalled) = worker::stalls();
    let _ = writeln!(
        md,
        "\n\
         - **Interleaved.** The configurations compared live side by side, each in its own \
         network namespace and child cgroup, and every round runs each of them once, in a \
         rotating order (A B C, B C A, ...), so drift of the machine over the run hits all \
         of them alike. Each figure is the **median over {rounds} rounds, [min–max]**; each \
         ratio is taken within a round (configuration / no guard in the same round), then \
         its median and range are shown.\n\
         - **Quiet gate.** Before each timed loop the bench waits (up to {per_loop:.1} s, \
         {total:.0} s in all) \
         until the rest of the machine uses less than a quarter of a CPU; in this run \
         {busy} of {loops} timed loops had to start without that, and the gate waited \
         {waited:.0} s in all (beyond its own 40 ms sample per loop).\n\
         - **The client** is a child process of the bench that joins the configuration's \
         cgroup and namespace, becomes the uid under test, and runs a tight loop of \
         socket() + connect() + close() (with `SO_LINGER` 0, so close sends a RST and no \
         TIME_WAIT piles up), timing itself with the monotonic clock: {warm} ms untimed, then \
         {run} ms timed. The listener on the other end accepts and closes, in a thread of the \
         bench. On a machine with two CPUs or more the client runs alone on the last CPU, the \
         listeners and the agents on the first: left to the scheduler, a client and its \
         listener share a CPU in some loops and not in others, which moves the rate by tens \
         of percent. While connections keep coming the listener drains its \
         queue every millisecond instead of waiting on it, so that a connect does not have to \
         wake it up. A connect that takes longer than 200 ms \
         has stalled on a retransmit (a dropped SYN waits 1 s) rather than on the path \
         measured: {stalled} of {timed} timed loops had one (each such loop stays in, at \
         its lower rate), and {overran} ran past their deadline (20 s more than planned), were \
         killed and run again.\n\
         - **Safety.** Nothing leaves the bench's namespaces: the metadata addresses \
         (169.254.169.254, fd00:ec2::254) sit on each namespace's loopback, the programs are \
         attached to child cgroups only, pinned in a private bpffs, and the firewall rules \
         are loaded inside the namespaces with `nsenter --net`, where each agent runs too \
         (it installs its nftables table for the forward path in the namespace it runs \
         in; `imds-guard status` is run there as well).\n\
         - **The firewall rules** are what `imds-guard render` prints for the same policy: \
         Debian's `iptables` is the nf_tables backend (`iptables-nft`); `iptables-legacy`, \
         the older x_tables backend, is measured too where the kernel has it. Only \
         IPv4 traffic is timed, so only the `iptables` (not `ip6tables`) rules are loaded.\n",
        rounds = s.rounds,
        warm = s.timing.warmup_ms,
        run = s.timing.run_ms,
        waited = waited.as_secs_f64(),
        overran = worker::overran(),
        per_loop = quiet::limits().0.as_secs_f64(),
        total = quiet::limits().1.as_secs_f64(),
    );
    if let Some(reason) = &r.legacy {
        let _ = writeln!(md, "iptables-legacy was left out: {reason}.\n");
    }
    if let Some(h) = &r.hot {
        connects::hot(&mut md, h);
    }
    if let Some(rt) = &r.runtime {
        connects::run_time(&mut md, rt);
    }
    if let Some(sc) = &r.scale {
        connects::scale(&mut md, sc, plot);
    }
    if let Some(st) = &r.storm {
        agent::storm(&mut md, st);
    }
    if let Some(a) = &r.agent {
        agent::agent(&mut md, a, s);
    }
    if let Some(p) = &r.packets {
        packets::packets(&mut md, p);
    }
    if let Some(v) = &r.validate {
        packets::validate(&mut md, v);
    }
    if let Some(g) = &r.groups {
        groups_section(&mut md, g);
    }
    limits(&mut md);
    md
}

/// Section 8: decision cost against the supplementary groups held.
fn groups_section(md: &mut String, g: &GroupsResult) {
    let _ = writeln!(
        md,
        "## 8. Supplementary groups scanned per decision\n\n\
         The connect4 program's run time per allowed connect to 169.254.169.254 (uid 1001), \
         under policy `{}`: the group rule makes every decision read the caller's \
         supplementary groups and look each one up (at most {}; a caller holding more is \
         denied). The caller holds N groups, none of them named by the policy, so every one \
         is read and looked up. {} rounds.\n",
        groups::POLICY.trim().replace('\n', " "),
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

/// Why this run's figures are not to be trusted, if they are not: too
/// many loops stalled on a retransmit, or started on a busy machine.
fn unreliable() -> Option<String> {
    let (loops, busy, _) = quiet::totals();
    let (timed, stalled) = worker::stalls();
    (stalled * 50 > timed || busy * 10 > loops).then(|| {
        format!(
            "{stalled} of {timed} timed loops stalled on a retransmit, and {busy} of {loops} \
             started on a busy machine"
        )
    })
}

/// The goals of issue #11 against this run.
fn goals_table(md: &mut String, r: &Results, s: &Settings) {
    let rows = goals::goals(r, s);
    let _ = writeln!(
        md,
        "## Goals (issue #11)\n\n\
         Each row's figures come from the section that measures it: the protected path from \
         section 3 (the allowed uid listed last, at the smallest and the largest size), \
         program time from section 2, the storm from section 4, start, reload, memory and \
         the decisions made during a reload from section 5, validate from section 7. A goal \
         is judged on the median, except the delay of decisions made during a reload, where \
         every one must be within the bound (the worst counts).\n"
    );
    if s.quick || unreliable().is_some() {
        let _ = writeln!(
            md,
            "**Not a run to judge the goals by** ({}): a figure anywhere near its goal may \
             land on either side of it in a proper run.\n",
            if s.quick {
                "a `--quick` run"
            } else {
                "see the warning above"
            }
        );
    }
    let mut t = Table::new(&["row", "measured (median [min–max])", "goal", "met"]);
    for g in &rows {
        t.row(vec![
            g.what.clone(),
            g.measured.clone(),
            g.goal.clone(),
            g.verdict().to_owned(),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
    let notes = shortfall::notes(r, &rows);
    if !notes.is_empty() {
        let _ = writeln!(
            md,
            "### Goals not met: why, and what it would take\n\n\
             Each note takes the row apart with this run's own figures.\n"
        );
        for note in notes {
            let _ = writeln!(md, "{note}\n");
        }
    }
}

fn headline(md: &mut String, r: &Results) {
    let mut lines = Vec::new();
    if let Some(h) = &r.hot {
        let parts: Vec<String> = h
            .rows
            .iter()
            .skip(2)
            .map(|row| format!("{} {}", row.label, pct(row.ratio.median)))
            .collect();
        let mut line = format!(
            "Hot path (connect to an address no policy protects), rate against no guard: {}",
            parts.join(", ")
        );
        if let Some(c) = h.rows.iter().find(|row| row.label == hotpath::CONTROL) {
            let _ = write!(
                line,
                ". A second unguarded namespace, measured the same way, came out at {} [{}–{}]: \
                 differences within that spread are this machine's noise",
                pct(c.ratio.median),
                pct(c.ratio.min),
                pct(c.ratio.max)
            );
        }
        if let Some(np) = r
            .runtime
            .as_ref()
            .and_then(|rt| rt.row("not protected (127"))
        {
            let _ = write!(
                line,
                "; the kernel's own accounting puts imds-guard's share at {} ({} per connect)",
                pct(np.share.median),
                ns(np.ns.median)
            );
        }
        lines.push(line + ".");
    }
    if let Some(rt) = &r.runtime {
        let at = |name: &str| {
            rt.rows
                .iter()
                .find(|row| row.path.starts_with(name))
                .map_or_else(|| "n/a".to_owned(), |row| ns(row.ns.median))
        };
        lines.push(format!(
            "Program run time per connect (kernel bpf_stats, IPv4): not protected {}, allowed {} \
             ({} with the agent stopped: no decision wakes it), denied {}.",
            at("not protected (127"),
            at("allowed (169"),
            at("allowed, agent stopped"),
            at("denied (169"),
        ));
    }
    if let Some(sc) = &r.scale {
        let (Some(&lo), Some(&hi)) = (sc.sizes.first(), sc.sizes.last()) else {
            return;
        };
        let mut parts = Vec::new();
        for &k in &sc.kinds {
            if let (Some(a), Some(b)) = (sc.cell(lo, k), sc.cell(hi, k)) {
                parts.push(format!(
                    "{} {} → {}",
                    k.name(),
                    pct(a.protected_ratio.median),
                    pct(b.protected_ratio.median)
                ));
            }
        }
        let mut line = format!(
            "Protected path, allowed uid listed last, {} → {} allowed uids (rate vs no guard): {}",
            thousands(f64::from(lo)),
            thousands(f64::from(hi)),
            parts.join("; ")
        );
        let guard: Vec<f64> = sc
            .cells
            .iter()
            .filter(|c| c.kind == Kind::ImdsGuard)
            .map(|c| c.protected_ratio.median)
            .collect();
        let (min, max) = guard
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        if !guard.is_empty() {
            let _ = write!(
                line,
                ". imds-guard's median stays between {} and {} at every size (one hash lookup \
                 whatever the size); what this path costs it is mostly creating the storage \
                 of each allowed socket (section 2, and the notes under the goals)",
                pct(min),
                pct(max)
            );
        }
        lines.push(line + ".");
    }
    if let Some(st) = &r.storm {
        let d = st.summary(|run| Some(run.denials_per_s()));
        let all = st.runs.iter().all(|run| run.accounted() == Some(true));
        let some_missing = st.runs.iter().any(|run| run.accounted().is_none());
        lines.push(format!(
            "Denial storm: {} denials/s; events received + lost = denied {}.",
            thousands(d.median),
            if some_missing {
                "unavailable (the agent did not report events_received)"
            } else if all {
                "in every run"
            } else {
                "**NOT** in every run"
            }
        ));
    }
    if let Some(a) = &r.agent {
        let mut line = format!(
            "Agent: enforcing {} after spawn, reload applied in {}, idle RSS {}",
            ms(a.ready_ms.median),
            ms(a.reload_us.median / 1e3),
            mib(a.idle_rss_kib.median)
        );
        if let Some(l) = &a.large {
            let _ = write!(
                line,
                "; with {} uids: enforcing {} after spawn (nftables loads the same set in {}), \
                 reload applied in {}, RSS {} after the reloads",
                thousands(f64::from(l.uids)),
                ms(l.ready_ms.median),
                ms(l.nft_ms.median),
                ms(l.reload_us.median / 1e3),
                mib(l.reloaded_rss_kib.median)
            );
        }
        lines.push(line + ".");
    }
    packets::headline(r, &mut lines);
    if !lines.is_empty() {
        let _ = writeln!(md, "## Headline\n");
        for l in lines {
            let _ = writeln!(md, "- {l}");
        }
        md.push('\n');
    }
}

fn limits(md: &mut String) {
    let _ = writeln!(
        md,
        "## What these figures do not say\n\n\
         - Loopback connects in a namespace are the cheapest connects there are, so every \
         fixed cost shows here at its largest relative size; a connect over a real network \
         costs more, and the same absolute cost is a smaller share of it.\n\
         - The firewall rules act on every packet of a connection to a protected address \
         (both directions' OUTPUT, here: SYN, ACK, RST from the client, SYN-ACK from the \
         listener), the guard once per connect() or sendmsg(); that difference is part of \
         what is measured.\n\
         - sendmsg4/sendmsg6 are not timed: the firewall rules AWS suggests and `render` \
         emits filter TCP only, and the datagrams of section 6 go out on a connected socket, \
         where the kernel does not run them.\n\
         - The agent's nftables table in the forward hook is not measured: it only matches \
         forwarded packets to protected addresses, and the bench forwards none.\n\
         - Timings on a shared or virtual machine move with its neighbours: compare ratios \
         within one run, and look at the ranges before reading a difference of a few \
         percent.\n"
    );
}
