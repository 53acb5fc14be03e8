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
//!
//! Request-level judgement (issue 23): a third configuration, the agent
//! with a policy that has a `[requests.NAME]` table, its addresses served
//! by the fake IMDS, times in the same rounds a path-judged request (the
//! table's caller, the `GET` of a path its rules allow) against a
//! whole-service request (an `[allow]` caller), each on one kept-alive
//! connection ([`Caller`]), with `req_sockops`'s and `req_msg`'s run time;
//! and egress on unprotected datagrams with that policy loaded
//! ([`Route::Datagram4Requests`]), against the same empty program.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use imds_guard_common::{MAP_REQ_SOCKS, PROGRAM_REQ_MSG, PROGRAM_REQ_SOCKOPS};
use imds_guard_e2e::NOBODY;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    cli::Settings,
    flowsink::DGRAM_V4,
    job::{Job, Mode, REQUEST_PATH},
    progstats::{Prog, Run, StatsEnabled, guard_programs, pick, sk_msg_program},
    setup::{Kind, PolicyFile, Setup, verify},
    sink::{IMDS4, IMDS6, PLAIN_V4, PLAIN_V6},
    stats::{Expect, Summary, check, interleave, paired},
    wire::{self, Wire},
    worker::run_job,
};

/// The allowed uid of this section's policy.
const ALLOWED: u32 = 1001;

pub const POLICY: &str = "[allow]\nusers = [\"root\"]\nuids = [1001]\n";

/// The caller of the request policy's `[requests.bench]` table.
const JUDGED: u32 = 1002;

/// [`POLICY`] and a `[requests.bench]` table: uid [`JUDGED`] may send
/// only the `GET` of [`REQUEST_PATH`] (the path every request loop asks
/// for); uid [`ALLOWED`] stays allowed the whole service.
pub fn request_policy() -> String {
    format!("{POLICY}[requests.bench]\nuids = [{JUDGED}]\nrules = [\"GET {REQUEST_PATH}\"]\n")
}

/// Who sends the requests of a request loop: both in the request
/// policy's configuration, on one kept-alive connection to the fake IMDS
/// each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The `[requests.bench]` caller: `req_msg` judges every request.
    Judged,
    /// The `[allow]` caller: not in the sockhash, `req_msg` never runs.
    WholeService,
}

impl Caller {
    pub const ALL: [Caller; 2] = [Self::Judged, Self::WholeService];

    pub fn label(self) -> &'static str {
        match self {
            Self::Judged => "path-judged (a `[requests.bench]` caller, an allowed `GET`)",
            Self::WholeService => "whole service (an `[allow]` caller, the same `GET`)",
        }
    }

    fn uid(self) -> u32 {
        match self {
            Self::Judged => JUDGED,
            Self::WholeService => ALLOWED,
        }
    }
}

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
    /// [`Route::Datagram4`] in the configuration with a request policy
    /// loaded (issue 21: unprotected traffic stays at the floor's with
    /// request judgement on); its floor is [`Route::Datagram4`]'s.
    Datagram4Requests,
}

impl Route {
    /// Every route, in the table's order.
    pub const ALL: [Route; 9] = [
        Self::Unprotected4,
        Self::Allowed4,
        Self::Denied4,
        Self::Allowed4AgentStopped,
        Self::Unprotected6,
        Self::Allowed6,
        Self::Denied6,
        Self::Datagram4,
        Self::Datagram4Requests,
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
            Self::Datagram4Requests => {
                "not protected, a UDP datagram out of a device, request policy loaded"
            }
        }
    }

    /// The program timed.
    pub fn program(self) -> &'static str {
        match self {
            Self::Unprotected4 | Self::Allowed4 | Self::Denied4 | Self::Allowed4AgentStopped => {
                "connect4"
            }
            Self::Unprotected6 | Self::Allowed6 | Self::Denied6 => "connect6",
            Self::Datagram4 | Self::Datagram4Requests => "egress",
        }
    }

    /// Whether the route is timed in the floor's cgroup too, when the
    /// floor has a program of its type: every route but the agent
    /// stopped, which has nothing to stop there (its floor is
    /// [`Route::Allowed4`]'s), and the request policy's datagrams, whose
    /// loop is [`Route::Datagram4`]'s (so is their floor).
    fn floored(self) -> bool {
        !matches!(self, Self::Allowed4AgentStopped | Self::Datagram4Requests)
    }

    /// The route whose loop in the floor's cgroup is this route's floor
    /// (none for the agent stopped: [`Route::Allowed4`] is not floored
    /// for it).
    fn floor_of(self) -> Self {
        match self {
            Self::Datagram4Requests => Self::Datagram4,
            route => route,
        }
    }

    /// Whether the route runs in the request policy's configuration.
    fn with_request_policy(self) -> bool {
        self == Self::Datagram4Requests
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
            Self::Datagram4 | Self::Datagram4Requests => DGRAM_V4,
        }
    }

    fn mode(self) -> Mode {
        match self {
            Self::Datagram4 | Self::Datagram4Requests => Mode::Datagrams { size: DATAGRAM },
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

/// A request loop's figures (see [`Caller`]).
pub struct RequestRow {
    pub caller: Caller,
    /// The worker's time per request (write, and its response read
    /// whole), per round.
    pub per_request_ns: Summary,
    /// That against the whole-service caller's in the same round; `None`
    /// for the whole-service row itself.
    pub vs_whole: Option<Summary>,
    /// `req_msg`'s run time per run, per round; `None` if it never ran
    /// (the whole-service caller, as it must).
    pub msg_ns: Option<Summary>,
    /// `req_msg`'s runs per request, per round.
    pub msg_per_request: Summary,
    /// `req_sockops`'s run time per run, per round (it runs on the
    /// connection's sock_ops events, not per request).
    pub sockops_ns: Summary,
    /// `req_sockops`'s runs, all rounds.
    pub sockops_runs: u64,
    /// Every program of the guard together, per request.
    pub all_ns: Summary,
    /// Requests answered, all rounds, warmups included.
    pub requests: u64,
}

pub struct RuntimeResult {
    pub rows: Vec<Row>,
    /// The request loops, [`Caller::ALL`]'s order.
    pub requests: Vec<RequestRow>,
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

    /// The request loop of `caller`.
    pub fn request(&self, caller: Caller) -> Option<&RequestRow> {
        self.requests.iter().find(|r| r.caller == caller)
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
    /// The worker's time per operation.
    per_op: f64,
    /// A request loop's `req_msg` and `req_sockops` counters, grown.
    msg: Run,
    sockops: Run,
    /// Operations, warmup included.
    ops: u64,
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
    let req_policy = PolicyFile::new(&request_policy());
    let req = Setup::with_imds(Kind::ImdsGuard, &req_policy)?;
    let _wires = [
        Wire::new(&setup.netns)?,
        Wire::new(&floor.netns)?,
        Wire::new(&req.netns)?,
    ];
    verify(&[
        (&setup, ALLOWED, NOBODY),
        (&floor, ALLOWED, NOBODY),
        (&req, ALLOWED, NOBODY),
        (&req, JUDGED, NOBODY),
    ])?;
    let pin_dir = setup.pin_dir().unwrap_or_default();
    let agent_pid = setup.agent().map_or(0, |a| a.pid());
    let progs = guard_programs(&setup.netns, &pin_dir)?;
    let all: Vec<&Prog> = progs.values().collect();
    let req_pins = req.pin_dir().unwrap_or_default();
    let req_progs = guard_programs(&req.netns, &req_pins)?;
    let msg = sk_msg_program(&req_pins.join(format!("map_{MAP_REQ_SOCKS}")))?;
    let sockops = pick(&req_progs, PROGRAM_REQ_SOCKOPS)?;
    let req_all: Vec<&Prog> = req_progs.values().chain([&msg]).collect();
    let empty = floor.floor().context("the floor has no empty programs")?;
    // Cases: every route in its guard's cgroup, then the routes the floor
    // times in the floor's, then the request loops.
    let floored: Vec<(Route, &Prog)> = Route::ALL
        .into_iter()
        .filter(|r| r.floored())
        .filter_map(|r| empty.program(r.program()).map(|p| (r, p)))
        .collect();
    let stats = StatsEnabled::new()?;
    let stats_how = stats.how();
    let routes = Route::ALL.len();
    let cases = routes + floored.len() + Caller::ALL.len();
    let samples = interleave("program run time", cases, s.rounds, |i| {
        if let Some(&route) = Route::ALL.get(i) {
            let (on, progs, all) = if route.with_request_policy() {
                (&req, &req_progs, &req_all)
            } else {
                (&setup, &progs, &all)
            };
            let prog = pick(progs, route.program())?;
            let stopped = (route == Route::Allowed4AgentStopped)
                .then(|| Stopped::new(agent_pid))
                .transpose()?;
            let sample = time(on, route, prog, all, s, stopped);
            return sample.with_context(|| format!("{} (imds-guard)", route.label()));
        }
        if let Some(&(route, prog)) = floored.get(i - routes) {
            return time(&floor, route, prog, &[prog], s, None)
                .with_context(|| format!("{} (empty programs)", route.label()));
        }
        let caller = Caller::ALL[i - routes - floored.len()];
        time_requests(&req, caller, &msg, sockops, &req_all, s)
            .with_context(|| format!("{} (imds-guard)", caller.label()))
    })?;
    drop(stats);
    let (guarded, rest) = samples.split_at(routes);
    let (floors, requests) = rest.split_at(floored.len());
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
                .find(|((r, _), _)| *r == route.floor_of())
                .map(|(_, ys)| of(ys, |y| y.per_run)),
        })
        .collect();
    let per_op = |xs: &[Sample]| xs.iter().map(|x| x.per_op).collect::<Vec<_>>();
    let whole = Caller::ALL
        .iter()
        .position(|&c| c == Caller::WholeService)
        .map(|i| per_op(&requests[i]));
    let requests = Caller::ALL
        .into_iter()
        .zip(requests)
        .map(|(caller, xs)| RequestRow {
            caller,
            per_request_ns: of(xs, |x| x.per_op),
            vs_whole: whole
                .as_ref()
                .filter(|_| caller != Caller::WholeService)
                .map(|w| paired(&per_op(xs), w)),
            msg_ns: xs
                .iter()
                .any(|x| x.msg.count > 0)
                .then(|| of(xs, |x| x.msg.time_ns as f64 / x.msg.count as f64)),
            msg_per_request: of(xs, |x| x.msg.count as f64 / x.ops.max(1) as f64),
            sockops_ns: of(xs, |x| x.sockops.time_ns as f64 / x.sockops.count as f64),
            sockops_runs: xs.iter().map(|x| x.sockops.count).sum(),
            all_ns: of(xs, |x| x.all_per_op),
            requests: xs.iter().map(|x| x.ops).sum(),
        })
        .collect();
    Ok(RuntimeResult {
        rows,
        requests,
        rounds: s.rounds,
        counts_exact: samples.iter().flatten().all(|x| x.exact),
        stats_how,
        programs: progs.keys().cloned().collect(),
    })
}

/// One request loop of `caller` in the request policy's configuration:
/// the worker's time per request, and the counters of `req_msg`,
/// `req_sockops` and `all` the configuration's programs. `req_msg` must
/// run on every request of the judged caller (each in one write: exactly
/// once each) and never for the whole-service caller, or the loop did
/// not measure what it says.
fn time_requests(
    setup: &Setup,
    caller: Caller,
    msg: &Prog,
    sockops: &Prog,
    all: &[&Prog],
    s: &Settings,
) -> anyhow::Result<Sample> {
    let job = setup
        .job(caller.uid(), IMDS4, s.timing)
        .mode(Mode::Requests);
    let (msg_before, sockops_before, all_before) = (msg.read()?, sockops.read()?, read_all(all)?);
    let t = run_job(&job)?;
    let (msg_after, sockops_after, all_after) = (msg.read()?, sockops.read()?, read_all(all)?);
    check(caller.label(), &t, Expect::Connected)?;
    let grown = |a: Run, b: Run| Run {
        time_ns: a.time_ns - b.time_ns,
        count: a.count - b.count,
    };
    let msg_run = grown(msg_after, msg_before);
    let sockops_run = grown(sockops_after, sockops_before);
    let ops = t.total();
    match caller {
        Caller::Judged => ensure!(
            msg_run.count >= ops,
            "{PROGRAM_REQ_MSG} ran {} times for {ops} judged requests: the caller is not judged",
            msg_run.count
        ),
        Caller::WholeService => ensure!(
            msg_run.count == 0,
            "{PROGRAM_REQ_MSG} ran {} times for a whole-service caller",
            msg_run.count
        ),
    }
    ensure!(sockops_run.count > 0, "{PROGRAM_REQ_SOCKOPS} did not run");
    let per_op = t.elapsed_ns as f64 / t.connects as f64;
    let all_time = all_after.time_ns - all_before.time_ns;
    Ok(Sample {
        per_run: msg_run.time_ns as f64 / msg_run.count.max(1) as f64,
        share: 0.0,
        runs: msg_run.count,
        all_per_op: all_time as f64 / ops.max(1) as f64,
        exact: match caller {
            Caller::Judged => msg_run.count == ops,
            Caller::WholeService => true,
        },
        per_op,
        msg: msg_run,
        sockops: sockops_run,
        ops,
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
        per_op,
        msg: Run::default(),
        sockops: Run::default(),
        ops: t.total(),
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
