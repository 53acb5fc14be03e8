//! Who the policy in force names, read back from the pinned maps for
//! `status --rules`: the uid and gid rules of the generation in force and
//! the cgroups its unit, cgroup and pod patterns classify, each with its
//! action and the number of the policy entry that made it. What the
//! programs decide from, not what a file says.

use std::collections::HashSet;

use aya::maps::{HashMap, Map};
use imds_guard_common::{self as common, IdRules};

use super::{
    inspect::{StatusError, read_config},
    maps,
    pins::Pins,
};

/// One rule in force: whose (a uid, a gid or a cgroup id), its
/// [`common::action`], and the 1-based number of its policy entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u64,
    pub action: u32,
    pub entry: u32,
}

/// The rules of the generation in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InForce {
    pub generation: u32,
    pub mode: u32,
    pub default_action: u32,
    pub uids: Vec<Rule>,
    pub gids: Vec<Rule>,
    /// With the cgroup's path from the cgroup v2 root, when found.
    pub cgroups: Vec<(Rule, Option<String>)>,
}

/// Directories looked at, at most, to name the classified cgroups.
const WALK_LIMIT: usize = 200_000;

/// The rules in force; `None` when no guard is pinned in `pins`.
pub fn read(pins: &Pins) -> Result<Option<InForce>, StatusError> {
    let (Some(active), Some(config)) = (
        pins.open_map(common::MAP_ACTIVE, Map::Array)?,
        pins.open_map(common::MAP_CONFIG, Map::Array)?,
    ) else {
        return Ok(None);
    };
    let (generation, config) = read_config(&active, &config)?;
    let slot = (generation % common::GENERATIONS) as usize;
    let ids = |name: &'static str| -> Result<Vec<Rule>, StatusError> {
        let Some(map) = pins.open_map(name, Map::HashMap)? else {
            return Ok(Vec::new());
        };
        let map: HashMap<_, u32, IdRules> = HashMap::try_from(&map).map_err(maps::access(name))?;
        in_slot(
            map.iter().map(|r| r.map(|(k, v)| (u64::from(k), v))),
            slot,
            name,
        )
    };
    let (uids, gids) = (ids(common::MAP_UID_RULES)?, ids(common::MAP_GID_RULES)?);
    // Without `CGROUP_RULES` the programs look no cgroup up, and the
    // agent leaves that generation's entries unwritten (`classify/`).
    let cgroup_rules = config.flags & common::config_flags::CGROUP_RULES != 0;
    let class = match cgroup_rules {
        true => pins.open_map(common::MAP_CGROUP_CLASS, Map::HashMap)?,
        false => None,
    };
    let cgroups = match class {
        Some(map) => {
            let map: HashMap<_, u64, common::CgroupEntry> =
                HashMap::try_from(&map).map_err(maps::access(common::MAP_CGROUP_CLASS))?;
            let entries = map.iter().map(|r| r.map(|(k, v)| (k, v.rules)));
            let rules = in_slot(entries, slot, common::MAP_CGROUP_CLASS)?;
            name_cgroups(rules)
        }
        None => Vec::new(),
    };
    Ok(Some(InForce {
        generation,
        mode: config.mode,
        default_action: config.default_action,
        uids,
        gids,
        cgroups,
    }))
}

/// The entries of a map with a rule in `slot`, sorted by id.
fn in_slot(
    entries: impl Iterator<Item = Result<(u64, IdRules), aya::maps::MapError>>,
    slot: usize,
    name: &'static str,
) -> Result<Vec<Rule>, StatusError> {
    let mut rules = Vec::new();
    for entry in entries {
        let (id, value) = entry.map_err(maps::access(name))?;
        let Some(rule) = value.by_generation.get(slot) else {
            continue;
        };
        if rule.action != common::action::NONE {
            rules.push(Rule {
                id,
                action: rule.action,
                entry: rule.entry,
            });
        }
    }
    rules.sort_by_key(|r| r.id);
    Ok(rules)
}

/// Each classified cgroup with its path, found in one walk of the
/// hierarchy (a cgroup's id is its directory's inode number).
fn name_cgroups(rules: Vec<Rule>) -> Vec<(Rule, Option<String>)> {
    let wanted: HashSet<u64> = rules.iter().map(|r| r.id).collect();
    let found = super::cgroup::paths_of(&wanted, WALK_LIMIT);
    rules
        .into_iter()
        .map(|r| {
            let path = found.get(&r.id).cloned();
            (r, path)
        })
        .collect()
}
