//! Whether the agent keeps reading events while it reloads: a reload
//! (SIGHUP, the agent re-reads and writes a whole policy) with a paced
//! worker making denied connects all along, each as a uid of its own so
//! that every one is a log record of its own (the agent rate-limits
//! records per uid and destination). Each connect's time (the worker's
//! `CLOCK_MONOTONIC`) is set against the time its record reached the bench
//! (the same clock, read by a thread woken by each record): the delay of
//! the connects made during the reload, against those made outside it.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use imds_guard_e2e::{Agent, field};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use super::{
    agentproc::{RELOAD_TIMEOUT, is_applied_reload, is_reload},
    cli::Timing,
    interrupt,
    job::{Mode, mono_ns},
    setup::{PolicyFile, Setup},
    sink::IMDS4,
    worker::spawn,
};

/// One denied connect every this long.
pub const PACE: Duration = Duration::from_millis(5);
/// Connects per probed reload at most (uids `first_uid ..`): at [`PACE`],
/// 5 s of reload. The agent tracks 4,096 callers per 10 s window before it
/// stops naming them, which this stays under.
pub const MAX_EVENTS: u64 = 1_000;
/// How long connects go on before the SIGHUP, and after the reload's
/// record.
pub const LEAD: Duration = Duration::from_millis(100);
const TAIL: Duration = LEAD;
/// How long the records of the last connects may take to arrive.
const SETTLE: Duration = Duration::from_secs(2);

/// One probed reload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delivery {
    /// The agent's own `micros`, and SIGHUP to its record, in ms.
    pub micros: f64,
    pub wall_ms: f64,
    /// Connects made between the SIGHUP and the reload's record.
    pub during: usize,
    /// Of those, how many were logged before the reload's record.
    pub delivered_during: usize,
    /// The longest connect-to-record delay of those, in ms.
    pub worst_during_ms: Option<f64>,
    /// The connect-to-record delays of the connects outside the reload.
    pub outside_ms: Vec<f64>,
    /// Connects whose record never came.
    pub missing: usize,
}

/// Sets the connects against their records: `events` are the worker's
/// (uid, connect time), `logged` the first deny record's arrival per uid,
/// `hup` when SIGHUP was sent and `done` when the reload's record arrived
/// (all ns of `CLOCK_MONOTONIC`).
pub fn analyze(events: &[(u32, u64)], logged: &HashMap<u32, u64>, hup: u64, done: u64) -> Delivery {
    let mut d = Delivery::default();
    let mut worst: Option<u64> = None;
    for &(uid, t) in events {
        let Some(&arrived) = logged.get(&uid) else {
            d.missing += 1;
            continue;
        };
        let delay = arrived.saturating_sub(t);
        if (hup..done).contains(&t) {
            d.during += 1;
            if arrived < done {
                d.delivered_during += 1;
            }
            worst = Some(worst.map_or(delay, |w| w.max(delay)));
        } else {
            d.outside_ms.push(delay as f64 / 1e6);
        }
    }
    d.worst_during_ms = worst.map(|w| w as f64 / 1e6);
    d.wall_ms = done.saturating_sub(hup) as f64 / 1e6;
    d
}

/// One reload of `policy` by `setup`'s agent, probed with denied connects
/// as uids `first_uid ..` (none of which the policy may allow).
pub fn reload_probed(
    setup: &Setup,
    policy: &PolicyFile,
    first_uid: u32,
) -> anyhow::Result<Delivery> {
    let agent = setup.agent().context("no agent to reload")?;
    let seen = agent.records().len();
    let arrivals: Mutex<Vec<(u64, Value)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| watch(agent, seen, &arrivals, &stop));
        let result = probe(setup, agent, policy, first_uid, &arrivals);
        stop.store(true, Ordering::SeqCst);
        result
    })
}

/// Every record after the first `seen`, with when it arrived, until `stop`.
fn watch(agent: &Agent, mut seen: usize, out: &Mutex<Vec<(u64, Value)>>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        // Wakes as soon as the agent's record `seen` is collected.
        match agent.wait_for_after(seen, |_| true, Duration::from_millis(20)) {
            Some(r) => {
                let now = mono_ns();
                seen += 1;
                lock(out).push((now, r));
            }
            // A timeout, or an agent that closed its output (then without
            // waiting: do not spin).
            None => thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn probe(
    setup: &Setup,
    agent: &Agent,
    policy: &PolicyFile,
    first_uid: u32,
    arrivals: &Mutex<Vec<(u64, Value)>>,
) -> anyhow::Result<Delivery> {
    let bound = LEAD + RELOAD_TIMEOUT + TAIL;
    let timing = Timing {
        warmup_ms: 0,
        run_ms: bound.as_millis() as u64,
    };
    let mut job = setup.job(first_uid, IMDS4, timing).mode(Mode::Paced {
        first_uid,
        every_us: PACE.as_micros() as u64,
    });
    job.max_connects = MAX_EVENTS;
    let worker = spawn(&job)?;
    let reloaded = reload(agent, policy, arrivals).and_then(|r| {
        interrupt::sleep(TAIL)?;
        Ok(r)
    });
    // Stopped whatever happened, so that no worker outlives the probe.
    let stopped = worker.stop();
    let tally = worker.wait();
    let (hup, done, micros) = reloaded?;
    stopped?;
    let tally = tally?;
    ensure!(
        tally.eperm == tally.connects && tally.connects > 0,
        "the probe's connects were not all denied: {tally:?}"
    );
    // The records of the last connects, or as many as come in time.
    let settle = Instant::now() + SETTLE;
    let logged = loop {
        let logged = denials(&lock(arrivals));
        if tally.events.iter().all(|(uid, _)| logged.contains_key(uid)) || Instant::now() > settle {
            break logged;
        }
        interrupt::sleep(Duration::from_millis(10))?;
    };
    let mut d = analyze(&tally.events, &logged, hup, done);
    d.micros = micros;
    Ok(d)
}

/// Rewrites the policy and sends SIGHUP; returns when SIGHUP was sent and
/// when the reload's record arrived ([`mono_ns`]), and its `micros`.
fn reload(
    agent: &Agent,
    policy: &PolicyFile,
    arrivals: &Mutex<Vec<(u64, Value)>>,
) -> anyhow::Result<(u64, u64, f64)> {
    interrupt::sleep(LEAD)?;
    policy.rewrite()?;
    let hup = mono_ns();
    // Our own child, still running: the pid is its own.
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGHUP)?;
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    let (done, record) = loop {
        let found = lock(arrivals)
            .iter()
            .find(|(_, r)| is_reload(r))
            .map(|(t, r)| (*t, r.clone()));
        if let Some(found) = found {
            break found;
        }
        ensure!(
            Instant::now() < deadline,
            "no reload record within {RELOAD_TIMEOUT:?}"
        );
        interrupt::sleep(Duration::from_millis(1))?;
    };
    ensure!(
        is_applied_reload(&record),
        "the agent refused a reload: {record}"
    );
    let micros = field(&record, "micros")
        .and_then(Value::as_u64)
        .context("the reload record has no micros field")?;
    Ok((hup, done, micros as f64))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first deny record's arrival, per uid.
fn denials(arrivals: &[(u64, Value)]) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for (t, r) in arrivals {
        if field(r, "event").and_then(Value::as_str) != Some("deny") {
            continue;
        }
        if let Some(uid) = field(r, "uid")
            .and_then(Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
        {
            out.entry(uid).or_insert(*t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn connects_during_the_reload_are_told_from_the_others() {
        // SIGHUP at 100 ms, the reload's record at 400 ms; connects every
        // 50 ms from 0, each logged 1 ms later except during the reload,
        // where the agent logged nothing until it was done.
        let events: Vec<(u32, u64)> = (0..10).map(|i| (i, i as u64 * 50 * MS)).collect();
        let logged: HashMap<u32, u64> = events
            .iter()
            .map(|&(uid, t)| {
                let at = if (100 * MS..400 * MS).contains(&t) {
                    401 * MS
                } else {
                    t + MS
                };
                (uid, at)
            })
            .collect();
        let d = analyze(&events, &logged, 100 * MS, 400 * MS);
        // 100, 150, ..., 350 ms: six connects during the reload.
        assert_eq!((d.during, d.delivered_during, d.missing), (6, 0, 0));
        assert_eq!(d.worst_during_ms, Some(301.0));
        assert_eq!(d.outside_ms, vec![1.0; 4]);
        assert_eq!(d.wall_ms, 300.0);
    }

    #[test]
    fn an_agent_that_keeps_reading_delivers_during_the_reload() {
        let events = [(1, 10 * MS), (2, 20 * MS)];
        let logged = HashMap::from([(1, 11 * MS), (2, 21 * MS)]);
        let d = analyze(&events, &logged, 5 * MS, 30 * MS);
        assert_eq!((d.during, d.delivered_during), (2, 2));
        assert_eq!(d.worst_during_ms, Some(1.0));
        assert!(d.outside_ms.is_empty());
    }

    #[test]
    fn a_connect_without_record_is_missing_not_fast() {
        let d = analyze(&[(1, 10 * MS)], &HashMap::new(), 0, 20 * MS);
        assert_eq!((d.during, d.missing, d.worst_during_ms), (0, 1, None));
    }

    #[test]
    fn only_deny_records_count_and_the_first_one_wins() {
        let arrivals = vec![
            (
                5,
                serde_json::json!({"event": "reload", "outcome": "applied"}),
            ),
            (6, serde_json::json!({"event": "deny", "uid": 7})),
            (9, serde_json::json!({"event": "deny", "uid": 7})),
            (
                8,
                serde_json::json!({"fields": {"event": "deny", "uid": 8}}),
            ),
        ];
        assert_eq!(denials(&arrivals), HashMap::from([(7, 6), (8, 8)]));
    }
}
