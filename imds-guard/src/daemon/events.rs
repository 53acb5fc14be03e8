//! Turning the programs' decision records into log records that explain
//! themselves: who, what destination, which verdict, and the policy entry
//! (with its position in the file) or the default that decided. Repeated
//! records are rate-limited; what the kernel could not deliver is reported.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{ratelimit::RateLimiter, reload::Policies};
use crate::{
    chain::Chain,
    kernel::records::{DecisionRecord, RecordReason},
    policy::{Outcome, Policy, Resolver, explain},
};

/// Why `d` came out as it did, in words, citing the policy.
pub fn explain_record(d: &DecisionRecord, policy: &Policy) -> String {
    match d.reason {
        RecordReason::Policy(reason) => explain(policy, reason, d.entry_index(), d.uid, d.gid),
        RecordReason::InternalError => {
            "the guard could not read its configuration, and fails closed".to_owned()
        }
    }
}

/// What counts as "the same record" for rate limiting.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    outcome: Outcome,
    uid: u32,
    pid: u32,
    dst: IpAddr,
    port: u16,
}

/// Writes decisions to the log, rate-limited, and reports what was
/// suppressed and what the kernel could not deliver.
pub struct EventLog {
    limiter: RateLimiter<Key, DecisionRecord>,
    names: HashMap<u32, Option<String>>,
    /// Events the kernel counted as lost that have been reported already.
    lost_reported: u64,
    /// Every event read from the ring buffer, logged or suppressed: with
    /// the kernel's lost count it accounts for every decision.
    received: u64,
}

/// Per key: this many records per window, then one summary.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);
/// Distinct keys tracked at once; bounds the agent's memory under a storm.
const MAX_KEYS: usize = 4096;
/// uid → name cache size; cleared when full.
const MAX_NAMES: usize = 4096;

impl Default for EventLog {
    fn default() -> Self {
        Self {
            limiter: RateLimiter::new(WINDOW, BURST, MAX_KEYS),
            names: HashMap::new(),
            lost_reported: 0,
            received: 0,
        }
    }
}

impl EventLog {
    /// Decodes one record from the ring buffer and logs it (or says why it
    /// cannot).
    pub(super) fn record_bytes(
        &mut self,
        bytes: &[u8],
        policies: &Policies,
        resolver: &dyn Resolver,
        now: Instant,
    ) {
        match DecisionRecord::decode(bytes) {
            Ok(d) => match policies.get(d.generation) {
                Some(policy) => self.record(&d, policy, resolver, now),
                None => {
                    self.received += 1;
                    tracing::error!(
                        generation = d.generation,
                        "event from a generation with no policy"
                    );
                }
            },
            Err(e) => {
                self.received += 1;
                tracing::error!(
                    len = bytes.len(),
                    "malformed event from the programs: {}",
                    Chain(&e)
                );
            }
        }
    }

    /// Logs one decision unless rate limiting holds it back.
    pub fn record(
        &mut self,
        d: &DecisionRecord,
        policy: &Policy,
        resolver: &dyn Resolver,
        now: Instant,
    ) {
        self.received += 1;
        let key = Key {
            outcome: d.outcome,
            uid: d.uid,
            pid: d.pid,
            dst: d.dst,
            port: d.port,
        };
        if !self.limiter.admit(key, now, || d.clone()) {
            return;
        }
        let user = self.user_name(d.uid, resolver);
        let why = explain_record(d, policy);
        emit(d, user.as_deref(), &why);
    }

    /// Closes rate-limit windows and reports newly lost events. Call about
    /// once a second with the kernel's lost-events counter.
    pub fn tick(&mut self, now: Instant, events_lost: Option<u64>) {
        let (summaries, overflow) = self.limiter.expire(now);
        for s in summaries {
            let d = &s.sample;
            macro_rules! summary {
                ($level:ident) => {
                    tracing::$level!(
                        event = "suppressed",
                        suppressed = s.count,
                        uid = d.uid,
                        pid = d.pid,
                        comm = %d.comm,
                        dst = %d.dst,
                        port = d.port,
                        "suppressed {} more {} records like the last one (uid {}, pid {}, {}) in {}s",
                        s.count,
                        d.outcome,
                        d.uid,
                        d.pid,
                        SocketAddr::new(d.dst, d.port),
                        WINDOW.as_secs()
                    )
                };
            }
            // At the level of what was suppressed: allowed decisions are
            // debug records, so is the count of those held back.
            if d.outcome == Outcome::Allow {
                summary!(debug);
            } else {
                summary!(warn);
            }
        }
        if overflow > 0 {
            tracing::warn!(
                event = "suppressed",
                suppressed = overflow,
                "suppressed {overflow} decision records: more than {MAX_KEYS} distinct callers in {}s",
                WINDOW.as_secs()
            );
        }
        if let Some(lost) = events_lost
            && lost > self.lost_reported
        {
            let new = lost - self.lost_reported;
            self.lost_reported = lost;
            tracing::warn!(
                event = "lost",
                lost = new,
                lost_total = lost,
                "{new} decision events lost: the ring buffer was full (the decisions were still \
                 enforced and counted)"
            );
        }
    }

    /// Events read from the ring buffer so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn user_name(&mut self, uid: u32, resolver: &dyn Resolver) -> Option<String> {
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names
            .entry(uid)
            .or_insert_with(|| resolver.user_name(uid))
            .clone()
    }
}

fn emit(d: &DecisionRecord, user: Option<&str>, why: &str) {
    let who = match user {
        Some(u) => format!("uid {} ({u})", d.uid),
        None => format!("uid {}", d.uid),
    };
    // `[v6]:port` for IPv6, as a socket address is written.
    let to = SocketAddr::new(d.dst, d.port);
    let what = if d.hook.spec().datagram {
        "datagram"
    } else {
        "connection"
    };
    let verdict = match d.outcome {
        Outcome::Deny => "denied",
        Outcome::Audit => "would deny (audit mode)",
        Outcome::Allow => "allowed",
    };
    let message = format!(
        "{verdict} {what} to {to} by pid {} ({}) {who} gid {}: {why}",
        d.pid, d.comm, d.gid
    );
    macro_rules! record {
        ($level:ident) => {
            tracing::$level!(
                event = d.outcome.as_str(),
                uid = d.uid,
                user = user,
                gid = d.gid,
                pid = d.pid,
                tid = d.tid,
                comm = %d.comm,
                dst = %d.dst,
                port = d.port,
                hook = d.hook.as_str(),
                cgroup_id = d.cgroup_id,
                reason = why,
                "{message}"
            )
        };
    }
    match d.outcome {
        Outcome::Deny | Outcome::Audit => record!(warn),
        Outcome::Allow => record!(debug),
    }
}
