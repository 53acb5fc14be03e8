//! Room in the classification map for the cgroups the agent writes itself
//! (those that existed before it, and those the program could not store),
//! held to the same shares as the program's (`imds-guard-ebpf/src/charge.rs`):
//! a creator other than root on the host holds at most
//! [`CgroupLimits::quota`] entries, all of them together at most
//! [`CgroupLimits::shared`].
//!
//! The agent counts its own charges in a map of its own
//! ([`common::MAP_CGROUP_AGENT_CHARGES`]), which the programs read beside
//! theirs: a count both wrote would lose increments to the race between a
//! program and a system call. It takes a charge back when the cgroup goes.
//!
//! [`Pending`] holds the cgroups not stored, by creator, until there is
//! room: a creator without room costs one look at its count per round,
//! whatever it has waiting, and holds at most [`PER_CREATOR`] places, so
//! that one user's refusals cannot crowd out root's.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::fd::{AsFd as _, OwnedFd},
};

use imds_guard_common::{self as common, CHARGE_TOTAL, CgroupEvent, CgroupLimits, charged_by};

use super::super::{maps::MapError, sys};

/// Cgroups of one creator waiting for room at most; past it, the rest are
/// found by a rescan once that creator's queue is through.
pub(crate) const PER_CREATOR: usize = 1 << 13;
/// Cgroups waiting for room at most, whoever made them.
pub(crate) const MAX_PENDING: usize = 1 << 17;

/// Who a cgroup is charged to, as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Creator {
    pub(crate) uid: u32,
    /// Root on the host: charged nothing.
    pub(crate) exempt: bool,
}

impl Creator {
    /// The owner of a cgroup's directory, for one the agent did not see
    /// made: its creator's fsuid; root's are root's.
    pub(crate) fn owner(uid: u32) -> Self {
        Self {
            uid,
            exempt: uid == 0,
        }
    }

    /// The creator the program named in `event`; `None` when it could not
    /// read one.
    pub(crate) fn of(event: &CgroupEvent) -> Option<Self> {
        match (event.charged, event.creator) {
            (_, CHARGE_TOTAL) => None,
            (charged_by::NONE, uid) => Some(Self { uid, exempt: true }),
            (_, uid) => Some(Self { uid, exempt: false }),
        }
    }
}

/// The agent's charges, and the program's counts it reads.
pub(crate) struct Room {
    /// The programs' counts ([`common::MAP_CGROUP_CHARGES`]), read only.
    programs: OwnedFd,
    /// Ours ([`common::MAP_CGROUP_AGENT_CHARGES`]).
    agent: OwnedFd,
    limits: CgroupLimits,
    /// What `agent` holds, by creator and at [`CHARGE_TOTAL`].
    counts: HashMap<u32, u32>,
    /// The cgroups we charged, to their creators.
    charged: HashMap<u64, u32>,
}

impl Room {
    pub(crate) fn new(programs: OwnedFd, agent: OwnedFd, limits: CgroupLimits) -> Self {
        Self {
            programs,
            agent,
            limits,
            counts: HashMap::new(),
            charged: HashMap::new(),
        }
    }

    pub(crate) fn limits(&self) -> CgroupLimits {
        self.limits
    }

    /// Whether `creator` may hold one more entry.
    pub(crate) fn has_room(&self, creator: Creator) -> Result<bool, MapError> {
        if creator.exempt {
            return Ok(true);
        }
        let count = |key: u32| -> Result<u32, MapError> {
            let theirs = match sys::map_lookup::<u32, u32>(self.programs.as_fd(), &key) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => 0,
                Err(source) => {
                    return Err(MapError::Write {
                        name: common::MAP_CGROUP_CHARGES,
                        source,
                    });
                }
            };
            Ok(theirs.saturating_add(self.counts.get(&key).copied().unwrap_or(0)))
        };
        Ok(count(creator.uid)? < self.limits.quota && count(CHARGE_TOTAL)? < self.limits.shared)
    }

    /// Charges cgroup `id`'s entry to `uid`.
    pub(crate) fn charge(&mut self, id: u64, uid: u32) -> Result<(), MapError> {
        if self.charged.insert(id, uid).is_some() {
            return Ok(());
        }
        self.add(uid, 1)?;
        self.add(CHARGE_TOTAL, 1)
    }

    /// Takes back the charge of cgroup `id`, if we charged it.
    pub(crate) fn uncharge(&mut self, id: u64) -> Result<(), MapError> {
        let Some(uid) = self.charged.remove(&id) else {
            return Ok(());
        };
        self.add(uid, -1)?;
        self.add(CHARGE_TOTAL, -1)
    }

    /// The cgroups we charged.
    pub(crate) fn charged(&self) -> Vec<u64> {
        self.charged.keys().copied().collect()
    }

    fn add(&mut self, key: u32, by: i32) -> Result<(), MapError> {
        let n = self
            .counts
            .get(&key)
            .copied()
            .unwrap_or(0)
            .saturating_add_signed(by);
        let name = common::MAP_CGROUP_AGENT_CHARGES;
        if n == 0 && key != CHARGE_TOTAL {
            self.counts.remove(&key);
            return match sys::map_delete(self.agent.as_fd(), &key) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                Err(source) => Err(MapError::Write { name, source }),
            };
        }
        self.counts.insert(key, n);
        sys::map_update(self.agent.as_fd(), &key, &n)
            .map_err(|source| MapError::Write { name, source })
    }
}

/// The cgroups waiting for room, by creator (`None`: the program could not
/// read it; the directory's owner is asked when it is retried).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    queues: HashMap<Option<Creator>, VecDeque<u64>>,
    /// Every id waiting, to its queue: a removed cgroup leaves its queue
    /// lazily.
    waiting: HashMap<u64, Option<Creator>>,
    /// Ids waiting, by creator.
    counts: HashMap<Option<Creator>, usize>,
    /// Ids in the queues, stale ones included: past twice the bound the
    /// queues are swept, so that cgroups made and removed over and over
    /// cannot grow them.
    queued: usize,
    /// Creators some of whose cgroups could not be held.
    overflowed: HashSet<Option<Creator>>,
    /// A creator's queue was through while some of its cgroups had not
    /// been held: a rescan finds them.
    pub(crate) rescan: bool,
}

impl Pending {
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.waiting.contains_key(&id)
    }

    /// The creator the program named for cgroup `id`, if it waits.
    pub(crate) fn creator_of(&self, id: u64) -> Option<Creator> {
        self.waiting.get(&id).copied().flatten()
    }

    /// Cgroup `id` waits for room for `creator`.
    pub(crate) fn add(&mut self, id: u64, creator: Option<Creator>) {
        if self.waiting.contains_key(&id) {
            return;
        }
        let count = self.counts.entry(creator).or_default();
        if *count >= PER_CREATOR || self.waiting.len() >= MAX_PENDING {
            self.overflowed.insert(creator);
            return;
        }
        *count += 1;
        self.waiting.insert(id, creator);
        self.queues.entry(creator).or_default().push_back(id);
        self.queued += 1;
        if self.queued > 2 * MAX_PENDING {
            self.sweep();
        }
    }

    /// Drops the ids that no longer wait from the queues, in order.
    fn sweep(&mut self) {
        let waiting = &self.waiting;
        for (creator, queue) in &mut self.queues {
            queue.retain(|id| waiting.get(id) == Some(creator));
        }
        self.queues.retain(|_, queue| !queue.is_empty());
        self.queued = self.queues.values().map(VecDeque::len).sum();
    }

    /// Cgroup `id` no longer waits (it is gone, or stored).
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(creator) = self.waiting.remove(&id) {
            self.uncount(creator);
        }
    }

    fn uncount(&mut self, creator: Option<Creator>) {
        if let Some(n) = self.counts.get_mut(&creator) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&creator);
            }
        }
    }

    /// Whoever has cgroups waiting: root first, then by uid.
    pub(crate) fn creators(&self) -> Vec<Option<Creator>> {
        let mut creators: Vec<_> = self.queues.keys().copied().collect();
        creators.sort_by_key(|c| match c {
            Some(c) => (!c.exempt, c.uid),
            None => (true, u32::MAX),
        });
        creators
    }

    /// The next cgroup of `creator` still waiting, taken off its queue.
    pub(crate) fn next(&mut self, creator: Option<Creator>) -> Option<u64> {
        let Some(queue) = self.queues.get_mut(&creator) else {
            if self.overflowed.remove(&creator) {
                self.rescan = true;
            }
            return None;
        };
        let found = loop {
            let Some(id) = queue.pop_front() else {
                break None;
            };
            self.queued -= 1;
            if self.waiting.get(&id) == Some(&creator) {
                break Some(id);
            }
        };
        if queue.is_empty() {
            self.queues.remove(&creator);
        }
        if found.is_none() && self.overflowed.remove(&creator) {
            self.rescan = true;
        }
        found
    }

    /// Puts `id` back at the head of `creator`'s queue (no room after all).
    pub(crate) fn put_back(&mut self, id: u64, creator: Option<Creator>) {
        self.queues.entry(creator).or_default().push_front(id);
        self.queued += 1;
    }

    /// Keeps only the cgroups `keep` says are still there; forgets which
    /// creators overflowed (a rescan found their cgroups).
    pub(crate) fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.waiting.retain(|&id, _| keep(id));
        self.counts.clear();
        for creator in self.waiting.values() {
            *self.counts.entry(*creator).or_default() += 1;
        }
        self.overflowed.clear();
        self.rescan = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32) -> Option<Creator> {
        Some(Creator::owner(uid))
    }

    #[test]
    fn root_waits_first_and_each_creator_in_order() {
        let mut p = Pending::default();
        p.add(10, user(1000));
        p.add(11, user(1000));
        p.add(20, user(0));
        p.add(30, None);
        p.add(10, user(1000));
        assert_eq!(p.len(), 4, "an id waits once");
        assert_eq!(p.creators(), vec![user(0), user(1000), None]);
        assert_eq!(p.next(user(1000)), Some(10));
        p.put_back(10, user(1000));
        assert_eq!(p.next(user(1000)), Some(10));
        p.remove(11);
        assert_eq!(p.next(user(1000)), None, "11 left its queue");
        assert_eq!(p.creators(), vec![user(0), None]);
    }

    #[test]
    fn cgroups_made_and_removed_over_and_over_do_not_grow_the_queues() {
        let mut p = Pending::default();
        p.add(1, user(0));
        for id in 2..5 * MAX_PENDING as u64 {
            p.add(id, user(1000));
            p.remove(id);
        }
        assert!(p.queued <= 2 * MAX_PENDING, "{}", p.queued);
        assert_eq!(p.next(user(0)), Some(1));
        assert_eq!(p.next(user(1000)), None);
    }

    #[test]
    fn one_creator_cannot_crowd_out_another_and_a_rescan_follows_its_overflow() {
        let mut p = Pending::default();
        for id in 0..PER_CREATOR as u64 + 10 {
            p.add(id, user(1000));
        }
        assert_eq!(p.len(), PER_CREATOR, "its share of the places");
        p.add(1 << 40, user(0));
        assert_eq!(p.creators()[0], user(0), "root still waits, first");
        assert_eq!(p.next(user(0)), Some(1 << 40));
        p.remove(1 << 40);
        assert!(!p.rescan, "root did not overflow");
        while let Some(id) = p.next(user(1000)) {
            p.remove(id);
        }
        assert!(p.rescan, "the user's queue is through: find the rest");
        assert_eq!(p.len(), 0);
        p.retain(|_| true);
        assert!(!p.rescan);
    }

    #[test]
    fn the_program_names_the_creator_or_says_it_could_not() {
        let mut e = CgroupEvent {
            id: 1,
            parent: 0,
            kind: 1,
            stored: 3,
            charged: charged_by::PROGRAM,
            _pad: 0,
            creator: 1000,
            name_len: 0,
            _pad2: 0,
            name: [0; common::MAX_NAME + 1],
        };
        assert_eq!(
            Creator::of(&e),
            Some(Creator {
                uid: 1000,
                exempt: false
            })
        );
        e.charged = charged_by::NONE;
        e.creator = 0;
        assert_eq!(Creator::of(&e), Some(Creator::owner(0)));
        e.charged = charged_by::PROGRAM;
        assert_eq!(
            Creator::of(&e),
            Some(Creator {
                uid: 0,
                exempt: false
            }),
            "root in a user namespace is charged"
        );
        e.creator = CHARGE_TOTAL;
        assert_eq!(Creator::of(&e), None);
    }
}
