//! The agent's decision records read back: one JSON object per line,
//! either the agent's own `--log-format json` output (lower-case fields,
//! flat or under `fields`, an RFC 3339 `timestamp`) or `journalctl -o
//! json` (upper-case fields, every value a string, `__REALTIME_TIMESTAMP`
//! in microseconds). Both become [`Decision`]s.
//!
//! The rate limiter's summaries (`event=suppressed` with an `outcome`)
//! are added to the logged record they summarise: the latest one of the
//! same verdict, caller and destination (and process, when they name it)
//! before the summary, since a summary's sample is the first record of
//! its window, which was logged. A summary with no such record (the
//! period began inside its window) stands as a decision of its own with
//! nothing logged. Summaries of records past the tracked keys (no
//! `outcome`, a `callers` list) and lost events are counted as they are.

use std::{
    collections::HashMap,
    io::BufRead,
    net::{IpAddr, SocketAddr},
};

use serde_json::{Map, Value};

use super::{LearnError, time::Micros};
use crate::policy::Outcome;

/// One decision record, with the records of its kind the rate limiter
/// suppressed after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub at: Option<Micros>,
    /// `Deny`, `Audit` or `Allow`; `None` is never kept.
    pub outcome: Option<Outcome>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub dst: Option<IpAddr>,
    pub port: Option<u16>,
    pub hook: Option<String>,
    /// `host` or `container`, as the record says.
    pub place: Option<String>,
    pub cgroup: Option<String>,
    pub pod: Option<String>,
    pub userns_owner: Option<u32>,
    /// A forwarded packet's source and interface.
    pub src: Option<IpAddr>,
    pub interface: Option<String>,
    /// Refused by a `[deny]` entry (its `reason` cites one): deny wins
    /// over allow, so no allow entry would let it through.
    pub by_deny: bool,
    /// 1 for a logged record, 0 for a summary that stands alone.
    pub logged: u64,
    /// Records like it the rate limiter suppressed.
    pub suppressed: u64,
}

impl Decision {
    /// Records this one stands for: itself and those suppressed after it.
    pub fn count(&self) -> u64 {
        self.logged + self.suppressed
    }

    /// `169.254.169.254:80`, `[fd00:ec2::254]:80`, or what is known of it.
    pub fn destination(&self) -> String {
        match (self.dst, self.port) {
            (Some(ip), Some(port)) => SocketAddr::new(ip, port).to_string(),
            (Some(ip), None) => ip.to_string(),
            (None, _) => "unknown".to_owned(),
        }
    }

    /// Whether the caller ran on the host (its namespaces the agent's).
    pub fn on_host(&self) -> bool {
        self.place.as_deref() == Some("host")
    }
}

/// What a period of records holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    pub decisions: Vec<Decision>,
    /// Decisions the kernel could not deliver (`event=lost`).
    pub lost: u64,
    /// Records suppressed past the tracked callers, and whose they were.
    pub overflow: u64,
    pub overflow_callers: Vec<String>,
    /// Lines that are not JSON objects (a text log, a truncated line).
    pub skipped: u64,
    pub first: Option<Micros>,
    pub last: Option<Micros>,
}

/// A record's fields by lower-case name, whichever source wrote it.
struct Fields(Map<String, Value>);

impl Fields {
    fn new(object: Map<String, Value>) -> Self {
        let mut flat = Map::new();
        for (key, value) in object {
            match (key.as_str(), value) {
                ("fields", Value::Object(inner)) => {
                    flat.extend(inner.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
                }
                (_, value) => {
                    flat.insert(key.to_ascii_lowercase(), value);
                }
            }
        }
        Self(flat)
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    fn string(&self, name: &str) -> Option<String> {
        self.str(name).map(str::to_owned)
    }

    fn u64(&self, name: &str) -> Option<u64> {
        match self.0.get(name)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    fn u32(&self, name: &str) -> Option<u32> {
        self.u64(name).and_then(|n| u32::try_from(n).ok())
    }

    fn ip(&self, name: &str) -> Option<IpAddr> {
        self.str(name).and_then(|s| s.parse().ok())
    }

    /// The journal's receive time, or the JSON log's timestamp.
    fn at(&self) -> Option<Micros> {
        self.u64("__realtime_timestamp")
            .and_then(|us| i64::try_from(us).ok())
            .or_else(|| self.str("timestamp").and_then(super::time::parse_rfc3339))
    }
}

fn outcome(text: &str) -> Option<Outcome> {
    match text {
        "deny" => Some(Outcome::Deny),
        "audit" => Some(Outcome::Audit),
        "allow" => Some(Outcome::Allow),
        _ => None,
    }
}

fn decision(f: &Fields, outcome: Outcome, at: Option<Micros>, logged: u64) -> Decision {
    Decision {
        at,
        outcome: Some(outcome),
        uid: f.u32("uid"),
        user: f.string("user"),
        gid: f.u32("gid"),
        pid: f.u32("pid"),
        comm: f.string("comm"),
        dst: f.ip("dst"),
        port: f.u64("port").and_then(|p| u16::try_from(p).ok()),
        hook: f.string("hook"),
        place: f.string("place"),
        cgroup: f.string("cgroup"),
        pod: f.string("pod"),
        userns_owner: f.u32("userns_owner"),
        src: f.ip("src"),
        interface: f.string("interface"),
        // `explain.rs` cites the entry that decided: `… by [deny] users
        // "apache" at FILE:LINE:COL`.
        by_deny: f.str("reason").is_some_and(|r| r.contains(" by [deny] ")),
        logged,
        suppressed: 0,
    }
}

/// What the rate limiter keys on: verdict, caller, destination.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct LimiterKey {
    outcome: Outcome,
    uid: Option<u32>,
    userns_owner: Option<u32>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
}

impl LimiterKey {
    fn of(d: &Decision) -> Option<Self> {
        Some(Self {
            outcome: d.outcome?,
            // A namespaced caller is keyed by its namespaces' creator only.
            uid: d.uid.filter(|_| d.userns_owner.is_none()),
            userns_owner: d.userns_owner,
            src: d.src,
            dst: d.dst,
        })
    }
}

/// Reads records from `input` and keeps those at or after `since`.
pub fn read(input: impl BufRead, since: Option<Micros>) -> Result<Records, LearnError> {
    let mut reader = Reader::default();
    for line in input.lines() {
        let line = line.map_err(LearnError::Input)?;
        reader.line(&line, since);
    }
    Ok(reader.records)
}

/// [`read`] of text already in memory (tests, fixtures).
pub fn parse(text: &str, since: Option<Micros>) -> Records {
    let mut reader = Reader::default();
    for line in text.lines() {
        reader.line(line, since);
    }
    reader.records
}

#[derive(Default)]
struct Reader {
    records: Records,
    /// The latest decision of each key, and of each key and pid.
    latest: HashMap<LimiterKey, usize>,
    latest_pid: HashMap<(LimiterKey, u32), usize>,
}

impl Reader {
    fn line(&mut self, line: &str, since: Option<Micros>) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
            self.records.skipped += 1;
            return;
        };
        let f = Fields::new(object);
        let at = f.at();
        if let (Some(since), Some(at)) = (since, at)
            && at < since
        {
            return;
        }
        let counted = match f.str("event") {
            Some("lost") => {
                self.records.lost += f.u64("lost").unwrap_or(0);
                true
            }
            Some("suppressed") => {
                self.summary(&f, at);
                true
            }
            Some(event) => match outcome(event) {
                Some(o) => {
                    self.push(decision(&f, o, at, 1));
                    true
                }
                None => false,
            },
            None => false,
        };
        if counted && let Some(at) = at {
            let r = &mut self.records;
            r.first = Some(r.first.map_or(at, |f| f.min(at)));
            r.last = Some(r.last.map_or(at, |l| l.max(at)));
        }
    }

    fn push(&mut self, d: Decision) {
        let index = self.records.decisions.len();
        if let Some(key) = LimiterKey::of(&d) {
            if let Some(pid) = d.pid {
                self.latest_pid.insert((key.clone(), pid), index);
            }
            self.latest.insert(key, index);
        }
        self.records.decisions.push(d);
    }

    /// A rate limiter's summary: added to the record it follows.
    fn summary(&mut self, f: &Fields, at: Option<Micros>) {
        let count = f.u64("suppressed").unwrap_or(0);
        let Some(o) = f.str("outcome").and_then(outcome) else {
            self.records.overflow += count;
            if let Some(callers) = f.string("callers") {
                self.records.overflow_callers.push(callers);
            }
            return;
        };
        let mut alone = decision(f, o, at, 0);
        alone.suppressed = count;
        let found = LimiterKey::of(&alone).and_then(|key| {
            alone
                .pid
                .and_then(|pid| self.latest_pid.get(&(key.clone(), pid)))
                .or_else(|| self.latest.get(&key))
                .copied()
        });
        match found.and_then(|i| self.records.decisions.get_mut(i)) {
            Some(d) => d.suppressed += count,
            None => self.push(alone),
        }
    }
}
