//! `imds-guard-bench`: what the guard costs, measured against no guard and
//! against the iptables and nftables rules `imds-guard render` emits for the
//! same policy. Run it as root with `cargo xtask bench [--quick]`, or after
//! `cargo build --release --bins`:
//!
//! ```text
//! cargo run --release -p imds-guard-bench -- [--quick]
//! ```
//!
//! Everything runs in network namespaces and child cgroups the bench makes
//! (see `imds_guard_e2e`), like the privileged tests: no traffic ever leaves
//! for the host's own metadata service. The results go to stdout and, for a
//! full run, to `docs/BENCHMARKS.md` and `docs/bench-scale.svg`.
//!
//! The benchmark of issue 5: what a guarded connect costs, against no guard
//! and the equivalent iptables and nftables rules, at scale, under a denial
//! storm, and what the agent itself costs.
//!
//! Sections (each can run alone with `--only`):
//! 1. [`hotpath`]: connect rate to a destination no policy protects;
//! 2. [`runtime`]: program run time per invocation, from bpf_stats;
//! 3. [`scale`]: 1 to 100,000 allowed uids, hot and protected paths;
//! 4. [`storm`]: denials per second and the agent's event accounting;
//! 5. [`agent`]: start to enforcing, reload, memory, with a small and a
//!    large policy, and decisions logged while the agent reloads;
//! 6. [`packets`]: per-packet cost of the egress program, small UDP
//!    datagrams and a TCP stream;
//! 7. [`validate`]: `imds-guard validate` of one-line policies up to
//!    131,072 uids;
//! 8. [`groups`]: what a decision costs against the supplementary groups
//!    the caller holds (each one a lookup).
//!
//! The report starts with the goals of issue 11 ([`goals`]), each with
//! what the run measured.
//!
//! Every measurement happens in network namespaces and child cgroups the
//! bench makes with the test harness (`imds_guard_e2e`), and every
//! comparison interleaves its configurations round by round.

mod agent;
mod agentproc;
mod cli;
mod cpus;
mod delivery;
mod firewall;
mod flow;
mod flowsink;
mod goals;
mod groups;
mod hotpath;
mod interrupt;
mod job;
mod lock;
mod machine;
mod nsexec;
mod packets;
mod plot;
mod progstats;
mod quiet;
mod report;
mod runtime;
mod scale;
mod setup;
mod shortfall;
mod sink;
mod stats;
mod storm;
mod validate;
mod worker;

use std::{fs, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use imds_guard_e2e::{Netns, privileged_or_skip};

use self::{
    cli::{Args, Section, Settings},
    report::Results,
};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(worker::WORKER_ARG) {
        return worker::main(argv.get(2).map_or("", String::as_str));
    }
    let args = Args::parse();
    let command = std::iter::once("imds-guard-bench".to_owned())
        .chain(argv.iter().skip(1).cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let settings = Settings::from_args(args, command);
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imds-guard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(s: &Settings) -> anyhow::Result<()> {
    if !privileged_or_skip("imds-guard-bench") {
        anyhow::bail!("the bench needs root, cgroup v2, iproute2 and network namespaces");
    }
    interrupt::install()?;
    let _one_at_a_time = lock::exclusive()?;
    worker::VERBOSE.store(s.verbose, std::sync::atomic::Ordering::Relaxed);
    if s.quick {
        quiet::limit(Duration::from_millis(500), Duration::from_secs(10));
    }
    let machine = machine::Machine::probe();
    let legacy = legacy(s);
    let on = legacy.is_ok();
    let mut results = Results {
        machine,
        legacy: legacy.err(),
        hot: None,
        runtime: None,
        scale: None,
        storm: None,
        agent: None,
        packets: None,
        validate: None,
        groups: None,
    };
    if s.runs(Section::Hot) {
        results.hot = Some(hotpath::run(s, on)?);
    }
    if s.runs(Section::Runtime) {
        results.runtime = Some(runtime::run(s)?);
    }
    if s.runs(Section::Scale) {
        results.scale = Some(scale::run(s, on)?);
    }
    if s.runs(Section::Storm) {
        results.storm = Some(storm::run(s)?);
    }
    if s.runs(Section::Agent) {
        results.agent = Some(agent::run(s)?);
    }
    if s.runs(Section::Packets) {
        results.packets = Some(packets::run(s)?);
    }
    if s.runs(Section::Validate) {
        results.validate = Some(validate::run(s)?);
    }
    if s.runs(Section::Groups) {
        results.groups = Some(groups::run(s)?);
    }

    let plot_name = "bench-scale.svg";
    let mut plot = None;
    if let (Some(dir), Some(sc)) = (&s.docs_dir, &results.scale) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        plot::draw(sc, &dir.join(plot_name))?;
        plot = Some(plot_name);
    }
    let md = report::markdown(&results, s, plot);
    println!("{md}");
    if let Some(dir) = &s.docs_dir {
        let path = dir.join("BENCHMARKS.md");
        fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        if plot.is_some() {
            eprintln!("wrote {}", dir.join(plot_name).display());
        }
    }
    let failed = report::failed_checks(&results);
    anyhow::ensure!(failed.is_empty(), "checks failed: {}", failed.join("; "));
    Ok(())
}

/// Whether iptables-legacy is measured: asked for, and working here.
fn legacy(s: &Settings) -> Result<(), String> {
    if !s.legacy {
        return Err("--no-legacy".to_owned());
    }
    let netns = Netns::try_new().map_err(|e| format!("no namespace to try it in: {e}"))?;
    if firewall::legacy_available(&netns) {
        Ok(())
    } else {
        Err(
            "`iptables-legacy -S` fails in a namespace here (no x_tables in the kernel?)"
                .to_owned(),
        )
    }
}
