//! The decisions the programs counted (the per-CPU `COUNTERS` map), summed
//! over CPUs: for `status`, the metrics and tests.

use aya::maps::{Map, PerCpuArray};
use imds_guard_common::{self as common, counter};

use super::{
    maps::{self, MapError},
    programs::Hook,
};

/// Totals over all CPUs and hooks (`by_hook` keeps the per-hook split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
    pub events_lost: u64,
    pub errors: u64,
    /// `[hook][counter kind]`, by hook number ([`Hook::ALL`]).
    pub by_hook: [[u64; counter::KINDS as usize]; Hook::ALL.len()],
}

/// The counters of a `COUNTERS` map (ours, or one opened from its pin).
/// The hooks it has are read from the map's own length, so that the map
/// of an older agent with fewer hooks reads as zeros for the others.
pub fn read(map: &Map) -> Result<Counters, MapError> {
    let access = maps::access(common::MAP_COUNTERS);
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(&access)?;
    let hooks = (array.len() / counter::KINDS) as usize;
    let mut c = Counters::default();
    for hook in Hook::ALL.iter().take(hooks) {
        for kind in 0..counter::KINDS {
            let values = array
                .get(&common::counter_index(hook.wire(), kind), 0)
                .map_err(&access)?;
            let total: u64 = values.iter().sum();
            c.by_hook[usize::from(hook.wire())][kind as usize] = total;
            match kind {
                counter::ALLOWED => c.allowed += total,
                counter::DENIED => c.denied += total,
                counter::AUDITED => c.audited += total,
                counter::EVENTS_LOST => c.events_lost += total,
                _ => c.errors += total,
            }
        }
    }
    Ok(c)
}
