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
//! full run, to `docs/bench-scale.svg` and into `docs/BENCHMARKS.md`,
//! between its markers (see `report::doc`).
//!
//! The benchmark of issue 5: what a guarded connect costs, against no guard
//! and the equivalent iptables and nftables rules, at scale, under a denial
//! storm, and what the agent itself costs.
//!
//! Sections (each can run alone with `--only`):
//! 1. [`hotpath`]: connect rate to a destination no policy protects;
//! 2. [`runtime`]: program run time per invocation, from bpf_stats, beside
//!    the [`floor`]'s (empty programs of the same types), and what
//!    request-level judgement costs a request on a kept-alive connection;
//! 3. [`scale`]: 1 to 100,000 allowed uids, hot and protected paths;
//! 4. [`storm`]: denials per second and the agent's event accounting;
//! 5. [`agent`]: start to enforcing (taken apart by its [`phases`]),
//!    reload, memory, with a small and a large policy, and decisions
//!    logged while the agent reloads;
//! 6. [`packets`]: per-packet cost of the egress program, small UDP
//!    datagrams and a TCP stream out of a device ([`wire`]);
//! 7. [`validate`]: `imds-guard validate` of one-line policies up to
//!    131,072 uids;
//! 8. [`groups`]: what a decision costs against the supplementary groups
//!    the caller holds (each one a lookup).
//!
//! What a run measured is [`results::Results`]; the goals of issues 11 and
//! 21 are judged on it by key ([`goals`]), and [`report`] writes the figures and
//! the goals table as markdown, the generated part of docs/BENCHMARKS.md.
//! What the figures mean is written by hand around that part.
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
mod floor;
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
mod phases;
mod plot;
mod progstats;
mod quiet;
mod report;
mod results;
mod runtime;
mod scale;
mod setup;
mod sink;
mod stats;
mod storm;
mod validate;
mod wire;
mod worker;

use std::{fs, path::Path, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use imds_guard_e2e::{Netns, privileged_or_skip};

use self::{
    cli::{Args, Section, Settings},
    report::doc,
    results::{Health, Results},
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
        health: Health::default(),
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
    results.health = Health::now();

    let plot = (s.docs_dir.is_some() && results.scale.is_some()).then_some(PLOT);
    let md = report::generated(&results, s, plot);
    println!("{md}");
    if let Some(dir) = &s.docs_dir {
        write_docs(dir, &md, &results)?;
    }
    let failed = results::failed_checks(&results);
    anyhow::ensure!(failed.is_empty(), "checks failed: {}", failed.join("; "));
    Ok(())
}

/// The scale plot's file name, beside BENCHMARKS.md.
const PLOT: &str = "bench-scale.svg";

/// The run into `dir`/BENCHMARKS.md, between its markers, and the scale
/// plot beside it; nothing is written when the document has lost its
/// markers.
fn write_docs(dir: &Path, md: &str, results: &Results) -> anyhow::Result<()> {
    let path = dir.join("BENCHMARKS.md");
    let old = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = doc::splice(old.as_deref(), md)
        .with_context(|| format!("writing the run into {}", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(sc) = &results.scale {
        plot::draw(sc, &dir.join(PLOT))?;
        eprintln!("wrote {}", dir.join(PLOT).display());
    }
    fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
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
