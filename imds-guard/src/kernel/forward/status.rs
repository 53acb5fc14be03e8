//! What holds the forward path, as the kernel has it, for `status`: the
//! mechanism the agent recorded (the pinned `FWD_STATE`), and then what
//! that mechanism holds in the kernel: the forward program's pinned links
//! and counters, or the nftables tables, the unowned one compared rule by
//! rule with what the agent put in force (`nft flush table` leaves a table
//! with no rule in it, which is not a guard).
//!
//! A netfilter link detached by root (`BPF_LINK_DETACH`) still reads as it
//! did (`bpf_nf_link_fill_link_info` keeps its hook): a pinned link is
//! taken to be hooked. Root can detach anything; it is not what the guard
//! holds against.

use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use imds_guard_common::{self as common, ForwardState, forward_counter, forward_flags, mechanism};

use super::{ForwardCounters, TABLE, counters, owned::OWNED_TABLE, table_digest, table_exists};
use crate::{
    chain::Chain,
    kernel::{
        maps::{self, MapError},
        pins::{PinError, Pins},
        programs, sys,
    },
};

/// One pinned link of the forward program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardLink {
    /// `forward4` or `forward6`.
    pub name: &'static str,
    pub link_id: u32,
    pub prog_id: u32,
    pub priority: i32,
}

/// The unowned table, as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableStatus {
    pub counters: ForwardCounters,
    /// Its rules are those the agent put in force (or no record to compare
    /// with: an older agent's table).
    pub intact: bool,
}

/// What holds the forward path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// The pinned forward program.
    Netfilter,
    /// The nftables tables.
    Nftables,
    /// Nothing: the agent could put neither in force.
    Nothing,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netfilter => "netfilter",
            Self::Nftables => "nftables",
            Self::Nothing => "none",
        }
    }
}

/// Everything `status` says of the forward path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardStatus {
    /// What the agent recorded; `None` when it recorded nothing (an older
    /// agent, or none).
    pub state: Option<ForwardState>,
    pub links: Vec<ForwardLink>,
    /// The forward program's counters, dropped and audited.
    pub program: Option<ForwardCounters>,
    /// The unowned table, `None` when there is none, or why it could not
    /// be read.
    pub table: Result<Option<TableStatus>, String>,
    /// Whether the agent's owned table is there.
    pub owned: Result<bool, String>,
}

impl ForwardStatus {
    pub fn read(pins: &Pins) -> Result<Self, StatusError> {
        let state = match pins.open_map(common::MAP_FORWARD_STATE, Map::Array)? {
            Some(map) => {
                let a: Array<_, ForwardState> =
                    Array::try_from(&map).map_err(maps::access(common::MAP_FORWARD_STATE))?;
                let s = a
                    .get(&0, 0)
                    .map_err(maps::access(common::MAP_FORWARD_STATE))?;
                (s.mechanism != mechanism::NONE || s.flags != 0).then_some(s)
            }
            None => None,
        };
        let mut links = Vec::new();
        for (row, _) in programs::netfilter_links() {
            if let Some((path, fd)) = pins.open_link(row.name)? {
                let info = sys::netfilter_link_info(fd.as_fd())
                    .map_err(|e| PinError::new("read the pinned link", &path, e))?;
                links.push(ForwardLink {
                    name: row.name,
                    link_id: info.id,
                    prog_id: info.prog_id,
                    priority: info.priority,
                });
            }
        }
        let program = program_counters(pins)?;
        let expected = state
            .filter(|s| s.mechanism == mechanism::NFTABLES)
            .map(|s| s.table_digest);
        let table = read_table(expected);
        let owned = table_exists(OWNED_TABLE).map_err(|e| Chain(&e).to_string());
        Ok(Self {
            state,
            links,
            program,
            table,
            owned,
        })
    }

    /// The mechanism the agent recorded; without a record (an older
    /// agent), whichever is there.
    pub fn mechanism(&self) -> Mechanism {
        match self.state.map(|s| s.mechanism) {
            Some(mechanism::NETFILTER) => Mechanism::Netfilter,
            Some(mechanism::NFTABLES) => Mechanism::Nftables,
            Some(_) => Mechanism::Nothing,
            None if self.links.is_empty() => Mechanism::Nftables,
            None => Mechanism::Netfilter,
        }
    }

    /// Why the forward path is not held as the agent left it, if it is
    /// not: `agent_alive` says whether the owned table should be there.
    pub fn problem(&self, agent_alive: bool) -> Option<String> {
        match self.mechanism() {
            Mechanism::Netfilter => {
                (self.links.len() < programs::netfilter_links().count()).then(|| {
                    format!(
                        "{} of the forward program's {} links are pinned",
                        self.links.len(),
                        programs::netfilter_links().count()
                    )
                })
            }
            Mechanism::Nftables => self.table_problem(agent_alive),
            Mechanism::Nothing => Some("the agent could put no forward path in force".to_owned()),
        }
    }

    fn table_problem(&self, agent_alive: bool) -> Option<String> {
        let owner = self
            .state
            .is_some_and(|s| s.flags & forward_flags::NO_OWNER == 0);
        match (&self.table, &self.owned) {
            (Err(e), _) => Some(format!("the table inet {TABLE} cannot be read: {e}")),
            (Ok(None), Ok(true)) if agent_alive => Some(format!(
                "the table inet {TABLE} is gone (the agent's own table holds while it runs)"
            )),
            (Ok(None), _) => Some(format!("no table inet {TABLE} in this network namespace")),
            (Ok(Some(t)), _) if !t.intact => Some(format!(
                "the rules of table inet {TABLE} are not those the agent put in force (flushed \
                 or changed)"
            )),
            (Ok(Some(_)), Ok(false)) if agent_alive && owner => Some(format!(
                "the agent's own table inet {OWNED_TABLE} is missing"
            )),
            _ => None,
        }
    }

    /// The drop and audit counts of whichever mechanism holds the path.
    pub fn counters(&self) -> Option<ForwardCounters> {
        match self.mechanism() {
            Mechanism::Netfilter => self.program,
            Mechanism::Nftables | Mechanism::Nothing => match &self.table {
                Ok(Some(t)) => Some(t.counters),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
impl ForwardStatus {
    /// The forward path held by nftables, with the unowned table `table`
    /// and the agent's own one (no record of the agent's: its mechanism is
    /// read from what is there).
    pub(crate) fn held_by_nftables_for_test(table: Option<TableStatus>) -> Self {
        Self {
            state: None,
            links: Vec::new(),
            program: None,
            table: Ok(table),
            owned: Ok(true),
        }
    }
}

/// A pinned forward path that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Map(#[from] MapError),
}

fn program_counters(pins: &Pins) -> Result<Option<ForwardCounters>, StatusError> {
    match pins.open_map(common::MAP_FORWARD_COUNTERS, Map::PerCpuArray)? {
        Some(map) => Ok(Some(program_counters_of(&map)?)),
        None => Ok(None),
    }
}

/// The forward program's drop and audit counts, summed over CPUs, from
/// its counters map.
pub fn program_counters_of(map: &Map) -> Result<ForwardCounters, MapError> {
    let name = common::MAP_FORWARD_COUNTERS;
    let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(maps::access(name))?;
    let sum = |index: u32| -> Result<u64, MapError> {
        Ok(a.get(&index, 0).map_err(maps::access(name))?.iter().sum())
    };
    Ok(ForwardCounters {
        dropped: sum(forward_counter::DROPPED)?,
        audited: sum(forward_counter::AUDITED)?,
    })
}

/// The forward program's counters map, from a descriptor of it.
pub fn counters_map(fd: OwnedFd) -> Result<Map, MapError> {
    let name = common::MAP_FORWARD_COUNTERS;
    Ok(Map::PerCpuArray(
        MapData::from_fd(fd).map_err(maps::access(name))?,
    ))
}

/// Records `state` in the agent's `FWD_STATE` map (a descriptor of it),
/// which is pinned for `status`.
pub fn record(map: BorrowedFd<'_>, state: &ForwardState) -> std::io::Result<()> {
    sys::map_update(map, &0u32, state)
}

/// The unowned table, compared with `expected` (the digest the agent
/// recorded) when there is one.
fn read_table(expected: Option<[u8; 32]>) -> Result<Option<TableStatus>, String> {
    let text = |e: super::ForwardError| Chain(&e).to_string();
    let Some(counters) = counters().map_err(text)? else {
        return Ok(None);
    };
    let intact = match expected {
        Some(want) => table_digest().map_err(text)? == Some(want),
        None => true,
    };
    Ok(Some(TableStatus { counters, intact }))
}
