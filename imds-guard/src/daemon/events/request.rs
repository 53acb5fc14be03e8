//! Records of judged requests (issue 23): who sent which request to a
//! protected address, what kind (IMDSv1, IMDSv2, the token `PUT`), the
//! rule that let it through (as the policy writes it) or why it was
//! refused. Rate-limited per caller and destination as decisions are,
//! with a budget of their own. Never a header value: the programs keep
//! only the path.

use std::{net::SocketAddr, time::Instant};

use imds_guard_common::req_reason;

use super::{CgroupPlace, EventLog, Key, Policies, Sample, Who, place_words};
use crate::{
    chain::Chain,
    kernel::request_records::{RequestHook, RequestRecord, Version},
    policy::{Outcome, Policy, Resolver, requests::reason_text},
};

impl EventLog {
    /// Decodes one request record from the ring buffer and logs it (or
    /// says why it cannot).
    pub(super) fn request_bytes(
        &mut self,
        bytes: &[u8],
        policies: &Policies,
        resolver: &dyn Resolver,
        places: &dyn Fn(u64) -> Option<CgroupPlace>,
        now: Instant,
    ) {
        self.received += 1;
        match RequestRecord::decode(bytes) {
            Ok(r) => {
                let policy = policies.get(r.generation);
                self.record_request(&r, policy.as_deref(), resolver, places, now);
            }
            Err(e) => tracing::error!(
                len = bytes.len(),
                "malformed request record from the programs: {}",
                Chain(&e)
            ),
        }
    }

    /// Logs one request unless rate limiting holds it back.
    pub fn record_request(
        &mut self,
        r: &RequestRecord,
        policy: Option<&Policy>,
        resolver: &dyn Resolver,
        places: &dyn Fn(u64) -> Option<CgroupPlace>,
        now: Instant,
    ) {
        let who = Who::Uid(r.uid);
        let key = Key {
            outcome: r.outcome,
            who,
            dst: r.dst,
            interface: None,
            request: true,
        };
        let sample = || Sample {
            outcome: r.outcome,
            who,
            dst: SocketAddr::new(r.dst, r.port),
            process: None,
            interface: None,
        };
        if !self.admit_key(key, who, now, sample) {
            return;
        }
        let user = self.user_name(r.uid, resolver);
        let place = places(r.cgroup_id);
        emit_request(r, policy, user.as_deref(), place.as_ref());
    }
}

/// The rule (as written) and its table, when the record names one.
pub fn rule_text(policy: Option<&Policy>, r: &RequestRecord) -> (Option<String>, Option<String>) {
    let Some(requests) = policy.map(|p| &p.spec.requests) else {
        return (None, None);
    };
    let table = r
        .ruleset
        .and_then(|n| requests.sets.get(usize::from(n).checked_sub(1)?))
        .map(|set| format!("requests.{}", set.name));
    let rule = r.rule.and_then(|n| {
        requests
            .sets
            .iter()
            .flat_map(|s| &s.rules)
            .find(|rule| rule.number == n)
            .map(|rule| rule.text())
    });
    (rule, table)
}

/// Why a request came out as it did, in words.
pub fn request_reason(r: &RequestRecord, rule: Option<&str>, table: Option<&str>) -> String {
    match (r.outcome, rule, table) {
        (Outcome::Deny | Outcome::Audit, ..) => reason_text(r.reason).to_owned(),
        (Outcome::Allow, Some(rule), Some(table)) => format!("[{table}] allows \"{rule}\""),
        (Outcome::Allow, ..) if r.version == Version::Unparsed => format!(
            "the caller is allowed the whole service; recorded ([attribution] whole_service), \
             not parsed: {}",
            reason_text(r.reason)
        ),
        (Outcome::Allow, ..) if r.reason == req_reason::NONE && table.is_none() => {
            "the caller is allowed the whole service".to_owned()
        }
        (Outcome::Allow, ..) => "allowed".to_owned(),
    }
}

fn emit_request(
    r: &RequestRecord,
    policy: Option<&Policy>,
    user: Option<&str>,
    place: Option<&CgroupPlace>,
) {
    let (rule, table) = rule_text(policy, r);
    let why = request_reason(r, rule.as_deref(), table.as_deref());
    let at = place_words(place);
    let ids = match user {
        Some(u) => format!("uid {} ({u}) gid {}", r.uid, r.gid),
        None => format!("uid {} gid {}", r.uid, r.gid),
    };
    let verdict = match r.outcome {
        Outcome::Deny => "refused",
        Outcome::Audit => "would refuse (audit mode)",
        Outcome::Allow => "allowed",
    };
    let to = SocketAddr::new(r.dst, r.port);
    let message = match r.hook {
        RequestHook::Request => format!(
            "{verdict} {} request {} to {to} by pid {} {ids}{at}: {why}",
            r.version.as_str(),
            r.request_line(),
            r.sender_pid
        ),
        // Nothing was sent yet: the connection cannot send anything.
        RequestHook::Sockops => format!(
            "{verdict} every request on a connection to {to} of pid {} {ids}{at}: it could not \
             be judged ({why}), so nothing it sends leaves",
            r.pid
        ),
    };
    let cgroup = place.map(|p| p.path.as_str());
    let pod = place.and_then(|p| p.pod.as_deref());
    macro_rules! record {
        ($level:ident) => {
            tracing::$level!(
                event = r.outcome.as_str(),
                hook = r.hook.as_str(),
                uid = r.uid,
                user = user,
                gid = r.gid,
                pid = (r.sender_pid != 0).then_some(r.sender_pid),
                tid = (r.sender_tid != 0).then_some(r.sender_tid),
                connector_pid = r.pid,
                dst = %r.dst,
                port = r.port,
                method = r.method,
                path = r.path.as_str(),
                version = r.version.as_str(),
                http = r.http,
                rule = rule.as_deref(),
                table = table.as_deref(),
                entry = r.entry,
                cgroup_id = r.cgroup_id,
                cgroup = cgroup,
                pod = pod,
                reason = why.as_str(),
                "{message}"
            )
        };
    }
    match r.outcome {
        Outcome::Deny | Outcome::Audit => record!(warn),
        Outcome::Allow => record!(info),
    }
}
