//! `imds-guard status`: what the kernel says of the pinned guard. Nothing
//! here trusts a state file: links, config and counters are read from
//! their pins, so the report holds even when the agent is dead.

use std::{os::fd::AsFd as _, path::PathBuf};

use aya::maps::Map;
use imds_guard_common::{self as common, mode};
use serde_json::{Value, json};

use crate::{
    cgroup,
    guard::{self, Counters, GuardError, PROGRAMS},
    pins::Pins,
    policy::hex,
    sys,
};

/// One hook's pinned link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub program: &'static str,
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the link was detached (or its cgroup removed).
    pub cgroup_id: u64,
}

/// Everything `status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub pin_dir: PathBuf,
    /// The pinned links found, in hook order.
    pub links: Vec<LinkStatus>,
    /// The cgroup the links are attached to, when found below the cgroup v2
    /// root.
    pub cgroup: Option<PathBuf>,
    /// The config in force: its generation and contents.
    pub config: Option<(u32, common::Config)>,
    pub counters: Option<Counters>,
    /// Whether the agent that wrote the config is still running.
    pub agent_alive: bool,
}

impl Status {
    pub fn read(pins: &Pins) -> Result<Self, GuardError> {
        let mut links = Vec::new();
        for program in PROGRAMS {
            if let Some((path, fd)) = pins.open_link(program)? {
                let info = sys::link_info(fd.as_fd()).map_err(|source| GuardError::Pin {
                    what: "read the pinned link",
                    path,
                    source,
                })?;
                links.push(LinkStatus {
                    program,
                    link_id: info.id,
                    prog_id: info.prog_id,
                    cgroup_id: info.cgroup_id,
                });
            }
        }
        let cgroup = links.iter().find(|l| l.cgroup_id != 0).and_then(|l| {
            let root = cgroup::cgroup2_root().ok()?;
            cgroup::find_by_id(&root, l.cgroup_id, 100_000)
        });
        let active = pins.open_map(common::MAP_ACTIVE, Map::Array)?;
        let config_map = pins.open_map(common::MAP_CONFIG, Map::Array)?;
        let config = match (active, config_map) {
            (Some(a), Some(c)) => Some(guard::read_config(&a, &c)?),
            _ => None,
        };
        let counters = pins
            .open_map(common::MAP_COUNTERS, Map::PerCpuArray)?
            .map(|m| guard::read_counters(&m))
            .transpose()?;
        let agent_alive = pins.locked();
        Ok(Self {
            pin_dir: pins.dir().to_owned(),
            links,
            cgroup,
            config,
            counters,
            agent_alive,
        })
    }

    /// The mode in force, as the programs read it.
    pub fn mode(&self) -> &'static str {
        match self.config.map(|(_, c)| c.mode) {
            Some(mode::ENFORCE) => "enforce",
            Some(mode::AUDIT) => "audit",
            _ => "unconfigured",
        }
    }

    /// Every hook has a live link and the config is valid: the guard
    /// decides by the policy (enforcing, or auditing as configured).
    pub fn enforcing(&self) -> bool {
        self.links.len() == PROGRAMS.len()
            && self.links.iter().all(|l| l.cgroup_id != 0)
            && self.mode() != "unconfigured"
    }

    pub fn to_json(&self) -> Value {
        let config = self.config.map(|(generation, c)| {
            json!({
                "generation": generation,
                "digest": hex(&c.digest),
                "applied_unix": c.applied_unix,
                "attached_unix": c.attached_unix,
                "agent_pid": c.agent_pid,
            })
        });
        let counters = self.counters.map(|c| {
            json!({
                "allowed": c.allowed,
                "denied": c.denied,
                "audited": c.audited,
                "events_lost": c.events_lost,
                "internal_errors": c.errors,
            })
        });
        json!({
            "enforcing": self.enforcing(),
            "attached": !self.links.is_empty(),
            "mode": self.mode(),
            "pin_dir": self.pin_dir,
            "cgroup": self.cgroup,
            "cgroup_id": self.links.first().map(|l| l.cgroup_id),
            "links": self.links.iter().map(|l| json!({
                "program": l.program,
                "link_id": l.link_id,
                "prog_id": l.prog_id,
                "cgroup_id": l.cgroup_id,
            })).collect::<Vec<_>>(),
            "policy": config,
            "counters": counters,
            "agent_alive": self.agent_alive,
        })
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let state = if self.enforcing() {
            format!(
                "{} (mode {})",
                if self.mode() == "audit" {
                    "auditing"
                } else {
                    "enforcing"
                },
                self.mode()
            )
        } else if self.links.is_empty() {
            "not attached".to_owned()
        } else {
            format!(
                "NOT enforcing ({} of {} hooks attached, mode {})",
                self.links.iter().filter(|l| l.cgroup_id != 0).count(),
                PROGRAMS.len(),
                self.mode()
            )
        };
        let _ = writeln!(s, "imds-guard: {state}");
        let _ = writeln!(s, "  pins:     {}", self.pin_dir.display());
        if let Some(l) = self.links.first() {
            let path = self.cgroup.as_ref().map_or_else(
                || "(path not found)".to_owned(),
                |p| p.display().to_string(),
            );
            let _ = writeln!(s, "  cgroup:   {path} (id {})", l.cgroup_id);
        }
        for l in &self.links {
            let _ = writeln!(
                s,
                "  {:<9} link {} program {}{}",
                l.program,
                l.link_id,
                l.prog_id,
                if l.cgroup_id == 0 { " (detached)" } else { "" }
            );
        }
        if let Some((generation, c)) = self.config {
            let _ = writeln!(
                s,
                "  policy:   sha256 {} (generation {generation})",
                hex(&c.digest)
            );
            let _ = writeln!(
                s,
                "  since:    {} (attached), policy applied {}",
                utc(c.attached_unix),
                utc(c.applied_unix)
            );
            let _ = writeln!(
                s,
                "  agent:    pid {} {}",
                c.agent_pid,
                if self.agent_alive {
                    "running"
                } else {
                    "not running (enforcement continues)"
                }
            );
        }
        if let Some(c) = self.counters {
            let _ = writeln!(
                s,
                "  counters: allowed {} denied {} audited {} events lost {} internal errors {}",
                c.allowed, c.denied, c.audited, c.events_lost, c.errors
            );
        }
        s
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's
/// civil-from-days; no time zone database needed for UTC).
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Whether `pid` is a running imds-guard agent.
pub fn is_agent(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "imds-guard")
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn formats_unix_seconds_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_434_009), "2026-11-23T11:40:09Z");
    }
}
