//! Section 5, the agent itself: spawn to enforcing (its `ready` record,
//! which also takes the start apart: `phases`), a SIGHUP reload (its own `micros`, and SIGHUP to the record), and its
//! memory once idle, with a small policy and with a large one (100,000
//! uids by default). The large agent's reloads are probed with denied
//! connects all along (see `delivery`), and the same large policy is
//! loaded by nftables in the same rounds, for comparison. Each run starts
//! fresh agents; the three measurements of a run take turns in a rotating
//! order, like the configurations elsewhere.

use std::time::Duration;

use super::{
    agentproc::{reload, status_kib},
    cli::Settings,
    delivery::{self, Delivery},
    interrupt,
    phases::{Phases, Start},
    quiet,
    setup::{Kind, PolicyFile, Setup},
    stats::Summary,
};

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\nuids = [1001]\n";

/// The uids the probes of a large agent's reloads connect as: above every
/// uid [`PolicyFile::allow_n`] lists, [`delivery::MAX_EVENTS`] apart.
const PROBE_UIDS: u32 = 300_000;

pub struct AgentResult {
    pub runs: usize,
    pub reloads: usize,
    pub idle: Duration,
    pub ready_ms: Summary,
    pub reload_us: Summary,
    pub reload_wall_ms: Summary,
    pub idle_rss_kib: Summary,
    /// The starts taken apart, from their `ready` records.
    pub phases: Phases,
    pub large: Option<Large>,
}

/// The agent with a large policy, and nftables with the same.
pub struct Large {
    pub uids: u32,
    pub ready_ms: Summary,
    pub phases: Phases,
    /// `nft -f` of the set `render` emits for the same policy.
    pub nft_ms: Summary,
    pub reload_us: Summary,
    pub reload_wall_ms: Summary,
    /// VmRSS once idle, after the reloads (both generations written), and
    /// VmHWM at the end.
    pub idle_rss_kib: Summary,
    pub reloaded_rss_kib: Summary,
    pub hwm_kib: Summary,
    /// Per reload: the longest delay of a connect made during it.
    pub worst_during_ms: Summary,
    /// Every delay of a connect made outside a reload.
    pub outside_ms: Summary,
    pub during: usize,
    pub delivered_during: usize,
    pub missing: usize,
}

#[derive(Default)]
struct LargeSamples {
    ready: Vec<f64>,
    starts: Vec<Start>,
    nft: Vec<f64>,
    idle_rss: Vec<f64>,
    reloaded_rss: Vec<f64>,
    hwm: Vec<f64>,
    reloads: Vec<Delivery>,
}

pub fn run(s: &Settings) -> anyhow::Result<AgentResult> {
    let (mut ready, mut micros, mut wall, mut rss) = (vec![], vec![], vec![], vec![]);
    let mut starts = Vec::new();
    let policy = PolicyFile::new(POLICY);
    let large_policy = s.agent_uids.map(PolicyFile::allow_n);
    let mut large = LargeSamples::default();
    for i in 0..s.agent_runs {
        // 0: the small agent; 1: the large one; 2: nftables, large.
        for j in 0..3 {
            let step = (i + j) % 3;
            match (step, &large_policy) {
                (0, _) => {
                    eprintln!("agent {}/{}", i + 1, s.agent_runs);
                    quiet::gate()?;
                    let setup = Setup::new(Kind::ImdsGuard, &policy)?;
                    let agent = setup.agent().ok_or_else(|| anyhow::anyhow!("no agent"))?;
                    ready.push(setup.load_time.as_secs_f64() * 1e3);
                    starts.extend(start(&setup));
                    interrupt::sleep(s.idle)?;
                    rss.push(status_kib(agent.pid(), "VmRSS:")? as f64);
                    for _ in 0..s.reloads {
                        quiet::gate()?;
                        let (us, ms) = reload(agent, &policy)?;
                        micros.push(us);
                        wall.push(ms);
                    }
                }
                (1, Some(p)) => {
                    eprintln!(
                        "agent {}/{}, {} uids",
                        i + 1,
                        s.agent_runs,
                        s.agent_uids.unwrap_or(0)
                    );
                    large_agent(s, p, i, &mut large)?;
                }
                (2, Some(p)) => {
                    eprintln!(
                        "nftables {}/{}, {} uids",
                        i + 1,
                        s.agent_runs,
                        s.agent_uids.unwrap_or(0)
                    );
                    quiet::gate()?;
                    let setup = Setup::new(Kind::Nftables, p)?;
                    large.nft.push(setup.load_time.as_secs_f64() * 1e3);
                }
                _ => {}
            }
        }
    }
    Ok(AgentResult {
        runs: s.agent_runs,
        reloads: s.reloads,
        idle: s.idle,
        ready_ms: Summary::of(&ready),
        reload_us: Summary::of(&micros),
        reload_wall_ms: Summary::of(&wall),
        idle_rss_kib: Summary::of(&rss),
        phases: Phases::of(&starts),
        large: s.agent_uids.map(|uids| large.summarize(uids)),
    })
}

/// One fresh agent with the large policy: start, idle memory, probed
/// reloads, memory after.
fn large_agent(
    s: &Settings,
    policy: &PolicyFile,
    run: usize,
    out: &mut LargeSamples,
) -> anyhow::Result<()> {
    quiet::gate()?;
    let setup = Setup::new(Kind::ImdsGuard, policy)?;
    let agent = setup.agent().ok_or_else(|| anyhow::anyhow!("no agent"))?;
    out.ready.push(setup.load_time.as_secs_f64() * 1e3);
    out.starts.extend(start(&setup));
    interrupt::sleep(s.idle)?;
    out.idle_rss.push(status_kib(agent.pid(), "VmRSS:")? as f64);
    for r in 0..s.reloads {
        quiet::gate()?;
        let first = PROBE_UIDS + ((run * s.reloads + r) as u32) * delivery::MAX_EVENTS as u32;
        out.reloads
            .push(delivery::reload_probed(&setup, policy, first)?);
    }
    out.reloaded_rss
        .push(status_kib(agent.pid(), "VmRSS:")? as f64);
    out.hwm.push(status_kib(agent.pid(), "VmHWM:")? as f64);
    Ok(())
}

/// The start of `setup`'s agent taken apart, if its `ready` record gives
/// the phases.
fn start(setup: &Setup) -> Option<Start> {
    let ready_ms = setup.load_time.as_secs_f64() * 1e3;
    setup.ready.as_ref().and_then(|r| Start::of(r, ready_ms))
}

impl LargeSamples {
    fn summarize(&self, uids: u32) -> Large {
        let outside: Vec<f64> = self
            .reloads
            .iter()
            .flat_map(|d| d.outside_ms.iter().copied())
            .collect();
        let of = |f: fn(&Delivery) -> f64| -> Summary {
            Summary::of(&self.reloads.iter().map(f).collect::<Vec<_>>())
        };
        Large {
            uids,
            ready_ms: Summary::of(&self.ready),
            phases: Phases::of(&self.starts),
            nft_ms: Summary::of(&self.nft),
            reload_us: of(|d| d.micros),
            reload_wall_ms: of(|d| d.wall_ms),
            idle_rss_kib: Summary::of(&self.idle_rss),
            reloaded_rss_kib: Summary::of(&self.reloaded_rss),
            hwm_kib: Summary::of(&self.hwm),
            worst_during_ms: Summary::of(
                &self
                    .reloads
                    .iter()
                    .filter_map(|d| d.worst_during_ms)
                    .collect::<Vec<_>>(),
            ),
            outside_ms: Summary::of(&outside),
            during: self.reloads.iter().map(|d| d.during).sum(),
            delivered_during: self.reloads.iter().map(|d| d.delivered_during).sum(),
            missing: self.reloads.iter().map(|d| d.missing).sum(),
        }
    }
}
