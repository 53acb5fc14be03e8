//! The rule lookups a decision and the identity walks share: an id's rule
//! in a generation, and whether an action refuses. Both `decide.rs` and
//! `identity.rs` look ids up; neither imports the other for it.

use aya_ebpf::maps::HashMap;
use imds_guard_common::{IdRule, IdRules, Membership, action};

use crate::maps::MEMBERS;

/// The action of an absent rule.
pub const NO_RULE: u32 = action::NONE;

/// Whether a rule's action refuses: anything but no rule, ALLOW and
/// ALLOW_ON_HOST, so that a value the agent never writes fails closed.
#[inline(always)]
pub fn denies(action: u32) -> bool {
    action != NO_RULE && action != action::ALLOW && action != action::ALLOW_ON_HOST
}

/// The rule for `id` in `generation`, copied out at once, with [`NO_RULE`]
/// when there is none. Keeping an `Option` of the map pointer instead lets
/// LLVM test "either lookup found something" by OR-ing the two pointers,
/// which the verifier rejects (`R7 pointer |= pointer prohibited`).
#[inline(always)]
pub fn rule(map: &HashMap<u32, IdRules>, id: u32, generation: u32) -> IdRule {
    match map.get_ptr(id) {
        // SAFETY: a non-null pointer from a hash map lookup points at a
        // value of the map's type, valid for the duration of the program;
        // the slot index is masked to the array's bounds.
        Some(p) => unsafe { (*p).by_generation[(generation & 1) as usize] },
        None => IdRule {
            action: NO_RULE,
            entry: 0,
        },
    }
}

/// The denied group `uid` is a member of in `generation`, copied out at
/// once as [`rule`] is; entry 0 when it is a member of none.
#[inline(always)]
pub fn membership(uid: u32, generation: u32) -> Membership {
    match MEMBERS.get_ptr(uid) {
        // SAFETY: as in `rule`.
        Some(p) => unsafe { (*p).by_generation[(generation & 1) as usize] },
        None => Membership { gid: 0, entry: 0 },
    }
}
