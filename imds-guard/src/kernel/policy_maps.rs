//! Writing policies into the maps, in two generations. [`Guard::apply`]
//! writes the one not in force, flips `ACTIVE`, waits for every program run
//! that may still use the old one, and clears it: each decision reads
//! `ACTIVE` once, so it sees the old policy or the new one, never a mix.
//!
//! The uid and gid maps hold both generations in one value per id
//! (`id_rules.rs`): a reload writes only the ids whose rule changes. The
//! protected addresses (a few) have a key per generation, cleared by the
//! keys they were written with. Everything is written in batches
//! (`batch.rs`).

use std::{net::IpAddr, os::fd::AsFd as _};

use aya::maps::{Array, Map, MapData};
use imds_guard_common::{self as common, IdRule, Ipv6Key, V4Key, V6Key, action, mode};

use super::{
    batch,
    loader::{Guard, GuardError, Stamp, map_err},
    records::entry_number,
};
use crate::policy::{Action, Mode, Policy};

/// The protected addresses one generation was written with.
#[derive(Debug, Default)]
pub(super) struct Written {
    v4: Vec<V4Key>,
    v6: Vec<V6Key>,
}

impl Guard {
    /// The generation in force, if a policy was applied.
    pub fn active_generation(&self) -> Option<u32> {
        self.active
    }

    /// Puts `policy` in force; returns its generation. The first call
    /// writes generation 0, which `ACTIVE` already names (until its config
    /// is written the programs deny every protected destination: a guard
    /// attached before `apply` fails closed). Later calls are reloads:
    /// write the other generation, flip, wait out the readers of the old
    /// one, clear it.
    pub fn apply(&mut self, policy: &Policy, stamp: &Stamp) -> Result<u32, GuardError> {
        let next = self.next_generation();
        if self.active.is_some() && self.read_active()? == next {
            // Our bookkeeping and the kernel disagree: writing here would
            // change the policy in force entry by entry. Refuse.
            return Err(GuardError::GenerationMismatch { live: next });
        }
        // Left over by an interrupted reload; nothing reads it (the last
        // flip away from it was followed by a grace period).
        self.clear_generation(next)?;
        self.write_endpoints(next, policy)?;
        // The first policy goes in both slots of the id maps, so that
        // reloading it (or a policy close to it) writes little.
        let slots = self.active.map(|_| next);
        self.write_rules(slots, policy)?;
        self.write_config(next, policy, stamp)?;
        let Some(old) = self.active else {
            self.active = Some(next);
            return Ok(next);
        };
        // Everything written above is visible on every CPU before any
        // reader can see the flip (a grace period implies a full barrier
        // on each CPU), whatever the architecture's store ordering.
        self.wait_grace()?;
        let mut active: Array<_, u32> = self.map_mut(common::MAP_ACTIVE)?;
        // 0 and 1 differ in one byte: no reader can see a torn value,
        // however the kernel copies it.
        active
            .set(0, next, 0)
            .map_err(map_err(common::MAP_ACTIVE))?;
        self.active = Some(next);
        // Every program run that read the old generation has ended...
        self.wait_grace()?;
        // ...so it can go. Should this fail, the next apply clears it
        // before writing there: it is not in force either way.
        if let Err(e) = self.clear_generation(old) {
            tracing::warn!(
                "could not clear policy generation {old} after a reload: {}",
                crate::chain::Chain(&e)
            );
        }
        Ok(next)
    }

    fn wait_grace(&self) -> Result<(), GuardError> {
        self.grace.wait().map_err(GuardError::Grace)
    }

    /// `ACTIVE` as the kernel has it.
    fn read_active(&mut self) -> Result<u32, GuardError> {
        let active: Array<_, u32> = self.map_mut(common::MAP_ACTIVE)?;
        active.get(&0, 0).map_err(map_err(common::MAP_ACTIVE))
    }

    /// The generation the next [`Guard::apply`] writes.
    pub fn next_generation(&self) -> u32 {
        self.active.map_or(0, |g| (g + 1) % common::GENERATIONS)
    }

    /// Writes only the protected addresses of `policy` into `generation`,
    /// nothing else: for tests of the states in between.
    pub fn write_endpoints(&mut self, generation: u32, policy: &Policy) -> Result<(), GuardError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for endpoint in &policy.spec.endpoints {
            match endpoint.addr {
                IpAddr::V4(a) => v4.push(V4Key {
                    generation,
                    addr: u32::from_ne_bytes(a.octets()),
                }),
                IpAddr::V6(a) => v6.push(V6Key {
                    generation,
                    addr: ipv6_key(&a.octets()),
                }),
            }
        }
        let present = vec![common::PROTECTED; v4.len().max(v6.len())];
        self.update(common::MAP_PROTECTED_V4, &v4, &present[..v4.len()])?;
        self.update(common::MAP_PROTECTED_V6, &v6, &present[..v6.len()])?;
        let written = self.written_mut(generation);
        written.v4 = v4;
        written.v6 = v6;
        Ok(())
    }

    /// Puts the rules of `policy` in slot `generation` (every slot with
    /// `None`) of the uid and gid maps, writing only what changes there.
    fn write_rules(&mut self, generation: Option<u32>, policy: &Policy) -> Result<(), GuardError> {
        for (name, rules, is_uid) in [
            (common::MAP_UID_RULES, &policy.uids, true),
            (common::MAP_GID_RULES, &policy.gids, false),
        ] {
            let slot = rules.iter().map(|(&id, rule)| {
                let rule = IdRule {
                    action: kernel_action(rule.action),
                    entry: entry_number(Some(rule.index)),
                };
                (id, rule)
            });
            let mirror = if is_uid {
                &self.uid_rules
            } else {
                &self.gid_rules
            };
            let plan = mirror.plan(generation, slot);
            let written = self
                .delete(name, &plan.delete)
                .and_then(|()| self.update(name, &plan.keys, &plan.values));
            let mirror = if is_uid {
                &mut self.uid_rules
            } else {
                &mut self.gid_rules
            };
            match written {
                Ok(()) => mirror.written(plan),
                Err(e) => {
                    mirror.failed(plan);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn write_config(
        &mut self,
        generation: u32,
        policy: &Policy,
        stamp: &Stamp,
    ) -> Result<(), GuardError> {
        let config = common::Config {
            mode: match policy.spec.mode {
                Mode::Enforce => mode::ENFORCE,
                Mode::Audit => mode::AUDIT,
            },
            default_action: kernel_action(policy.default_action),
            digest: stamp.digest,
            applied_unix: stamp.applied_unix,
            attached_unix: stamp.attached_unix,
            agent_pid: stamp.agent_pid,
            flags: stamp.flags,
        };
        let mut map: Array<_, common::Config> = self.map_mut(common::MAP_CONFIG)?;
        map.set(generation, config, 0)
            .map_err(map_err(common::MAP_CONFIG))
    }

    /// Removes the protected addresses of `generation` this handle wrote.
    /// Its config stays, and its slot of the uid and gid rules: the flip
    /// away from it came first, and the next apply rewrites both before
    /// flipping back.
    fn clear_generation(&mut self, generation: u32) -> Result<(), GuardError> {
        let written = std::mem::take(self.written_mut(generation));
        self.delete(common::MAP_PROTECTED_V4, &written.v4)?;
        self.delete(common::MAP_PROTECTED_V6, &written.v6)
    }

    fn written_mut(&mut self, generation: u32) -> &mut Written {
        &mut self.written[(generation % common::GENERATIONS) as usize]
    }

    /// Writes `keys` and `values` into the hash map `name`, in batches.
    fn update<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        keys: &[K],
        values: &[V],
    ) -> Result<(), GuardError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self.map_data(name)?;
        batch::update(map.fd().as_fd(), keys, values)
            .map_err(|source| GuardError::Batch { name, source })
    }

    /// Deletes `keys` from the hash map `name`, in batches.
    fn delete<K: aya::Pod>(&self, name: &'static str, keys: &[K]) -> Result<(), GuardError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self.map_data(name)?;
        batch::delete(map.fd().as_fd(), keys).map_err(|source| GuardError::Batch { name, source })
    }

    /// The map `name`, which must be a hash map.
    fn map_data(&self, name: &'static str) -> Result<&MapData, GuardError> {
        match self.ebpf.map(name) {
            Some(Map::HashMap(data)) => Ok(data),
            Some(_) => Err(GuardError::MissingMap(name)),
            None => Err(GuardError::MissingMap(name)),
        }
    }
}

fn kernel_action(a: Action) -> u32 {
    match a {
        Action::Allow => action::ALLOW,
        Action::Deny => action::DENY,
    }
}

/// The four words of `user_ip6` for an address, as the kernel stores them.
fn ipv6_key(octets: &[u8; 16]) -> Ipv6Key {
    let mut key = [0u32; 4];
    for (word, chunk) in key.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_key_keeps_network_byte_order_in_memory() {
        let addr: std::net::Ipv6Addr = "fd00:ec2::254".parse().expect("valid");
        let key = ipv6_key(&addr.octets());
        let bytes: Vec<u8> = key.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, addr.octets());
    }
}
