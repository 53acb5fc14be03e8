//! Sections 4 and 5: the agent under a denial storm, and the agent itself
//! (start, reload, memory).

use std::fmt::Write as _;

use super::{opt, yes};
use crate::{
    agent::{self, AgentResult},
    cli::Settings,
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

pub(super) fn agent(md: &mut String, a: &AgentResult, _s: &Settings) {
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
}
