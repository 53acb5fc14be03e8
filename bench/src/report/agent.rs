//! Sections 4 and 5: the agent under a denial storm, and the agent itself
//! (start, reload, memory; with a large policy, and the delivery of
//! decisions while it reloads).

use std::fmt::Write as _;

use super::policy;
use crate::{
    agent::{self, AgentResult, Large},
    cli::Settings,
    delivery,
    phases::{Phase, Phases},
    stats::{Summary, Table, mib, ms, pct, thousands},
    storm::{self, StormResult},
};

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

pub(super) fn storm(md: &mut String, st: &StormResult) {
    let _ = writeln!(
        md,
        "## 4. Denial storm\n\n\
         {} processes, denied uids 60001 and up, connect to 169.254.169.254:80 for {} s; \
         policy {}; {} run(s), each with a fresh agent.\n",
        st.procs,
        st.duration.as_secs(),
        policy(storm::POLICY),
        st.runs.len()
    );
    let mut t = Table::new(&[
        "run",
        "denials/s",
        "denied (kernel)",
        "= EPERMs seen",
        "events received",
        "events lost",
        "received + lost = denied",
        "agent CPU",
        "idle RSS",
        "peak RSS",
    ]);
    for (i, run) in st.runs.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            thousands(run.denials_per_s()),
            opt(run.denied),
            yes(run.denied_matches()).to_owned(),
            opt(run.received),
            opt(run.lost),
            yes(run.accounted()).to_owned(),
            format!(
                "{:.2} s ({} of one CPU)",
                run.cpu_s,
                pct(run.cpu_s / run.window_s)
            ),
            mib(run.idle_rss_kib as f64),
            mib(run.hwm_kib as f64),
        ]);
    }
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\nMedians over the runs: {} denials/s, agent CPU {} s, peak RSS {}.\n",
        st.summary(|r| Some(r.denials_per_s())).show(thousands),
        st.summary(|r| Some(r.cpu_s)).show(|x| format!("{x:.2}")),
        st.summary(|r| Some(r.hwm_kib as f64)).show(mib),
    );
}

pub(super) fn agent(md: &mut String, a: &AgentResult, s: &Settings) {
    let _ = writeln!(
        md,
        "## 5. Agent\n\n\
         {} fresh agents, policy {}, {} SIGHUP reloads each; RSS after {} s idle.\n",
        a.runs,
        policy(agent::POLICY),
        a.reloads,
        a.idle.as_secs()
    );
    let mut t = Table::new(&["figure", "median [min–max]", "samples"]);
    t.row(vec![
        "spawn to enforcing".into(),
        a.ready_ms.show(ms),
        a.ready_ms.n.to_string(),
    ]);
    t.row(vec![
        "reload, agent's `micros`".into(),
        a.reload_us.show(|x| ms(x / 1e3)),
        a.reload_us.n.to_string(),
    ]);
    t.row(vec![
        "reload, SIGHUP to record".into(),
        a.reload_wall_ms.show(ms),
        a.reload_wall_ms.n.to_string(),
    ]);
    t.row(vec![
        "idle RSS".into(),
        a.idle_rss_kib.show(mib),
        a.idle_rss_kib.n.to_string(),
    ]);
    md.push_str(&t.render());
    md.push('\n');
    if let Some(l) = &a.large {
        large(md, l, a, s);
    }
    start_phases(md, a);
}

/// The starts taken apart, small policy and large, from the phases their
/// `ready` records give.
fn start_phases(md: &mut String, a: &AgentResult) {
    let large = a.large.as_ref().map(|l| (l.uids, &l.phases));
    let _ = writeln!(
        md,
        "### The start, taken apart\n\n\
         From each agent's `ready` record (`parse_ms`, `open_ms`, ...); a phase marked … runs \
         beside the one above it. Outside the phases: the agent's `start_ms` less the phases' \
         critical path; before the start: spawn to `ready` less `start_ms` (exec, runtime, \
         logging).\n"
    );
    let large_head = large.map(|(n, _)| format!("{} uids", thousands(f64::from(n))));
    let mut head = vec!["phase", "small policy"];
    head.extend(large_head.as_deref());
    let mut t = Table::new(&head);
    let mut row = |what: &str, f: &dyn Fn(&Phases) -> Summary| {
        let mut cells = vec![what.to_owned(), f(&a.phases).show(ms)];
        cells.extend(large.map(|(_, p)| f(p).show(ms)));
        t.row(cells);
    };
    for phase in Phase::ALL {
        row(phase.label(), &|p| p.phase(phase).unwrap_or_default());
    }
    row("within the start, outside these phases", &|p| p.unphased);
    row("before the start", &|p| p.before);
    md.push_str(&t.render());
    md.push('\n');
}

fn large(md: &mut String, l: &Large, a: &AgentResult, s: &Settings) {
    let _ = writeln!(
        md,
        "### With {n} allowed uids\n\n\
         {runs} fresh agents with the policy of section 3 at {n} uids, {reloads} reloads each, \
         and as many `nft -f` of the same set; RSS after {idle} s idle. During each reload, \
         one denied connect every {pace} ms, each as a uid of its own, from {lead} ms before \
         the SIGHUP to {lead} ms after the reload's record.\n",
        n = thousands(f64::from(l.uids)),
        runs = a.runs,
        reloads = a.reloads,
        idle = a.idle.as_secs(),
        pace = delivery::PACE.as_millis(),
        lead = delivery::LEAD.as_millis(),
    );
    let mut t = Table::new(&["figure", "median [min–max]", "samples"]);
    let mut row = |what: &str, shown: String, n: usize| {
        t.row(vec![what.to_owned(), shown, n.to_string()]);
    };
    row("spawn to enforcing", l.ready_ms.show(ms), l.ready_ms.n);
    row(
        "nftables: `nft -f` of the same set",
        l.nft_ms.show(ms),
        l.nft_ms.n,
    );
    row(
        "reload, agent's `micros`",
        l.reload_us.show(|x| ms(x / 1e3)),
        l.reload_us.n,
    );
    row(
        "reload, SIGHUP to record",
        l.reload_wall_ms.show(ms),
        l.reload_wall_ms.n,
    );
    row(
        "RSS, idle before the first reload",
        l.idle_rss_kib.show(mib),
        l.idle_rss_kib.n,
    );
    row(
        "RSS, after the reloads",
        l.reloaded_rss_kib.show(mib),
        l.reloaded_rss_kib.n,
    );
    row("peak RSS (VmHWM)", l.hwm_kib.show(mib), l.hwm_kib.n);
    row(
        "a decision made during a reload: connect to record, worst per reload",
        l.worst_during_ms.show(ms),
        l.worst_during_ms.n,
    );
    row(
        "a decision made outside a reload: connect to record",
        l.outside_ms.show(ms),
        l.outside_ms.n,
    );
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\n{} of the {} connects made during a reload were logged before the reload's record \
         (the goal: each within {}); {} never logged.\n",
        thousands(l.delivered_during as f64),
        thousands(l.during as f64),
        ms(s.event_bound.as_secs_f64() * 1e3),
        thousands(l.missing as f64),
    );
}
