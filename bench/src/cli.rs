//! The bench's command line. Every size and duration is a flag, so that a
//! result can be rerun exactly; `--quick` picks small ones for a smoke run.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// The parts of the bench, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Section {
    /// 1. connect()+close rate to a destination no policy protects.
    Hot,
    /// 2. program run time per invocation, from the kernel's bpf_stats.
    Runtime,
    /// 3. hot and protected paths with 1 to 100,000 allowed uids.
    Scale,
    /// 4. denied processes hammering a protected address.
    Storm,
    /// 5. agent start, reload and memory, with a small and a large policy.
    Agent,
    /// 6. per-packet cost: small UDP datagrams and a TCP stream.
    Packets,
    /// 7. `imds-guard validate` of ever larger one-line policies.
    Validate,
    /// 8. decision cost against the supplementary groups a caller holds.
    Groups,
}

impl Section {
    pub const ALL: [Section; 8] = [
        Self::Hot,
        Self::Runtime,
        Self::Scale,
        Self::Storm,
        Self::Agent,
        Self::Packets,
        Self::Validate,
        Self::Groups,
    ];
}

/// Measures what imds-guard costs, against no guard and the equivalent
/// iptables and nftables rules, in namespaces and cgroups of its own.
#[derive(Debug, Clone, Parser)]
#[command(name = "imds-guard-bench", version)]
pub struct Args {
    /// Smoke run (about two minutes): 3 rounds of short loops, 1 and 1,000
    /// allowed uids, one short storm, two agents of each kind. Writes no
    /// docs unless --docs-dir is given.
    #[arg(long)]
    pub quick: bool,

    /// Interleaved rounds per comparison; every figure is the median over
    /// them [default: 11, quick: 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,

    /// Length of one timed connect loop, in milliseconds [default: 300,
    /// quick: 100].
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub run_ms: Option<u64>,

    /// Untimed connects before each timed loop, in milliseconds
    /// [default: 30, quick: 20].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=5_000))]
    pub warmup_ms: Option<u64>,

    /// Allowed-uid counts for the scale section, comma-separated
    /// [default: 1,100,1000,10000,100000, quick: 1,1000].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=131_072))]
    pub uids: Option<Vec<u32>>,

    /// Processes in the denial storm.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub storm_procs: u32,

    /// Length of one denial storm, in seconds [default: 10, quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub storm_secs: Option<u64>,

    /// Storms, each with a fresh agent [default: 3, quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub storm_runs: Option<u32>,

    /// Agent starts measured in the agent section [default: 5, quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub agent_runs: Option<u32>,

    /// SIGHUP reloads per agent [default: 5, quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub reloads: Option<u32>,

    /// How long an agent sits idle before its RSS is read, in seconds
    /// [default: 3, quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub idle_secs: Option<u64>,

    /// Allowed uids of the large policy of the agent section (0: no large
    /// agent).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(0..=131_072))]
    pub agent_uids: u32,

    /// How soon a decision made while the agent reloads must be in its
    /// log, in milliseconds (the goal of the agent section's probe).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub event_bound_ms: u64,

    /// Bytes of each UDP datagram in the packet section.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_507))]
    pub datagram_bytes: u64,

    /// Uid counts of the one-line policies `imds-guard validate` checks,
    /// comma-separated (a 1-uid policy is always added, to subtract the
    /// process's start) [default: 16384,32768,65536,131072].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=131_072))]
    pub validate_uids: Option<Vec<u32>>,

    /// Leave iptables-legacy out even where it works.
    #[arg(long)]
    pub no_legacy: bool,

    /// Run only these sections (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,

    /// Where BENCHMARKS.md and bench-scale.svg are written [default: the
    /// workspace's docs/ on a full run, nowhere with --quick].
    #[arg(long)]
    pub docs_dir: Option<PathBuf>,

    /// Print every timed loop's result on stderr as it ends.
    #[arg(long)]
    pub verbose: bool,

    /// Print the tables only; write no docs.
    #[arg(long, conflicts_with = "docs_dir")]
    pub no_docs: bool,
}

/// The settings in force, `--quick` and defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub timing: Timing,
    pub uids: Vec<u32>,
    pub storm_procs: u32,
    pub storm: Duration,
    pub storm_runs: usize,
    pub agent_runs: usize,
    pub reloads: usize,
    pub idle: Duration,
    /// The large policy of the agent section, if any.
    pub agent_uids: Option<u32>,
    pub event_bound: Duration,
    pub datagram: usize,
    /// Always starts with 1.
    pub validate_uids: Vec<u32>,
    pub legacy: bool,
    pub sections: Vec<Section>,
    pub docs_dir: Option<PathBuf>,
    pub verbose: bool,
    /// The command line, to print beside the results.
    pub command: String,
}

/// How long each timed connect loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup_ms: u64,
    pub run_ms: u64,
}

impl Settings {
    pub fn from_args(args: Args, command: String) -> Self {
        let q = args.quick;
        let pick = |given: Option<u64>, full: u64, quick: u64| {
            given.unwrap_or(if q { quick } else { full })
        };
        let mut uids = args.uids.clone().unwrap_or_else(|| {
            if q {
                vec![1, 1_000]
            } else {
                vec![1, 100, 1_000, 10_000, 100_000]
            }
        });
        uids.sort_unstable();
        uids.dedup();
        let mut sections = if args.only.is_empty() {
            Section::ALL.to_vec()
        } else {
            args.only.clone()
        };
        sections.sort_unstable();
        sections.dedup();
        let default_docs = (!q).then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"));
        let mut validate_uids = args
            .validate_uids
            .clone()
            .unwrap_or_else(|| vec![16_384, 32_768, 65_536, 131_072]);
        validate_uids.push(1);
        validate_uids.sort_unstable();
        validate_uids.dedup();
        Settings {
            quick: q,
            rounds: pick(args.rounds.map(u64::from), 11, 3) as usize,
            timing: Timing {
                warmup_ms: pick(args.warmup_ms, 30, 20),
                run_ms: pick(args.run_ms, 300, 100),
            },
            uids,
            storm_procs: args.storm_procs,
            storm: Duration::from_secs(pick(args.storm_secs, 10, 2)),
            storm_runs: pick(args.storm_runs.map(u64::from), 3, 1) as usize,
            agent_runs: pick(args.agent_runs.map(u64::from), 5, 2) as usize,
            reloads: pick(args.reloads.map(u64::from), 5, 2) as usize,
            idle: Duration::from_secs(pick(args.idle_secs, 3, 1)),
            agent_uids: (args.agent_uids > 0).then_some(args.agent_uids),
            event_bound: Duration::from_millis(args.event_bound_ms),
            datagram: args.datagram_bytes as usize,
            validate_uids,
            legacy: !args.no_legacy,
            sections,
            docs_dir: if args.no_docs {
                None
            } else {
                args.docs_dir.or(default_docs)
            },
            verbose: args.verbose,
            command,
        }
    }

    pub fn runs(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }
}
