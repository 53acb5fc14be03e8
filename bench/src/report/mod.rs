//! The generated part of docs/BENCHMARKS.md, as markdown: the goals table
//! with a shortfall line for each goal not met, the run (machine, settings,
//! how steady it was), and every section's tables, each under a one-line
//! caption of what it ran. No prose about what the figures mean: that is a
//! person's to write, in the hand-written part of the document around the
//! generated one (`doc` splices it in). This file has the frame; the
//! sections' tables are in `connects` (1 to 3), `agent` (4, 5) and
//! `packets` (6 to 8).

mod agent;
mod connects;
pub mod doc;
mod packets;

use std::fmt::Write as _;

use super::{
    cli::Settings,
    goals,
    results::Results,
    stats::{Summary, Table, ms, pct, thousands},
};

fn rate(s: &Summary) -> String {
    s.show(|x| format!("{}/s", thousands(x)))
}

fn ratio(s: &Summary) -> String {
    s.show(pct)
}

fn secs(d: std::time::Duration) -> String {
    ms(d.as_secs_f64() * 1e3)
}

/// A policy file on one line, for a caption.
fn policy(toml: &str) -> String {
    format!("`{}`", toml.trim().replace('\n', " "))
}

/// The generated part: everything between the markers of `doc`.
pub fn generated(r: &Results, s: &Settings, plot: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "_Written by `imds-guard-bench` (`cargo xtask bench`) at {} on {}: rerun it rather \
         than edit between the markers._\n",
        r.machine.commit, r.machine.date
    );
    if s.quick {
        let _ = writeln!(
            md,
            "**A `--quick` smoke run: few, short rounds; the figures are indicative only.**\n"
        );
    }
    if let Some(why) = r.health.unreliable() {
        let _ = writeln!(
            md,
            "**Warning: {why}: the figures of this run are not reliable. Rerun on a quiet \
             machine.**\n"
        );
    }
    goals_section(&mut md, r, s);
    run_section(&mut md, r, s);
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
        packets::packets(&mut md, p, r.runtime.as_ref());
    }
    if let Some(v) = &r.validate {
        packets::validate(&mut md, v);
    }
    if let Some(g) = &r.groups {
        packets::groups(&mut md, g);
    }
    md
}

/// The goals of issues #11 and #21 against this run, and a line for each
/// not met.
fn goals_section(md: &mut String, r: &Results, s: &Settings) {
    let rows = goals::goals(r, s);
    let bound_ms = s.event_bound.as_secs_f64() * 1e3;
    let _ = writeln!(md, "## Goals (issues #11 and #21)\n");
    let mut t = Table::new(&["row", "measured (median [min–max])", "goal", "met"]);
    for g in &rows {
        t.row(vec![
            g.id.label().to_owned(),
            g.measured.clone(),
            g.id.goal(bound_ms),
            g.verdict().to_owned(),
        ]);
    }
    md.push_str(&t.render());
    md.push('\n');
    let lines: Vec<String> = rows.iter().filter_map(goals::Goal::shortfall).collect();
    if !lines.is_empty() {
        let _ = writeln!(md, "Not met, in this run's figures:\n");
        for line in lines {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
    }
}

/// Where the run ran, with what settings, and how steady the machine was.
fn run_section(md: &mut String, r: &Results, s: &Settings) {
    let (m, h) = (&r.machine, &r.health);
    let _ = writeln!(md, "## The run\n");
    let mut t = Table::new(&["", ""]);
    let mut row = |what: &str, value: String| t.row(vec![what.to_owned(), value]);
    let vm = if m.virtual_machine {
        ", virtual machine"
    } else {
        ""
    };
    row(
        "machine",
        format!("{} CPUs, {}, {:.1} GiB RAM{vm}", m.cpus, m.model, m.mem_gib),
    );
    row("kernel", m.kernel.clone());
    row(
        "firewall tools",
        format!("{}; {}; {}", m.iptables, m.nft, m.iptables_legacy),
    );
    row("commit", m.commit.clone());
    row("date", m.date.clone());
    row(
        "load average (1, 5, 15 min)",
        format!("{} at the start, {} at the end", m.load_start, h.load_end),
    );
    row("command", format!("`{}`", s.command));
    row(
        "rounds",
        format!(
            "{} per comparison, interleaved; each figure is their median [min–max]",
            s.rounds
        ),
    );
    row(
        "timed loop",
        format!(
            "{} ms untimed, then {} ms timed",
            s.timing.warmup_ms, s.timing.run_ms
        ),
    );
    row(
        "quiet gate",
        format!(
            "{} of {} timed loops started on a busy machine; waited {:.0} s in all (at most \
             {:.1} s per loop, {:.0} s in all)",
            h.busy,
            h.gated,
            h.waited.as_secs_f64(),
            h.gate_per_loop.as_secs_f64(),
            h.gate_total.as_secs_f64()
        ),
    );
    row(
        "stalls",
        format!(
            "{} of {} timed loops had a connect over 200 ms; {} ran past their deadline and \
             were run again",
            h.stalled, h.timed, h.overran
        ),
    );
    row(
        "iptables-legacy",
        r.legacy
            .as_ref()
            .map_or_else(|| "measured".to_owned(), |why| format!("left out: {why}")),
    );
    md.push_str(&t.render());
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{cli::Args, goals::GoalId, results::sample};

    fn settings() -> Settings {
        Settings::from_args(
            Args::try_parse_from(["imds-guard-bench"]).expect("no arguments"),
            "imds-guard-bench".to_owned(),
        )
    }

    #[test]
    fn the_goals_table_has_every_goal_and_a_line_for_each_not_met() {
        let r = sample::results();
        let md = generated(&r, &settings(), None);
        let goals = goals::goals(&r, &settings());
        for g in &goals {
            assert!(
                md.contains(&format!("| {} ", g.id.label())),
                "{:?} missing",
                g.id
            );
            if let Some(line) = g.shortfall() {
                assert!(
                    md.contains(&format!("- {line}\n")),
                    "{:?}'s line missing",
                    g.id
                );
            }
        }
        assert_eq!(goals.len(), GoalId::ALL.len());
        assert_eq!(md.matches("\n- **").count(), 9, "{md}");
        // Tables of the sections that ran, none of the others.
        assert!(md.contains("## 2. Program run time per invocation"));
        assert!(!md.contains("## 1. "));
    }

    #[test]
    fn the_floor_and_the_start_phases_are_shown_where_they_were_measured() {
        let md = generated(&sample::results(), &settings(), None);
        // Cells without the padding that aligns the columns.
        let md = md
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        // Section 2: the empty program's run time beside each route it times.
        assert!(
            md.contains(
                "| not protected (127.0.0.1) | connect4 | 80.0 ns [70.0 ns–90.0 ns] | 20.0 ns \
                 [19.0 ns–21.0 ns] | +60.0 ns |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| allowed, agent stopped | connect4 | 80.0 ns [70.0 ns–90.0 ns] | – | – |"
            )
        );
        // Section 2's request loops, by caller, with the ratio to the
        // whole-service request and req_msg's run time.
        assert!(
            md.contains(
                "### Request-level judgement: a path-judged request against a whole-service one"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| path-judged (a `[requests.bench]` caller, an allowed `GET`) | 21,000 ns [20,500 \
                 ns–21,500 ns] | 105.0% [104.0%–106.0%] | 450.0 ns [430.0 ns–470.0 ns] | 1.00 [1.00–1.00] |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 100% (baseline) | never ran | 0.00 [0.00–0.00] |"),
            "{md}"
        );
        assert!(md.contains(
            "| not protected, a UDP datagram out of a device, request policy loaded | egress | \
             80.0 ns [70.0 ns–90.0 ns] | 20.0 ns [19.0 ns–21.0 ns] | +60.0 ns |"
        ));
        // Section 6: the guard against the empty programs' cgroup, and the
        // run time per datagram section 2 timed.
        assert!(md.contains("| imds-guard | 440,000/s"), "{md}");
        assert!(md.contains("| 93.0% [91.0%–95.0%] |"), "{md}");
        assert!(md.contains(
            "run time per datagram on the same stream (section 2): 80.0 ns [70.0 ns–90.0 ns]; \
             the empty program's: 20.0 ns [19.0 ns–21.0 ns]."
        ));
        // Section 5: the start taken apart, small and large policy.
        assert!(md.contains("### The start, taken apart"), "{md}");
        assert!(
            md.contains("| phase | small policy | 100,000 uids |"),
            "{md}"
        );
        assert!(md.contains(
            "| load the programs (the verifier) | 27.6 ms | 32.1 ms [31.6 ms–32.6 ms] |"
        ));
        assert!(md.contains("| within the start, outside these phases | 2.0 ms | 2.0 ms "));
    }

    #[test]
    fn an_unsteady_run_says_so_first() {
        let mut r = sample::results();
        r.health.stalled = 10;
        let md = generated(&r, &settings(), None);
        let warning = md
            .find("**Warning: 10 of 90 timed loops stalled")
            .expect("warned");
        assert!(warning < md.find("## Goals").expect("goals"));
    }
}
