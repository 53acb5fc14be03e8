//! Section 4, a denial storm: several processes, each its own denied uid,
//! hammer 169.254.169.254:80 (in the bench namespace) for a fixed time while
//! the real agent reports. Every denial is either an event the agent
//! received or one the kernel counted as lost (ring buffer full): the check
//! is `events_received + events_lost == denied`, exactly, with `denied` the
//! kernel's counter, itself checked against the EPERMs the workers saw.

use std::time::{Duration, Instant};

use imds_guard_e2e::field;
use serde_json::Value;

use super::{
    agentproc::{self, cpu_seconds, status_kib},
    cli::Settings,
    interrupt,
    job::{Job, Tally},
    setup::{Kind, PolicyFile, Setup},
    sink::IMDS4,
    stats::Summary,
    worker::spawn,
};

/// The first denied uid; process i is `FIRST_UID + i`.
const FIRST_UID: u32 = 60_001;
/// Lets the agent drain what is left in the ring before its CPU is read.
const SETTLE: Duration = Duration::from_millis(500);

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\n";

/// One storm, with a fresh agent.
pub struct Run {
    pub secs: f64,
    /// What the agent's CPU time covers: the storm and [`SETTLE`].
    pub window_s: f64,
    /// EPERMs the workers saw (every attempt, or the run fails).
    pub eperm: u64,
    /// From the agent's final record; `None` when absent.
    pub denied: Option<u64>,
    pub received: Option<u64>,
    pub lost: Option<u64>,
    pub cpu_s: f64,
    pub idle_rss_kib: u64,
    pub hwm_kib: u64,
}

impl Run {
    pub fn denials_per_s(&self) -> f64 {
        self.eperm as f64 / self.secs
    }

    /// `denied == eperm` (the kernel counted what the workers saw).
    pub fn denied_matches(&self) -> Option<bool> {
        self.denied.map(|d| d == self.eperm)
    }

    /// `received + lost == denied`; `None` when a field is missing.
    pub fn accounted(&self) -> Option<bool> {
        Some(self.received? + self.lost? == self.denied?)
    }
}

pub struct StormResult {
    pub procs: u32,
    pub duration: Duration,
    pub runs: Vec<Run>,
}

impl StormResult {
    pub fn summary(&self, f: impl Fn(&Run) -> Option<f64>) -> Summary {
        Summary::of(&self.runs.iter().filter_map(f).collect::<Vec<_>>())
    }
}

pub fn run(s: &Settings) -> anyhow::Result<StormResult> {
    let mut runs = Vec::new();
    for i in 0..s.storm_runs {
        eprintln!(
            "storm {}/{}: {} processes for {:?}",
            i + 1,
            s.storm_runs,
            s.storm_procs,
            s.storm
        );
        runs.push(one(s)?);
    }
    Ok(StormResult {
        procs: s.storm_procs,
        duration: s.storm,
        runs,
    })
}

fn one(s: &Settings) -> anyhow::Result<Run> {
    let policy = PolicyFile::new(POLICY);
    let setup = Setup::new(Kind::ImdsGuard, &policy)?;
    let agent = setup.agent().ok_or_else(|| anyhow::anyhow!("no agent"))?;
    let pid = agent.pid();
    interrupt::sleep(Duration::from_millis(200))?;
    let idle_rss_kib = status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_seconds(pid)?;

    let started = Instant::now();
    let workers = (0..s.storm_procs)
        .map(|i| {
            let job = Job::new(
                setup.netns.path(),
                setup.cgroup.path(),
                FIRST_UID + i,
                IMDS4,
                s.timing,
            )
            .for_time(s.storm);
            spawn(&job)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tallies = workers
        .into_iter()
        .map(|w| w.wait())
        .collect::<anyhow::Result<Vec<Tally>>>()?;
    let secs = tallies
        .iter()
        .map(|t| t.elapsed_ns as f64 / 1e9)
        .fold(0.0, f64::max)
        .max(started.elapsed().as_secs_f64().min(s.storm.as_secs_f64()));
    for t in &tallies {
        anyhow::ensure!(
            t.eperm == t.connects,
            "a storm worker was not denied every time: {t:?}"
        );
    }
    let eperm = tallies.iter().map(|t| t.eperm).sum();

    interrupt::sleep(SETTLE)?;
    let cpu_s = cpu_seconds(pid)? - cpu_before;
    let hwm_kib = status_kib(pid, "VmHWM:")?;
    agent.terminate();
    let last = agentproc::final_record(agent);
    let get = |name: &str| -> Option<u64> {
        last.as_ref()
            .and_then(|r| field(r, name))
            .and_then(Value::as_u64)
    };
    Ok(Run {
        secs,
        window_s: secs + SETTLE.as_secs_f64(),
        eperm,
        denied: get("denied"),
        received: get("events_received"),
        lost: get("events_lost"),
        cpu_s,
        idle_rss_kib,
        hwm_kib,
    })
}
