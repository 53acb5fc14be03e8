//! What `req_msg` counted of the requests it judged (issue 23): the census
//! `REQ_USAGE` (who sent which kind of request, how it was judged) and the
//! per-CPU `REQ_COUNTERS`, summed over CPUs. Read from the agent's own maps
//! (metrics) or from their pins (`report imdsv1`, `status`, with the agent
//! stopped too).

use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use imds_guard_common::{self as common, USAGE_ENTRIES, Usage, UsageKey, req_counter};

use super::{
    maps::{self, MapError},
    pins::{PinError, Pins},
};

/// One census entry, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub cgroup_id: u64,
    pub uid: u32,
    /// The policy entry (1-based) that decided at connect; 0 the default.
    pub entry: u32,
    /// [`common::req_version`].
    pub version: u8,
    /// [`common::verdict`].
    pub verdict: u8,
    pub count: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the last one (the latest CPU's).
    pub last_ns: u64,
}

/// The census as read: its rows, and whether it is full (the LRU map
/// then forgets the caller seen least recently to count a new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub rows: Vec<UsageRow>,
    pub capacity: u32,
}

impl Census {
    /// Whether every entry is taken: a rare caller may have been
    /// forgotten.
    pub fn full(&self) -> bool {
        self.rows.len() as u64 >= u64::from(self.capacity)
    }
}

/// Reads the census from `map` (`REQ_USAGE`, ours or opened from its pin).
pub fn read_census(map: &Map) -> Result<Census, MapError> {
    let name = common::MAP_REQ_USAGE;
    let access = maps::access(name);
    let hash: PerCpuHashMap<&MapData, UsageKey, Usage> =
        PerCpuHashMap::try_from(map).map_err(&access)?;
    let mut rows = Vec::new();
    for item in hash.iter() {
        // An entry evicted between the key and its value is gone: skip it.
        let Ok((key, values)) = item else { continue };
        let (count, last_ns) = values
            .iter()
            .fold((0u64, 0u64), |(c, l), v| (c + v.count, l.max(v.last_ns)));
        rows.push(UsageRow {
            cgroup_id: key.cgroup_id,
            uid: key.uid,
            entry: key.entry,
            version: key.version,
            verdict: key.verdict,
            count,
            last_ns,
        });
    }
    rows.sort_by_key(|r| (r.cgroup_id, r.uid, r.entry, r.version, r.verdict));
    let capacity = map_capacity(map).unwrap_or(USAGE_ENTRIES);
    Ok(Census { rows, capacity })
}

fn map_capacity(map: &Map) -> Option<u32> {
    match map {
        Map::PerCpuLruHashMap(data) => data.info().ok().map(|i| i.max_entries()),
        _ => None,
    }
}

/// The request counters, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestCounters {
    /// `[version][0 allowed, 1 refused]`, by [`common::req_version`].
    pub by_version: [[u64; req_counter::VERDICTS as usize]; req_counter::VERSIONS as usize],
    /// Refusals by [`common::req_reason`].
    pub by_reason: [u64; req_counter::REASON_COUNT as usize],
    /// Records the ring had no room for.
    pub records_lost: u64,
}

impl Default for RequestCounters {
    fn default() -> Self {
        Self {
            by_version: Default::default(),
            by_reason: [0; req_counter::REASON_COUNT as usize],
            records_lost: 0,
        }
    }
}

/// Reads the request counters from `map` (`REQ_COUNTERS`).
pub fn read_counters(map: &Map) -> Result<RequestCounters, MapError> {
    let access = maps::access(common::MAP_REQ_COUNTERS);
    let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(&access)?;
    let sum =
        |i: u32| -> Result<u64, MapError> { Ok(array.get(&i, 0).map_err(&access)?.iter().sum()) };
    let mut c = RequestCounters::default();
    for version in 0..req_counter::VERSIONS {
        for refused in [false, true] {
            c.by_version[version as usize][usize::from(refused)] =
                sum(req_counter::by_version(version as u8, refused))?;
        }
    }
    for reason in 0..req_counter::REASON_COUNT {
        c.by_reason[reason as usize] = sum(req_counter::by_reason(reason as u8))?;
    }
    c.records_lost = sum(req_counter::RECORDS_LOST)?;
    Ok(c)
}

/// The census pinned in `pins`; `None` when nothing is pinned (no guard,
/// or one from before the census).
pub fn pinned_census(pins: &Pins) -> Result<Option<Census>, UsageError> {
    match pins.open_map(common::MAP_REQ_USAGE, Map::PerCpuLruHashMap)? {
        Some(map) => Ok(Some(read_census(&map)?)),
        None => Ok(None),
    }
}

/// The census could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Map(#[from] MapError),
}
