//! What the bench reads about a running agent: its CPU time and memory from
//! /proc, and its reloads, driven with SIGHUP and timed from its log.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use imds_guard_e2e::{Agent, field};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use super::{interrupt, setup::PolicyFile};

/// How long a reload may take (100,000 uids included).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// User plus system CPU time of `pid`, in seconds (/proc/PID/stat fields
/// 14 and 15, in clock ticks; see proc_pid_stat(5)).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: count from the
    // last ')', after which comes field 3 (state).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(ticks as f64 / clock_ticks())
}

/// USER_HZ, the unit of /proc/PID/stat times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// A `kB` line of /proc/PID/status (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// A record of a reload, whatever its outcome.
pub fn is_reload(r: &Value) -> bool {
    field(r, "event").and_then(Value::as_str) == Some("reload")
}

/// The record of a reload that was applied.
pub fn is_applied_reload(r: &Value) -> bool {
    is_reload(r) && field(r, "outcome").and_then(Value::as_str) == Some("applied")
}

/// One reload of the same policy: rewrites the file, sends SIGHUP, waits
/// for the `event=reload outcome=applied` record. Returns the agent's own
/// `micros` (read, validate, resolve and write the maps) and the wall time
/// from SIGHUP to the record, in milliseconds (polled every millisecond).
pub fn reload(agent: &Agent, policy: &PolicyFile) -> anyhow::Result<(f64, f64)> {
    let before = agent
        .records()
        .iter()
        .filter(|r| is_applied_reload(r))
        .count();
    policy.rewrite()?;
    let sent = Instant::now();
    // Our own child, still running: the pid is its own.
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGHUP)?;
    loop {
        let records = agent.records();
        if let Some(r) = records.iter().filter(|r| is_applied_reload(r)).nth(before) {
            let wall = sent.elapsed().as_secs_f64() * 1e3;
            let micros = field(r, "micros")
                .and_then(Value::as_u64)
                .context("the reload record has no micros field")?;
            return Ok((micros as f64, wall));
        }
        if let Some(r) = records
            .iter()
            .rev()
            .find(|r| is_reload(r) && !is_applied_reload(r))
        {
            bail!("the agent refused a reload: {r}");
        }
        if sent.elapsed() > RELOAD_TIMEOUT {
            bail!("no reload record within {RELOAD_TIMEOUT:?}");
        }
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The agent's final record (its message starts with `SIGTERM:`), after
/// [`Agent::terminate`].
pub fn final_record(agent: &Agent) -> Option<Value> {
    agent.records().into_iter().rev().find(|r| {
        field(r, "message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("SIGTERM:"))
    })
}
