//! Listing the hierarchy again after the programs lost events (a full
//! ring): the listing, and the look-up of which cgroups have no entry, run
//! on a thread of their own ([`RescanJob::run`], which needs only the
//! mount point and a descriptor of the map), while the run loop goes on
//! reading events; what happened meanwhile is kept ([`Since`]) and
//! replayed over the listing when it comes back
//! ([`Classifier::rescanned`]).
//!
//! The kernel classified those cgroups on its own: a rescan restores the
//! agent's names for records, takes back the charges of cgroups whose
//! removal was lost, and finds cgroups without an entry whose event was
//! lost, to store when there is room.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use imds_guard_common::{self as common, CgroupEntry};

use super::{Classifier, ClassifyError, room::Creator, scan, tree::Tree};
use crate::kernel::{maps::MapError, sys};

/// Changes kept while a rescan runs at most: past it, another rescan
/// follows.
const MAX_SINCE: usize = 1 << 16;

/// One change to the tree, as an event told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Mkdir {
        id: u64,
        parent: u64,
        name: Box<[u8]>,
    },
    Rmdir(u64),
}

/// What happened since a rescan began.
#[derive(Debug, Default)]
pub(super) struct Since {
    changes: Vec<Change>,
    overflowed: bool,
}

impl Since {
    pub(super) fn push(&mut self, change: Change) {
        if self.changes.len() < MAX_SINCE {
            self.changes.push(change);
        } else {
            self.overflowed = true;
        }
    }
}

/// A rescan to run off the run loop.
#[derive(Debug)]
pub struct RescanJob {
    root: PathBuf,
    class: OwnedFd,
}

/// What a [`RescanJob`] found.
#[derive(Debug)]
pub struct Rescanned {
    /// The tree listed, and the cgroups without an entry, with their
    /// owners.
    listed: io::Result<(Tree, Vec<(u64, u32)>)>,
    took: Duration,
}

/// What a rescan changed, for its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Cgroups in the tree now.
    pub cgroups: usize,
    /// Cgroups the events had missed, and cgroups gone whose removal they
    /// had missed.
    pub learned: usize,
    pub forgot: usize,
    /// Cgroups without an entry, waiting for room.
    pub waiting: usize,
    /// How long the listing took, off the run loop.
    pub took: Duration,
    /// More happened meanwhile than was kept: rescan again.
    pub again: bool,
}

impl RescanJob {
    /// Lists the hierarchy, and looks each cgroup up in the map. Blocking:
    /// run it off the run loop.
    pub fn run(self) -> Rescanned {
        let started = Instant::now();
        let listed = scan::list(&self.root).map(|found| {
            let missing = found
                .iter()
                .filter(|f| {
                    sys::map_lookup::<u64, CgroupEntry>(self.class.as_fd(), &f.id)
                        .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
                })
                .map(|f| (f.id, f.uid))
                .collect();
            (Tree::of(&found), missing)
        });
        Rescanned {
            listed,
            took: started.elapsed(),
        }
    }
}

impl Classifier {
    /// A rescan to run; from now on, what the events tell is kept for it.
    pub(crate) fn rescan(&mut self) -> Result<RescanJob, MapError> {
        let class = self
            .class
            .try_clone()
            .map_err(crate::kernel::maps::write(common::MAP_CGROUP_CLASS))?;
        self.since = Some(Since::default());
        Ok(RescanJob {
            root: self.root.clone(),
            class,
        })
    }

    /// Puts what a rescan found in place of what the events told, with
    /// what they told since replayed over it.
    pub(crate) fn rescanned(&mut self, done: Rescanned) -> Result<RescanReport, ClassifyError> {
        let since = self.since.take().unwrap_or_default();
        let (mut tree, missing) = done.listed.map_err(|source| ClassifyError::Scan {
            path: self.root.clone(),
            source,
        })?;
        for change in since.changes {
            match change {
                Change::Mkdir { id, parent, name } => {
                    tree.insert(id, parent, &name);
                }
                Change::Rmdir(id) => tree.remove(id),
            }
        }
        let learned = tree.ids().filter(|&id| !self.tree.contains(id)).count();
        let forgot = self.tree.ids().filter(|&id| !tree.contains(id)).count();
        self.tree = tree;
        // Charges of cgroups whose removal was lost.
        for id in self.room.charged() {
            if !self.tree.contains(id) {
                self.room.uncharge(id)?;
            }
        }
        let tree = &self.tree;
        self.pending.retain(|id| tree.contains(id));
        for (id, uid) in missing {
            if self.tree.contains(id) {
                self.pending.add(id, Some(Creator::owner(uid)));
            }
        }
        self.retry_due = true;
        Ok(RescanReport {
            cgroups: self.tree.len(),
            learned,
            forgot,
            waiting: self.pending.len(),
            took: done.took,
            again: since.overflowed,
        })
    }
}
