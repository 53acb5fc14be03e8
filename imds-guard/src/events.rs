//! Turning the programs' decision events into log records that explain
//! themselves: who, what destination, which verdict, and the policy entry
//! (with its position in the file) or the default that decided.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use imds_guard_common::{Event, family, hook, reason, verdict};

use crate::{
    policy::{Action, Identity, Policy, Resolver},
    ratelimit::RateLimiter,
};

/// One decision, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `allow`, `deny` or `audit` (a would-deny let through).
    pub event: &'static str,
    pub uid: u32,
    pub gid: u32,
    /// The process (thread-group) id.
    pub pid: u32,
    /// The thread id.
    pub tid: u32,
    pub comm: String,
    pub dst: IpAddr,
    pub port: u16,
    pub hook: &'static str,
    pub cgroup_id: u64,
    pub reason: u8,
    /// Policy entry index plus one; 0 for none.
    pub rule: u32,
    /// The policy generation that decided (see `guard.rs`).
    pub generation: u8,
}

impl Decision {
    /// Decodes an event from the ring buffer; `None` if it is too short.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Event>() {
            return None;
        }
        // SAFETY: the length is checked; `Event` is plain old data and the
        // ring buffer gives no alignment guarantee, hence read_unaligned.
        let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some(Self::from_event(&ev))
    }

    pub fn from_event(ev: &Event) -> Self {
        let dst = if ev.family == family::INET {
            IpAddr::V4(Ipv4Addr::new(
                ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(ev.addr))
        };
        let comm_len = ev
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ev.comm.len());
        Self {
            event: match ev.verdict {
                verdict::ALLOWED => "allow",
                verdict::AUDITED => "audit",
                _ => "deny",
            },
            uid: ev.uid,
            gid: ev.gid,
            pid: ev.tgid,
            tid: ev.pid,
            comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
            dst,
            port: ev.port,
            hook: match ev.hook {
                hook::CONNECT4 => "connect4",
                hook::CONNECT6 => "connect6",
                hook::SENDMSG4 => "sendmsg4",
                _ => "sendmsg6",
            },
            cgroup_id: ev.cgroup_id,
            reason: ev.reason,
            rule: ev.rule,
            generation: ev.generation,
        }
    }

    /// Why the decision came out as it did, in words, citing the policy.
    pub fn explain(&self, policy: &Policy) -> String {
        explain(policy, self.reason, self.rule, self.uid, self.gid)
    }
}

/// Why a decision with `reason` and `rule` (policy entry index plus one, 0
/// for none) came out as it did for `uid`/`gid`, citing the policy entry
/// and its position in the file.
pub fn explain(policy: &Policy, reason: u8, rule: u32, uid: u32, gid: u32) -> String {
    let entry = (rule as usize)
        .checked_sub(1)
        .and_then(|i| policy.spec.entries.get(i));
    let cite = |what: &str| match entry {
        Some(e) => format!(
            "{what} by {} at {}:{}:{}",
            describe(&e.action, &e.identity),
            policy.spec.path.display(),
            e.at.line,
            e.at.col
        ),
        None => format!("{what} by a policy entry"),
    };
    match reason {
        reason::UID_DENIED => cite(&format!("uid {uid} is denied")),
        reason::GID_DENIED => cite(&format!("gid {gid} is denied")),
        reason::UID_ALLOWED => cite(&format!("uid {uid} is allowed")),
        reason::GID_ALLOWED => cite(&format!("gid {gid} is allowed")),
        reason::DEFAULT => match policy.default_action {
            Action::Deny => format!(
                "neither uid {uid} nor gid {gid} is in [allow], and the policy denies everyone else"
            ),
            Action::Allow => format!(
                "neither uid {uid} nor gid {gid} is in [deny], and the policy allows everyone else"
            ),
        },
        reason::INTERNAL_ERROR => {
            "the guard could not read its configuration, and fails closed".to_owned()
        }
        other => format!("unknown reason {other}"),
    }
}

/// `[deny] users "apache"`.
fn describe(action: &Action, identity: &Identity) -> String {
    let table = match action {
        Action::Allow => "[allow]",
        Action::Deny => "[deny]",
    };
    match identity {
        Identity::User(n) => format!("{table} users \"{n}\""),
        Identity::Uid(n) => format!("{table} uids {n}"),
        Identity::Group(n) => format!("{table} groups \"{n}\""),
        Identity::Gid(n) => format!("{table} gids {n}"),
    }
}

/// What counts as "the same record" for rate limiting.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    event: &'static str,
    uid: u32,
    pid: u32,
    dst: IpAddr,
    port: u16,
}

/// Writes decisions to the log, rate-limited, and reports what was
/// suppressed and what the kernel could not deliver.
pub struct EventLog {
    limiter: RateLimiter<Key, Decision>,
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
    /// Logs one decision unless rate limiting holds it back.
    pub fn record(&mut self, d: &Decision, policy: &Policy, resolver: &dyn Resolver, now: Instant) {
        self.received += 1;
        let key = Key {
            event: d.event,
            uid: d.uid,
            pid: d.pid,
            dst: d.dst,
            port: d.port,
        };
        if !self.limiter.admit(key, now, || d.clone()) {
            return;
        }
        let user = self.user_name(d.uid, resolver);
        let why = d.explain(policy);
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
                        d.event,
                        d.uid,
                        d.pid,
                        SocketAddr::new(d.dst, d.port),
                        WINDOW.as_secs()
                    )
                };
            }
            // At the level of what was suppressed: allowed decisions are
            // debug records, so is the count of those held back.
            if d.event == "allow" {
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

fn emit(d: &Decision, user: Option<&str>, why: &str) {
    let who = match user {
        Some(u) => format!("uid {} ({u})", d.uid),
        None => format!("uid {}", d.uid),
    };
    // `[v6]:port` for IPv6, as a socket address is written.
    let to = SocketAddr::new(d.dst, d.port);
    let what = if d.hook.starts_with("sendmsg") {
        "datagram"
    } else {
        "connection"
    };
    let verdict = match d.event {
        "deny" => "denied",
        "audit" => "would deny (audit mode)",
        _ => "allowed",
    };
    let message = format!(
        "{verdict} {what} to {to} by pid {} ({}) {who} gid {}: {why}",
        d.pid, d.comm, d.gid
    );
    macro_rules! record {
        ($level:ident) => {
            tracing::$level!(
                event = d.event,
                uid = d.uid,
                user = user,
                gid = d.gid,
                pid = d.pid,
                tid = d.tid,
                comm = %d.comm,
                dst = %d.dst,
                port = d.port,
                hook = d.hook,
                cgroup_id = d.cgroup_id,
                reason = why,
                "{message}"
            )
        };
    }
    match d.event {
        "deny" | "audit" => record!(warn),
        _ => record!(debug),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use imds_guard_common::COMM_LEN;

    use super::*;
    use crate::policy::{FakeResolver, PolicySpec};

    fn event(verdict: u8, reason: u8, rule: u32, family: u8, addr: [u8; 16]) -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        Event {
            ts_ns: 1,
            cgroup_id: 77,
            pid: 4243,
            tgid: 4242,
            uid: 1000,
            gid: 1001,
            rule,
            port: 80,
            hook: hook::CONNECT6,
            verdict,
            reason,
            family,
            generation: 0,
            _pad0: 0,
            addr,
            comm,
            _pad1: [0; 4],
        }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain old data without implicit padding.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    fn policy() -> Policy {
        PolicySpec::parse(
            Path::new("/etc/imds-guard/policy.toml"),
            "[allow]\nuids = [0]\n[deny]\nusers = [\"apache\"]\n",
        )
        .expect("valid")
        .resolve(&FakeResolver::new(&[("apache", 48)], &[]))
        .expect("resolves")
    }

    #[test]
    fn decodes_every_field_and_the_mapped_address() {
        let mapped: Ipv6Addr = "::ffff:169.254.169.254".parse().expect("addr");
        let ev = event(
            verdict::DENIED,
            reason::DEFAULT,
            0,
            family::INET6,
            mapped.octets(),
        );
        let d = Decision::decode(&bytes(&ev)).expect("long enough");
        assert_eq!(d.event, "deny");
        assert_eq!((d.uid, d.gid, d.pid, d.tid), (1000, 1001, 4242, 4243));
        assert_eq!(d.comm, "curl");
        assert_eq!(d.dst, IpAddr::V6(mapped));
        assert_eq!((d.port, d.hook, d.cgroup_id), (80, "connect6", 77));
        assert!(
            Decision::decode(&bytes(&ev)[..79]).is_none(),
            "short events are refused"
        );
    }

    #[test]
    fn decodes_ipv4_and_audit() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[169, 254, 169, 254]);
        let d = Decision::from_event(&event(
            verdict::AUDITED,
            reason::DEFAULT,
            0,
            family::INET,
            addr,
        ));
        assert_eq!(d.event, "audit");
        assert_eq!(d.dst, IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)));
    }

    #[test]
    fn explains_by_citing_the_entry_and_its_position() {
        let p = policy();
        let d = Decision::from_event(&event(
            verdict::DENIED,
            reason::UID_DENIED,
            2,
            family::INET,
            [0; 16],
        ));
        assert_eq!(
            d.explain(&p),
            "uid 1000 is denied by [deny] users \"apache\" at /etc/imds-guard/policy.toml:4:10"
        );
        let d = Decision::from_event(&event(
            verdict::ALLOWED,
            reason::UID_ALLOWED,
            1,
            family::INET,
            [0; 16],
        ));
        assert_eq!(
            d.explain(&p),
            "uid 1000 is allowed by [allow] uids 0 at /etc/imds-guard/policy.toml:2:9"
        );
        let d = Decision::from_event(&event(
            verdict::DENIED,
            reason::DEFAULT,
            0,
            family::INET,
            [0; 16],
        ));
        assert_eq!(
            d.explain(&p),
            "neither uid 1000 nor gid 1001 is in [allow], and the policy denies everyone else"
        );
        let d = Decision::from_event(&event(
            verdict::DENIED,
            reason::INTERNAL_ERROR,
            0,
            family::INET,
            [0; 16],
        ));
        assert_eq!(
            d.explain(&p),
            "the guard could not read its configuration, and fails closed"
        );
    }
}
