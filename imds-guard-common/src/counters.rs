//! The per-CPU counters: one per hook and kind.

use crate::hook;

/// Counter kinds; see [`counter_index`].
pub mod counter {
    pub const ALLOWED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const AUDITED: u32 = 2;
    /// Events dropped because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 3;
    /// Internal errors on a protected destination (each also denied).
    pub const ERRORS: u32 = 4;
    /// Number of counter kinds.
    pub const KINDS: u32 = 5;
}

/// Number of entries in [`crate::MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = hook::COUNT * counter::KINDS;

/// Index into [`crate::MAP_COUNTERS`] of counter `kind` for `hook`.
#[inline(always)]
pub const fn counter_index(hook: u8, kind: u32) -> u32 {
    hook as u32 * counter::KINDS + kind
}
