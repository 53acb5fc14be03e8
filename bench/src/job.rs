//! What the bench asks of a worker and what the worker reports back: the
//! [`Job`] passed on the worker's command line and the [`Tally`] it prints,
//! both JSON, and the clock both sides share ([`mono_ns`]). The process
//! side is in `worker`, the loops a job runs in `flow`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{cli::Timing, cpus};

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    /// Real, effective and saved uid, and (the same number) gid.
    pub uid: u32,
    pub dst: SocketAddr,
    pub warmup_ms: u64,
    /// The timed loop stops after this long, or after `max_connects`.
    pub run_ms: u64,
    pub max_connects: u64,
    /// The CPU to run on (see `cpus`); `None` leaves it to the scheduler.
    #[serde(default)]
    pub cpu: Option<usize>,
    /// What the loop does.
    #[serde(default)]
    pub mode: Mode,
    /// Supplementary groups (none by default).
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// The path a [`Mode::Requests`] worker asks for: one the fake IMDS
/// serves without a token (IMDSv1), as EC2's serves the instance id.
pub const REQUEST_PATH: &str = "/latest/meta-data/instance-id";

/// What a worker's loop does with its destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// socket() + connect() + close() with a RST, over and over.
    #[default]
    Connect,
    /// One connected UDP socket, send() of `size`-byte datagrams.
    Datagrams { size: usize },
    /// One TCP connection, write() of `chunk` bytes at a time.
    Stream { chunk: usize },
    /// One TCP connection kept alive: the `GET` of [`REQUEST_PATH`] in one
    /// write, then its whole response read, over and over (an operation
    /// is a request answered).
    Requests,
    /// One connect every `every_us`, each as the next real uid from
    /// `first_uid` (the effective uid stays root to switch), until
    /// `Running::stop`, `max_connects` or `run_ms`; every connect's
    /// uid and start time are reported.
    Paced { first_uid: u32, every_us: u64 },
}

impl Job {
    pub fn new(netns: &Path, cgroup: &Path, uid: u32, dst: SocketAddr, timing: Timing) -> Self {
        Job {
            netns: netns.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            uid,
            dst,
            warmup_ms: timing.warmup_ms,
            run_ms: timing.run_ms,
            // A bound, far above what a loopback connect loop reaches.
            max_connects: 200_000 * timing.run_ms.max(1),
            cpu: cpus::client(),
            mode: Mode::Connect,
            groups: Vec::new(),
        }
    }

    /// The same job holding these supplementary groups.
    pub fn groups(mut self, groups: Vec<u32>) -> Self {
        self.groups = groups;
        self
    }

    /// The same job doing `mode`.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Exactly `n` connects, untimed warmup excluded (probes, storms).
    pub fn count(mut self, n: u64, within: Duration) -> Self {
        self.warmup_ms = 0;
        self.run_ms = within.as_millis() as u64;
        self.max_connects = n;
        self
    }

    /// As many connects as fit in `d`, on any CPU (storms: several
    /// workers at once).
    pub fn for_time(mut self, d: Duration) -> Self {
        self.cpu = None;
        self.warmup_ms = 0;
        self.run_ms = d.as_millis() as u64;
        self.max_connects = 1_000_000_000;
        self
    }
}

/// What a worker reports: one JSON line on stdout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Operations in the timed loop: connects, datagrams sent, or writes
    /// to a stream (see [`Mode`]).
    pub connects: u64,
    pub ok: u64,
    pub eperm: u64,
    /// Failures other than EPERM, and the errno of the last one.
    pub other: u64,
    pub last_errno: Option<i32>,
    /// Connects during the warmup (not timed, but the programs ran).
    pub warmup: u64,
    pub elapsed_ns: u64,
    /// The longest single connect of the timed loop.
    #[serde(default)]
    pub slowest_ns: u64,
    /// Bytes written in the timed loop (datagrams and streams).
    #[serde(default)]
    pub bytes: u64,
    /// [`Mode::Paced`]: each connect's uid and when it started
    /// ([`mono_ns`]).
    #[serde(default)]
    pub events: Vec<(u32, u64)>,
}

impl Tally {
    /// Connects per second in the timed loop.
    pub fn rate(&self) -> f64 {
        self.connects as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }

    /// Every connect, warmup included: what the kernel counted.
    pub fn total(&self) -> u64 {
        self.connects + self.warmup
    }

    /// Bytes per second in the timed loop.
    pub fn byte_rate(&self) -> f64 {
        self.bytes as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for the bench and its
/// workers (an [`Instant`] cannot cross a process boundary).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write; the clock
    // exists on every Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
