//! What the kernel says of the pinned guard, for `status` and `detach`.
//! Nothing here trusts a state file: links, config and counters are read
//! from their pins, so the report holds even when the agent is dead.

use std::{os::fd::AsFd as _, path::PathBuf};

use aya::maps::{Array, Map};
use imds_guard_common::{self as common, mode};

use super::{
    cgroup,
    forward::{self, ForwardCounters},
    hooks::{HOOKS, Hook},
    loader::{Counters, GuardError, map_err, read_counters},
    pins::{PinError, Pins},
    sys,
};
use crate::{chain::Chain, policy::Mode};

/// One hook's pinned link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub hook: Hook,
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
    /// The forward table in this network namespace: its counters, `None`
    /// when there is none, or why it could not be read.
    pub forward: Result<Option<ForwardCounters>, String>,
    /// Whether the agent that wrote the config is still running.
    pub agent_alive: bool,
}

impl Status {
    pub fn read(pins: &Pins) -> Result<Self, GuardError> {
        let mut links = Vec::new();
        for spec in &HOOKS {
            if let Some((path, fd)) = pins.open_link(spec.program)? {
                let info = sys::link_info(fd.as_fd())
                    .map_err(|e| PinError::new("read the pinned link", &path, e))?;
                links.push(LinkStatus {
                    hook: spec.hook,
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
            (Some(a), Some(c)) => Some(read_config(&a, &c)?),
            _ => None,
        };
        let counters = pins
            .open_map(common::MAP_COUNTERS, Map::PerCpuArray)?
            .map(|m| read_counters(&m))
            .transpose()?;
        let agent_alive = pins.locked();
        let forward = forward::counters().map_err(|e| Chain(&e).to_string());
        Ok(Self {
            pin_dir: pins.dir().to_owned(),
            links,
            cgroup,
            config,
            counters,
            forward,
            agent_alive,
        })
    }

    /// The mode in force, as the programs read it; `None` when no valid
    /// configuration is written (the programs then deny: fail closed).
    pub fn mode(&self) -> Option<Mode> {
        match self.config.map(|(_, c)| c.mode) {
            Some(mode::ENFORCE) => Some(Mode::Enforce),
            Some(mode::AUDIT) => Some(Mode::Audit),
            _ => None,
        }
    }

    /// Every hook has a live link, the config is valid and the forward
    /// table is in force: the guard decides by the policy (enforcing, or
    /// auditing as configured).
    pub fn enforcing(&self) -> bool {
        self.links.len() == HOOKS.len()
            && self.links.iter().all(|l| l.cgroup_id != 0)
            && self.mode().is_some()
            && self.forward_guarded()
    }

    /// Whether the agent's fallback policy is in force, not the configured
    /// one.
    pub fn in_fallback(&self) -> bool {
        self.config
            .is_some_and(|(_, c)| c.flags & common::config_flags::FALLBACK != 0)
    }

    /// Whether the forward table is in force here.
    pub fn forward_guarded(&self) -> bool {
        matches!(self.forward, Ok(Some(_)))
    }

    /// The links still attached.
    pub fn live_links(&self) -> usize {
        self.links.iter().filter(|l| l.cgroup_id != 0).count()
    }
}

/// The config in force according to an `ACTIVE` and a `CONFIG` map.
pub fn read_config(active: &Map, config: &Map) -> Result<(u32, common::Config), GuardError> {
    let active: Array<_, u32> = Array::try_from(active).map_err(map_err(common::MAP_ACTIVE))?;
    let generation = active.get(&0, 0).map_err(map_err(common::MAP_ACTIVE))? & 1;
    let config: Array<_, common::Config> =
        Array::try_from(config).map_err(map_err(common::MAP_CONFIG))?;
    let c = config
        .get(&generation, 0)
        .map_err(map_err(common::MAP_CONFIG))?;
    Ok((generation, c))
}

/// Whether `pid` is a running imds-guard agent.
pub fn is_agent(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "imds-guard")
}
