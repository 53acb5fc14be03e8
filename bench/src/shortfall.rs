//! For each goal of issue #11 this run did not meet: why, in this run's
//! own figures, and what meeting it would take. Written under the goals
//! table; a goal met needs no note.

use super::{
    goals::{Goal, Topic},
    report::Results,
    setup::Kind,
    stats::{mib, ms, ns, pct, thousands},
};

/// One note per topic with a goal not met, in the table's order.
pub fn notes(r: &Results, goals: &[Goal]) -> Vec<String> {
    let mut topics: Vec<Topic> = Vec::new();
    for g in goals.iter().filter(|g| g.met == Some(false)) {
        // The protected path's rows and the program time's share a cause.
        let topic = match g.topic {
            Topic::ProgramTime => Topic::ProtectedPath,
            t => t,
        };
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    topics.into_iter().filter_map(|t| note(r, t)).collect()
}

fn note(r: &Results, topic: Topic) -> Option<String> {
    match topic {
        Topic::ProtectedPath | Topic::ProgramTime => protected_path(r),
        Topic::Start => start(r),
        Topic::Reload => reload(r),
        Topic::Memory => memory(r),
        Topic::Validate => validate(r),
        Topic::Storm => storm(r),
        Topic::Delivery => Some(
            "**Decisions during a reload.** A decision's record reached the log later than the \
             bound, or never (section 5 has the worst delays during reloads and outside them). \
             The agent reads the ring on a timer (50 ms) and when the ring passes a quarter \
             full, so a delay past that is the reader held up. What it would take: finding what \
             held the reader in this run (a delay only during reloads points at the reload's \
             work on the reader's thread)."
                .to_owned(),
        ),
        Topic::Unmeasured => None,
    }
}

/// The allowed connect's program time, taken apart with section 2's rows,
/// against what a loopback connect leaves the guard at 95% of its rate.
fn protected_path(r: &Results) -> Option<String> {
    let rt = r.runtime.as_ref()?;
    let allowed = rt.row("allowed (169")?;
    let denied = rt.row("denied (169")?;
    let (a, all, d) = (allowed.ns.median, allowed.all_ns.median, denied.ns.median);
    let mut text = format!(
        "**Protected path and program time.** An allowed IPv4 connect costs the guard's \
         programs {} in all (section 2): connect4 {}, and egress {} on the connection's \
         packets.",
        ns(all),
        ns(a),
        ns((all - a).max(0.0)),
    );
    if a > d {
        text.push_str(&format!(
            " The decision costs connect4 at most {}: a denied connect decides and also \
             writes an event. An allowed connect writes none and still costs about {} more: \
             creating the socket's storage (`bpf_sk_storage_get` with \
             `BPF_SK_STORAGE_GET_F_CREATE`, an allocation per socket), which lets the \
             connection's packets through egress after one lookup each instead of a decision \
             each, costs at least that.",
            ns(d),
            ns(a - d),
        ));
    } else {
        text.push_str(&format!(
            " A denied connect, which decides and writes an event but creates no socket \
             storage, costs connect4 {} in this run: the decision, not the storage, is most \
             of it here.",
            ns(d),
        ));
    }
    if let Some(stopped) = rt.row("allowed, agent stopped") {
        text.push_str(&format!(
            " With the agent stopped it costs {}: no decision wakes the agent any more.",
            ns(stopped.ns.median)
        ));
    }
    if let Some(sc) = &r.scale {
        let per_connect = 1e9 / sc.base_protected.median;
        let nft = sc
            .sizes
            .first()
            .and_then(|&n| sc.cell(n, Kind::Nftables))
            .map(|c| c.protected_ratio.median);
        text.push_str(&format!(
            " A loopback connect to the protected address without any guard takes {} here \
             (section 3's no-guard rate), so 95% of its rate leaves every program together {} \
             per connect",
            ns(per_connect),
            ns(per_connect * (1.0 / 0.95 - 1.0)),
        ));
        match nft {
            Some(ratio) if ratio > 0.0 => text.push_str(&format!(
                "; nftables' rule, at {} of the rate, costs about {}.",
                pct(ratio),
                ns(per_connect * (1.0 / ratio - 1.0).max(0.0))
            )),
            _ => text.push('.'),
        }
    }
    text.push_str(
        " What it would take: remembering a socket decided without an allocation per socket, \
         such as a preallocated LRU hash keyed by the socket cookie (a socket evicted under \
         churn would be judged again, never let through unjudged), which would leave connect4 \
         about a decision's cost; not measured here.",
    );
    Some(text)
}

/// Start with 100,000 uids against start with a two-entry policy.
fn start(r: &Results) -> Option<String> {
    let agent = r.agent.as_ref()?;
    let large = agent.large.as_ref()?;
    let (small, big) = (agent.ready_ms.median, large.ready_ms.median);
    Some(format!(
        "**Start.** An agent with a two-entry policy is enforcing {} after it is spawned, with \
         {} uids {} (section 5): the uids add {}. The rest is the start itself, which this \
         bench does not take apart: reading the kernel's BTF (for the offsets, and inside \
         aya's loader, side by side), the verifier's walk of the programs (two at a time), \
         creating the maps and attaching. What it would take: one BTF parse instead of two \
         (aya 0.14 parses it whenever a loader is made) and programs the verifier walks in \
         fewer instructions; the start's phases in the agent's `ready` record would say \
         which matters most.",
        ms(small),
        thousands(f64::from(large.uids)),
        ms(big),
        ms((big - small).max(0.0)),
    ))
}

/// A reload of 100,000 uids against what parsing them alone costs (the
/// validate section's net time per uid at its largest size).
fn reload(r: &Results) -> Option<String> {
    let agent = r.agent.as_ref()?;
    let large = agent.large.as_ref()?;
    let reload_ms = large.reload_us.median / 1e3;
    let mut text = format!(
        "**Reload.** A reload of {} uids takes the agent {} (its own `micros`), one of a \
         two-entry policy {}.",
        thousands(f64::from(large.uids)),
        ms(reload_ms),
        ms(agent.reload_us.median / 1e3),
    );
    if let Some(size) = r.validate.as_ref().and_then(|v| v.largest()) {
        let parse_ms = size.net_ms.median / f64::from(size.uids) * f64::from(large.uids);
        text.push_str(&format!(
            " Reading and validating the file alone takes about {} for as many uids (section \
             7's net time per uid at {} uids, times {}), {} of the reload; writing the maps \
             in batches, waiting out the programs' last readers of the old generation and \
             clearing it are the rest, about {}.",
            ms(parse_ms),
            thousands(f64::from(size.uids)),
            thousands(f64::from(large.uids)),
            pct(parse_ms / reload_ms),
            ms((reload_ms - parse_ms).max(0.0)),
        ));
    }
    text.push_str(
        " What it would take: reading a list of integers without a document node and a \
         source location for each element (kept so that an error names its line and \
         column), or uid ranges in the policy, so that 100,000 uids are not 100,000 elements \
         to parse.",
    );
    Some(text)
}

/// Validate's time against its per-uid cost and the process's own start.
fn validate(r: &Results) -> Option<String> {
    let v = r.validate.as_ref()?;
    let size = v.largest()?;
    let exponent = v
        .exponent
        .map_or_else(|| "unknown".to_owned(), |e| format!("{e:.2}"));
    Some(format!(
        "**Validate.** `imds-guard validate` of {} uids takes {} from spawn to exit (section \
         7): {} net of the process's own start and exit ({} for a one-uid policy), about {} \
         per uid, growing with an exponent of {exponent} (1 is linear). At that cost per uid \
         this many uids cannot fit the bound on this machine in this run. What it would take: \
         the reader the reload note names, without a document node and a source location per \
         element.",
        thousands(f64::from(size.uids)),
        ms(size.wall_ms.median),
        ms(size.net_ms.median),
        ms(v.base_ms.median),
        ns(size.net_ms.median * 1e6 / f64::from(size.uids.max(1))),
    ))
}

/// The agent's CPU in the storm against the denials it read.
fn storm(r: &Results) -> Option<String> {
    let st = r.storm.as_ref()?;
    let cpu = st.summary(|run| Some(run.cpu_s / run.window_s)).median;
    let rate = st.summary(|run| Some(run.denials_per_s())).median;
    Some(format!(
        "**Denial storm.** The agent spent {} of one CPU reading and rate-limiting {} \
         denials/s (section 4), about {} of its CPU per denial. What it would take: counting \
         repeated denials of one caller in the kernel instead of reading each record.",
        pct(cpu),
        thousands(rate),
        ns(cpu * 1e9 / rate.max(1.0)),
    ))
}

/// The agent's memory with 100,000 uids against a two-entry policy's.
fn memory(r: &Results) -> Option<String> {
    let agent = r.agent.as_ref()?;
    let large = agent.large.as_ref()?;
    let small = agent.idle_rss_kib.median;
    let before = large.idle_rss_kib.median;
    let per_uid = (before - small).max(0.0) * 1024.0 / f64::from(large.uids.max(1));
    Some(format!(
        "**Memory.** The agent holds {} with a two-entry policy and {} with {} uids before \
         any reload (section 5): the policy costs it {}, about {per_uid:.0} bytes per uid: \
         the entries as written (numbered for the records and `check`), the uid table the \
         decision mirrors, and the keys each of the two map generations holds, so that a \
         reload can clear them. After the reloads it holds {}; the peak, while a file is \
         parsed, is {}. What it would take: keeping only the uid table and each generation's \
         keys once a policy is applied, and reading the entries again from the file when \
         something asks for them.",
        mib(small),
        mib(before),
        thousands(f64::from(large.uids)),
        mib((before - small).max(0.0)),
        mib(large.reloaded_rss_kib.median),
        mib(large.hwm_kib.median),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        agent::{AgentResult, Large},
        machine::Machine,
        runtime::{Row, RuntimeResult},
        stats::Summary,
        validate::{Size, ValidateResult},
    };

    fn at(median: f64) -> Summary {
        Summary {
            n: 3,
            median,
            min: median,
            max: median,
        }
    }

    fn row(path: &'static str, ns: f64, all_ns: f64) -> Row {
        Row {
            path,
            program: "connect4",
            ns: at(ns),
            all_ns: at(all_ns),
            share: at(0.05),
            runs: 1,
        }
    }

    fn results() -> Results {
        let large = Large {
            uids: 100_000,
            ready_ms: at(171.0),
            nft_ms: at(1_000.0),
            reload_us: at(105_000.0),
            reload_wall_ms: at(120.0),
            idle_rss_kib: at(20.4 * 1024.0),
            reloaded_rss_kib: at(21.9 * 1024.0),
            hwm_kib: at(63.0 * 1024.0),
            worst_during_ms: at(40.0),
            outside_ms: at(20.0),
            during: 1,
            delivered_during: 1,
            missing: 0,
        };
        Results {
            machine: Machine {
                cpus: 2,
                model: String::new(),
                mem_gib: 1.0,
                virtual_machine: true,
                kernel: String::new(),
                iptables: String::new(),
                iptables_legacy: String::new(),
                nft: String::new(),
                commit: String::new(),
                date: String::new(),
                load_start: String::new(),
            },
            legacy: None,
            hot: None,
            runtime: Some(RuntimeResult {
                rows: vec![
                    row("allowed (169.254.169.254)", 880.0, 1_390.0),
                    row("denied (169.254.169.254)", 320.0, 320.0),
                ],
                rounds: 3,
                counts_exact: true,
                stats_how: "",
                programs: Vec::new(),
            }),
            scale: None,
            storm: None,
            agent: Some(AgentResult {
                runs: 5,
                reloads: 5,
                idle: Duration::from_secs(3),
                ready_ms: at(150.0),
                reload_us: at(20_000.0),
                reload_wall_ms: at(30.0),
                idle_rss_kib: at(9.4 * 1024.0),
                large: Some(large),
            }),
            packets: None,
            validate: Some(ValidateResult {
                sizes: vec![Size {
                    uids: 131_072,
                    wall_ms: at(98.0),
                    net_ms: at(96.0),
                }],
                base_ms: at(2.0),
                exponent: Some(1.0),
                rounds: 3,
            }),
            groups: None,
        }
    }

    fn goal(topic: Topic, met: Option<bool>) -> Goal {
        Goal {
            what: String::new(),
            measured: String::new(),
            goal: String::new(),
            met,
            topic,
        }
    }

    #[test]
    fn a_goal_not_met_gets_one_note_in_this_runs_figures() {
        let goals = [
            goal(Topic::ProtectedPath, Some(false)),
            goal(Topic::ProgramTime, Some(false)),
            goal(Topic::Storm, Some(true)),
            goal(Topic::Reload, Some(false)),
            goal(Topic::Memory, None),
        ];
        let notes = notes(&results(), &goals);
        // The protected path and the program time share one note; a goal
        // met or not measured has none.
        assert_eq!(notes.len(), 2, "{notes:#?}");
        assert!(notes[0].starts_with("**Protected path"), "{}", notes[0]);
        // Allowed minus denied: what creating the storage adds.
        assert!(notes[0].contains("about 560.0 ns more"), "{}", notes[0]);
        assert!(notes[0].contains("egress 510.0 ns"), "{}", notes[0]);
        assert!(notes[1].starts_with("**Reload"), "{}", notes[1]);
        // 96 ms for 131,072 uids is about 73 ms for 100,000.
        assert!(notes[1].contains("about 73.2 ms"), "{}", notes[1]);
    }

    #[test]
    fn validate_over_its_bound_is_explained_per_uid() {
        let notes = notes(&results(), &[goal(Topic::Validate, Some(false))]);
        assert_eq!(notes.len(), 1, "{notes:#?}");
        // 96 ms net for 131,072 uids.
        assert!(notes[0].contains("about 732.4 ns per uid"), "{}", notes[0]);
    }

    #[test]
    fn every_goal_met_leaves_no_note() {
        let goals = [
            goal(Topic::Start, Some(true)),
            goal(Topic::Memory, Some(true)),
        ];
        assert!(notes(&results(), &goals).is_empty());
    }
}
