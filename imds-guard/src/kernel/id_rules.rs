//! What the uid, gid and members maps hold, as the agent wrote them, and
//! the fewest writes that put a new policy in one generation's slot.
//!
//! Each id has one value with a slot per generation ([`IdRules`],
//! [`Memberships`]: [`Slots`]). A reload
//! writes the slot not in force, and only for the ids whose rule there
//! changes; the slot in force is written back unchanged, so decisions made
//! meanwhile see the old policy, whole. Reloading a policy of 100,000 uids
//! that changed one costs a few writes, not 200,000.
//!
//! Pure bookkeeping, kept apart from the syscalls (`policy_maps.rs`) so it
//! can be tested without a kernel.

use imds_guard_common::{GENERATIONS, IdRule, IdRules, Membership, Memberships};

/// A map value with one slot per generation; a slot's default is empty
/// (no rule, no membership), and a value whose slots are all empty is no
/// entry at all.
pub(super) trait Slots: Copy + Default + Eq + aya::Pod {
    type Slot: Copy + Default + Eq;
    fn slots_mut(&mut self) -> &mut [Self::Slot; GENERATIONS as usize];
    fn slots(&self) -> &[Self::Slot; GENERATIONS as usize];
}

impl Slots for IdRules {
    type Slot = IdRule;
    fn slots_mut(&mut self) -> &mut [IdRule; GENERATIONS as usize] {
        &mut self.by_generation
    }
    fn slots(&self) -> &[IdRule; GENERATIONS as usize] {
        &self.by_generation
    }
}

impl Slots for Memberships {
    type Slot = Membership;
    fn slots_mut(&mut self) -> &mut [Membership; GENERATIONS as usize] {
        &mut self.by_generation
    }
    fn slots(&self) -> &[Membership; GENERATIONS as usize] {
        &self.by_generation
    }
}

/// The ids of one map and their values, sorted by id, as the kernel holds
/// them after the last write that succeeded.
#[derive(Debug, Default)]
pub(super) struct Mirror<V> {
    entries: Vec<(u32, V)>,
    /// `false` after a write failed part way: the slot being written is
    /// then unknown for some ids, and the next plan writes every id.
    trusted: bool,
}

/// The writes a [`Mirror::plan`] asks for: deletions first, then updates,
/// so that the map never holds more than either policy needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan<V> {
    pub(super) delete: Vec<u32>,
    pub(super) keys: Vec<u32>,
    pub(super) values: Vec<V>,
    /// The mirror once every write succeeded.
    after: Vec<(u32, V)>,
}

impl<V> Default for Plan<V> {
    fn default() -> Self {
        Self {
            delete: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            after: Vec::new(),
        }
    }
}

impl<V: Slots> Mirror<V> {
    /// A mirror of an empty map.
    pub(super) fn empty() -> Self {
        Self {
            entries: Vec::new(),
            trusted: true,
        }
    }

    /// Ids held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The writes that make slot `generation` hold `rules` (sorted by id,
    /// each id once) and leave every other slot as it is; with `None`,
    /// every slot. The first policy goes in every slot: a reload that
    /// changes little then writes little, the first one included.
    pub(super) fn plan(
        &self,
        generation: Option<u32>,
        rules: impl IntoIterator<Item = (u32, V::Slot)>,
    ) -> Plan<V> {
        let none = V::Slot::default();
        let slots = match generation {
            Some(g) => {
                let g = (g % GENERATIONS) as usize;
                g..g + 1
            }
            None => 0..GENERATIONS as usize,
        };
        let mut plan = Plan::default();
        let mut old = self.entries.iter().copied().peekable();
        let mut new = rules.into_iter().peekable();
        loop {
            let (id, before, rule) = match (old.peek().copied(), new.peek().copied()) {
                (None, None) => break,
                (Some((a, value)), Some((b, _))) if a < b => {
                    old.next();
                    (a, Some(value), none)
                }
                (Some((a, value)), Some((b, rule))) if a == b => {
                    old.next();
                    new.next();
                    (a, Some(value), rule)
                }
                (Some((a, value)), None) => {
                    old.next();
                    (a, Some(value), none)
                }
                (_, Some((b, rule))) => {
                    new.next();
                    (b, None, rule)
                }
            };
            let mut value = before.unwrap_or_default();
            value.slots_mut()[slots.clone()].fill(rule);
            if value.slots().iter().all(|r| *r == none) {
                if before.is_some() {
                    plan.delete.push(id);
                }
                continue;
            }
            if !self.trusted || before != Some(value) {
                plan.keys.push(id);
                plan.values.push(value);
            }
            plan.after.push((id, value));
        }
        plan
    }

    /// The plan's writes all succeeded.
    pub(super) fn written(&mut self, plan: Plan<V>) {
        self.entries = plan.after;
        // Kept until the next plan: not the room grown while planning.
        self.entries.shrink_to_fit();
        self.trusted = true;
    }

    /// Some of the plan's writes may have failed. The slots not written are
    /// as before for every id (the plan wrote them back unchanged), but the
    /// slot written is unknown for the ids it touched, and an id meant to
    /// go may still be there: remember them all, untrusted, so that the
    /// next plan writes (or deletes) every one.
    pub(super) fn failed(&mut self, plan: Plan<V>) {
        let mut entries = plan.after;
        entries.extend(plan.delete.into_iter().map(|id| (id, V::default())));
        entries.sort_unstable_by_key(|&(id, _)| id);
        self.entries = entries;
        self.trusted = false;
    }
}

#[cfg(test)]
mod tests {
    use imds_guard_common::action;

    use super::*;

    /// An empty slot.
    const NONE: IdRule = IdRule {
        action: action::NONE,
        entry: 0,
    };

    fn rule(action: u32, entry: u32) -> IdRule {
        IdRule { action, entry }
    }

    fn allow(entry: u32) -> IdRule {
        rule(action::ALLOW, entry)
    }

    fn slots(a: IdRule, b: IdRule) -> IdRules {
        IdRules {
            by_generation: [a, b],
        }
    }

    /// Applies the first `limit` writes of `plan` to `map` (deletions
    /// first), as the kernel would before a batch failed.
    fn apply(map: &mut Vec<(u32, IdRules)>, plan: &Plan<IdRules>, limit: usize) {
        let deletes = plan.delete.len().min(limit);
        map.retain(|(id, _)| !plan.delete[..deletes].contains(id));
        let updates = limit - deletes;
        for (&id, &value) in plan.keys.iter().zip(&plan.values).take(updates) {
            match map.iter_mut().find(|(k, _)| *k == id) {
                Some(slot) => slot.1 = value,
                None => map.push((id, value)),
            }
        }
        map.sort_unstable_by_key(|&(id, _)| id);
    }

    #[test]
    fn the_first_policy_writes_every_id_in_its_slot() {
        let mirror = Mirror::<IdRules>::empty();
        let plan = mirror.plan(Some(0), [(5, allow(1)), (7, allow(2))]);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.keys, [5, 7]);
        assert_eq!(plan.values, [slots(allow(1), NONE), slots(allow(2), NONE)]);
    }

    #[test]
    fn a_policy_in_every_slot_makes_reloading_it_free() {
        let mut mirror = Mirror::<IdRules>::empty();
        let plan = mirror.plan(None, [(5, allow(1)), (7, allow(2))]);
        assert_eq!(
            plan.values,
            [slots(allow(1), allow(1)), slots(allow(2), allow(2))]
        );
        mirror.written(plan);
        assert!(
            mirror
                .plan(Some(1), [(5, allow(1)), (7, allow(2))])
                .keys
                .is_empty()
        );
    }

    #[test]
    fn a_reload_writes_only_what_changes_and_keeps_the_slot_in_force() {
        let mut mirror = Mirror::<IdRules>::empty();
        let first = mirror.plan(Some(0), [(5, allow(1)), (7, allow(2))]);
        mirror.written(first);
        // Generation 1: 5 unchanged, 7 gone, 9 new. 7 keeps its value:
        // slot 0 is in force, and slot 1 had no rule for it already.
        let plan = mirror.plan(Some(1), [(5, allow(1)), (9, allow(2))]);
        assert!(plan.delete.is_empty(), "7 is still in force in slot 0");
        assert_eq!(plan.keys, [5, 9]);
        assert_eq!(
            plan.values,
            [slots(allow(1), allow(1)), slots(NONE, allow(2))]
        );
        mirror.written(plan);
        // The same policy again, into slot 0: 7 goes, 9 gains its slot-0
        // rule, 5 is left alone.
        let plan = mirror.plan(Some(0), [(5, allow(1)), (9, allow(2))]);
        assert_eq!(plan.delete, [7]);
        assert_eq!(plan.keys, [9]);
        assert_eq!(plan.values, [slots(allow(2), allow(2))]);
        mirror.written(plan);
        // Once more, into slot 1: nothing at all to write.
        let plan = mirror.plan(Some(1), [(5, allow(1)), (9, allow(2))]);
        assert_eq!(
            plan,
            Plan {
                after: plan.after.clone(),
                ..Plan::default()
            }
        );
    }

    #[test]
    fn an_id_leaves_the_map_once_no_slot_names_it() {
        let mut mirror = Mirror::<IdRules>::empty();
        mirror.written(mirror.plan(Some(0), [(7, allow(1))]));
        mirror.written(mirror.plan(Some(1), []));
        let plan = mirror.plan(Some(0), []);
        assert_eq!(plan.delete, [7]);
        assert!(plan.keys.is_empty());
        mirror.written(plan);
        assert_eq!(mirror.len(), 0);
    }

    #[test]
    fn after_a_failed_write_every_id_is_written_again() {
        let mut mirror = Mirror::<IdRules>::empty();
        mirror.written(mirror.plan(Some(0), [(5, allow(1)), (7, allow(2))]));
        mirror.written(mirror.plan(Some(1), [(5, allow(1))]));
        // Slot 0 is written next: 7 is to go, 5 to stay. The writes fail.
        let plan = mirror.plan(Some(0), [(5, allow(1))]);
        assert_eq!(plan.delete, [7]);
        mirror.failed(plan);
        // The retry writes 5 whole, whatever it believes, and deletes 7.
        let retry = mirror.plan(Some(0), [(5, allow(1))]);
        assert_eq!(retry.delete, [7]);
        assert_eq!(retry.keys, [5]);
        mirror.written(retry);
        assert!(mirror.plan(Some(0), [(5, allow(1))]).keys.is_empty());
    }

    #[test]
    fn plans_follow_the_kernel_through_random_reloads() {
        // A small deterministic generator: no dependency for one test.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut mirror = Mirror::<IdRules>::empty();
        let mut kernel = Vec::new();
        let mut policies: [Vec<(u32, IdRule)>; 2] = Default::default();
        let mut generation = 0;
        for _ in 0..500 {
            let mut rules: Vec<(u32, IdRule)> = (0..next() % 20)
                .map(|_| (next() % 32, rule(1 + next() % 2, next() % 9)))
                .collect();
            rules.sort_unstable_by_key(|&(id, _)| id);
            rules.dedup_by_key(|&mut (id, _)| id);
            let plan = mirror.plan(Some(generation), rules.iter().copied());
            let writes = plan.delete.len() + plan.keys.len();
            if next() % 5 == 0 {
                // A batch fails part way; the guard does not flip, and the
                // next reload writes this generation again.
                let done = next() as usize % (writes + 1);
                apply(&mut kernel, &plan, done);
                mirror.failed(plan);
                continue;
            }
            apply(&mut kernel, &plan, writes);
            mirror.written(plan);
            policies[generation as usize] = rules;
            generation ^= 1;
            // Every slot holds exactly its policy, and the map holds no id
            // that neither policy names.
            for (id, value) in &kernel {
                for (slot, policy) in policies.iter().enumerate() {
                    let want = policy
                        .iter()
                        .find(|(k, _)| k == id)
                        .map_or(NONE, |&(_, r)| r);
                    assert_eq!(value.by_generation[slot], want, "id {id} slot {slot}");
                }
            }
            for policy in &policies {
                for (id, _) in policy {
                    assert!(kernel.iter().any(|(k, _)| k == id), "id {id} missing");
                }
            }
            assert_eq!(mirror.len(), kernel.len());
        }
    }
}
