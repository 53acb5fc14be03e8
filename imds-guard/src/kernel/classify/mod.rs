//! Cgroups classified by path, in the kernel, as they are created
//! (`imds-guard-ebpf/src/classify.rs`): the agent writes the pattern
//! tables the `cgroup_mkdir` program reads, the classification of every
//! cgroup that existed before, and keeps the paths the programs report.
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
//!    listing: `kernfs_activate()` follows the tracepoint).
//!
//! Only then is `g` put in force (`policy_maps.rs`). Both generations are
//! written, not only `g`: the one in force gets the value it has already
//! (the two matchers agree: `tables.rs`), and an entry that could not be
//! stored before (a full map) may fit now.
//!
//! [`prepare`]: Classifier::prepare

pub mod offsets;
mod scan;
pub(crate) mod tables;

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{ProgramError, RawTracePoint, links::FdLink},
};
use imds_guard_common::{
    self as common, CgroupEvent, ComponentKey, EVENT_PATH_LEN, GENERATIONS, IdRule, IdRules,
    MAX_CGROUPS, action, cgroup_event,
};

use self::tables::{LpmEntry, Tables};
use super::{
    batch, cgroup,
    cgroup::CgroupError,
    maps::{self, MapError, descriptor},
    pins::{PinError, Pins},
    programs,
    records::entry_number,
    sys::{self, GraceError},
};
use crate::policy::{
    Action, Policy,
    cgroups::{CgroupClass, CgroupRule, CgroupRules, Dropped, Pods},
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

/// The classification maps, the programs' links and what the agent knows
/// of the cgroups.
pub(crate) struct Classifier {
    class: OwnedFd,
    prefixes: OwnedFd,
    suffixes: OwnedFd,
    lengths: OwnedFd,
    patterns: OwnedFd,
    events: RingBuf<MapData>,
    /// The cgroup2 mount point.
    root: PathBuf,
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
    /// Paths by cgroup id, from listings and events (bounded).
    paths: HashMap<u64, Vec<u8>>,
}

impl Classifier {
    /// The maps of `ebpf` (its event ring taken), nothing written.
    pub(crate) fn new(ebpf: &mut Ebpf) -> Result<Self, ClassifyError> {
        let fd = |name| descriptor(ebpf, name);
        let class = fd(common::MAP_CGROUP_CLASS)?;
        let prefixes = fd(common::MAP_CGROUP_PREFIXES)?;
        let suffixes = fd(common::MAP_CGROUP_SUFFIXES)?;
        let lengths = fd(common::MAP_CGROUP_LENGTHS)?;
        let patterns = fd(common::MAP_CGROUP_PATTERNS)?;
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
            root: cgroup::cgroup2_root()?,
            written: [None, None],
            rules: [Vec::new(), Vec::new()],
            links: Vec::new(),
            attached: false,
            grace: sys::GracePeriod::new()?,
            pods: Pods::new(),
            dropped: Dropped::default(),
            paths: HashMap::new(),
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

    /// The path of cgroup `id`, if the agent has seen it.
    pub(crate) fn path_of(&self, id: u64) -> Option<&[u8]> {
        self.paths.get(&id).map(Vec::as_slice)
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
    /// programs reported meanwhile.
    fn classify_all(&mut self) -> Result<(), ClassifyError> {
        let listed = scan::list(&self.root).map_err(|source| ClassifyError::Scan {
            path: self.root.clone(),
            source,
        })?;
        self.paths.clear();
        for found in listed {
            self.classify(found.id, &found.path)?;
            self.remember(found.id, found.path);
        }
        Ok(self.drain(true)?)
    }

    /// Writes the entry of cgroup `id` at `path`, as the program would,
    /// unless it is gone (then its entry goes too).
    fn classify(&mut self, id: u64, path: &[u8]) -> Result<(), MapError> {
        let class = |rules: &[CgroupRule]| stored_rule(rules, path);
        let (Some(first), Some(second)) = (class(&self.rules[0]), class(&self.rules[1])) else {
            // Too deep for the program to classify: no entry there, none
            // here.
            return Ok(());
        };
        let value = IdRules {
            by_generation: [first, second],
        };
        let written = sys::map_update(self.class.as_fd(), &id, &value);
        // Removed meanwhile (before the write: its entry must go again;
        // after it, the program deletes it).
        if !scan::still(&self.root, path, id) {
            return self.forget(id);
        }
        match written {
            Ok(()) => Ok(()),
            // The map is full: the cgroup stays unclassified (fail closed),
            // which the program counts as it happens.
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => Ok(()),
            Err(source) => Err(MapError::Write {
                name: common::MAP_CGROUP_CLASS,
                source,
            }),
        }
    }

    fn forget(&mut self, id: u64) -> Result<(), MapError> {
        self.paths.remove(&id);
        match sys::map_delete(self.class.as_fd(), &id) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(MapError::Write {
                name: common::MAP_CGROUP_CLASS,
                source,
            }),
        }
    }

    fn remember(&mut self, id: u64, path: Vec<u8>) {
        if self.paths.len() < MAX_CGROUPS as usize {
            self.paths.insert(id, path);
        }
    }

    /// Reads what the programs reported: the paths of new cgroups, and
    /// with `classify`, their entries written again (during a prepare).
    pub(crate) fn drain(&mut self, classify: bool) -> Result<(), MapError> {
        let mut reported = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(event) = decode(&item) {
                reported.push(event);
            }
        }
        for (kind, id, path) in reported {
            match kind {
                cgroup_event::MKDIR => {
                    let path = match path {
                        Some(path) => path,
                        // Cut: look it up by its id.
                        None => match cgroup::find_by_id(&self.root, id, MAX_CGROUPS as usize) {
                            Some(dir) => relative(&self.root, &dir),
                            None => continue,
                        },
                    };
                    if classify {
                        self.classify(id, &path)?;
                    }
                    if scan::still(&self.root, &path, id) {
                        self.remember(id, path);
                    }
                }
                cgroup_event::RMDIR => {
                    self.paths.remove(&id);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A [`CgroupEvent`] from the ring: its kind, id and path (`None` when the
/// kernel cut it).
fn decode(bytes: &[u8]) -> Option<(u8, u64, Option<Vec<u8>>)> {
    if bytes.len() < CgroupEvent::HEADER {
        return None;
    }
    let id = u64::from_ne_bytes(bytes[0..8].try_into().ok()?);
    let kind = bytes[8];
    let len = u32::from_ne_bytes(bytes[12..16].try_into().ok()?) as usize;
    let path = bytes.get(CgroupEvent::HEADER..CgroupEvent::HEADER + len)?;
    let cut = len >= EVENT_PATH_LEN - 1;
    Some((kind, id, (!cut).then(|| path.to_vec())))
}

/// `dir` as a path from the cgroup2 root `root`.
fn relative(root: &Path, dir: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    let rest = dir.strip_prefix(root).unwrap_or(dir);
    let mut path = b"/".to_vec();
    path.extend_from_slice(rest.as_os_str().as_bytes());
    path
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

/// The entry the kernel stores for the cgroup at `path` under `rules`,
/// as the program's classification would write it; `None` when the path
/// cannot be classified (too deep).
fn stored_rule(rules: &[CgroupRule], path: &[u8]) -> Option<IdRule> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_with_their_path_unless_it_was_cut() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&42u64.to_ne_bytes());
        bytes.extend_from_slice(&[cgroup_event::MKDIR, 0, 0, 0]);
        bytes.extend_from_slice(&6u32.to_ne_bytes());
        bytes.extend_from_slice(b"/a/b/c");
        assert_eq!(
            decode(&bytes),
            Some((cgroup_event::MKDIR, 42, Some(b"/a/b/c".to_vec())))
        );
        assert_eq!(decode(&bytes[..10]), None, "short");
        assert_eq!(
            decode(&bytes[..18]),
            None,
            "the path is shorter than it says"
        );
        let mut cut = bytes[..12].to_vec();
        cut.extend_from_slice(&(EVENT_PATH_LEN as u32 - 1).to_ne_bytes());
        cut.extend(std::iter::repeat_n(b'a', EVENT_PATH_LEN - 1));
        assert_eq!(decode(&cut), Some((cgroup_event::MKDIR, 42, None)));
    }

    #[test]
    fn a_directory_is_named_from_the_root() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(relative(root, Path::new("/sys/fs/cgroup/a/b")), b"/a/b");
        assert_eq!(relative(root, root), b"/");
    }
}
