//! Cgroups classified by path, in the kernel, as they are created
//! (`imds-guard-ebpf/src/classify.rs`): the agent writes the pattern
//! tables the `cgroup_mkdir` program reads, the classification of every
//! cgroup that existed before or that the program found no room for, and
//! keeps the hierarchy's names the programs report.
//!
//! Putting a policy's patterns in force in generation `g` ([`prepare`]):
//! 1. write `g`'s tables; the program classifies every cgroup created from
//!    then on right for `g`, since it reads only the tables and the
//!    cgroup's own path;
//! 2. attach the programs, the first time;
//! 3. wait an RCU grace period: every program run that read the tables
//!    before step 1 has ended, its entry written and its event sent;
//! 4. list the hierarchy and write each cgroup's entry, for both
//!    generations, as the program would; then do the same for the cgroups
//!    in the events (created before step 3 but not yet visible to the
//!    listing: `kernfs_activate()` follows the tracepoint). Should events
//!    have been lost meanwhile (a full ring), the hierarchy is listed once
//!    more, which finds those cgroups visible by then.
//!
//! A reload to a policy without cgroup rules stops after step 1: its
//! generation runs without `CGROUP_RULES`, under which no program and no
//! `status` reads a classification, so it waits for no grace period and
//! lists nothing (about 10 ms of a reload).
//!
//! Only then is `g` put in force (`policy_maps.rs`). Both generations are
//! written, not only `g`: the one in force gets the value it has already
//! (the two matchers agree: `tables.rs`), and an entry that could not be
//! stored before (a full map, a creator past its share) may fit now.
//!
//! Between reloads the run loop reads the events in bounded slices
//! (`events.rs`): a cgroup costs one name in the tree (`tree.rs`), never a
//! walk of the hierarchy; a cgroup the program could not store waits for
//! room (`room.rs`) and is classified as soon as a removal frees some;
//! lost events make the agent list the hierarchy again off its loop
//! (`rescan.rs`). The kernel classifies on its own meanwhile: what the
//! agent misses is only names for records and cgroups to retry.
//!
//! [`prepare`]: Classifier::prepare

mod entry;
mod events;
pub mod offsets;
mod rescan;
mod room;
mod scan;
pub(crate) mod tables;
mod tree;

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, links::FdLink},
};
use imds_guard_common::{
    self as common, CgroupLimits, ComponentKey, GENERATIONS, MAX_CGROUPS, cgroup_stat,
};

use self::{
    entry::Outcome,
    room::{Creator, Pending, Room},
    tables::{LpmEntry, Tables},
    tree::Tree,
};
pub use self::{
    events::{Drained, EVENTS_PER_DRAIN},
    rescan::{RescanJob, RescanReport, Rescanned},
};
use super::{
    batch, cgroup,
    cgroup::CgroupError,
    maps::{self, MapError, descriptor},
    pins::{PinError, Pins},
    programs,
    sys::{self, GraceError},
};
use crate::policy::{
    Policy,
    cgroups::{CgroupRule, Dropped, Pods},
};

/// Something the classifier could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Grace(#[from] GraceError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot list the cgroups below {path}")]
    Scan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("cannot attach program {name} to the tracepoint {tracepoint}")]
    Tracepoint {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// The key of an LPM trie entry as `bpf(2)` takes it.
#[repr(C)]
#[derive(Clone, Copy)]
struct LpmKey {
    prefix_len: u32,
    data: ComponentKey,
}
// SAFETY: plain old data, `#[repr(C)]`, no padding (a u32 then bytes).
unsafe impl aya::Pod for LpmKey {}
const _: () = assert!(size_of::<LpmKey>() == 4 + size_of::<ComponentKey>());

/// The environment variable that lowers the classification map's size, for
/// tests that fill it (`IMDS_GUARD_TEST_MAX_CGROUPS=N`, at least 64, at
/// most the default [`MAX_CGROUPS`]); the shares follow
/// ([`CgroupLimits::for_capacity`]).
pub const MAX_CGROUPS_ENV: &str = "IMDS_GUARD_TEST_MAX_CGROUPS";

/// How many entries the classification map is made with.
pub(crate) fn capacity() -> u32 {
    std::env::var(MAX_CGROUPS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(MAX_CGROUPS, |n| n.clamp(64, MAX_CGROUPS))
}

/// The classification maps, the programs' links and what the agent knows
/// of the cgroups.
pub(crate) struct Classifier {
    class: OwnedFd,
    prefixes: OwnedFd,
    suffixes: OwnedFd,
    lengths: OwnedFd,
    patterns: OwnedFd,
    events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    /// The cgroup2 mount point.
    root: PathBuf,
    /// The classification map's size.
    capacity: u32,
    /// What each generation's tables hold (`None`: nothing written yet).
    written: [Option<Tables>; 2],
    /// The patterns of each generation, as the tables hold them.
    rules: [Vec<CgroupRule>; 2],
    /// The programs' links, until pinned (without pins, for the handle's
    /// life).
    links: Vec<(&'static str, FdLink)>,
    attached: bool,
    grace: sys::GracePeriod,
    /// The pods present, for `pods` rules.
    pods: Pods,
    /// Pods whose patterns did not fit at the last prepare.
    dropped: Dropped,
    /// The hierarchy's names, from listings and events (bounded).
    tree: Tree,
    /// The agent's charges.
    room: Room,
    /// Cgroups not stored, until there is room.
    pending: Pending,
    /// What happened since a rescan began, replayed over its listing.
    since: Option<rescan::Since>,
    /// A removal freed room since the cgroups waiting were last tried (or
    /// a round stopped at its bound).
    retry_due: bool,
    /// The programs' lost-events count last seen.
    lost_seen: u64,
    /// Entries the agent added and removed itself (the programs count
    /// theirs in the stats).
    added: u64,
    removed: u64,
}

/// The classification map's fill, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupFill {
    /// Entries held.
    pub entries: u64,
    /// The map's size.
    pub capacity: u32,
    /// Each creator's share, and all creators' but root's.
    pub quota: u32,
    pub shared: u32,
    /// Cgroups waiting for room.
    pub pending: u64,
    /// Since the programs were loaded: cgroups refused an entry by why,
    /// and events lost.
    pub full: u64,
    pub over_quota: u64,
    pub unclassified: u64,
    pub events_lost: u64,
}

impl Classifier {
    /// The maps of `ebpf` (its event ring taken), nothing written; the
    /// classification map holds `capacity` entries.
    pub(crate) fn new(ebpf: &mut Ebpf, capacity: u32) -> Result<Self, ClassifyError> {
        let fd = |name| descriptor(ebpf, name);
        let class = fd(common::MAP_CGROUP_CLASS)?;
        let prefixes = fd(common::MAP_CGROUP_PREFIXES)?;
        let suffixes = fd(common::MAP_CGROUP_SUFFIXES)?;
        let lengths = fd(common::MAP_CGROUP_LENGTHS)?;
        let patterns = fd(common::MAP_CGROUP_PATTERNS)?;
        let room = Room::new(
            fd(common::MAP_CGROUP_CHARGES)?,
            fd(common::MAP_CGROUP_AGENT_CHARGES)?,
            CgroupLimits::for_capacity(capacity),
        );
        let stats = MapData::from_fd(fd(common::MAP_CGROUP_STATS)?)
            .and_then(|data| PerCpuArray::try_from(Map::PerCpuArray(data)))
            .map_err(maps::access(common::MAP_CGROUP_STATS))?;
        let ring = ebpf
            .take_map(common::MAP_CGROUP_EVENTS)
            .ok_or(MapError::Missing(common::MAP_CGROUP_EVENTS))?;
        let events = RingBuf::try_from(ring).map_err(maps::access(common::MAP_CGROUP_EVENTS))?;
        Ok(Self {
            class,
            prefixes,
            suffixes,
            lengths,
            patterns,
            events,
            stats,
            root: cgroup::cgroup2_root()?,
            capacity,
            written: [None, None],
            rules: [Vec::new(), Vec::new()],
            links: Vec::new(),
            attached: false,
            grace: sys::GracePeriod::new()?,
            pods: Pods::new(),
            dropped: Dropped::default(),
            tree: Tree::default(),
            room,
            pending: Pending::default(),
            since: None,
            retry_due: false,
            lost_seen: 0,
            added: 0,
            removed: 0,
        })
    }

    /// The pods present from now on (the next prepare writes their
    /// patterns).
    pub(crate) fn set_pods(&mut self, pods: Pods) {
        self.pods = pods;
    }

    /// Pods whose patterns did not fit at the last prepare.
    pub(crate) fn dropped(&self) -> &Dropped {
        &self.dropped
    }

    /// The pod (of those present at the last prepare) whose cgroup `path`
    /// is in.
    pub(crate) fn pod_of(&self, path: &[u8]) -> Option<&crate::policy::cgroups::PodName> {
        crate::policy::cgroups::pods::pod_of(path, &self.pods)
    }

    /// The path of cgroup `id`, if the agent knows it.
    pub(crate) fn path_of(&self, id: u64) -> Option<Vec<u8>> {
        self.tree.path(id)
    }

    /// Puts `policy`'s patterns (with the pods present) in `generation`'s
    /// tables and classifies every cgroup (see the module's doc). No
    /// program may still read `generation` of the classification map.
    pub(crate) fn prepare(
        &mut self,
        ebpf: &mut Ebpf,
        generation: u32,
        policy: &Policy,
    ) -> Result<(), ClassifyError> {
        let (rules, dropped) = policy.cgroups.patterns(&self.pods);
        self.dropped = dropped;
        let slot = (generation % GENERATIONS) as usize;
        self.clear_tables(slot)?;
        let tables = tables::build(generation, &rules);
        self.write_tables(generation, &tables)?;
        self.written[slot] = Some(tables);
        self.rules[slot] = rules;
        if !self.attached {
            self.attach(ebpf)?;
        } else if policy.cgroups.is_empty() {
            // A reload to a policy without cgroup rules: its generation
            // runs without `CGROUP_RULES`, so no program reads its
            // entries (`cgroup_rule` in decide.rs looks nothing up) and
            // `status --rules` shows none: neither the grace period nor
            // the listing is owed to it, only its (empty) tables, which
            // the programs classify new cgroups by. The generation in
            // force keeps its entries as they are; the next policy with
            // cgroup rules lists the hierarchy again, for both.
            return Ok(());
        }
        self.grace.wait()?;
        self.classify_all()
    }

    /// Attaches the raw tracepoint programs of [`programs::TABLE`] (loaded
    /// already).
    fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), ClassifyError> {
        for (row, tracepoint) in programs::tracepoints() {
            let name = row.name;
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(ClassifyError::MissingProgram(name))?;
            let attach_err = |source| ClassifyError::Tracepoint {
                name,
                tracepoint,
                source,
            };
            let id = program.attach(tracepoint).map_err(attach_err)?;
            let link: FdLink = program.take_link(id).map_err(attach_err)?.into();
            self.links.push((name, link));
        }
        self.attached = true;
        Ok(())
    }

    /// Pins the programs' links in `pins`, replacing an earlier agent's:
    /// theirs detach once nothing else holds them, and ours keep
    /// classifying after we exit. Only once the guard's programs are ours,
    /// which read our map.
    pub(crate) fn pin(&mut self, pins: &Pins) -> Result<(), PinError> {
        for (name, link) in self.links.drain(..) {
            let path = pins.link_path(name);
            let fresh = pins.dir().join(format!("new_link_{name}"));
            let _ = std::fs::remove_file(&fresh);
            link.pin(&fresh).map(drop).map_err(|e| {
                PinError::new(
                    "pin the link at",
                    &fresh,
                    std::io::Error::other(e.to_string()),
                )
            })?;
            std::fs::rename(&fresh, &path)
                .map_err(|e| PinError::new("rename the pinned link to", &path, e))?;
        }
        Ok(())
    }

    /// Removes what an earlier prepare wrote into the tables of `slot`.
    fn clear_tables(&mut self, slot: usize) -> Result<(), MapError> {
        let Some(old) = self.written[slot].take() else {
            return Ok(());
        };
        for (fd, name, entries) in [
            (&self.prefixes, common::MAP_CGROUP_PREFIXES, &old.prefixes),
            (&self.suffixes, common::MAP_CGROUP_SUFFIXES, &old.suffixes),
        ] {
            for e in entries {
                match sys::map_delete(fd.as_fd(), &lpm_key(e)) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(source) => return Err(MapError::Write { name, source }),
                }
            }
        }
        let (indexes, zeros): (Vec<u32>, Vec<u64>) =
            old.lengths.iter().map(|&(i, _)| (i, 0)).unzip();
        update(&self.lengths, common::MAP_CGROUP_LENGTHS, &indexes, &zeros)
    }

    fn write_tables(&self, generation: u32, tables: &Tables) -> Result<(), MapError> {
        for (fd, name, entries) in [
            (
                &self.prefixes,
                common::MAP_CGROUP_PREFIXES,
                &tables.prefixes,
            ),
            (
                &self.suffixes,
                common::MAP_CGROUP_SUFFIXES,
                &tables.suffixes,
            ),
        ] {
            for e in entries {
                sys::map_update(fd.as_fd(), &lpm_key(e), &e.mask).map_err(maps::write(name))?;
            }
        }
        let (indexes, masks): (Vec<u32>, Vec<u64>) = tables.lengths.iter().copied().unzip();
        update(&self.lengths, common::MAP_CGROUP_LENGTHS, &indexes, &masks)?;
        sys::map_update(self.patterns.as_fd(), &generation, &tables.patterns)
            .map_err(maps::write(common::MAP_CGROUP_PATTERNS))
    }

    /// Writes the entry of every cgroup there is, and of every cgroup the
    /// programs reported meanwhile; whatever waited for room is tried
    /// again with them.
    ///
    /// A cgroup costs its share of the listing and, when it has an entry,
    /// two system calls; one waiting for room, whose creator has none,
    /// costs nothing more: a user's cgroups past its share cannot make a
    /// reload much longer.
    fn classify_all(&mut self) -> Result<(), ClassifyError> {
        let listed = scan::list(&self.root).map_err(|source| ClassifyError::Scan {
            path: self.root.clone(),
            source,
        })?;
        self.tree = Tree::of(&listed);
        let waited = std::mem::take(&mut self.pending);
        // Creators found without room: their other cgroups are not tried.
        let mut full = HashSet::new();
        for found in listed {
            let Some(rules) = self.rules_of(&found.path) else {
                continue;
            };
            // A creator the program named is charged rather than the owner.
            let named = waited.creator_of(found.id);
            let creator = named.unwrap_or_else(|| Creator::owner(found.uid));
            // One waiting is known to have no entry.
            let rewritten = match waited.contains(found.id) {
                true => None,
                false => self.rewrite(found.id, rules)?,
            };
            let outcome = match rewritten {
                Some(outcome) => outcome,
                None if full.contains(&creator) => Outcome::OverQuota,
                None => self.store(found.id, &found.path, rules, creator)?,
            };
            match outcome {
                Outcome::OverQuota => {
                    full.insert(creator);
                    self.pending.add(found.id, Some(creator));
                }
                Outcome::Full => self.pending.add(found.id, Some(creator)),
                Outcome::Written | Outcome::Gone | Outcome::TooDeep => {}
            }
        }
        Ok(self.drain_classifying()?)
    }

    /// The programs' counter `index`, summed over CPUs.
    fn stat(&self, index: u32) -> Result<u64, MapError> {
        let values = self
            .stats
            .get(&index, 0)
            .map_err(maps::access(common::MAP_CGROUP_STATS))?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }

    /// How full the classification map is, and what was refused.
    pub(crate) fn fill(&self) -> Result<CgroupFill, MapError> {
        let limits = self.room.limits();
        let stat = |index| self.stat(index);
        let programs = stat(cgroup_stat::ADDED)?.wrapping_sub(stat(cgroup_stat::REMOVED)?);
        Ok(CgroupFill {
            entries: programs
                .wrapping_add(self.added)
                .wrapping_sub(self.removed)
                .min(u64::from(self.capacity)),
            capacity: self.capacity,
            quota: limits.quota,
            shared: limits.shared,
            pending: self.pending.len() as u64,
            full: stat(cgroup_stat::NOT_STORED)?,
            over_quota: stat(cgroup_stat::OVER_QUOTA)?,
            unclassified: stat(cgroup_stat::UNCLASSIFIED)?,
            events_lost: stat(cgroup_stat::EVENTS_LOST)?,
        })
    }
}

fn lpm_key(e: &LpmEntry) -> LpmKey {
    LpmKey {
        prefix_len: e.prefix_len,
        data: e.key,
    }
}

/// Writes `keys` and `values` into the array `name`, in batches.
fn update(fd: &OwnedFd, name: &'static str, keys: &[u32], values: &[u64]) -> Result<(), MapError> {
    if keys.is_empty() {
        return Ok(());
    }
    batch::update(fd.as_fd(), keys, values).map_err(maps::write(name))
}
