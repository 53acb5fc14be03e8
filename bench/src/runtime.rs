//! Section 2, program run time per invocation, from the kernel's own
//! accounting (`run_time_ns / run_cnt`, see `progstats`),
//! for the three paths a connect can take through the guard, over IPv4
//! (connect4) and IPv6 (connect6).

use std::net::SocketAddr;

use anyhow::ensure;
use imds_guard_e2e::NOBODY;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    cli::Settings,
    progstats::{StatsEnabled, guard_programs, pick},
    setup::{Kind, PolicyFile, Setup, verify},
    sink::{IMDS4, IMDS6, PLAIN_V4, PLAIN_V6},
    stats::{Expect, Summary, check, interleave},
    worker::run_job,
};

/// The allowed uid of this section's policy.
const ALLOWED: u32 = 1001;

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\nuids = [1001]\n";

struct Path {
    name: &'static str,
    program: &'static str,
    uid: u32,
    dst: SocketAddr,
    expect: Expect,
    /// Run with the agent stopped (SIGSTOP), so nothing reads the event
    /// ring buffer and the programs' submits wake nobody up.
    stopped: bool,
}

/// Connects of a stopped-agent loop at most: well below what the 1 MiB
/// ring buffer holds (about 11,900 events), so no event is lost.
pub const STOPPED_CONNECTS: u64 = 5_000;

const PATHS: [Path; 7] = [
    Path {
        name: "not protected (127.0.0.1)",
        program: "connect4",
        uid: NOBODY,
        dst: PLAIN_V4,
        expect: Expect::Connected,
        stopped: false,
    },
    Path {
        name: "allowed (169.254.169.254)",
        program: "connect4",
        uid: ALLOWED,
        dst: IMDS4,
        expect: Expect::Connected,
        stopped: false,
    },
    Path {
        name: "denied (169.254.169.254)",
        program: "connect4",
        uid: NOBODY,
        dst: IMDS4,
        expect: Expect::Denied,
        stopped: false,
    },
    Path {
        name: "allowed, agent stopped",
        program: "connect4",
        uid: ALLOWED,
        dst: IMDS4,
        expect: Expect::Connected,
        stopped: true,
    },
    Path {
        name: "not protected (::1)",
        program: "connect6",
        uid: NOBODY,
        dst: PLAIN_V6,
        expect: Expect::Connected,
        stopped: false,
    },
    Path {
        name: "allowed (fd00:ec2::254)",
        program: "connect6",
        uid: ALLOWED,
        dst: IMDS6,
        expect: Expect::Connected,
        stopped: false,
    },
    Path {
        name: "denied (fd00:ec2::254)",
        program: "connect6",
        uid: NOBODY,
        dst: IMDS6,
        expect: Expect::Denied,
        stopped: false,
    },
];

pub struct Row {
    pub path: &'static str,
    pub program: &'static str,
    /// run_time_ns / run_cnt, per round.
    pub ns: Summary,
    /// That time as a share of the whole connect()+close() the worker
    /// timed in the same round.
    pub share: Summary,
    /// Program runs counted by the kernel, all rounds.
    pub runs: u64,
}

pub struct RuntimeResult {
    pub rows: Vec<Row>,
    pub rounds: usize,
    /// Whether every round's run_cnt grew by exactly the worker's connects.
    pub counts_exact: bool,
    /// How the accounting was turned on.
    pub stats_how: &'static str,
}

pub fn run(s: &Settings) -> anyhow::Result<RuntimeResult> {
    let policy = PolicyFile::new(POLICY);
    let setup = Setup::new(Kind::ImdsGuard, &policy)?;
    verify(&[(&setup, ALLOWED, NOBODY)])?;
    let pin_dir = setup.pin_dir().unwrap_or_default();
    let agent_pid = setup.agent().map_or(0, |a| a.pid());
    let progs = guard_programs(&setup.netns, &pin_dir)?;
    let mut exact = true;
    let stats = StatsEnabled::new()?;
    let stats_how = stats.how();
    let samples = interleave("program run time", PATHS.len(), s.rounds, |i| {
        let p = &PATHS[i];
        let prog = pick(&progs, p.program)?;
        let mut job = setup.job(p.uid, p.dst, s.timing);
        let stopped = if p.stopped {
            job.warmup_ms = 0;
            job.max_connects = STOPPED_CONNECTS;
            Some(Stopped::new(agent_pid)?)
        } else {
            None
        };
        let before = prog.read()?;
        let t = run_job(&job)?;
        let after = prog.read()?;
        drop(stopped);
        check(p.name, &t, p.expect)?;
        let (dt, dn) = (after.time_ns - before.time_ns, after.count - before.count);
        exact &= dn == t.total();
        ensure!(dn > 0, "{}: {} did not run", p.name, p.program);
        let per_run = dt as f64 / dn as f64;
        let per_connect = t.elapsed_ns as f64 / t.connects as f64;
        Ok((per_run, per_run / per_connect, dn))
    })?;
    drop(stats);
    let rows = PATHS
        .iter()
        .zip(&samples)
        .map(|(p, xs)| Row {
            path: p.name,
            program: p.program,
            ns: Summary::of(&xs.iter().map(|x| x.0).collect::<Vec<_>>()),
            share: Summary::of(&xs.iter().map(|x| x.1).collect::<Vec<_>>()),
            runs: xs.iter().map(|x| x.2).sum(),
        })
        .collect();
    Ok(RuntimeResult {
        rows,
        rounds: s.rounds,
        counts_exact: exact,
        stats_how,
    })
}

/// The agent stopped with SIGSTOP while it lives, continued on drop (even
/// on failure: a stopped agent would not stop on SIGTERM at cleanup).
struct Stopped(Pid);

impl Stopped {
    fn new(pid: u32) -> anyhow::Result<Self> {
        ensure!(pid != 0, "no agent to stop");
        // Our own child, running: the pid is its own.
        let pid = Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP)?;
        Ok(Stopped(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}
