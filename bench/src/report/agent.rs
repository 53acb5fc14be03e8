//! Sections 4 and 5: the agent under a denial storm, and the agent itself
//! (start, reload, memory; with a large policy, and the delivery of
//! decisions while it reloads).

use std::fmt::Write as _;

use super::{opt, yes};
use crate::{
    agent::{self, AgentResult, Large},
    cli::Settings,
    delivery,
    stats::{Table, mib, ms, pct, thousands},
    storm::{self, StormResult},
};

pub(super) fn storm(md: &mut String, st: &StormResult) {
    let _ = writeln!(
        md,
        "## 4. Denial storm\n\n\
         {} processes, each its own denied uid (60001, 60002, ...), connect to \
         169.254.169.254:80 in a loop for {} s while the real agent (`imds-guard run \
         --log-format json`, policy `{}`) reports; {} run(s), each with a fresh agent. \
         Denied is the kernel's counter from the agent's final (SIGTERM) record, checked \
         against the EPERMs the processes saw; received is the agent's own count of events it \
         read (`events_received`), lost the kernel's count of events the full ring buffer \
         could not take (`events_lost`). The agent's CPU time (utime + stime, over the storm \
         and the half second after it; the share is of that window) and peak RSS (VmHWM) are \
         read from /proc just before SIGTERM.\n",
        st.procs,
        st.duration.as_secs(),
        storm::POLICY.trim().replace('\n', " "),
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
         {} fresh agents (policy `{}`), {} SIGHUP reloads each. Spawn to enforcing is the time \
         from spawning `imds-guard run` to its `\"ready\":true` record; the reload is the \
         `micros` field of its `event=reload outcome=applied` record, and SIGHUP to that \
         record as the bench sees it (polled every ms); idle RSS is VmRSS after {} s idle.\n",
        a.runs,
        agent::POLICY.trim().replace('\n', " "),
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
}

fn large(md: &mut String, l: &Large, a: &AgentResult, s: &Settings) {
    let n = thousands(f64::from(l.uids));
    let _ = writeln!(
        md,
        "### With {n} allowed uids\n\n\
         {runs} fresh agents with the policy of section 3 at {n} uids (`[allow] uids = [0, \
         100000, ...]`, on one line), {reloads} SIGHUP reloads each, and as many `nft -f` \
         loads of the set `render --nftables` emits for it, each in a fresh namespace; the \
         small agent, the large one and nftables take turns in a rotating order. RSS is VmRSS \
         after {idle} s idle, then again after the reloads (both generations of the maps \
         written), and VmHWM then.\n\n\
         During every reload a worker makes one denied connect every {pace} ms to \
         169.254.169.254:80, each as a real uid of its own (300000 and up, so that the \
         agent, which rate-limits records per uid and destination, logs every one), from \
         {lead} ms before the SIGHUP to {lead} ms after the reload's record; the bench notes \
         when each connect's record reaches it (one monotonic clock for the worker and the \
         bench). A connect made between the SIGHUP and the reload's record is made during \
         the reload; its delay to its record says whether the agent kept reading decisions \
         meanwhile (an agent that reloads in its event loop logs them only once done).\n",
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
         (the goal: each within {}); {} connect(s) of the probes were never logged.\n",
        thousands(l.delivered_during as f64),
        thousands(l.during as f64),
        ms(s.event_bound.as_secs_f64() * 1e3),
        thousands(l.missing as f64),
    );
}
