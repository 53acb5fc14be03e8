//! Turning what the kernel reports into log records that explain
//! themselves: who, what destination, which verdict, and the policy entry
//! (with its position in the file) or the default that decided. Decisions
//! come from the programs' ring buffer; forwarded packets the forward path
//! dropped from the forward program's ring buffer or from NFLOG
//! (`forward.rs`, `nflog.rs`).
//!
//! Repeated records are rate-limited per caller (uid, the user whose user
//! namespaces it runs in, or interface and source address for forwarded
//! packets) and destination, so that one caller cannot hide another: not
//! by changing ports or pids (neither is in the key), not by running as the
//! 65,536 subordinate ids of its user namespaces (all count as the user who
//! created the outermost one: one key, whatever the ids inside), and not
//! by filling the table of keys (what does not fit is still counted per
//! caller in the overflow summary). What the kernel could not deliver is
//! reported.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use imds_guard_common::kind;

use super::{
    nflog::Logged,
    policies::Policies,
    ratelimit::{Admit, RateLimiter, Suppressed},
};
use crate::{
    chain::Chain,
    kernel::{
        programs::Hook,
        records::{DecisionRecord, RecordReason, proto_name},
        request_records::record_kind,
    },
    policy::{Context, Mode, Outcome, Policy, Reason, Resolver, explain_with},
    text::printable,
};

/// Why `d` came out as it did, in words, citing the policy.
pub fn explain_record(d: &DecisionRecord, policy: &Policy) -> String {
    match d.reason {
        RecordReason::Policy(reason) => explain_with(
            policy,
            reason,
            d.entry_index(),
            &Context {
                uid: d.uid,
                gid: d.gid,
                id: d.decider,
                place: d.place(),
                groups: d.groups,
                not_host: d.not_host(),
                host_unknown: d.host_unknown(),
                owner: d.owner,
            },
        ),
        RecordReason::Unreadable => "the guard could not read the caller's groups or user \
             namespaces, and fails closed"
            .to_owned(),
        RecordReason::InternalError => {
            "the guard could not read its configuration, and fails closed".to_owned()
        }
        RecordReason::NoIdentity => "nobody can be held to account for it (a kernel thread, or a \
             socket no process opened), and the guard fails closed"
            .to_owned(),
    }
}

/// Why a forwarded packet was dropped.
const FORWARD_REASON: &str = "forwarded packets to protected addresses are dropped: they have no \
     local socket whose owner the policy could judge (a container's or a VM's own network \
     namespace, a TUN device, an AF_PACKET frame); [forward] lets named sources through";

/// Whom a record is about, for rate limiting and overflow accounting.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Who {
    /// A caller in the initial user namespace, by its uid.
    Uid(u32),
    /// A caller in a user namespace, by the creator of the outermost one
    /// (`Event::userns_owner`): the user it acts for, whichever of its
    /// subordinate ids it runs as. Apart from [`Who::Uid`] of that user,
    /// so that what runs in its namespaces cannot use up the records of
    /// what it does itself.
    Namespaced(u32),
    /// No identity could be established.
    Nobody,
    /// A forwarded packet's source address.
    Source(IpAddr),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "uid {uid}"),
            Self::Namespaced(owner) => write!(f, "the user namespaces of uid {owner}"),
            Self::Nobody => f.write_str("no identity"),
            Self::Source(ip) => write!(f, "forwarded from {ip}"),
        }
    }
}

/// What counts as "the same record" for rate limiting: neither the port
/// nor the pid, which a caller can vary at will.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    outcome: Outcome,
    who: Who,
    dst: IpAddr,
    /// For a forwarded packet, the interface it came in on: a flood from
    /// one container spends that container's budget, not another's.
    interface: Option<String>,
    /// A record of a judged request (`request.rs`): a budget apart from
    /// the same caller's decisions, so that its requests cannot hide them.
    request: bool,
}

/// What a summary of suppressed records shows.
#[derive(Clone, Debug)]
struct Sample {
    outcome: Outcome,
    who: Who,
    dst: SocketAddr,
    /// The first process of the window (pid, comm), for decisions.
    process: Option<(u32, String)>,
    /// The interface, for forwarded packets.
    interface: Option<String>,
}

/// A forwarded packet the forward table dropped (or would have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardRecord {
    pub outcome: Outcome,
    pub packet: Logged,
}

/// Writes decisions to the log, rate-limited, and reports what was
/// suppressed and what the kernel could not deliver.
pub struct EventLog {
    limiter: RateLimiter<Key, Sample>,
    /// Records beyond the tracked keys, by caller (bounded; the rest in
    /// `overflow_others`).
    overflow: HashMap<Who, u64>,
    overflow_others: u64,
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
/// Callers named in an overflow summary; the others are counted together.
const MAX_OVERFLOW_CALLERS: usize = 64;
/// uid → name cache size; cleared when full.
const MAX_NAMES: usize = 4096;

impl Default for EventLog {
    fn default() -> Self {
        Self {
            limiter: RateLimiter::new(WINDOW, BURST, MAX_KEYS),
            overflow: HashMap::new(),
            overflow_others: 0,
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
        places: &dyn Fn(u64) -> Option<CgroupPlace>,
        now: Instant,
    ) {
        if record_kind(bytes) == Some(kind::REQUEST) {
            self.request_bytes(bytes, policies, resolver, places, now);
            return;
        }
        match DecisionRecord::decode(bytes) {
            Ok(d) => match policies.get(d.generation) {
                Some(policy) => self.record_in(&d, &policy, resolver, places, now),
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
    #[cfg(test)]
    pub fn record(
        &mut self,
        d: &DecisionRecord,
        policy: &Policy,
        resolver: &dyn Resolver,
        now: Instant,
    ) {
        self.record_in(d, policy, resolver, &|_| None, now);
    }

    /// Logs one decision unless rate limiting holds it back, naming the
    /// caller's cgroup (and pod) as `places` knows it.
    pub fn record_in(
        &mut self,
        d: &DecisionRecord,
        policy: &Policy,
        resolver: &dyn Resolver,
        places: &dyn Fn(u64) -> Option<CgroupPlace>,
        now: Instant,
    ) {
        self.received += 1;
        let who = match (d.ids(), d.userns_owner) {
            (None, _) => Who::Nobody,
            (Some(_), Some(owner)) => Who::Namespaced(owner),
            (Some((uid, _)), None) => Who::Uid(uid),
        };
        let sample = || Sample {
            outcome: d.outcome,
            who,
            dst: SocketAddr::new(d.dst, d.port),
            process: (d.pid != 0).then(|| (d.pid, d.comm.clone())),
            interface: None,
        };
        if !self.admit(d.outcome, who, d.dst, None, now, sample) {
            return;
        }
        let user = d.ids().and_then(|(uid, _)| self.user_name(uid, resolver));
        let why = explain_record(d, policy);
        let place = places(d.cgroup_id);
        emit(d, user.as_deref(), place.as_ref(), &why);
    }

    /// Logs one forwarded packet the forward table dropped, under a policy
    /// in `mode`, unless rate limiting holds it back.
    pub fn record_forward(&mut self, packet: &Logged, mode: Mode, now: Instant) {
        let outcome = match mode {
            Mode::Enforce => Outcome::Deny,
            Mode::Audit => Outcome::Audit,
        };
        let who = Who::Source(packet.src);
        let sample = || Sample {
            outcome,
            who,
            dst: SocketAddr::new(packet.dst, packet.port),
            process: None,
            interface: Some(packet.interface.clone()),
        };
        let interface = Some(packet.interface.clone());
        if self.admit(outcome, who, packet.dst, interface, now, sample) {
            emit_forward(&ForwardRecord {
                outcome,
                packet: packet.clone(),
            });
        }
    }

    /// Whether a record may be logged now; counts it otherwise.
    fn admit(
        &mut self,
        outcome: Outcome,
        who: Who,
        dst: IpAddr,
        interface: Option<String>,
        now: Instant,
        sample: impl FnOnce() -> Sample,
    ) -> bool {
        let key = Key {
            outcome,
            who,
            dst,
            interface,
            request: false,
        };
        self.admit_key(key, who, now, sample)
    }

    /// Whether a record under `key` may be logged now; counts it otherwise.
    fn admit_key(
        &mut self,
        key: Key,
        who: Who,
        now: Instant,
        sample: impl FnOnce() -> Sample,
    ) -> bool {
        match self.limiter.admit(key, now, sample) {
            Admit::Log => true,
            Admit::Suppressed => false,
            Admit::Overflow => {
                let len = self.overflow.len();
                match self.overflow.get_mut(&who) {
                    Some(n) => *n += 1,
                    None if len < MAX_OVERFLOW_CALLERS => {
                        self.overflow.insert(who, 1);
                    }
                    None => self.overflow_others += 1,
                }
                false
            }
        }
    }

    /// Closes rate-limit windows and reports newly lost events. Call about
    /// once a second with the kernel's lost-events counter.
    pub fn tick(&mut self, now: Instant, events_lost: Option<u64>) {
        let (summaries, overflow) = self.limiter.expire(now);
        for s in summaries {
            summarize(&s);
        }
        if overflow > 0 {
            self.report_overflow(overflow);
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

    /// Says how many records did not fit the tracked keys, and whose.
    fn report_overflow(&mut self, overflow: u64) {
        let mut callers: Vec<(Who, u64)> = self.overflow.drain().collect();
        callers.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        let mut by = callers
            .iter()
            .map(|(who, n)| format!("{who}: {n}"))
            .collect::<Vec<_>>();
        let others = std::mem::take(&mut self.overflow_others);
        if others > 0 {
            by.push(format!("others: {others}"));
        }
        tracing::warn!(
            event = "suppressed",
            suppressed = overflow,
            callers = %by.join(", "),
            "suppressed {overflow} decision records: more than {MAX_KEYS} distinct callers and \
             destinations in {}s ({})",
            WINDOW.as_secs(),
            by.join(", ")
        );
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
            .or_insert_with(|| resolver.user_name(uid).map(|n| printable(&n)))
            .clone()
    }
}

/// One summary of what a key's window suppressed, at the level of what was
/// suppressed (allowed decisions are debug records, so is their count).
fn summarize(s: &Suppressed<Sample>) {
    let d = &s.sample;
    let (uid, userns_owner, src) = match d.who {
        Who::Uid(uid) => (Some(uid), None, None),
        Who::Namespaced(owner) => (None, Some(owner), None),
        Who::Source(ip) => (None, None, Some(ip)),
        Who::Nobody => (None, None, None),
    };
    let (pid, comm) = d.process.clone().unzip();
    let detail = match (&d.process, &d.interface) {
        (Some((pid, comm)), _) => format!(", pid {pid} ({comm})"),
        (None, Some(interface)) => format!(", on {interface}"),
        (None, None) => String::new(),
    };
    macro_rules! summary {
        ($level:ident) => {
            tracing::$level!(
                event = "suppressed",
                suppressed = s.count,
                outcome = d.outcome.as_str(),
                uid = uid,
                userns_owner = userns_owner,
                src = src.map(|ip| ip.to_string()),
                pid = pid,
                comm = comm.as_deref(),
                interface = d.interface.as_deref(),
                dst = %d.dst.ip(),
                port = d.dst.port(),
                "suppressed {} more {} records like these ({}{detail}, to {}) in {}s",
                s.count,
                d.outcome,
                d.who,
                d.dst,
                WINDOW.as_secs()
            )
        };
    }
    if d.outcome == Outcome::Allow {
        summary!(debug);
    } else {
        summary!(warn);
    }
}

/// `denied connection to 169.254.169.254:80 by pid 4242 (curl) uid 1000
/// (alice) gid 1000`: what was decided, and who, in words.
fn describe(d: &DecisionRecord, user: Option<&str>) -> String {
    let what = match d.proto_name() {
        Some(proto) => format!("{} ({proto})", d.hook.subject().as_str()),
        None => d.hook.subject().as_str().to_owned(),
    };
    // `[v6]:port` for IPv6, as a socket address is written.
    let to = SocketAddr::new(d.dst, d.port);
    let ids = match (d.ids(), user) {
        (None, _) => "with no identity".to_owned(),
        (Some((uid, gid)), Some(u)) => format!("uid {uid} ({u}) gid {gid}"),
        (Some((uid, gid)), None) => format!("uid {uid} gid {gid}"),
    };
    let verdict = verdict_words(d.outcome);
    let revoked = if d.revoked {
        ", on a connection an earlier policy let through (revoked)"
    } else {
        ""
    };
    if d.pid == 0 {
        format!("{verdict} {what} to {to} from a socket {ids}{revoked}")
    } else {
        format!(
            "{verdict} {what} to {to} by pid {} ({}) {ids}{revoked}",
            d.pid, d.comm
        )
    }
}

fn verdict_words(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Deny => "denied",
        Outcome::Audit => "would deny (audit mode)",
        Outcome::Allow => "allowed",
    }
}

/// Where a caller's cgroup is, for records: its path from the cgroup v2
/// root, and the pod it belongs to when the kubelet lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupPlace {
    pub path: String,
    pub pod: Option<String>,
}

/// ` in cgroup PATH (pod NS/NAME)`, or nothing when the cgroup is unknown.
fn place_words(place: Option<&CgroupPlace>) -> String {
    match place {
        Some(CgroupPlace {
            path,
            pod: Some(pod),
        }) => format!(" in cgroup {path} (pod {pod})"),
        Some(place) => format!(" in cgroup {}", place.path),
        None => String::new(),
    }
}

fn emit(d: &DecisionRecord, user: Option<&str>, place: Option<&CgroupPlace>, why: &str) {
    let at = place_words(place);
    let message = format!("{}{at}: {why}", describe(d, user));
    let cgroup = place.map(|p| p.path.as_str());
    let pod = place.and_then(|p| p.pod.as_deref());
    let (uid, gid) = d.ids().unzip();
    let known_pid = (d.pid != 0).then_some(d.pid);
    // Only `egress` judges packets of sockets let through before: the
    // field is there for its records, true or false.
    let revoked = (d.hook == Hook::Egress).then_some(d.revoked);
    // The supplementary group, or the user namespace's creator (and the
    // group it was refused for), that counted.
    let (group, owner) = match d.reason {
        RecordReason::Policy(Reason::GroupDenied | Reason::GroupAllowed) => (d.decider, None),
        RecordReason::Policy(Reason::HostOnly) if d.decider != Some(d.uid) => (d.decider, None),
        RecordReason::Policy(Reason::OwnerDenied) => (None, d.decider),
        RecordReason::Policy(Reason::OwnerGidDenied | Reason::OwnerMemberDenied) => {
            (d.decider, d.owner)
        }
        _ => (None, None),
    };
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
                revoked = revoked,
                cgroup_id = d.cgroup_id,
                place = d.place_name(),
                groups = d.groups,
                group = group,
                owner = owner,
                userns_owner = d.userns_owner,
                cgroup = cgroup,
                pod = pod,
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

fn emit_forward(r: &ForwardRecord) {
    let p = &r.packet;
    let proto = proto_name(p.proto);
    let what = proto.as_ref().map_or_else(
        || "forwarded packet".to_owned(),
        |proto| format!("forwarded packet ({proto})"),
    );
    let message = format!(
        "{} {what} from {} on {} to {}: {FORWARD_REASON}",
        verdict_words(r.outcome),
        p.src,
        p.interface,
        SocketAddr::new(p.dst, p.port)
    );
    tracing::warn!(
        event = r.outcome.as_str(),
        src = %p.src,
        interface = %p.interface,
        dst = %p.dst,
        port = p.port,
        proto = proto,
        hook = "forward",
        reason = FORWARD_REASON,
        "{message}"
    );
}

mod request;
#[cfg(test)]
mod tests;
