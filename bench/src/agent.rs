//! Section 5, the agent itself: spawn to enforcing (its `ready` record),
//! a SIGHUP reload (its own `micros`, and SIGHUP to the record), and its
//! memory once idle. Each run starts a fresh agent.

use std::time::Duration;

use super::{
    agentproc::{reload, status_kib},
    cli::Settings,
    interrupt,
    setup::{Kind, PolicyFile, Setup},
    stats::Summary,
};

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\nuids = [1001]\n";

pub struct AgentResult {
    pub runs: usize,
    pub reloads: usize,
    pub idle: Duration,
    pub ready_ms: Summary,
    pub reload_us: Summary,
    pub reload_wall_ms: Summary,
    pub idle_rss_kib: Summary,
}

pub fn run(s: &Settings) -> anyhow::Result<AgentResult> {
    let (mut ready, mut micros, mut wall, mut rss) = (vec![], vec![], vec![], vec![]);
    for i in 0..s.agent_runs {
        eprintln!("agent {}/{}", i + 1, s.agent_runs);
        let policy = PolicyFile::new(POLICY);
        let setup = Setup::new(Kind::ImdsGuard, &policy)?;
        let agent = setup.agent().ok_or_else(|| anyhow::anyhow!("no agent"))?;
        ready.push(setup.load_time.as_secs_f64() * 1e3);
        interrupt::sleep(s.idle)?;
        rss.push(status_kib(agent.pid(), "VmRSS:")? as f64);
        for _ in 0..s.reloads {
            let (us, ms) = reload(agent, &policy)?;
            micros.push(us);
            wall.push(ms);
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
    })
}
