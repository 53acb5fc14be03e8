//! One generation's patterns as the tables the `cgroup_mkdir` program
//! matches names with (`imds-guard-ebpf/src/classify.rs`).
//!
//! Pattern `i` is bit `i`. At each level, a name matches the components
//! whose bits are set in all three of: the value of the longest stored
//! prefix of the name, the value of the longest stored suffix (the name
//! reversed), and the lengths entry of the name's length. An LPM lookup
//! answers with one entry, the longest, so each stored prefix's value also
//! holds the bits of every shorter stored prefix of it: those are exactly
//! the stored prefixes of the name that are shorter. The same holds for
//! suffixes.
//!
//! Pure: [`simulate`] runs the program's algorithm over the tables, which
//! the tests hold to [`CgroupRules::classify`] on random patterns and
//! paths; an end-to-end test holds the program itself to the latter.

use std::collections::BTreeMap;

use imds_guard_common::{CgroupPatterns, ComponentKey, IdRule, MAX_NAME, action, length_index};
#[cfg(test)]
use imds_guard_common::{MAX_CGROUP_LEVEL, MAX_PATTERN_DEPTH};

use crate::{
    kernel::records::entry_number,
    policy::{Action, cgroups::CgroupRule},
};

/// An LPM trie entry: the key and how many of its bits count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LpmEntry {
    pub(crate) prefix_len: u32,
    pub(crate) key: ComponentKey,
    pub(crate) mask: u64,
}

/// Everything one generation writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tables {
    pub(crate) prefixes: Vec<LpmEntry>,
    pub(crate) suffixes: Vec<LpmEntry>,
    /// The non-zero entries of the lengths array.
    pub(crate) lengths: Vec<(u32, u64)>,
    pub(crate) patterns: CgroupPatterns,
}

/// The tables of `rules` (at most `MAX_CGROUP_PATTERNS`, in the order the
/// kernel numbers them) for `generation`.
pub(crate) fn build(generation: u32, rules: &[CgroupRule]) -> Tables {
    let mut patterns = CgroupPatterns {
        count: rules.len() as u32,
        ..CgroupPatterns::EMPTY
    };
    // By (level, literal): the patterns whose component there has it.
    let mut prefixes: BTreeMap<(u8, Vec<u8>), u64> = BTreeMap::new();
    let mut suffixes: BTreeMap<(u8, Vec<u8>), u64> = BTreeMap::new();
    let mut lengths: BTreeMap<u32, u64> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let bit = 1u64 << i;
        patterns.rules[i] = IdRule {
            action: match rule.action {
                Action::Allow => action::ALLOW,
                Action::Deny => action::DENY,
            },
            entry: entry_number(Some(rule.index)),
        };
        let depth = rule.pattern.components.len();
        if rule.pattern.subtree {
            patterns.subtree[depth] |= bit;
        } else {
            patterns.whole[depth] |= bit;
        }
        for (k, component) in rule.pattern.components.iter().enumerate() {
            let level = k as u8 + 1;
            let (prefix, suffix) = (component.prefix(), component.suffix());
            *prefixes.entry((level, prefix.to_vec())).or_default() |= bit;
            let reversed: Vec<u8> = suffix.iter().rev().copied().collect();
            *suffixes.entry((level, reversed)).or_default() |= bit;
            let literal = matches!(component, crate::policy::cgroups::Component::Literal(_));
            let least = prefix.len() + suffix.len();
            for len in least..=MAX_NAME {
                if literal && len != least {
                    break;
                }
                let index = length_index(generation, u32::from(level), len as u32);
                *lengths.entry(index).or_default() |= bit;
            }
        }
    }
    Tables {
        prefixes: lpm_entries(generation, &prefixes),
        suffixes: lpm_entries(generation, &suffixes),
        lengths: lengths.into_iter().collect(),
        patterns,
    }
}

/// The stored entries, each with the bits of its shorter stored prefixes.
fn lpm_entries(generation: u32, literals: &BTreeMap<(u8, Vec<u8>), u64>) -> Vec<LpmEntry> {
    literals
        .iter()
        .map(|((level, literal), _)| {
            let mask = literals
                .iter()
                .filter(|((l, shorter), _)| l == level && literal.starts_with(shorter))
                .fold(0, |m, (_, bits)| m | bits);
            let mut key = ComponentKey::new(generation as u8, *level);
            key.bytes[..literal.len()].copy_from_slice(literal);
            LpmEntry {
                prefix_len: ComponentKey::HEADER_BITS + 8 * literal.len() as u32,
                key,
                mask,
            }
        })
        .collect()
}

/// What the `cgroup_mkdir` program computes for the cgroup at `path`
/// (components from the root) with `tables` written for `generation`:
/// `None` where it stores nothing.
#[cfg(test)]
pub(crate) fn simulate(tables: &Tables, generation: u32, path: &[&[u8]]) -> Option<IdRule> {
    if path.len() > MAX_CGROUP_LEVEL as usize {
        return None;
    }
    let p = &tables.patterns;
    let mut alive = if p.count >= 64 {
        u64::MAX
    } else {
        (1u64 << p.count) - 1
    };
    let level = path.len();
    let mut matched = alive & p.subtree[0];
    if level == 0 {
        matched |= alive & p.whole[0];
    }
    for k in 1..=level.min(MAX_PATTERN_DEPTH as usize) {
        if alive == 0 {
            break;
        }
        let name = path[k - 1];
        // The program leaves whatever earlier names left past the name's
        // end (`load_name` says why that is sound): junk here too, of the
        // bytes the tests' names are made of, so that it could match.
        let junk = |j: usize| b"ab.b.a"[(j + k) % 6];
        let mut key = ComponentKey::new(generation as u8, k as u8);
        for (j, byte) in key.bytes.iter_mut().enumerate() {
            *byte = match name.get(j) {
                Some(b) => *b,
                None if j == name.len() => 0,
                None => junk(j),
            };
        }
        let prefixes = longest(&tables.prefixes, &key);
        let mut key = ComponentKey::new(generation as u8, k as u8);
        for (j, byte) in key.bytes.iter_mut().enumerate() {
            *byte = match name.len().checked_sub(j + 1) {
                Some(at) => name[at],
                None => junk(j),
            };
        }
        let suffixes = longest(&tables.suffixes, &key);
        let index = length_index(generation, k as u32, name.len() as u32);
        let lengths = tables
            .lengths
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, m)| *m);
        alive &= prefixes & suffixes & lengths;
        matched |= alive & p.subtree[k];
        if k == level {
            matched |= alive & p.whole[k];
        }
    }
    Some(if matched == 0 {
        IdRule {
            action: action::NONE,
            entry: 0,
        }
    } else {
        p.rules[matched.trailing_zeros() as usize]
    })
}

/// The value of the longest entry whose counted bits `key` starts with,
/// as an LPM trie answers.
#[cfg(test)]
fn longest(entries: &[LpmEntry], key: &ComponentKey) -> u64 {
    let bytes = as_bytes(key);
    entries
        .iter()
        .filter(|e| {
            let n = (e.prefix_len / 8) as usize;
            as_bytes(&e.key)[..n] == bytes[..n]
        })
        .max_by_key(|e| e.prefix_len)
        .map_or(0, |e| e.mask)
}

#[cfg(test)]
fn as_bytes(key: &ComponentKey) -> Vec<u8> {
    let mut out = vec![key.generation, key.level, key._pad[0], key._pad[1]];
    out.extend_from_slice(&key.bytes);
    out
}

#[cfg(test)]
mod tests;
