//! What the kernel says of the pinned guard, for `status` and `detach`.
//! Nothing here trusts a state file: links, config and counters are read
//! from their pins, so the report holds even when the agent is dead.

use std::{
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map};
use imds_guard_common::{self as common, mode};

pub use self::json::to_json;
use super::{
    cgroup,
    counters::{self, Counters},
    forward::status::ForwardStatus,
    identity,
    maps::{self, MapError},
    pins::{PinError, Pins},
    place, policy_maps, programs, sys,
};

mod json;

/// A pinned guard that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Map(#[from] MapError),
}

impl StatusError {
    /// Whether the pins are not this user's to read (only root's are).
    pub fn permission_denied(&self) -> bool {
        matches!(self, Self::Pin(e) if e.permission_denied())
    }
}

use crate::{chain::Chain, policy::Mode};

/// The pinned link of a program on the guarded cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// The program's name ([`programs::TABLE`]).
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
    /// The pinned links found, in the order of [`programs::guarding`].
    pub links: Vec<LinkStatus>,
    /// The cgroup the links are attached to, when found below the cgroup v2
    /// root.
    pub cgroup: Option<PathBuf>,
    /// The config in force: its generation and contents.
    pub config: Option<(u32, common::Config)>,
    pub counters: Option<Counters>,
    /// The forward path in this network namespace, or why it could not
    /// be read.
    pub forward: Result<ForwardStatus, String>,
    /// Whether the agent that wrote the config is still running.
    pub agent_alive: bool,
    /// Programs named like ours on the same cgroup that are not ours:
    /// another guard, with another pin directory.
    pub other_guards: Vec<OtherGuard>,
    /// What the programs were loaded with (offsets, the host's
    /// namespaces, the group bound); `None` from an agent that did not
    /// record it.
    pub resolved: Option<common::Resolved>,
    /// The cgroup classification, when its maps are pinned.
    pub cgroups: Option<CgroupStatus>,
    /// The endpoints protected in the generation in force, as a policy
    /// spells them (`169.254.169.254`, `169.254.170.2:80/tcp`), read from
    /// the programs' maps; `None` from an agent that did not pin them.
    pub endpoints: Option<Vec<String>>,
    /// What the attached cgroup covers, as seen from here.
    pub guards: Option<place::Seen>,
}

/// What the cgroup classification holds and has done (`classify/`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStatus {
    /// Whether the `cgroup_mkdir` program's link is pinned: new cgroups are
    /// classified as they are created, agent or not.
    pub tracking: bool,
    /// Unit, cgroup and pod patterns in the generation in force.
    pub patterns: u32,
    /// Cgroups with a classification.
    pub cgroups: u64,
    /// Cgroups the program classified, could not classify (fail closed),
    /// could not store (a full map), did not store (the creator held its
    /// share), and events it could not send, since it was loaded.
    pub classified: u64,
    pub unclassified: u64,
    pub not_stored: u64,
    pub over_quota: u64,
    pub events_lost: u64,
    /// The map's size, and the shares: one creator's, every creator's but
    /// root's together (`imds_guard_common::CgroupLimits`).
    pub capacity: u32,
    pub quota: u32,
    pub shared: u32,
    /// Entries charged to creators other than root, and the creator
    /// holding the most (uid, entries); `None` from a guard that does not
    /// charge.
    pub charged: Option<u32>,
    pub largest: Option<(u32, u32)>,
}

impl Status {
    pub fn read(pins: &Pins) -> Result<Self, StatusError> {
        let mut links = Vec::new();
        for (row, _) in programs::guarding() {
            if let Some((path, fd)) = pins.open_link(row.name)? {
                let info = sys::link_info(fd.as_fd())
                    .map_err(|e| PinError::new("read the pinned link", &path, e))?;
                links.push(LinkStatus {
                    program: row.name,
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
            .map(|m| counters::read(&m))
            .transpose()?;
        let resolved = match pins.open_map(common::MAP_RESOLVED, Map::Array)? {
            Some(map) => identity::read(&map)?,
            None => None,
        };
        let agent_alive = pins.locked();
        let forward = ForwardStatus::read(pins).map_err(|e| Chain(&e).to_string());
        let cgroups = read_cgroups(pins, config.map(|(generation, _)| generation))?;
        let endpoints = match config {
            Some((generation, _)) => read_endpoints(pins, generation)?,
            None => None,
        };
        let ours: Vec<u32> = links.iter().map(|l| l.prog_id).collect();
        let other_guards = cgroup
            .as_deref()
            .and_then(|c| other_guards(c, &ours).ok())
            .unwrap_or_default();
        let guards = links
            .iter()
            .find(|l| l.cgroup_id != 0)
            .map(|l| place::Seen::of(l.cgroup_id));
        Ok(Self {
            guards,
            pin_dir: pins.dir().to_owned(),
            links,
            cgroup,
            config,
            counters,
            forward,
            agent_alive,
            other_guards,
            resolved,
            cgroups,
            endpoints,
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

    /// The mode in force, or `unconfigured` when none is written.
    pub fn mode_name(&self) -> &'static str {
        self.mode().map_or("unconfigured", Mode::as_str)
    }

    /// Every program on the cgroup has a live link, the config is valid
    /// and the forward table is in force: the guard decides by the policy
    /// (enforcing, or auditing as configured).
    pub fn enforcing(&self) -> bool {
        self.links.len() == programs::GUARDING
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

    /// Whether the last reload was refused (the policy in force is the one
    /// before it).
    pub fn reload_refused(&self) -> bool {
        self.config
            .is_some_and(|(_, c)| c.flags & common::config_flags::RELOAD_REFUSED != 0)
    }

    /// Whether some `[allow]` names are left out of the policy in force
    /// because they did not resolve (the agent retries them).
    pub fn names_left_out(&self) -> bool {
        self.config
            .is_some_and(|(_, c)| c.flags & common::config_flags::PARTIAL != 0)
    }

    /// The `config_flags` bits in force that say what a decision reads.
    pub fn reads(&self) -> (bool, bool) {
        self.config.map_or((false, false), |(_, c)| {
            (
                c.flags & common::config_flags::SCAN_GROUPS != 0,
                c.flags & common::config_flags::CHECK_OWNERS != 0,
            )
        })
    }

    /// Whether the forward path is held here as the agent left it.
    pub fn forward_guarded(&self) -> bool {
        self.forward_problem().is_none()
    }

    /// Why the forward path is not held as the agent left it, if so.
    pub fn forward_problem(&self) -> Option<String> {
        match &self.forward {
            Ok(f) => f.problem(self.agent_alive),
            Err(e) => Some(format!("it cannot be read: {e}")),
        }
    }

    /// The links still attached.
    pub fn live_links(&self) -> usize {
        self.links.iter().filter(|l| l.cgroup_id != 0).count()
    }
}

/// The config in force according to an `ACTIVE` and a `CONFIG` map.
/// The cgroup classification's pinned maps, read; `None` when they are not
/// pinned (a guard from before them).
fn read_cgroups(pins: &Pins, generation: Option<u32>) -> Result<Option<CgroupStatus>, StatusError> {
    use aya::maps::{HashMap, PerCpuArray};
    let (Some(class), Some(patterns), Some(stats)) = (
        pins.open_map(common::MAP_CGROUP_CLASS, Map::HashMap)?,
        pins.open_map(common::MAP_CGROUP_PATTERNS, Map::Array)?,
        pins.open_map(common::MAP_CGROUP_STATS, Map::PerCpuArray)?,
    ) else {
        return Ok(None);
    };
    let capacity = match &class {
        Map::HashMap(data) => data.info().map(|i| i.max_entries()).unwrap_or(0),
        _ => 0,
    };
    let limits = common::CgroupLimits::for_capacity(capacity);
    let charges = read_charges(pins)?;
    let class: HashMap<_, u64, common::CgroupEntry> =
        HashMap::try_from(&class).map_err(maps::access(common::MAP_CGROUP_CLASS))?;
    let patterns: Array<_, common::CgroupPatterns> =
        Array::try_from(&patterns).map_err(maps::access(common::MAP_CGROUP_PATTERNS))?;
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(&stats).map_err(maps::access(common::MAP_CGROUP_STATS))?;
    let stat = |index: u32| -> Result<u64, MapError> {
        let values = stats
            .get(&index, 0)
            .map_err(maps::access(common::MAP_CGROUP_STATS))?;
        Ok(values.iter().sum())
    };
    let in_force = match generation {
        Some(g) => {
            patterns
                .get(&(g % common::GENERATIONS), 0)
                .map_err(maps::access(common::MAP_CGROUP_PATTERNS))?
                .count
        }
        None => 0,
    };
    Ok(Some(CgroupStatus {
        tracking: pins.open_link(common::PROGRAM_CGROUP_MKDIR)?.is_some(),
        patterns: in_force,
        cgroups: class.keys().filter(Result::is_ok).count() as u64,
        classified: stat(common::cgroup_stat::CLASSIFIED)?,
        unclassified: stat(common::cgroup_stat::UNCLASSIFIED)?,
        not_stored: stat(common::cgroup_stat::NOT_STORED)?,
        over_quota: stat(common::cgroup_stat::OVER_QUOTA).unwrap_or(0),
        events_lost: stat(common::cgroup_stat::EVENTS_LOST)?,
        capacity,
        quota: limits.quota,
        shared: limits.shared,
        charged: charges.as_ref().map(|c| c.total),
        largest: charges.and_then(|c| c.largest),
    }))
}

/// The charge maps added up.
struct Charges {
    /// Entries charged to creators other than root.
    total: u32,
    /// The creator holding the most: uid, entries.
    largest: Option<(u32, u32)>,
}

/// The pinned charge maps, the programs' and the agent's, added up; `None`
/// when they are not pinned (an older guard).
fn read_charges(pins: &Pins) -> Result<Option<Charges>, StatusError> {
    use aya::maps::HashMap;
    let (Some(programs), Some(agent)) = (
        pins.open_map(common::MAP_CGROUP_CHARGES, Map::HashMap)?,
        pins.open_map(common::MAP_CGROUP_AGENT_CHARGES, Map::HashMap)?,
    ) else {
        return Ok(None);
    };
    let mut counts = std::collections::BTreeMap::<u32, u32>::new();
    for (map, name) in [
        (&programs, common::MAP_CGROUP_CHARGES),
        (&agent, common::MAP_CGROUP_AGENT_CHARGES),
    ] {
        let map: HashMap<_, u32, u32> = HashMap::try_from(map).map_err(maps::access(name))?;
        for (uid, n) in map.iter().filter_map(Result::ok) {
            *counts.entry(uid).or_default() += n;
        }
    }
    let total = counts.remove(&common::CHARGE_TOTAL).unwrap_or(0);
    let largest = counts
        .into_iter()
        .max_by_key(|&(uid, n)| (n, std::cmp::Reverse(uid)));
    Ok(Some(Charges { total, largest }))
}

/// The endpoints of `generation` in the pinned protected-address maps,
/// sorted: `None` when they are not pinned.
fn read_endpoints(pins: &Pins, generation: u32) -> Result<Option<Vec<String>>, StatusError> {
    let (Some(v4), Some(v6)) = (
        pins.open_map(common::MAP_PROTECTED_V4, Map::HashMap)?,
        pins.open_map(common::MAP_PROTECTED_V6, Map::HashMap)?,
    ) else {
        return Ok(None);
    };
    let mut found = Vec::new();
    let v4: HashMap<_, common::V4Key, common::Ports> =
        HashMap::try_from(&v4).map_err(maps::access(common::MAP_PROTECTED_V4))?;
    for entry in v4.iter() {
        let (key, ports) = entry.map_err(maps::access(common::MAP_PROTECTED_V4))?;
        if key.generation == generation {
            let addr = IpAddr::from(key.addr.to_ne_bytes());
            found.extend(policy_maps::endpoints_of(addr, &ports));
        }
    }
    let v6: HashMap<_, common::V6Key, common::Ports> =
        HashMap::try_from(&v6).map_err(maps::access(common::MAP_PROTECTED_V6))?;
    for entry in v6.iter() {
        let (key, ports) = entry.map_err(maps::access(common::MAP_PROTECTED_V6))?;
        if key.generation == generation {
            let addr = IpAddr::V6(policy_maps::ipv6_of(&key.addr));
            found.extend(policy_maps::endpoints_of(addr, &ports));
        }
    }
    found.sort_by_key(|e| (e.addr, e.port));
    Ok(Some(found.iter().map(ToString::to_string).collect()))
}

pub fn read_config(active: &Map, config: &Map) -> Result<(u32, common::Config), MapError> {
    let active: Array<_, u32> =
        Array::try_from(active).map_err(maps::access(common::MAP_ACTIVE))?;
    let generation = active
        .get(&0, 0)
        .map_err(maps::access(common::MAP_ACTIVE))?
        & 1;
    let config: Array<_, common::Config> =
        Array::try_from(config).map_err(maps::access(common::MAP_CONFIG))?;
    let c = config
        .get(&generation, 0)
        .map_err(maps::access(common::MAP_CONFIG))?;
    Ok((generation, c))
}

/// The config in force of the guard pinned at `pins` (its generation and
/// contents), without the rest of [`Status`]: `None` when nothing is
/// pinned there.
pub fn config_in_force(pins: &Pins) -> Result<Option<(u32, common::Config)>, StatusError> {
    let active = pins.open_map(common::MAP_ACTIVE, Map::Array)?;
    let config = pins.open_map(common::MAP_CONFIG, Map::Array)?;
    Ok(match (active, config) {
        (Some(a), Some(c)) => Some(read_config(&a, &c)?),
        _ => None,
    })
}

/// Whether `pid` is a running imds-guard agent.
pub fn is_agent(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "imds-guard")
}

/// A program of an imds-guard guard attached to the cgroup that is not
/// `ours`: another agent's, with another pin directory (both then decide,
/// and a deny from either wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherGuard {
    /// The program's name ([`programs::TABLE`]).
    pub program: &'static str,
    pub prog_id: u32,
}

/// When the guard pinned at `pins` was first attached, if one is: an
/// agent that takes it over keeps that time, so `status` says how long the
/// host has been guarded, not how long this agent has run.
pub fn first_attached(pins: &Pins) -> Option<u64> {
    if !pins.any_link() {
        return None;
    }
    let active = pins.open_map(common::MAP_ACTIVE, Map::Array).ok()??;
    let config = pins.open_map(common::MAP_CONFIG, Map::Array).ok()??;
    let (_, c) = read_config(&active, &config).ok()?;
    (c.attached_unix != 0).then_some(c.attached_unix)
}

/// The ids of the programs in the links pinned at `pins`.
pub fn pinned_prog_ids(pins: &Pins) -> Vec<u32> {
    programs::guarding()
        .filter_map(|(row, _)| pins.open_link(row.name).ok().flatten())
        .filter_map(|(_, fd)| sys::link_info(fd.as_fd()).ok())
        .map(|info| info.prog_id)
        .collect()
}

/// How many programs are attached to `cgroup` itself at each of the
/// guard's hooks, in [`programs::guarding`]'s order (ours or not): one at
/// each is the guard in force there, alone.
pub fn attached_per_hook(cgroup: &Path) -> std::io::Result<Vec<usize>> {
    let dir = std::fs::File::open(cgroup)?;
    programs::guarding()
        .map(|(_, attach_type)| Ok(sys::prog_query(dir.as_fd(), attach_type)?.len()))
        .collect()
}

/// The programs named like ours attached to `cgroup` whose ids are not in
/// `ours`.
pub fn other_guards(cgroup: &Path, ours: &[u32]) -> std::io::Result<Vec<OtherGuard>> {
    let dir = std::fs::File::open(cgroup)?;
    let mut others = Vec::new();
    for (row, attach_type) in programs::guarding() {
        for id in sys::prog_query(dir.as_fd(), attach_type)? {
            if ours.contains(&id) {
                continue;
            }
            // Gone meanwhile, or not ours to read: not one of ours either.
            if sys::prog_name(id).is_ok_and(|name| name == row.name) {
                others.push(OtherGuard {
                    program: row.name,
                    prog_id: id,
                });
            }
        }
    }
    Ok(others)
}

#[cfg(test)]
impl Status {
    /// What `status` reads of a guard attached with every hook under
    /// `config` (generation `generation`), its forward path held by
    /// nftables with both tables as the agent put them, its agent alive:
    /// the fixture the tests of what is said of a status start from.
    pub(crate) fn guarded_for_test(generation: u32, config: common::Config) -> Self {
        let links = programs::guarding()
            .take(programs::GUARDING)
            .map(|(row, _)| LinkStatus {
                program: row.name,
                link_id: 1,
                prog_id: 2,
                cgroup_id: 3,
            })
            .collect();
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf/imds-guard"),
            links,
            cgroup: None,
            config: Some((generation, config)),
            counters: None,
            forward: Ok(ForwardStatus::held_by_nftables_for_test(Some(
                super::forward::status::TableStatus {
                    counters: super::forward::ForwardCounters::default(),
                    intact: true,
                },
            ))),
            agent_alive: true,
            other_guards: Vec::new(),
            resolved: None,
            cgroups: None,
            endpoints: Some(vec![
                "169.254.169.254".to_owned(),
                "fd00:ec2::254".to_owned(),
            ]),
            guards: None,
        }
    }
}
