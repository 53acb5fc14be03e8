//! Section 2, program run time per invocation, from the kernel's own
//! accounting (`run_time_ns / run_cnt`, see `progstats`),
//! for the three paths a connect can take through the guard, over IPv4
//! (connect4) and IPv6 (connect6), and for a packet to an address no
//! policy protects (egress). Beside each, what every program of the guard
//! together ran per connect (or datagram): a connect's packets go through
//! the egress program too.

use std::net::SocketAddr;

use anyhow::ensure;
use imds_guard_e2e::NOBODY;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    cli::Settings,
    flowsink::{DGRAM_V4, FlowSink},
    job::Mode,
    progstats::{Prog, Run, StatsEnabled, guard_programs, pick},
    setup::{Kind, PolicyFile, Setup, verify},
    sink::{IMDS4, IMDS6, PLAIN_V4, PLAIN_V6},
    stats::{Expect, Summary, check, interleave},
    worker::run_job,
};

/// The allowed uid of this section's policy.
const ALLOWED: u32 = 1001;

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\nuids = [1001]\n";

/// Connects of a stopped-agent loop at most: well below what the 1 MiB
/// ring buffer holds (about 11,900 events), so no event is lost.
pub const STOPPED_CONNECTS: u64 = 5_000;

/// The datagrams of the egress path: small, as in section 6.
pub const DATAGRAM: usize = 64;

/// What this section times, one row each: the key the report and the goals
/// find a row by (the label is only what the table shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Unprotected4,
    Allowed4,
    Denied4,
    /// [`Route::Allowed4`] with the agent stopped (SIGSTOP), so nothing
    /// reads the event ring buffer and the programs' submits wake nobody
    /// up.
    Allowed4AgentStopped,
    Unprotected6,
    Allowed6,
    Denied6,
    /// Datagrams of [`DATAGRAM`] bytes to an unprotected address, on a
    /// connected UDP socket: only the egress program runs.
    Datagram4,
}

impl Route {
    /// Every route, in the table's order.
    pub const ALL: [Route; 8] = [
        Self::Unprotected4,
        Self::Allowed4,
        Self::Denied4,
        Self::Allowed4AgentStopped,
        Self::Unprotected6,
        Self::Allowed6,
        Self::Denied6,
        Self::Datagram4,
    ];

    /// The row's label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unprotected4 => "not protected (127.0.0.1)",
            Self::Allowed4 => "allowed (169.254.169.254)",
            Self::Denied4 => "denied (169.254.169.254)",
            Self::Allowed4AgentStopped => "allowed, agent stopped",
            Self::Unprotected6 => "not protected (::1)",
            Self::Allowed6 => "allowed (fd00:ec2::254)",
            Self::Denied6 => "denied (fd00:ec2::254)",
            Self::Datagram4 => "not protected, a UDP datagram (127.0.0.1)",
        }
    }

    /// The program timed.
    pub fn program(self) -> &'static str {
        match self {
            Self::Unprotected4 | Self::Allowed4 | Self::Denied4 | Self::Allowed4AgentStopped => {
                "connect4"
            }
            Self::Unprotected6 | Self::Allowed6 | Self::Denied6 => "connect6",
            Self::Datagram4 => "egress",
        }
    }

    fn uid(self) -> u32 {
        match self {
            Self::Allowed4 | Self::Allowed4AgentStopped | Self::Allowed6 => ALLOWED,
            _ => NOBODY,
        }
    }

    fn dst(self) -> SocketAddr {
        match self {
            Self::Unprotected4 => PLAIN_V4,
            Self::Allowed4 | Self::Denied4 | Self::Allowed4AgentStopped => IMDS4,
            Self::Unprotected6 => PLAIN_V6,
            Self::Allowed6 | Self::Denied6 => IMDS6,
            Self::Datagram4 => DGRAM_V4,
        }
    }

    fn mode(self) -> Mode {
        match self {
            Self::Datagram4 => Mode::Datagrams { size: DATAGRAM },
            _ => Mode::Connect,
        }
    }

    fn expect(self) -> Expect {
        match self {
            Self::Denied4 | Self::Denied6 => Expect::Denied,
            _ => Expect::Connected,
        }
    }
}

pub struct Row {
    pub route: Route,
    /// run_time_ns / run_cnt, per round.
    pub ns: Summary,
    /// Every program of the guard together, per connect (or datagram).
    pub all_ns: Summary,
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
    /// The programs `status` listed, by name.
    pub programs: Vec<String>,
}

impl RuntimeResult {
    /// The row of `route`.
    pub fn row(&self, route: Route) -> Option<&Row> {
        self.rows.iter().find(|r| r.route == route)
    }
}

pub fn run(s: &Settings) -> anyhow::Result<RuntimeResult> {
    let policy = PolicyFile::new(POLICY);
    let setup = Setup::new(Kind::ImdsGuard, &policy)?;
    let _flows = FlowSink::start(&setup.netns)?;
    verify(&[(&setup, ALLOWED, NOBODY)])?;
    let pin_dir = setup.pin_dir().unwrap_or_default();
    let agent_pid = setup.agent().map_or(0, |a| a.pid());
    let progs = guard_programs(&setup.netns, &pin_dir)?;
    let all: Vec<&Prog> = progs.values().collect();
    let mut exact = true;
    let stats = StatsEnabled::new()?;
    let stats_how = stats.how();
    let samples = interleave("program run time", Route::ALL.len(), s.rounds, |i| {
        let route = Route::ALL[i];
        let prog = pick(&progs, route.program())?;
        let mut job = setup
            .job(route.uid(), route.dst(), s.timing)
            .mode(route.mode());
        let stopped = if route == Route::Allowed4AgentStopped {
            job.warmup_ms = 0;
            job.max_connects = STOPPED_CONNECTS;
            Some(Stopped::new(agent_pid)?)
        } else {
            None
        };
        let before = prog.read()?;
        let all_before = read_all(&all)?;
        let t = run_job(&job)?;
        let all_after = read_all(&all)?;
        let after = prog.read()?;
        drop(stopped);
        check(route.label(), &t, route.expect())?;
        let (dt, dn) = (after.time_ns - before.time_ns, after.count - before.count);
        exact &= dn == t.total();
        ensure!(dn > 0, "{}: {} did not run", route.label(), route.program());
        let per_run = dt as f64 / dn as f64;
        let per_op = t.elapsed_ns as f64 / t.connects as f64;
        let all_time = all_after.time_ns - all_before.time_ns;
        let all_per_op = all_time as f64 / t.total().max(1) as f64;
        Ok((per_run, per_run / per_op, dn, all_per_op))
    })?;
    drop(stats);
    let rows = Route::ALL
        .into_iter()
        .zip(&samples)
        .map(|(route, xs)| Row {
            route,
            ns: Summary::of(&xs.iter().map(|x| x.0).collect::<Vec<_>>()),
            all_ns: Summary::of(&xs.iter().map(|x| x.3).collect::<Vec<_>>()),
            share: Summary::of(&xs.iter().map(|x| x.1).collect::<Vec<_>>()),
            runs: xs.iter().map(|x| x.2).sum(),
        })
        .collect();
    Ok(RuntimeResult {
        rows,
        rounds: s.rounds,
        counts_exact: exact,
        stats_how,
        programs: progs.keys().cloned().collect(),
    })
}

/// The counters of every program, summed.
fn read_all(progs: &[&Prog]) -> anyhow::Result<Run> {
    let mut sum = Run::default();
    for p in progs {
        let r = p.read()?;
        sum.time_ns += r.time_ns;
        sum.count += r.count;
    }
    Ok(sum)
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
