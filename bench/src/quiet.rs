//! A gate before each timed loop: wait, briefly, until the rest of the
//! machine is quiet, and count the loops that had to start anyway.
//!
//! The bench's own processes are idle between loops (the listener threads
//! sleep in poll, the agents in epoll), so CPU time the kernel reports as
//! busy across the machine then is other work: a build, another test run.
//! Interleaving spreads such noise over every configuration alike; the gate
//! keeps most of it out, and the report says how much got in. The total
//! wait is bounded, so a machine that is never quiet still finishes.

use std::{
    fs,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::interrupt;

/// How long one sample of /proc/stat lasts.
const SAMPLE: Duration = Duration::from_millis(40);
/// Busy CPU time, in CPUs, above which the machine is not quiet.
const BUSY_CPUS: f64 = 0.25;
/// How long one loop waits at most, and the whole bench, in ms
/// ([`limit`] sets them).
static PER_LOOP_MS: AtomicU64 = AtomicU64::new(3_000);
static TOTAL_MS: AtomicU64 = AtomicU64::new(150_000);

static LOOPS: AtomicU64 = AtomicU64::new(0);
static BUSY: AtomicU64 = AtomicU64::new(0);
static WAITED_MS: AtomicU64 = AtomicU64::new(0);

/// Sets how long one loop, and the whole bench, may wait.
pub fn limit(per_loop: Duration, total: Duration) {
    PER_LOOP_MS.store(per_loop.as_millis() as u64, Ordering::Relaxed);
    TOTAL_MS.store(total.as_millis() as u64, Ordering::Relaxed);
}

/// (per loop, total) wait limits.
pub fn limits() -> (Duration, Duration) {
    (
        Duration::from_millis(PER_LOOP_MS.load(Ordering::Relaxed)),
        Duration::from_millis(TOTAL_MS.load(Ordering::Relaxed)),
    )
}

/// (busy, total) jiffies over all CPUs, from the `cpu` line of /proc/stat.
fn jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// Busy CPUs over one sample.
fn busy_cpus() -> Option<f64> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (b0, t0) = jiffies()?;
    std::thread::sleep(SAMPLE);
    let (b1, t1) = jiffies()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * cpus)
}

/// Waits until the machine is quiet, or for the per-loop limit at most
/// (and no more once the total is spent); counts the loop.
pub fn gate() -> anyhow::Result<()> {
    LOOPS.fetch_add(1, Ordering::Relaxed);
    let (per_loop, total) = limits();
    let start = Instant::now();
    loop {
        interrupt::check()?;
        let Some(busy) = busy_cpus() else {
            return Ok(());
        };
        if busy < BUSY_CPUS {
            break;
        }
        let spent = Duration::from_millis(WAITED_MS.load(Ordering::Relaxed)) + start.elapsed();
        if start.elapsed() >= per_loop || spent >= total {
            BUSY.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    // The first sample is the gate's own cost, not a wait.
    let waited = start.elapsed().saturating_sub(SAMPLE);
    WAITED_MS.fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
    Ok(())
}

/// (timed loops, loops started on a busy machine, total time waited).
pub fn totals() -> (u64, u64, Duration) {
    (
        LOOPS.load(Ordering::Relaxed),
        BUSY.load(Ordering::Relaxed),
        Duration::from_millis(WAITED_MS.load(Ordering::Relaxed)),
    )
}
