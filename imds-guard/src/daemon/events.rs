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
        RecordReason::NoIdentity => "nobody can be held to account for it (a kernel thread, or a \
             socket no process opened), and the guard fails closed"
            .to_owned(),
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
        let user = d.ids().and_then(|(uid, _)| self.user_name(uid, resolver));
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

/// `denied connection to 169.254.169.254:80 by pid 4242 (curl) uid 1000
/// (alice) gid 1000`: what was decided, and who, in words.
fn describe(d: &DecisionRecord, user: Option<&str>) -> String {
    let verdict = match d.outcome {
        Outcome::Deny => "denied",
        Outcome::Audit => "would deny (audit mode)",
        Outcome::Allow => "allowed",
    };
    let what = match d.proto_name() {
        Some(proto) => format!("{} ({proto})", d.hook.spec().subject.as_str()),
        None => d.hook.spec().subject.as_str().to_owned(),
    };
    // `[v6]:port` for IPv6, as a socket address is written.
    let to = SocketAddr::new(d.dst, d.port);
    let ids = match (d.ids(), user) {
        (None, _) => "with no identity".to_owned(),
        (Some((uid, gid)), Some(u)) => format!("uid {uid} ({u}) gid {gid}"),
        (Some((uid, gid)), None) => format!("uid {uid} gid {gid}"),
    };
    if d.pid == 0 {
        format!("{verdict} {what} to {to} from a socket {ids}")
    } else {
        format!(
            "{verdict} {what} to {to} by pid {} ({}) {ids}",
            d.pid, d.comm
        )
    }
}

fn emit(d: &DecisionRecord, user: Option<&str>, why: &str) {
    let message = format!("{}: {why}", describe(d, user));
    let (uid, gid) = d.ids().unzip();
    let known_pid = (d.pid != 0).then_some(d.pid);
    macro_rules! record {
        ($level:ident) => {
            tracing::$level!(
                event = d.outcome.as_str(),
                uid = uid,
                user = user,
                gid = gid,
                pid = known_pid,
                tid = known_pid.map(|_| d.tid),
                comm = known_pid.map(|_| d.comm.as_str()),
                dst = %d.dst,
                port = d.port,
                proto = d.proto_name(),
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
