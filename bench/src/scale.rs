//! Section 3, scale: the hot path and the protected-path decision with 1 to
//! 100,000 allowed uids, for imds-guard (hash maps), the iptables chain
//! `render --format file` emits (one owner rule per uid, walked in order)
//! and the nftables sets it emits.
//!
//! The protected path connects as the uid listed last, the worst case for
//! a linear chain; root is listed first because the firewalls also judge
//! the listener's packets (its SYN-ACK carries the listening socket as
//! owner), as they would for a local service on a real host.

use std::time::Duration;

use imds_guard_e2e::NOBODY;

use super::{
    agentproc,
    cli::Settings,
    firewall::Xt,
    job::Job,
    progstats::{StatsEnabled, guard_programs},
    setup::{Form, Kind, PolicyFile, Setup, last_allowed, verify},
    sink::{IMDS4, PLAIN_V4},
    stats::{Expect, Summary, check, interleave, paired, rates},
    worker::run_job,
};

/// One configuration at one size.
pub struct Cell {
    pub n: u32,
    pub kind: Kind,
    /// Loading the rules, or the agent's spawn to ready.
    pub load_time: Duration,
    pub hot: Summary,
    pub hot_ratio: Summary,
    pub protected: Summary,
    pub protected_ratio: Summary,
}

/// The agent at one size.
pub struct AgentAt {
    pub n: u32,
    pub ready: Duration,
    /// The `micros` of its reload records.
    pub reload_us: Summary,
    /// SIGHUP to the record.
    pub reload_wall_ms: Summary,
    /// VmRSS once loaded and measured.
    pub rss_kib: u64,
    /// connect4 run time on the allowed path (bpf_stats).
    pub prog_ns: Summary,
}

pub struct ScaleResult {
    pub sizes: Vec<u32>,
    pub kinds: Vec<Kind>,
    pub base_hot: Summary,
    pub base_protected: Summary,
    pub cells: Vec<Cell>,
    pub agents: Vec<AgentAt>,
    pub rounds: usize,
}

impl ScaleResult {
    pub fn cell(&self, n: u32, kind: Kind) -> Option<&Cell> {
        self.cells.iter().find(|c| c.n == n && c.kind == kind)
    }
}

pub fn run(s: &Settings, legacy: bool) -> anyhow::Result<ScaleResult> {
    let mut kinds = vec![
        Kind::ImdsGuard,
        Kind::Iptables(Xt::Nft, Form::File),
        Kind::Nftables,
    ];
    if legacy {
        kinds.push(Kind::Iptables(Xt::Legacy, Form::File));
    }
    let base_policy = PolicyFile::allow_n(1);
    let base = Setup::new(Kind::None, &base_policy)?;
    let mut policies = Vec::new();
    let mut setups: Vec<(u32, Setup)> = Vec::new();
    for &n in &s.uids {
        let policy = PolicyFile::allow_n(n);
        for &kind in &kinds {
            eprint!("scale: {n} allowed uids, {}: loading ... ", kind.name());
            let setup = Setup::new(kind, &policy)?;
            eprintln!("{:.2} s", setup.load_time.as_secs_f64());
            setups.push((n, setup));
        }
        policies.push((n, policy));
    }
    let checks: Vec<_> = std::iter::once((&base, 0, NOBODY))
        .chain(setups.iter().map(|(n, st)| (st, last_allowed(*n), NOBODY)))
        .collect();
    verify(&checks)?;

    // Case 0: no guard, hot; 1: no guard, protected; then each setup's
    // hot (2 + 2i) and protected (3 + 2i).
    let job = |case: usize| -> (&str, Job) {
        match case {
            0 => ("no guard, hot", base.job(NOBODY, PLAIN_V4, s.timing)),
            1 => ("no guard, protected", base.job(NOBODY, IMDS4, s.timing)),
            c => {
                let (n, setup) = &setups[(c - 2) / 2];
                if c % 2 == 0 {
                    (setup.kind.name(), setup.job(NOBODY, PLAIN_V4, s.timing))
                } else {
                    (
                        setup.kind.name(),
                        setup.job(last_allowed(*n), IMDS4, s.timing),
                    )
                }
            }
        }
    };
    let tallies = interleave("scale", 2 + 2 * setups.len(), s.rounds, |case| {
        let (label, job) = job(case);
        let t = run_job(&job)?;
        check(label, &t, Expect::Connected)?;
        Ok(t)
    })?;
    let rates = rates(&tallies);
    let cells = setups
        .iter()
        .enumerate()
        .map(|(i, (n, setup))| {
            let (hot, prot) = (&rates[2 + 2 * i], &rates[3 + 2 * i]);
            Cell {
                n: *n,
                kind: setup.kind,
                load_time: setup.load_time,
                hot: Summary::of(hot),
                hot_ratio: paired(hot, &rates[0]),
                protected: Summary::of(prot),
                protected_ratio: paired(prot, &rates[1]),
            }
        })
        .collect();

    let agents = agent_figures(s, &setups, &policies)?;
    Ok(ScaleResult {
        sizes: s.uids.clone(),
        kinds,
        base_hot: Summary::of(&rates[0]),
        base_protected: Summary::of(&rates[1]),
        cells,
        agents,
        rounds: s.rounds,
    })
}

/// The agent at each size: program run time on the allowed path
/// (interleaved across sizes), reload time, and memory.
fn agent_figures(
    s: &Settings,
    setups: &[(u32, Setup)],
    policies: &[(u32, PolicyFile)],
) -> anyhow::Result<Vec<AgentAt>> {
    let guards: Vec<(u32, &Setup)> = setups
        .iter()
        .filter(|(_, st)| st.kind == Kind::ImdsGuard)
        .map(|(n, st)| (*n, st))
        .collect();
    let mut progs = Vec::new();
    for (_, setup) in &guards {
        let mut p = guard_programs(&setup.netns, &setup.pin_dir().unwrap_or_default())?;
        progs.push(
            p.remove("connect4")
                .ok_or_else(|| anyhow::anyhow!("imds-guard status lists no connect4 program"))?,
        );
    }
    let stats = StatsEnabled::new()?;
    let per_run = interleave("scale, program run time", guards.len(), s.rounds, |i| {
        let (n, setup) = guards[i];
        let before = progs[i].read()?;
        let t = run_job(&setup.job(last_allowed(n), IMDS4, s.timing))?;
        let after = progs[i].read()?;
        check("imds-guard, protected", &t, Expect::Connected)?;
        Ok((after.time_ns - before.time_ns) as f64 / (after.count - before.count).max(1) as f64)
    })?;
    drop(stats);

    let mut out = Vec::new();
    for (i, (n, setup)) in guards.iter().enumerate() {
        let Some(agent) = setup.agent() else { continue };
        let policy = policies
            .iter()
            .find(|(pn, _)| pn == n)
            .map(|(_, p)| p)
            .ok_or_else(|| anyhow::anyhow!("no policy for {n}"))?;
        let mut micros = Vec::new();
        let mut wall = Vec::new();
        for r in 0..s.reloads {
            eprint!(
                "\rscale: reloading the agent with {n} uids, {}/{}   ",
                r + 1,
                s.reloads
            );
            let (us, ms) = agentproc::reload(agent, policy)?;
            micros.push(us);
            wall.push(ms);
        }
        eprintln!();
        out.push(AgentAt {
            n: *n,
            ready: setup.load_time,
            reload_us: Summary::of(&micros),
            reload_wall_ms: Summary::of(&wall),
            rss_kib: agentproc::status_kib(agent.pid(), "VmRSS:")?,
            prog_ns: Summary::of(&per_run[i]),
        });
    }
    Ok(out)
}
