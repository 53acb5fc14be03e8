//! The measuring client: a child process (the bench binary itself, run with
//! a hidden `--worker JOB` argument) that joins a bench cgroup and network
//! namespace, becomes the wanted uid, and does connect()+close() to one
//! address in a tight loop, timing itself with the monotonic clock. What
//! it is asked and what it reports are in `job`; the loops, connects and
//! the other things a worker can do (datagrams, a stream, requests on a
//! kept-alive connection, paced denials),
//! in `flow`.
//!
//! A process of its own is the only faithful subject: the guard decides by
//! the real uid and the cgroup of the task that connects, and the bench
//! itself stays root, in the host namespace and cgroup. Each connect uses a
//! fresh socket with `SO_LINGER {on, 0}`, so that close() sends a RST and
//! leaves no TIME_WAIT: a loop of ~10^5 connects would otherwise run out of
//! ephemeral ports within a second.

use std::{
    fs,
    io::Read,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sched::{CloneFlags, setns},
    unistd::{Gid, Uid, getresgid, getresuid, setgroups, setresgid, setresuid},
};

use super::{
    cpus, flow, interrupt,
    job::{Job, Mode, Tally},
};

/// The hidden first argument that makes the binary a worker.
pub const WORKER_ARG: &str = "--worker";

/// How long past its own deadline a worker may take before it is killed.
const GRACE: Duration = Duration::from_secs(20);

/// The worker's side: `imds-guard-bench --worker JOB`.
pub fn main(job: &str) -> ExitCode {
    let job: Job = match serde_json::from_str(job) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("imds-guard-bench worker: bad job {job:?}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = enter(&job) {
        eprintln!("imds-guard-bench worker: {e}");
        return ExitCode::from(3);
    }
    let tally = match job.mode {
        Mode::Connect => flow::connects(&job),
        Mode::Datagrams { size } => flow::datagrams(&job, size),
        Mode::Stream { chunk } => flow::stream(&job, chunk),
        Mode::Requests => flow::requests(&job),
        Mode::Paced {
            first_uid,
            every_us,
        } => flow::paced(&job, first_uid, every_us),
    };
    match serde_json::to_string(&tally) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imds-guard-bench worker: {e}");
            ExitCode::from(3)
        }
    }
}

/// (device, inode) of a namespace file: equal pairs are the same namespace.
fn ns_id(path: &Path) -> Result<(u64, u64), String> {
    fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| format!("stat {}: {e}", path.display()))
}

/// Joins the cgroup and the namespace while root, then drops to the uid
/// (groups, gid, uid: each step needs the privilege the next removes);
/// a paced worker keeps root and switches its real ids per connect.
fn enter(job: &Job) -> Result<(), String> {
    let procs = job.cgroup.join("cgroup.procs");
    fs::write(&procs, "0").map_err(|e| format!("joining {}: {e}", procs.display()))?;
    let own = Path::new("/proc/thread-self/ns/net");
    let before = ns_id(own)?;
    let ns =
        fs::File::open(&job.netns).map_err(|e| format!("opening {}: {e}", job.netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns into {}: {e}", job.netns.display()))?;
    // The worker starts in the host's namespace, where a metadata address
    // may be the real service: joining must have moved it.
    if ns_id(own)? == before {
        return Err(format!(
            "refusing to run: {} is not a separate namespace",
            job.netns.display()
        ));
    }
    if let Some(cpu) = job.cpu {
        cpus::pin(0, cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    }
    let groups: Vec<Gid> = job.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    if let Mode::Paced { .. } = job.mode {
        return flow::install_stop();
    }
    let (uid, gid) = (Uid::from_raw(job.uid), Gid::from_raw(job.uid));
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid {gid}: {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid {uid}: {e}"))?;
    let ids = getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = getresgid().map_err(|e| format!("getresgid: {e}"))?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3]
        || [gids.real, gids.effective, gids.saved] != [gid; 3]
    {
        return Err(format!("ids did not change: {ids:?} {gids:?}"));
    }
    Ok(())
}

/// Whether to print every loop's tally on stderr (`--verbose`).
pub static VERBOSE: AtomicBool = AtomicBool::new(false);

/// A single connect this slow stalled on a retransmit (a dropped SYN
/// waits 1 s), not on the path being measured.
const STALL_NS: u64 = 200_000_000;

/// Timed loops so far, and those in which a connect stalled.
static LOOPS: AtomicU64 = AtomicU64::new(0);
static STALLED: AtomicU64 = AtomicU64::new(0);

/// (timed loops, loops with a stalled connect).
pub fn stalls() -> (u64, u64) {
    (
        LOOPS.load(Ordering::Relaxed),
        STALLED.load(Ordering::Relaxed),
    )
}

/// A worker started by [`spawn`]; [`Running::wait`] collects its tally.
pub struct Running {
    child: Child,
    deadline: Instant,
    what: String,
    /// Whether it is a timed loop, for [`stalls`] (a paced worker is not).
    timed: bool,
}

/// Starts a worker for `job`.
pub fn spawn(job: &Job) -> anyhow::Result<Running> {
    interrupt::check()?;
    // This very binary, even if a build replaced the file meanwhile.
    let exe = "/proc/self/exe";
    let child = Command::new(exe)
        .arg(WORKER_ARG)
        .arg(serde_json::to_string(job)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {exe}"))?;
    Ok(Running {
        child,
        deadline: Instant::now() + Duration::from_millis(job.warmup_ms + job.run_ms) + GRACE,
        what: format!(
            "{} uid {} to {}",
            job.netns.file_name().unwrap_or_default().to_string_lossy(),
            job.uid,
            job.dst
        ),
        timed: !matches!(job.mode, Mode::Paced { .. }),
    })
}

impl Running {
    /// Asks a [`Mode::Paced`] worker to stop (SIGUSR1); it then reports.
    pub fn stop(&self) -> anyhow::Result<()> {
        // Our own child, not yet reaped: the pid is still its own.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1)
            .context("signalling a paced worker")
    }

    /// Waits for the worker (killing it past its deadline) and parses its
    /// report.
    pub fn wait(mut self) -> anyhow::Result<Tally> {
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > self.deadline {
                // Where it is stuck, for the report, before it goes.
                let pid = self.child.id();
                let read =
                    |f: &str| fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
                let stuck = format!(
                    "a worker ({}) ran past its deadline and was killed; it was in {} ({})",
                    self.what,
                    read("wchan"),
                    read("stack")
                        .lines()
                        .take(6)
                        .collect::<Vec<_>>()
                        .join(" <- ")
                );
                // Our own child, not yet reaped: the pid is still its own.
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(Overran(stuck).into());
            }
            thread::sleep(Duration::from_millis(2));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut err)?;
        }
        interrupt::check()?;
        if !status.success() {
            bail!("worker failed ({status}): {}", err.trim());
        }
        let line = out.lines().last().unwrap_or_default();
        let tally: Tally = serde_json::from_str(line)
            .with_context(|| format!("worker printed {out:?}; stderr: {err}"))?;
        // One-connect probes are not loops (and a REJECTed SYN can take a
        // retransmit to fail).
        if self.timed && tally.connects > 1 {
            LOOPS.fetch_add(1, Ordering::Relaxed);
            if tally.slowest_ns > STALL_NS {
                STALLED.fetch_add(1, Ordering::Relaxed);
            }
        }
        if VERBOSE.load(Ordering::Relaxed) {
            eprintln!(
                "\n  {}: {:.0}/s, {:.1} MB/s, {} operations ({} ok, {} EPERM, {} other), \
                 slowest {:.1} ms",
                self.what,
                tally.rate(),
                tally.byte_rate() / 1e6,
                tally.connects,
                tally.ok,
                tally.eperm,
                tally.other,
                tally.slowest_ns as f64 / 1e6
            );
        }
        Ok(tally)
    }
}

/// A worker killed past its deadline (see [`run_job`]).
#[derive(Debug)]
pub struct Overran(String);

impl std::fmt::Display for Overran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Overran {}

/// Timed loops killed past their deadline, and rerun.
static OVERRAN: AtomicU64 = AtomicU64::new(0);

/// How many timed loops were killed past their deadline and rerun.
pub fn overran() -> u64 {
    OVERRAN.load(Ordering::Relaxed)
}

/// Runs one worker to completion. A worker killed past its deadline (a
/// connect stuck in SYN retransmits, a process that could not join its
/// cgroup in time) is counted, reported on stderr, and run once more.
pub fn run_job(job: &Job) -> anyhow::Result<Tally> {
    match spawn(job)?.wait() {
        Err(e) if e.is::<Overran>() => {
            OVERRAN.fetch_add(1, Ordering::Relaxed);
            eprintln!("\nimds-guard-bench: {e}; running that loop again");
            spawn(job)?.wait()
        }
        result => result,
    }
}
