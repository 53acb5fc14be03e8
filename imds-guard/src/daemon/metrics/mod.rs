//! Prometheus metrics, served over HTTP on the opt-in `--metrics-listen`
//! address.
//!
//! [`Metrics`] holds what the agent knows (the kernel counters, whether the
//! programs are attached, the reloads, the policy in force) and renders it
//! in the text exposition format 0.0.4. [`serve`] (in `http.rs`) is a
//! deliberately small HTTP/1.1 server for it, bounded so that a scraper
//! that misbehaves costs a few kilobytes and a few seconds, never the
//! agent's memory. Why by hand rather than with `hyper` and
//! `prometheus-client`: CONTRIBUTING.md, "What we write by hand".

use std::{
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::IntErrorKind,
    sync::{Mutex, MutexGuard, PoisonError},
};

use imds_guard_common::counter;

pub use self::http::{Exporter, sandbox_hint, serve};
use crate::{
    kernel::{
        Counters, classify::CgroupFill, forward::ForwardCounters, programs::Hook,
        usage::RequestCounters,
    },
    policy::Mode,
};

mod http;

/// Why a `--metrics-listen` value was refused. The messages do not repeat
/// the value: clap prints it before them.
#[derive(Debug, thiserror::Error)]
pub enum ListenAddrError {
    #[error("expected PORT, IP:PORT, [IPV6]:PORT or localhost:PORT")]
    Syntax,
    #[error("missing port: write {0}:PORT")]
    MissingPort(String),
    #[error(
        "missing address: write 127.0.0.1:{0} for loopback only, 0.0.0.0:{0} for every interface"
    )]
    MissingHost(String),
    #[error("an IPv6 address takes brackets and a port: write [{0}]:PORT")]
    BareIpv6(Ipv6Addr),
    #[error("IPv6 addresses go in brackets: [IPV6]:PORT")]
    UnbracketedIpv6,
    #[error("`{0}` is not an IPv6 address")]
    NotIpv6(String),
    #[error("`{0}` is not an IP address (host names other than localhost are not resolved)")]
    NotAnAddress(String),
    #[error("`{0}` is not a port number")]
    NotAPort(String),
    #[error("port {0} is out of range 1-65535")]
    PortOutOfRange(String),
    #[error("port 0 would listen on a random port no scraper can find; give a fixed port")]
    PortZero,
}

/// Parses a `--metrics-listen` value: `PORT` (on 127.0.0.1), `IP:PORT`,
/// `[IPV6]:PORT` or `localhost:PORT` (127.0.0.1). Usable as a clap
/// `value_parser`.
///
/// Host names are refused rather than resolved: the address the agent
/// listens on must not depend on DNS or `/etc/hosts` at boot, and
/// `localhost` is the only name whose meaning is fixed. A bare port means
/// loopback because the metrics reveal who is denied the metadata service;
/// exposing them beyond the host takes an explicit `0.0.0.0:PORT`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ListenAddrError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port(s)?));
    }
    // Whole, so that `::1:9100` (a valid address, ending in `:9100`) is
    // not mistaken for host and port.
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => return Err(ListenAddrError::MissingPort(v4.to_string())),
        Ok(IpAddr::V6(v6)) => return Err(ListenAddrError::BareIpv6(v6)),
        Err(_) => {}
    }
    let (ip, port_text) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(ListenAddrError::Syntax)?;
        let v6: Ipv6Addr = host
            .parse()
            .map_err(|_| ListenAddrError::NotIpv6(host.to_owned()))?;
        match after.strip_prefix(':') {
            Some(port_text) => (IpAddr::V6(v6), port_text),
            None if after.is_empty() => {
                return Err(ListenAddrError::MissingPort(format!("[{v6}]")));
            }
            None => return Err(ListenAddrError::Syntax),
        }
    } else {
        let Some((host, port_text)) = s.rsplit_once(':') else {
            return Err(if s.eq_ignore_ascii_case("localhost") {
                ListenAddrError::MissingPort(s.to_owned())
            } else {
                ListenAddrError::Syntax
            });
        };
        if host.contains(':') {
            return Err(ListenAddrError::UnbracketedIpv6);
        }
        if host.is_empty() {
            return Err(ListenAddrError::MissingHost(port_text.to_owned()));
        }
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .map_err(|_| ListenAddrError::NotAnAddress(host.to_owned()))?
        };
        (IpAddr::V4(ip), port_text)
    };
    Ok(SocketAddr::new(ip, port(port_text)?))
}

fn port(s: &str) -> Result<u16, ListenAddrError> {
    // Digits only: `u16::from_str` would also take a leading `+`.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ListenAddrError::NotAPort(s.to_owned()));
    }
    match s.parse::<u16>() {
        Ok(0) => Err(ListenAddrError::PortZero),
        Ok(port) => Ok(port),
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => {
            Err(ListenAddrError::PortOutOfRange(s.to_owned()))
        }
        Err(_) => Err(ListenAddrError::NotAPort(s.to_owned())),
    }
}

/// How a policy reload (SIGHUP) ended, for `imds_guard_reloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new policy validated and was written into the maps.
    Applied,
    /// The new policy did not load, validate or resolve; nothing was
    /// written and the policy in force is unchanged.
    Invalid,
    /// The new policy validated but writing it into the maps failed.
    Failed,
}

impl ReloadOutcome {
    const ALL: [Self; 3] = [Self::Applied, Self::Invalid, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        }
    }
}

/// Whether the programs are deciding by the policy, for
/// `imds_guard_enforcing` and `imds_guard_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enforcing {
    /// Not attached, or attached before the policy's config was written (the
    /// programs then deny every protected destination). The state before
    /// the first [`Metrics::set_enforcing`].
    #[default]
    Inactive,
    /// Attached, with the policy written, deciding in this mode. Audit mode
    /// counts as enforcing: the guard does what it was configured to do.
    Active(Mode),
}

/// The agent's metrics. Share it behind an [`std::sync::Arc`]: every method takes
/// `&self`.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

#[derive(Clone, Debug, Default)]
struct State {
    counters: Counters,
    /// What the request programs counted.
    requests: RequestCounters,
    reloads: [u64; ReloadOutcome::ALL.len()],
    enforcing: Enforcing,
    digest: Option<String>,
    /// The forward table's counters, and whether it is in force.
    forward: ForwardCounters,
    forward_guarded: bool,
    /// The fallback policy is in force, not the configured one.
    fallback: bool,
    /// The cgroup classification map, and the rescans after lost events.
    cgroups: CgroupFill,
    rescans: u64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the decision counters with a snapshot read from the kernel
    /// ([`crate::kernel::Guard::counters`]).
    pub fn set_counters(&self, counters: &Counters) {
        self.state().counters = *counters;
    }

    /// Replaces the request counters with a snapshot read from the kernel
    /// ([`crate::kernel::Guard::request_counters`]).
    pub fn set_request_counters(&self, counters: &RequestCounters) {
        self.state().requests = *counters;
    }

    /// The forward table's counters (`None`: there is no table) and
    /// whether it is in force.
    pub fn set_forward(&self, counters: Option<ForwardCounters>, guarded: bool) {
        let mut state = self.state();
        state.forward = counters.unwrap_or_default();
        state.forward_guarded = guarded;
    }

    /// Whether the fallback policy is in force.
    pub fn set_fallback(&self, fallback: bool) {
        self.state().fallback = fallback;
    }

    /// The cgroup classification map's fill and refusals, and how many
    /// times the agent listed the hierarchy again after lost events.
    pub fn set_cgroups(&self, fill: CgroupFill, rescans: u64) {
        let mut state = self.state();
        state.cgroups = fill;
        state.rescans = rescans;
    }

    /// Counts one reload.
    pub fn reload(&self, outcome: ReloadOutcome) {
        // `ALL` is in declaration order, so the discriminant indexes it.
        self.state().reloads[outcome as usize] += 1;
    }

    pub fn set_enforcing(&self, state: Enforcing) {
        self.state().enforcing = state;
    }

    /// The digest of the policy in force, shown as
    /// `imds_guard_policy_info{digest="..."} 1`. Until it is first set the
    /// metric is absent.
    pub fn set_policy_digest(&self, digest: &str) {
        self.state().digest = Some(digest.to_owned());
    }

    /// The metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        // Copied out so the lock is not held while formatting.
        let state = self.state().clone();
        Exposition(&state).to_string()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave plain numbers half
        // written in a way that matters more than losing the metrics would.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const VERDICTS: [(u32, &str); 3] = [
    (counter::ALLOWED, "allowed"),
    (counter::DENIED, "denied"),
    (counter::AUDITED, "audited"),
];

const MODES: [Mode; 2] = [Mode::Enforce, Mode::Audit];

struct Exposition<'a>(&'a State);

impl fmt::Display for Exposition<'_> {
    /// Every label combination is written, zeros included, so that a
    /// series exists from the first scrape and `rate()` sees its first
    /// increment (Prometheus's advice on initialising metrics).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state(f)?;
        self.counters(f)?;
        self.requests(f)
    }
}

impl Exposition<'_> {
    /// Build, enforcement, mode and policy: what the agent is.
    fn state(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        header(
            f,
            "imds_guard_build_info",
            "gauge",
            "The running agent's version; always 1.",
        )?;
        writeln!(
            f,
            "imds_guard_build_info{{version=\"{}\"}} 1",
            LabelValue(env!("CARGO_PKG_VERSION"))
        )?;

        header(
            f,
            "imds_guard_enforcing",
            "gauge",
            "1 while the programs are attached and deciding by the policy, in the mode imds_guard_mode shows (audit mode included); 0 otherwise.",
        )?;
        let active = match s.enforcing {
            Enforcing::Active(mode) => Some(mode),
            Enforcing::Inactive => None,
        };
        writeln!(f, "imds_guard_enforcing {}", u8::from(active.is_some()))?;

        header(
            f,
            "imds_guard_mode",
            "gauge",
            "1 for the mode the programs decide in: enforce denies, audit only records would-deny; all 0 while not enforcing.",
        )?;
        for mode in MODES {
            writeln!(
                f,
                "imds_guard_mode{{mode=\"{mode}\"}} {}",
                u8::from(active == Some(mode))
            )?;
        }

        header(
            f,
            "imds_guard_fallback",
            "gauge",
            "1 while the agent's fallback policy is in force because the configured one could not be used at start; 0 otherwise.",
        )?;
        writeln!(f, "imds_guard_fallback {}", u8::from(s.fallback))?;

        if let Some(digest) = &s.digest {
            header(
                f,
                "imds_guard_policy_info",
                "gauge",
                "The digest of the policy in force; always 1.",
            )?;
            writeln!(
                f,
                "imds_guard_policy_info{{digest=\"{}\"}} 1",
                LabelValue(digest)
            )?;
        }

        Ok(())
    }

    /// Decisions, losses, errors and reloads: what the agent counted.
    fn counters(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let by_hook = |kind: u32| {
            Hook::ALL.map(|h| (h.as_str(), s.counters.by_hook[h as usize][kind as usize]))
        };

        header(
            f,
            "imds_guard_decisions_total",
            "counter",
            "Connections and datagrams to a protected destination, by verdict and hook; audited ones would have been denied and went through because the mode is audit.",
        )?;
        for (kind, verdict) in VERDICTS {
            for (hook, n) in by_hook(kind) {
                writeln!(
                    f,
                    "imds_guard_decisions_total{{verdict=\"{verdict}\",hook=\"{hook}\"}} {n}"
                )?;
            }
        }

        header(
            f,
            "imds_guard_events_lost_total",
            "counter",
            "Decision events dropped because the ring buffer was full, by hook; the decisions are still counted.",
        )?;
        for (hook, n) in by_hook(counter::EVENTS_LOST) {
            writeln!(f, "imds_guard_events_lost_total{{hook=\"{hook}\"}} {n}")?;
        }

        header(
            f,
            "imds_guard_internal_errors_total",
            "counter",
            "Decisions the programs could not make by the policy, by hook; each was denied.",
        )?;
        for (hook, n) in by_hook(counter::ERRORS) {
            writeln!(f, "imds_guard_internal_errors_total{{hook=\"{hook}\"}} {n}")?;
        }
        self.forward_and_reloads(f)
    }

    /// The forward table's state and drops, and reloads by outcome.
    fn forward_and_reloads(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        header(
            f,
            "imds_guard_forward_guarded",
            "gauge",
            "1 while the forward table drops forwarded packets to protected addresses (or audits them); 0 while the forward path is open.",
        )?;
        writeln!(
            f,
            "imds_guard_forward_guarded {}",
            u8::from(s.forward_guarded)
        )?;

        header(
            f,
            "imds_guard_forward_packets_total",
            "counter",
            "Forwarded packets to a protected destination the forward table dropped, or would have dropped in audit mode.",
        )?;
        writeln!(
            f,
            "imds_guard_forward_packets_total{{verdict=\"dropped\"}} {}",
            s.forward.dropped
        )?;
        writeln!(
            f,
            "imds_guard_forward_packets_total{{verdict=\"audited\"}} {}",
            s.forward.audited
        )?;

        header(
            f,
            "imds_guard_reloads_total",
            "counter",
            "Policy reloads by outcome: applied; invalid (did not validate, the policy in force is kept); failed (could not be written into the kernel).",
        )?;
        for (outcome, n) in ReloadOutcome::ALL.iter().zip(s.reloads) {
            writeln!(
                f,
                "imds_guard_reloads_total{{outcome=\"{}\"}} {n}",
                outcome.label()
            )?;
        }
        self.cgroups(f)
    }

    /// The cgroup classification map: how full, what it refused, and the
    /// events lost.
    fn cgroups(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0.cgroups;
        for (name, help, value) in [
            (
                "imds_guard_cgroup_map_entries",
                "Cgroups the classification map has a rule for.",
                c.entries,
            ),
            (
                "imds_guard_cgroup_map_capacity",
                "The classification map's size, in cgroups.",
                u64::from(c.capacity),
            ),
            (
                "imds_guard_cgroup_map_creator_quota",
                "Entries one creator other than root on the host may have; all such creators together may have half the map.",
                u64::from(c.quota),
            ),
            (
                "imds_guard_cgroups_waiting",
                "Cgroups without a rule (refused, so unclassified) that the agent classifies as soon as there is room.",
                c.pending,
            ),
        ] {
            header(f, name, "gauge", help)?;
            writeln!(f, "{name} {value}")?;
        }
        header(
            f,
            "imds_guard_cgroups_refused_total",
            "counter",
            "New cgroups the kernel left without a rule, by why: the map was full, the creator had used up its share, or the path could not be read or was too deep.",
        )?;
        for (why, n) in [
            ("full", c.full),
            ("over_quota", c.over_quota),
            ("unclassified", c.unclassified),
        ] {
            writeln!(f, "imds_guard_cgroups_refused_total{{why=\"{why}\"}} {n}")?;
        }
        header(
            f,
            "imds_guard_cgroup_events_lost_total",
            "counter",
            "Cgroup events dropped because their ring buffer was full; the cgroups were classified all the same, and the agent lists the hierarchy again.",
        )?;
        writeln!(f, "imds_guard_cgroup_events_lost_total {}", c.events_lost)?;
        header(
            f,
            "imds_guard_cgroup_rescans_total",
            "counter",
            "Times the agent listed the cgroup hierarchy again after lost events.",
        )?;
        writeln!(f, "imds_guard_cgroup_rescans_total {}", self.0.rescans)
    }
}

fn header(f: &mut fmt::Formatter<'_>, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(f, "# HELP {name} {help}")?;
    writeln!(f, "# TYPE {name} {kind}")
}

/// A label value escaped as the text format requires: backslash, double
/// quote and line feed.
struct LabelValue<'a>(&'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

mod requests;
#[cfg(test)]
mod tests;
