//! Section 2, program run time per invocation, from the kernel's own
//! accounting (`run_time_ns / run_cnt`, see `progstats`),
//! for the three paths a connect can take through the guard, over IPv4
//! (connect4) and IPv6 (connect6), and for a packet to an address no
//! policy protects (egress), sent out of a device (`wire`). Beside each,
//! what every program of the guard together ran per connect (or
//! datagram): a connect's packets go through the egress program too.
//!
//! The floor (`floor`): each connect4 and egress loop also runs in a
//! cgroup of its own where an empty program of the same type is attached,
//! in the same rounds, so that the guard's run time stands next to what
//! the kernel charges for running any program at all.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use imds_guard_e2e::NOBODY;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    cli::Settings,
    flowsink::DGRAM_V4,
    job::{Job, Mode},
    progstats::{Prog, Run, StatsEnabled, guard_programs, pick},
    setup::{Kind, PolicyFile, Setup, verify},
    sink::{IMDS4, IMDS6, PLAIN_V4, PLAIN_V6},
    stats::{Expect, Summary, check, interleave},
    wire::{self, Wire},
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
    /// Datagrams of [`DATAGRAM`] bytes to an unprotected address across a
    /// device, on a connected UDP socket: only the egress program runs.
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
            Self::Datagram4 => "not protected, a UDP datagram out of a device (198.18.0.2)",
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

    /// Whether the route is timed in the floor's cgroup too, when the
    /// floor has a program of its type: every route but the agent
    /// stopped, which has nothing to stop there (its floor is
    /// [`Route::Allowed4`]'s).
    fn floored(self) -> bool {
        self != Self::Allowed4AgentStopped
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
    /// The empty program of the same type, run time per run: the same
    /// loop in the floor's cgroup, in the same rounds. `None` for a route
    /// the floor does not time.
    pub floor_ns: Option<Summary>,
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

/// What one timed loop of a route gave.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// run_time_ns / run_cnt of the route's program.
    per_run: f64,
    /// That against the worker's time per operation.
    share: f64,
    runs: u64,
    /// Every program of the configuration, per operation.
    all_per_op: f64,
    /// Whether run_cnt grew by exactly the operations made.
    exact: bool,
}

/// The loop of `route` in `setup`, as a worker runs it.
fn route_job(setup: &Setup, route: Route, s: &Settings) -> Job {
    let mut job = setup
        .job(route.uid(), route.dst(), s.timing)
        .mode(route.mode());
    if route == Route::Allowed4AgentStopped {
        job.warmup_ms = 0;
        job.max_connects = STOPPED_CONNECTS;
    }
    job
}

pub fn run(s: &Settings) -> anyhow::Result<RuntimeResult> {
    let policy = PolicyFile::new(POLICY);
    let setup = Setup::new(Kind::ImdsGuard, &policy)?;
    let floor = Setup::new(Kind::Floor, &policy)?;
    let _wires = [Wire::new(&setup.netns)?, Wire::new(&floor.netns)?];
    verify(&[(&setup, ALLOWED, NOBODY), (&floor, ALLOWED, NOBODY)])?;
    let pin_dir = setup.pin_dir().unwrap_or_default();
    let agent_pid = setup.agent().map_or(0, |a| a.pid());
    let progs = guard_programs(&setup.netns, &pin_dir)?;
    let all: Vec<&Prog> = progs.values().collect();
    let empty = floor.floor().context("the floor has no empty programs")?;
    // Cases: every route in the guard's cgroup, then the routes the floor
    // times in the floor's.
    let floored: Vec<(Route, &Prog)> = Route::ALL
        .into_iter()
        .filter(|r| r.floored())
        .filter_map(|r| empty.program(r.program()).map(|p| (r, p)))
        .collect();
    let stats = StatsEnabled::new()?;
    let stats_how = stats.how();
    let cases = Route::ALL.len() + floored.len();
    let samples = interleave("program run time", cases, s.rounds, |i| {
        if let Some(&route) = Route::ALL.get(i) {
            let prog = pick(&progs, route.program())?;
            let stopped = (route == Route::Allowed4AgentStopped)
                .then(|| Stopped::new(agent_pid))
                .transpose()?;
            let sample = time(&setup, route, prog, &all, s, stopped);
            return sample.with_context(|| format!("{} (imds-guard)", route.label()));
        }
        let (route, prog) = floored[i - Route::ALL.len()];
        time(&floor, route, prog, &[prog], s, None)
            .with_context(|| format!("{} (empty programs)", route.label()))
    })?;
    drop(stats);
    let (guarded, floors) = samples.split_at(Route::ALL.len());
    let of =
        |xs: &[Sample], f: fn(&Sample) -> f64| Summary::of(&xs.iter().map(f).collect::<Vec<_>>());
    let rows = Route::ALL
        .into_iter()
        .zip(guarded)
        .map(|(route, xs)| Row {
            route,
            ns: of(xs, |x| x.per_run),
            all_ns: of(xs, |x| x.all_per_op),
            share: of(xs, |x| x.share),
            runs: xs.iter().map(|x| x.runs).sum(),
            floor_ns: floored
                .iter()
                .zip(floors)
                .find(|((r, _), _)| *r == route)
                .map(|(_, ys)| of(ys, |y| y.per_run)),
        })
        .collect();
    Ok(RuntimeResult {
        rows,
        rounds: s.rounds,
        counts_exact: samples.iter().flatten().all(|x| x.exact),
        stats_how,
        programs: progs.keys().cloned().collect(),
    })
}

/// One timed loop of `route` in `setup`: `prog`'s counters, and those of
/// `all` the configuration's programs, before and after; `stopped` (the
/// agent, stopped) is continued once the loop is over.
fn time(
    setup: &Setup,
    route: Route,
    prog: &Prog,
    all: &[&Prog],
    s: &Settings,
    stopped: Option<Stopped>,
) -> anyhow::Result<Sample> {
    let job = route_job(setup, route, s);
    let sent_before = wire_sent(setup, route)?;
    let before = prog.read()?;
    let all_before = read_all(all)?;
    let t = run_job(&job);
    let all_after = read_all(all)?;
    let after = prog.read()?;
    drop(stopped);
    let t = t?;
    let expect = match setup.kind {
        Kind::ImdsGuard => route.expect(),
        // The empty programs allow every connect.
        _ => Expect::Connected,
    };
    check(route.label(), &t, expect)?;
    if let (Some(b), Some(a)) = (sent_before, wire_sent(setup, route)?) {
        ensure!(
            a - b >= t.connects,
            "{} datagrams sent, but {} packets went out of the wire's device",
            t.connects,
            a - b
        );
    }
    let (dt, dn) = (after.time_ns - before.time_ns, after.count - before.count);
    ensure!(dn > 0, "{} did not run", route.program());
    let per_run = dt as f64 / dn as f64;
    let per_op = t.elapsed_ns as f64 / t.connects as f64;
    let all_time = all_after.time_ns - all_before.time_ns;
    Ok(Sample {
        per_run,
        share: per_run / per_op,
        runs: dn,
        all_per_op: all_time as f64 / t.total().max(1) as f64,
        exact: dn == t.total(),
    })
}

/// For a route that sends across the wire, the packets its device has
/// sent so far.
fn wire_sent(setup: &Setup, route: Route) -> anyhow::Result<Option<u64>> {
    match route.mode() {
        Mode::Datagrams { .. } => wire::sent(&setup.netns).map(Some),
        _ => Ok(None),
    }
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
