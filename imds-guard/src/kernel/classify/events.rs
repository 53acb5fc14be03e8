//! The programs' events, read on the run loop in bounded slices: each
//! costs a name in the tree, a removal may free room for the cgroups
//! waiting, and the ring's lost count says when the agent must list the
//! hierarchy again (`rescan.rs`). During a prepare every event the ring
//! holds is read, and its cgroup classified.

use imds_guard_common::{
    CGROUP_EVENTS_BYTE_SIZE, CgroupEvent, MAX_NAME, cgroup_event, cgroup_stat, cgroup_stored,
};

use super::{Classifier, Outcome, rescan::Change, room::Creator, scan};
use crate::kernel::maps::MapError;

/// Events one drain reads at most: a run-loop turn's share (each is a name
/// copied into the tree, about a microsecond).
pub const EVENTS_PER_DRAIN: usize = 4096;
/// Cgroups one drain tries to store at most once room is freed (each a few
/// system calls).
pub const RETRIES_PER_DRAIN: usize = 256;
/// Events the ring holds at most: what a prepare reads at most, so that a
/// flood of new cgroups cannot keep it reading.
const RING_EVENTS: usize = CGROUP_EVENTS_BYTE_SIZE as usize / (CgroupEvent::HEADER + 8);
// Each event takes its header, its ring header (8 bytes) and its name.
const _: () = assert!(RING_EVENTS >= CGROUP_EVENTS_BYTE_SIZE as usize / size_of::<CgroupEvent>());

/// What a drain read, and what it leaves to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// It stopped at its bound: more is waiting.
    pub more: bool,
    /// Events the ring had no room for since the last drain.
    pub lost: u64,
    /// The agent should list the hierarchy again (events lost, or cgroups
    /// waiting for room past what it holds).
    pub rescan: bool,
}

/// A [`CgroupEvent`], decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Event {
    kind: u8,
    id: u64,
    parent: u64,
    stored: u8,
    creator: Option<Creator>,
    name: Vec<u8>,
}

/// A [`CgroupEvent`] from the ring; `None` when it is too short.
pub(super) fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < CgroupEvent::HEADER {
        return None;
    }
    let u64_at = |at: usize| Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let len = (u32_at(24)? as usize).min(MAX_NAME);
    let event = CgroupEvent {
        id: u64_at(0)?,
        parent: u64_at(8)?,
        kind: bytes[16],
        stored: bytes[17],
        charged: bytes[18],
        _pad: 0,
        creator: u32_at(20)?,
        name_len: len as u32,
        _pad2: 0,
        name: [0; MAX_NAME + 1],
    };
    Some(Event {
        kind: event.kind,
        id: event.id,
        parent: event.parent,
        stored: event.stored,
        creator: Creator::of(&event),
        name: bytes
            .get(CgroupEvent::HEADER..CgroupEvent::HEADER + len)?
            .to_vec(),
    })
}

impl Classifier {
    /// Reads at most `limit` events (on the run loop), and tries the
    /// cgroups waiting for room when a removal freed some.
    pub(crate) fn drain(&mut self, limit: usize) -> Result<Drained, MapError> {
        let mut read = 0;
        while read < limit {
            let Some(event) = self.events.next().map(|item| decode(&item)) else {
                break;
            };
            read += 1;
            if let Some(event) = event {
                self.retry_due |= self.apply(&event)?;
            }
        }
        let lost = self.take_lost()?;
        let mut more_retries = false;
        if self.retry_due {
            more_retries = self.retry(RETRIES_PER_DRAIN)?;
            self.retry_due = more_retries;
        }
        Ok(Drained {
            more: read >= limit || more_retries,
            lost,
            rescan: lost > 0 || std::mem::take(&mut self.pending.rescan),
        })
    }

    /// During a prepare: every event in the ring, its cgroup classified.
    pub(super) fn drain_classifying(&mut self) -> Result<(), MapError> {
        for _ in 0..RING_EVENTS {
            let Some(event) = self.events.next().map(|item| decode(&item)) else {
                break;
            };
            let Some(event) = event else {
                continue;
            };
            self.apply(&event)?;
            if event.kind != cgroup_event::MKDIR {
                continue;
            }
            let Some(path) = self.tree.path(event.id) else {
                continue;
            };
            let Some(creator) = event.creator.or_else(|| self.owner(&path)) else {
                continue;
            };
            if let Outcome::OverQuota | Outcome::Full = self.classify(event.id, &path, creator)? {
                self.pending.add(event.id, Some(creator));
            }
        }
        Ok(())
    }

    /// What `event` tells: a cgroup named in the tree, waiting for room,
    /// or gone; whether its going freed room.
    fn apply(&mut self, event: &Event) -> Result<bool, MapError> {
        match event.kind {
            cgroup_event::MKDIR => {
                self.tree.insert(event.id, event.parent, &event.name);
                if let Some(since) = &mut self.since {
                    since.push(Change::Mkdir {
                        id: event.id,
                        parent: event.parent,
                        name: event.name.as_slice().into(),
                    });
                }
                if event.stored != cgroup_stored::STORED {
                    self.pending.add(event.id, event.creator);
                }
                Ok(false)
            }
            cgroup_event::RMDIR => {
                self.tree.remove(event.id);
                if let Some(since) = &mut self.since {
                    since.push(Change::Rmdir(event.id));
                }
                self.pending.remove(event.id);
                self.room.uncharge(event.id)?;
                Ok(event.stored != 0)
            }
            _ => Ok(false),
        }
    }

    /// Tries up to `budget` cgroups waiting for room, root's first, each
    /// creator's only while it has room; whether some are left to try.
    fn retry(&mut self, budget: usize) -> Result<bool, MapError> {
        let mut tried = 0;
        for who in self.pending.creators() {
            while let Some(id) = self.pending.next(who) {
                if tried >= budget {
                    self.pending.put_back(id, who);
                    return Ok(true);
                }
                tried += 1;
                // Unknown (an event lost): the rescan that follows a loss
                // finds it.
                let Some(path) = self.tree.path(id) else {
                    self.pending.remove(id);
                    continue;
                };
                let Some(creator) = who.or_else(|| self.owner(&path)) else {
                    self.pending.remove(id);
                    continue;
                };
                match self.classify(id, &path, creator)? {
                    Outcome::Written | Outcome::Gone | Outcome::TooDeep => self.pending.remove(id),
                    Outcome::OverQuota => {
                        self.pending.put_back(id, who);
                        break;
                    }
                    // Nothing fits until another removal.
                    Outcome::Full => {
                        self.pending.put_back(id, who);
                        return Ok(false);
                    }
                }
            }
        }
        Ok(false)
    }

    /// The owner of the cgroup at `path`, as its creator; `None` when it is
    /// gone.
    fn owner(&self, path: &[u8]) -> Option<Creator> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(scan::join(&self.root, path))
            .ok()
            .map(|m| Creator::owner(m.uid()))
    }

    /// Events the ring had no room for since the last call.
    fn take_lost(&mut self) -> Result<u64, MapError> {
        let now = self.stat(cgroup_stat::EVENTS_LOST)?;
        let new = now.saturating_sub(self.lost_seen);
        self.lost_seen = now;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use imds_guard_common::{CHARGE_TOTAL, charged_by};

    use super::*;

    fn bytes(kind: u8, stored: u8, charged: u8, creator: u32, name: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&42u64.to_ne_bytes());
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&[kind, stored, charged, 0]);
        b.extend_from_slice(&creator.to_ne_bytes());
        b.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(name);
        b
    }

    #[test]
    fn events_decode_with_their_name_parent_and_creator() {
        let b = bytes(
            cgroup_event::MKDIR,
            cgroup_stored::OVER_QUOTA,
            charged_by::PROGRAM,
            1000,
            b"app.service",
        );
        assert_eq!(
            decode(&b),
            Some(Event {
                kind: cgroup_event::MKDIR,
                id: 42,
                parent: 7,
                stored: cgroup_stored::OVER_QUOTA,
                creator: Some(Creator {
                    uid: 1000,
                    exempt: false
                }),
                name: b"app.service".to_vec(),
            })
        );
        assert_eq!(decode(&b[..20]), None, "short");
        assert_eq!(
            decode(&b[..b.len() - 1]),
            None,
            "the name is shorter than it says"
        );
        let unknown = bytes(
            cgroup_event::MKDIR,
            3,
            charged_by::PROGRAM,
            CHARGE_TOTAL,
            b"",
        );
        assert_eq!(decode(&unknown).map(|e| e.creator), Some(None));
    }
}
