//! One cgroup's entry in the classification map, written by the agent as
//! the program would have written it: the rules of both generations, a
//! charge kept when the entry exists, a charge to its creator (within its
//! share) when it does not.

use std::os::fd::AsFd as _;

use aya_obj::generated::{BPF_EXIST, BPF_NOEXIST};
use imds_guard_common::{
    self as common, CgroupEntry, IdRule, IdRules, MAX_CGROUP_LEVEL, action, charged_by,
};

use super::{Classifier, room::Creator, scan};
use crate::{
    kernel::{maps::MapError, records::entry_number, sys},
    policy::{
        Action,
        cgroups::{CgroupClass, CgroupRule, CgroupRules},
    },
};

/// What a classification by the agent came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Written (new, or its rules rewritten).
    Written,
    /// The cgroup is gone.
    Gone,
    /// Deeper than the programs classify: no entry, as theirs.
    TooDeep,
    /// Its creator holds its share.
    OverQuota,
    /// The map is full.
    Full,
}

impl Classifier {
    /// The rules both generations' patterns give the cgroup at `path`, as
    /// the programs would store them; `None` when it is too deep for them.
    pub(super) fn rules_of(&self, path: &[u8]) -> Option<IdRules> {
        if self.rules.iter().all(Vec::is_empty) {
            // No pattern: only the depth matters, counted without
            // splitting the path.
            let depth = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).count();
            let none = IdRule {
                action: action::NONE,
                entry: 0,
            };
            return (depth <= MAX_CGROUP_LEVEL as usize).then_some(IdRules {
                by_generation: [none, none],
            });
        }
        let class = |rules: &[CgroupRule]| stored_rule(rules, path);
        Some(IdRules {
            by_generation: [class(&self.rules[0])?, class(&self.rules[1])?],
        })
    }

    /// Writes the entry of cgroup `id` at `path`, as the program would,
    /// unless it is gone (then its entry goes too). A cgroup with an entry
    /// keeps its charge; one without is charged to `creator` if it has
    /// room.
    pub(super) fn classify(
        &mut self,
        id: u64,
        path: &[u8],
        creator: Creator,
    ) -> Result<Outcome, MapError> {
        // Too deep for the program to classify: no entry there, none here.
        let Some(rules) = self.rules_of(path) else {
            return Ok(Outcome::TooDeep);
        };
        match self.rewrite(id, rules)? {
            Some(outcome) => Ok(outcome),
            None => self.store(id, path, rules, creator),
        }
    }

    /// Gives the entry of cgroup `id`, if it has one, `rules`, keeping its
    /// charge; `None` when it has none.
    pub(super) fn rewrite(&mut self, id: u64, rules: IdRules) -> Result<Option<Outcome>, MapError> {
        let name = common::MAP_CGROUP_CLASS;
        let entry = match sys::map_lookup::<u64, CgroupEntry>(self.class.as_fd(), &id) {
            Ok(entry) => CgroupEntry { rules, ..entry },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => return Err(MapError::Write { name, source }),
        };
        // Only over an entry still there: one the program deleted meanwhile
        // stays deleted.
        match sys::map_update_flags(self.class.as_fd(), &id, &entry, BPF_EXIST) {
            Ok(()) => Ok(Some(Outcome::Written)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Some(Outcome::Gone)),
            Err(source) => Err(MapError::Write { name, source }),
        }
    }

    /// Adds the entry of cgroup `id`, charged to `creator`, if there is
    /// room.
    pub(super) fn store(
        &mut self,
        id: u64,
        path: &[u8],
        rules: IdRules,
        creator: Creator,
    ) -> Result<Outcome, MapError> {
        if !self.room.has_room(creator)? {
            return Ok(Outcome::OverQuota);
        }
        let charged = if creator.exempt {
            charged_by::NONE
        } else {
            charged_by::AGENT
        };
        let entry = CgroupEntry {
            rules,
            creator: creator.uid,
            charged: u32::from(charged),
        };
        match sys::map_update_flags(self.class.as_fd(), &id, &entry, BPF_NOEXIST) {
            Ok(()) => {}
            // The map is full: the cgroup stays unclassified (fail closed)
            // until a removal frees room.
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => return Ok(Outcome::Full),
            // Written meanwhile by the program, which knew its creator.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(Outcome::Written),
            Err(source) => {
                return Err(MapError::Write {
                    name: common::MAP_CGROUP_CLASS,
                    source,
                });
            }
        }
        self.added += 1;
        if !creator.exempt {
            self.room.charge(id, creator.uid)?;
        }
        // Removed meanwhile (before the write: its entry must go again;
        // after it, the program deleted it).
        if !scan::still(&self.root, path, id) {
            self.forget(id)?;
            return Ok(Outcome::Gone);
        }
        Ok(Outcome::Written)
    }

    /// Deletes the entry of cgroup `id`, gone, and takes back our charge.
    pub(super) fn forget(&mut self, id: u64) -> Result<(), MapError> {
        self.room.uncharge(id)?;
        match sys::map_delete(self.class.as_fd(), &id) {
            Ok(()) => {
                self.removed += 1;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(MapError::Write {
                name: common::MAP_CGROUP_CLASS,
                source,
            }),
        }
    }
}

/// The entry the kernel stores for the cgroup at `path` under `rules`,
/// as the program's classification would write it; `None` when the path
/// cannot be classified (too deep).
pub(super) fn stored_rule(rules: &[CgroupRule], path: &[u8]) -> Option<IdRule> {
    match CgroupRules::classify(rules, path) {
        CgroupClass::Unclassified => None,
        CgroupClass::Unmatched => Some(IdRule {
            action: action::NONE,
            entry: 0,
        }),
        CgroupClass::Rule { action: a, index } => Some(IdRule {
            action: if a == Action::Allow {
                action::ALLOW
            } else {
                action::DENY
            },
            entry: entry_number(Some(index)),
        }),
    }
}
