//! The records of judged requests (`kind::REQUEST`, issue 23) the `sk_msg`
//! program sends through the `EVENTS` ring, decoded and typed. As for
//! decisions, a record with a hook, verdict, version or reason this agent
//! does not know is an error, never filed under a name it does know.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imds_guard_common::{
    PATH_MAX, RequestEvent, family, kind, req_hook, req_method, req_reason, req_version, verdict,
};

use super::records::RecordError;
use crate::{policy::Outcome, text::printable};

/// Where a request record comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestHook {
    /// `req_msg` judged a message.
    Request,
    /// `req_sockops` could not put the socket in the sockhash.
    Sockops,
}

impl RequestHook {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Sockops => "sockops",
        }
    }
}

/// What kind of request it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// Not parsed: refused before its head was read whole, or not
    /// canonical.
    Unparsed,
    /// Without the token header.
    V1,
    /// With the token header.
    V2,
    /// `PUT /latest/api/token`.
    TokenPut,
}

impl Version {
    pub fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            req_version::UNPARSED => Self::Unparsed,
            req_version::V1 => Self::V1,
            req_version::V2 => Self::V2,
            req_version::TOKEN_PUT => Self::TokenPut,
            _ => return None,
        })
    }

    /// As records and reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unparsed => "unparsed",
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::TokenPut => "token_put",
        }
    }
}

/// Whether `reason` is a [`req_reason`] this agent knows.
fn known_reason(reason: u8) -> bool {
    matches!(
        reason,
        req_reason::NONE..=req_reason::INCOMPLETE
            | req_reason::NOT_IN_RULES..=req_reason::NOT_IN_SOCKHASH
    )
}

/// One judged request, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Let through (`Allow`) or refused (`Deny`).
    pub outcome: Outcome,
    pub hook: RequestHook,
    /// [`req_reason`]: why refused (or, let through unparsed, why it was
    /// not parsed); `NONE` for a request let through whole.
    pub reason: u8,
    pub version: Version,
    /// `GET`, `HEAD`, `PUT`, or `None` when not read.
    pub method: Option<&'static str>,
    /// `1.0`, `1.1`, or `None` when not read.
    pub http: Option<&'static str>,
    /// The path as the parser read it (up to a refusal), never a header.
    pub path: String,
    /// The matching rule (1-based, file order over every rule set).
    pub rule: Option<u32>,
    /// The rule set (1-based) of the caller's entry.
    pub ruleset: Option<u16>,
    /// The connector, as its socket kept it at connect.
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// The connector's process.
    pub pid: u32,
    /// The sender's process and thread (a forked child or a thread pool
    /// may send on a socket another connected).
    pub sender_pid: u32,
    pub sender_tid: u32,
    /// The policy entry (1-based) that decided at connect; 0 the default.
    pub entry: u32,
    pub generation: u8,
    pub dst: IpAddr,
    pub port: u16,
    /// [`imds_guard_common::ns`] bits of the connector.
    pub namespaces: u8,
}

impl RequestRecord {
    /// Decodes a record from the ring buffer.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < size_of::<RequestEvent>() {
            return Err(RecordError::Short(bytes.len()));
        }
        // SAFETY: the length is checked; `RequestEvent` is plain old data
        // and the ring buffer gives no alignment guarantee.
        let ev: RequestEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_event(&ev)
    }

    pub fn from_event(ev: &RequestEvent) -> Result<Self, RecordError> {
        if ev.kind != kind::REQUEST {
            return Err(RecordError::Kind(ev.kind));
        }
        let hook = match ev.hook {
            req_hook::REQUEST => RequestHook::Request,
            req_hook::SOCKOPS => RequestHook::Sockops,
            other => return Err(RecordError::Hook(other)),
        };
        let outcome = match ev.verdict {
            verdict::ALLOWED => Outcome::Allow,
            verdict::DENIED => Outcome::Deny,
            verdict::AUDITED => Outcome::Audit,
            other => return Err(RecordError::Outcome(other)),
        };
        if !known_reason(ev.reason) {
            return Err(RecordError::Reason(ev.reason));
        }
        let version = Version::from_wire(ev.version).ok_or(RecordError::Version(ev.version))?;
        let dst = if ev.family == family::INET {
            IpAddr::V4(Ipv4Addr::new(
                ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(ev.addr))
        };
        let len = usize::from(ev.path_len.min(PATH_MAX));
        Ok(Self {
            outcome,
            hook,
            reason: ev.reason,
            version,
            method: match ev.method {
                req_method::GET => Some("GET"),
                req_method::HEAD => Some("HEAD"),
                req_method::PUT => Some("PUT"),
                _ => None,
            },
            http: match (version, ev.http_minor) {
                (Version::Unparsed, _) => None,
                (_, 0) => Some("1.0"),
                (_, 1) => Some("1.1"),
                _ => None,
            },
            // The parser keeps only canonical path bytes, but a refused
            // path may hold what it refused (a control byte): printable.
            path: printable(&String::from_utf8_lossy(&ev.path[..len])),
            rule: (ev.rule != 0).then_some(ev.rule),
            ruleset: (ev.ruleset != 0).then_some(ev.ruleset),
            uid: ev.uid,
            gid: ev.gid,
            cgroup_id: ev.cgroup_id,
            pid: ev.tgid,
            sender_pid: ev.sender_tgid,
            sender_tid: ev.tid,
            entry: ev.entry,
            generation: ev.generation,
            dst,
            port: ev.port,
            namespaces: ev.namespaces,
        })
    }

    /// The request line as far as it was read: `GET /latest/meta-data/`.
    pub fn request_line(&self) -> String {
        match (self.method, self.path.is_empty()) {
            (Some(m), false) => format!("{m} {}", self.path),
            (Some(m), true) => m.to_owned(),
            (None, _) => "an unread request".to_owned(),
        }
    }
}

/// The kind byte of a record from the `EVENTS` ring: decisions and
/// requests share it (`Event::kind` and `RequestEvent::kind` are at the
/// same offset).
pub fn record_kind(bytes: &[u8]) -> Option<u8> {
    bytes.get(std::mem::offset_of!(RequestEvent, kind)).copied()
}

#[cfg(test)]
mod tests {
    use imds_guard_common::{Event, ns};

    use super::*;

    pub(crate) fn event(verdict: u8, reason: u8, version: u8, path: &str) -> RequestEvent {
        let mut p = [0u8; PATH_MAX as usize];
        p[..path.len()].copy_from_slice(path.as_bytes());
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[169, 254, 169, 254]);
        RequestEvent {
            ts_ns: 1,
            cgroup_id: 77,
            tid: 4243,
            tgid: 4242,
            uid: 1001,
            gid: 1002,
            entry: 2,
            port: 80,
            hook: req_hook::REQUEST,
            verdict,
            reason,
            family: family::INET,
            generation: 1,
            kind: kind::REQUEST,
            addr,
            method: req_method::GET,
            version,
            http_minor: 1,
            namespaces: ns::CHECKED,
            rule: 0,
            sender_tgid: 4250,
            ruleset: 1,
            path_len: path.len() as u16,
            path: p,
            _pad: [0; 4],
        }
    }

    fn bytes(ev: &RequestEvent) -> Vec<u8> {
        // SAFETY: `RequestEvent` is plain old data without implicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const RequestEvent).cast::<u8>(),
                size_of::<RequestEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_refused_v1_request_with_its_path_and_both_processes() {
        let ev = event(
            verdict::DENIED,
            req_reason::V1_REFUSED,
            req_version::V1,
            "/latest/meta-data/iam/security-credentials/role",
        );
        let r = RequestRecord::decode(&bytes(&ev)).expect("valid");
        assert_eq!(r.outcome, Outcome::Deny);
        assert_eq!(r.hook, RequestHook::Request);
        assert_eq!(r.version, Version::V1);
        assert_eq!(r.reason, req_reason::V1_REFUSED);
        assert_eq!(
            r.request_line(),
            "GET /latest/meta-data/iam/security-credentials/role"
        );
        assert_eq!(r.http, Some("1.1"));
        assert_eq!((r.rule, r.ruleset), (None, Some(1)));
        assert_eq!((r.uid, r.gid, r.cgroup_id), (1001, 1002, 77));
        assert_eq!((r.pid, r.sender_pid, r.sender_tid), (4242, 4250, 4243));
        assert_eq!(r.dst, IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)));
        assert_eq!((r.port, r.entry, r.generation), (80, 2, 1));
        assert_eq!(
            RequestRecord::decode(&bytes(&ev)[..100]),
            Err(RecordError::Short(100))
        );
    }

    #[test]
    fn the_path_stops_at_its_length_and_an_unread_request_has_no_version() {
        let mut ev = event(verdict::ALLOWED, req_reason::NONE, req_version::V2, "/x");
        ev.path[2..6].copy_from_slice(b"/old");
        ev.rule = 3;
        let r = RequestRecord::from_event(&ev).expect("valid");
        assert_eq!((r.path.as_str(), r.rule), ("/x", Some(3)));
        let mut ev = event(
            verdict::DENIED,
            req_reason::TAINTED,
            req_version::UNPARSED,
            "",
        );
        ev.method = 0;
        let r = RequestRecord::from_event(&ev).expect("valid");
        assert_eq!(
            (r.version, r.http, r.method),
            (Version::Unparsed, None, None)
        );
        assert_eq!(r.request_line(), "an unread request");
        // A path longer than the field cannot overrun it.
        ev.path = [b'a'; PATH_MAX as usize];
        ev.path_len = u16::MAX;
        assert_eq!(
            RequestRecord::from_event(&ev).expect("valid").path.len(),
            usize::from(PATH_MAX)
        );
    }

    #[test]
    fn unknown_hooks_verdicts_versions_reasons_and_kinds_are_errors() {
        let ok = event(verdict::ALLOWED, req_reason::NONE, req_version::V2, "/");
        let mut ev = ok;
        ev.hook = 9;
        assert_eq!(RequestRecord::from_event(&ev), Err(RecordError::Hook(9)));
        let mut ev = ok;
        ev.verdict = 0;
        assert_eq!(RequestRecord::from_event(&ev), Err(RecordError::Outcome(0)));
        let mut ev = ok;
        ev.version = 4;
        assert_eq!(RequestRecord::from_event(&ev), Err(RecordError::Version(4)));
        for reason in [31, 63, 78] {
            let mut ev = ok;
            ev.reason = reason;
            assert_eq!(
                RequestRecord::from_event(&ev),
                Err(RecordError::Reason(reason))
            );
        }
        let mut ev = ok;
        ev.kind = kind::DECISION;
        assert_eq!(
            RequestRecord::from_event(&ev),
            Err(RecordError::Kind(kind::DECISION))
        );
    }

    #[test]
    fn the_kind_byte_is_where_both_records_keep_it() {
        assert_eq!(
            std::mem::offset_of!(RequestEvent, kind),
            std::mem::offset_of!(Event, kind)
        );
        let ev = event(verdict::ALLOWED, req_reason::NONE, req_version::V2, "/");
        assert_eq!(record_kind(&bytes(&ev)), Some(kind::REQUEST));
        assert_eq!(record_kind(&[0; 10]), None);
    }
}
