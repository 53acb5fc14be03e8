//! Writing policies into the maps, in two generations. [`PolicyMaps::apply`]
//! writes the one not in force and flips `ACTIVE`; [`PolicyMaps::settle`]
//! (or else the next apply, before it writes there) waits for every program
//! run that may still use the old one. Each decision reads `ACTIVE` once,
//! so it sees the old policy or the new one, never a mix.
//!
//! The uid, gid and members maps hold both generations in one value per id
//! (`id_rules.rs`): a reload writes only the ids whose rule changes. The
//! protected addresses (a few) have a key per generation, cleared by the
//! keys they were written with, and the prefixes that cover them
//! (`prefixes.rs`) cover the addresses of both generations from before the
//! flip until the old one is settled. Everything is written in batches
//! (`batch.rs`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
};

use aya::Ebpf;
use imds_guard_common::{
    self as common, EntryFlags, EntryKey, IdRule, IdRules, Ipv6Key, Membership, Memberships,
    Prefixes, ReqLookup, V4Key, V6Key, action, config_flags, mode,
};

use super::{
    batch, id_rules,
    maps::{self, MapError, descriptor},
    netfilter::exceptions::Exceptions,
    prefixes,
    records::entry_number,
    sys::{self, GraceError},
};
use crate::policy::{Action, Endpoint, EndpointKind, Mode, Policy, Port, Protocol, Scope};

/// What a policy's config records besides mode and default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub digest: [u8; 32],
    pub applied_unix: u64,
    pub attached_unix: u64,
    pub agent_pid: u32,
    /// [`imds_guard_common::config_flags`].
    pub flags: u32,
}

/// A policy that could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Grace(#[from] GraceError),
    #[error(
        "the kernel has policy generation {live} in force, which this agent meant to write: \
         refusing to change the policy in force entry by entry"
    )]
    GenerationMismatch { live: u32 },
}

/// The protected addresses one generation was written with, and its
/// request rules and entry scopes (issue 23).
#[derive(Debug, Default)]
struct Written {
    v4: Vec<V4Key>,
    v6: Vec<V6Key>,
    req_rules: Vec<ReqLookup>,
    entry_flags: Vec<EntryKey>,
}

/// The maps a policy is written into, by descriptors of their own (so that
/// writing them needs nothing of the programs, which load meanwhile), and
/// what they hold.
pub(super) struct PolicyMaps {
    v4: OwnedFd,
    v6: OwnedFd,
    uids: OwnedFd,
    gids: OwnedFd,
    members: OwnedFd,
    config: OwnedFd,
    active_map: OwnedFd,
    /// The programs' global of protected prefixes (`prefixes.rs`).
    prefixes: OwnedFd,
    /// What it holds: all zeros (every address covered) until the first
    /// apply.
    covered: Prefixes,
    /// The generation in force, once one was written.
    active: Option<u32>,
    /// Waits out program runs that may still read a generation.
    grace: sys::GracePeriod,
    /// The generation not in force may still have readers: the last flip
    /// did not wait for them.
    readers_of_old: bool,
    /// The protected addresses written into each generation, to clear it
    /// by.
    written: [Written; 2],
    /// What the uid, gid and members maps hold.
    uid_rules: id_rules::Mirror<IdRules>,
    gid_rules: id_rules::Mirror<IdRules>,
    member_rules: id_rules::Mirror<Memberships>,
    /// The epoch of the last config written (`Config::epoch`), 0 before
    /// the first.
    epoch: u32,
    /// Reloads answered (`Config::answered`): each apply after the first,
    /// and each refusal ([`PolicyMaps::answer_refused`]).
    answered: u32,
    /// `[forward]`'s exceptions, per generation, for the forward program.
    exceptions: Exceptions,
    /// The request rules and the entries' scopes; `None` in a build that
    /// judges no requests (without `bpf_loop`), where a policy with
    /// request-level tables is refused before it gets here.
    req_rules: Option<OwnedFd>,
    entry_flags: Option<OwnedFd>,
}

impl PolicyMaps {
    /// The policy maps of `ebpf`, fresh (nothing written yet).
    pub(super) fn new(ebpf: &Ebpf) -> Result<Self, PolicyMapError> {
        let fd = |name| descriptor(ebpf, name);
        Ok(Self {
            v4: fd(common::MAP_PROTECTED_V4)?,
            v6: fd(common::MAP_PROTECTED_V6)?,
            uids: fd(common::MAP_UID_RULES)?,
            gids: fd(common::MAP_GID_RULES)?,
            members: fd(common::MAP_MEMBERS)?,
            config: fd(common::MAP_CONFIG)?,
            active_map: fd(common::MAP_ACTIVE)?,
            prefixes: fd(common::MAP_PREFIXES)?,
            covered: Prefixes::ALL,
            active: None,
            grace: sys::GracePeriod::new()?,
            readers_of_old: false,
            written: Default::default(),
            uid_rules: id_rules::Mirror::empty(),
            gid_rules: id_rules::Mirror::empty(),
            member_rules: id_rules::Mirror::empty(),
            epoch: 0,
            answered: 0,
            exceptions: Exceptions::new(ebpf)?,
            req_rules: descriptor(ebpf, common::MAP_REQ_RULES).ok(),
            entry_flags: descriptor(ebpf, common::MAP_ENTRY_FLAGS).ok(),
        })
    }

    /// The generation in force, if a policy was applied.
    pub(super) fn active_generation(&self) -> Option<u32> {
        self.active
    }

    /// Puts `policy` in force; returns its generation. The first call
    /// writes generation 0, which `ACTIVE` already names (until its config
    /// is written the programs deny every protected destination: a guard
    /// attached before `apply` fails closed). Later calls are reloads:
    /// wait out the last readers of the other generation, write it, flip.
    pub(super) fn apply(&mut self, policy: &Policy, stamp: &Stamp) -> Result<u32, PolicyMapError> {
        let next = self.next_generation();
        if self.active.is_some() && self.read_active()? == next {
            // Our bookkeeping and the kernel disagree: writing here would
            // change the policy in force entry by entry. Refuse.
            return Err(PolicyMapError::GenerationMismatch { live: next });
        }
        if self.readers_of_old {
            // The last flip returned without waiting out the program runs
            // that read this generation before it: wait now, before
            // writing where they may read.
            self.wait_grace()?;
            self.readers_of_old = false;
        }
        if self.active.is_some() {
            // A reload: its config is the answer `imds-guard reload` waits
            // for.
            self.answered = self.answered.wrapping_add(1);
        }
        // Its addresses go (the slot of the id maps is rewritten below).
        self.clear_generation(next)?;
        self.write_endpoints(next, policy)?;
        self.write_requests(next, policy)?;
        self.exceptions.write(next, policy)?;
        // Before anything can decide under it: the prefixes cover the
        // addresses of the generation in force and of this one.
        let generations: &[u32] = match self.active {
            Some(active) => &[active, next],
            None => &[next],
        };
        self.cover(generations)?;
        // The first policy goes in both slots of the id maps, so that
        // reloading it (or a policy close to it) writes little.
        let slots = self.active.map(|_| next);
        self.write_rules(slots, policy)?;
        self.write_config(next, policy, stamp)?;
        if self.active.is_none() {
            self.active = Some(next);
            return Ok(next);
        }
        // Everything written above is visible on every CPU before any
        // reader can see the flip (a grace period implies a full barrier
        // on each CPU), whatever the architecture's store ordering.
        self.wait_grace()?;
        // 0 and 1 differ in one byte: no reader can see a torn value,
        // however the kernel copies it.
        sys::map_update(self.active_map.as_fd(), &0u32, &next)
            .map_err(maps::write(common::MAP_ACTIVE))?;
        self.active = Some(next);
        // Program runs that read the old generation may still be going:
        // [`PolicyMaps::settle`] waits them out, or else the next apply,
        // before writing there.
        self.readers_of_old = true;
        Ok(next)
    }

    /// Waits out every program run that may still read the generation the
    /// last apply replaced, and clears its addresses: from then on, every
    /// decision under it is in the ring buffer. An apply is in force
    /// without it; this is what a reload does after saying so.
    pub(super) fn settle(&mut self) -> Result<(), PolicyMapError> {
        if !self.readers_of_old {
            return Ok(());
        }
        self.wait_grace()?;
        self.readers_of_old = false;
        let old = self.next_generation();
        self.clear_generation(old)?;
        // No program decides under the old one any more: its addresses
        // need no prefix.
        let active: &[u32] = match self.active {
            Some(active) => &[active],
            None => &[],
        };
        Ok(self.cover(active)?)
    }

    /// Makes the programs' prefixes cover the protected addresses written
    /// into `generations`, in the steps that keep every address both the
    /// old and the new prefixes cover covered at every moment
    /// ([`prefixes::steps`]). A step that fails leaves the state before
    /// it, which still covers them.
    fn cover(&mut self, generations: &[u32]) -> Result<(), MapError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for &generation in generations {
            let written = &self.written[(generation % common::GENERATIONS) as usize];
            v4.extend(
                written
                    .v4
                    .iter()
                    .map(|k| Ipv4Addr::from(k.addr.to_ne_bytes())),
            );
            v6.extend(written.v6.iter().map(|k| ipv6_of(&k.addr)));
        }
        let target = prefixes::cover(&v4, &v6);
        for state in prefixes::steps(&self.covered, &target) {
            sys::map_update(self.prefixes.as_fd(), &0u32, &state)
                .map_err(maps::write(common::MAP_PREFIXES))?;
            self.covered = state;
        }
        Ok(())
    }

    fn wait_grace(&self) -> Result<(), GraceError> {
        self.grace.wait()
    }

    /// `ACTIVE` as the kernel has it.
    fn read_active(&self) -> Result<u32, MapError> {
        sys::map_lookup(self.active_map.as_fd(), &0u32).map_err(maps::write(common::MAP_ACTIVE))
    }

    /// The generation the next [`PolicyMaps::apply`] writes.
    pub(super) fn next_generation(&self) -> u32 {
        self.active.map_or(0, |g| (g + 1) % common::GENERATIONS)
    }

    /// Writes only the protected addresses of `policy` into `generation`,
    /// nothing else: for tests of the states in between.
    pub(super) fn write_endpoints(
        &mut self,
        generation: u32,
        policy: &Policy,
    ) -> Result<(), MapError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let (mut ports4, mut ports6) = (Vec::new(), Vec::new());
        for addr in policy.spec.protected_addresses() {
            let mut ports = kernel_ports(policy.spec.ports_of(addr).as_deref());
            ports.kind = match policy.spec.kind_of(addr) {
                EndpointKind::Host => common::endpoint_kind::HOST,
                EndpointKind::Workload => common::endpoint_kind::WORKLOAD,
            };
            match addr {
                IpAddr::V4(a) => {
                    v4.push(V4Key {
                        generation,
                        addr: u32::from_ne_bytes(a.octets()),
                    });
                    ports4.push(ports);
                }
                IpAddr::V6(a) => {
                    v6.push(V6Key {
                        generation,
                        addr: ipv6_key(&a.octets()),
                    });
                    ports6.push(ports);
                }
            }
        }
        update(&self.v4, common::MAP_PROTECTED_V4, &v4, &ports4)?;
        update(&self.v6, common::MAP_PROTECTED_V6, &v6, &ports6)?;
        let written = self.written_mut(generation);
        written.v4 = v4;
        written.v6 = v6;
        Ok(())
    }

    /// Writes the request rules of `policy` and the scope of each of its
    /// entries that is not the whole service into `generation` (cleared
    /// first by [`PolicyMaps::clear_generation`]): before its config, so
    /// before anything decides under it.
    fn write_requests(&mut self, generation: u32, policy: &Policy) -> Result<(), MapError> {
        let compiled = policy.spec.requests.compile(&policy.spec, generation as u8);
        if compiled.rules.is_empty() && compiled.flags.is_empty() {
            return Ok(());
        }
        let (Some(rules_fd), Some(flags_fd)) = (&self.req_rules, &self.entry_flags) else {
            return Err(MapError::Missing(common::MAP_REQ_RULES));
        };
        // An LPM trie takes no batches: one update each (at most
        // `MAX_REQUEST_RULES`), each remembered once written, to clear by.
        for rule in &compiled.rules {
            let key = ReqLookup {
                prefix_len: rule.prefix_len,
                key: rule.key,
            };
            sys::map_update(rules_fd.as_fd(), &key, &rule.value)
                .map_err(maps::write(common::MAP_REQ_RULES))?;
            self.written[(generation % common::GENERATIONS) as usize]
                .req_rules
                .push(key);
        }
        let (keys, values): (Vec<EntryKey>, Vec<EntryFlags>) = compiled.flags.into_iter().unzip();
        self.written[(generation % common::GENERATIONS) as usize].entry_flags = keys.clone();
        update(flags_fd, common::MAP_ENTRY_FLAGS, &keys, &values)
    }

    /// Puts the rules of `policy` in slot `generation` (every slot with
    /// `None`) of the uid and gid maps, and its members of denied groups
    /// in that of the members map, writing only what changes there.
    fn write_rules(&mut self, generation: Option<u32>, policy: &Policy) -> Result<(), MapError> {
        for (name, fd, rules, mirror) in [
            (
                common::MAP_UID_RULES,
                &self.uids,
                &policy.uids,
                &mut self.uid_rules,
            ),
            (
                common::MAP_GID_RULES,
                &self.gids,
                &policy.gids,
                &mut self.gid_rules,
            ),
        ] {
            let slot = rules.iter().map(|(&id, rule)| {
                let rule = IdRule {
                    action: match (rule.action, policy.scope_of(rule)) {
                        (Action::Allow, Scope::Host) => action::ALLOW_ON_HOST,
                        (other, _) => kernel_action(other),
                    },
                    entry: entry_number(Some(rule.entry())),
                };
                (id, rule)
            });
            write_slots(fd, name, mirror, generation, slot)?;
        }
        // A member's group is denied (`members.rs`): its rule is there.
        let members = policy.members.iter().filter_map(|(&uid, &gid)| {
            let rule = policy.gids.get(&gid)?;
            let entry = entry_number(Some(rule.entry()));
            Some((uid, Membership { gid, entry }))
        });
        write_slots(
            &self.members,
            common::MAP_MEMBERS,
            &mut self.member_rules,
            generation,
            members,
        )
    }

    /// Writes the config of `generation`, with the next epoch: every
    /// apply has a new one, so that `egress` judges again the next packet
    /// of every socket let through before it (`sock_state.rs` on the eBPF
    /// side). Only a config written takes the epoch; one that fails leaves
    /// it to the next apply.
    fn write_config(
        &mut self,
        generation: u32,
        policy: &Policy,
        stamp: &Stamp,
    ) -> Result<(), MapError> {
        let epoch = next_epoch(self.epoch);
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
            flags: stamp.flags | reads(policy),
            epoch,
            answered: self.answered,
        };
        sys::map_update(self.config.as_fd(), &generation, &config)
            .map_err(maps::write(common::MAP_CONFIG))?;
        self.epoch = epoch;
        Ok(())
    }

    /// Sets and clears `config_flags` bits of the generation in force, for
    /// what `status` reports (the programs read none that change here).
    pub(super) fn mark_active(&mut self, set: u32, clear: u32) -> Result<(), MapError> {
        self.rewrite_active(|config| config.flags = (config.flags | set) & !clear)
    }

    /// Answers the reload in progress as refused in the config in force:
    /// `RELOAD_REFUSED` set, `RELOADING` cleared, one more reload answered.
    pub(super) fn answer_refused(&mut self) -> Result<(), MapError> {
        self.answered = self.answered.wrapping_add(1);
        let answered = self.answered;
        self.rewrite_active(|config| {
            config.flags = (config.flags | config_flags::RELOAD_REFUSED) & !config_flags::RELOADING;
            config.answered = answered;
        })
    }

    /// Changes the config of the generation in force in place (the
    /// programs read its mode, default, flags and epoch, which stay as
    /// they were but for the bits that are `status`'s).
    fn rewrite_active(&mut self, change: impl FnOnce(&mut common::Config)) -> Result<(), MapError> {
        let Some(generation) = self.active else {
            return Ok(());
        };
        let mut config: common::Config = sys::map_lookup(self.config.as_fd(), &generation)
            .map_err(maps::write(common::MAP_CONFIG))?;
        change(&mut config);
        sys::map_update(self.config.as_fd(), &generation, &config)
            .map_err(maps::write(common::MAP_CONFIG))
    }

    /// Removes the protected addresses of `generation` this handle wrote.
    /// Its config stays, and its slot of the uid and gid rules: the flip
    /// away from it came first, and the next apply rewrites both before
    /// flipping back.
    fn clear_generation(&mut self, generation: u32) -> Result<(), MapError> {
        let written = std::mem::take(self.written_mut(generation));
        self.exceptions.clear(generation)?;
        if let Some(fd) = &self.entry_flags {
            delete(fd, common::MAP_ENTRY_FLAGS, &written.entry_flags)?;
        }
        if let Some(fd) = &self.req_rules {
            for key in &written.req_rules {
                sys::map_delete(fd.as_fd(), key).map_err(maps::write(common::MAP_REQ_RULES))?;
            }
        }
        delete(&self.v4, common::MAP_PROTECTED_V4, &written.v4)?;
        delete(&self.v6, common::MAP_PROTECTED_V6, &written.v6)
    }

    fn written_mut(&mut self, generation: u32) -> &mut Written {
        &mut self.written[(generation % common::GENERATIONS) as usize]
    }
}

/// Makes slot `generation` (every slot with `None`) of the map `name` hold
/// `slots` (sorted by id), as `mirror` plans it.
fn write_slots<V: id_rules::Slots>(
    fd: &OwnedFd,
    name: &'static str,
    mirror: &mut id_rules::Mirror<V>,
    generation: Option<u32>,
    slots: impl IntoIterator<Item = (u32, V::Slot)>,
) -> Result<(), MapError> {
    let plan = mirror.plan(generation, slots);
    let written =
        delete(fd, name, &plan.delete).and_then(|()| update(fd, name, &plan.keys, &plan.values));
    match written {
        Ok(()) => {
            mirror.written(plan);
            Ok(())
        }
        Err(e) => {
            mirror.failed(plan);
            Err(e)
        }
    }
}

/// Writes `keys` and `values` into the hash map `name`, in batches.
fn update<K: aya::Pod, V: aya::Pod>(
    fd: &OwnedFd,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<(), MapError> {
    if keys.is_empty() {
        return Ok(());
    }
    batch::update(fd.as_fd(), keys, values).map_err(maps::write(name))
}

/// Deletes `keys` from the hash map `name`, in batches.
fn delete<K: aya::Pod>(fd: &OwnedFd, name: &'static str, keys: &[K]) -> Result<(), MapError> {
    if keys.is_empty() {
        return Ok(());
    }
    batch::delete(fd.as_fd(), keys).map_err(maps::write(name))
}

/// The endpoints a protected address's [`common::Ports`] say, as a policy
/// writes them (for `status`, which reads them from the kernel): the bare
/// address, or each port with its protocols.
pub(super) fn endpoints_of(addr: IpAddr, ports: &common::Ports) -> Vec<Endpoint> {
    let endpoint = |port| Endpoint {
        addr,
        port,
        at: None,
    };
    if ports.every_port == common::proto_bits::ALL {
        return vec![endpoint(None)];
    }
    let both = common::proto_bits::TCP | common::proto_bits::UDP;
    ports
        .rules
        .iter()
        .filter(|r| r.port != 0)
        .filter_map(|r| {
            let protocol = match r.protocols & both {
                p if p == both => Protocol::Both,
                common::proto_bits::TCP => Protocol::Tcp,
                common::proto_bits::UDP => Protocol::Udp,
                _ => return None,
            };
            Some(endpoint(Some(Port {
                number: r.port,
                protocol,
            })))
        })
        .collect()
}

/// The programs' [`common::Ports`] for an address protected on `ports`
/// (`None`: every port and protocol). The policy holds at most
/// [`common::MAX_PORTS`] per address.
fn kernel_ports(ports: Option<&[Port]>) -> common::Ports {
    let Some(ports) = ports else {
        return common::Ports::EVERY;
    };
    let mut value = common::Ports {
        every_port: 0,
        ..common::Ports::EVERY
    };
    for (slot, port) in value.rules.iter_mut().zip(ports) {
        slot.port = port.number;
        slot.protocols = match port.protocol {
            Protocol::Tcp => common::proto_bits::TCP,
            Protocol::Udp => common::proto_bits::UDP,
            Protocol::Both => common::proto_bits::TCP | common::proto_bits::UDP,
        };
    }
    value
}

/// The epoch after `epoch`. 0 is no policy's (the programs let nothing
/// through unjudged under it), so the wrap, after 2^32 - 1 applies, skips
/// it.
fn next_epoch(epoch: u32) -> u32 {
    epoch.checked_add(1).unwrap_or(1)
}

/// The `config_flags` bits that say what a decision under `policy` reads
/// of the caller beyond its uid and gid.
fn reads(policy: &Policy) -> u32 {
    let mut flags = 0;
    if policy.scans_groups() {
        flags |= config_flags::SCAN_GROUPS;
    }
    if policy.checks_owners() {
        flags |= config_flags::CHECK_OWNERS;
    }
    flags
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

/// The address of the four words of `user_ip6` ([`ipv6_key`] undone).
pub(super) fn ipv6_of(key: &Ipv6Key) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(key) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_start_at_one_increase_and_skip_zero() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(u32::MAX), 1);
    }

    #[test]
    fn ipv6_key_keeps_network_byte_order_in_memory() {
        let addr: Ipv6Addr = "fd00:ec2::254".parse().expect("valid");
        let key = ipv6_key(&addr.octets());
        let bytes: Vec<u8> = key.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, addr.octets());
        assert_eq!(ipv6_of(&key), addr);
    }

    /// The programs' value for each address says what the policy says of
    /// every (protocol, port) a packet can have, the unreadable port
    /// included: the kernel and `check` agree.
    #[test]
    fn the_programs_ports_agree_with_the_policy() {
        use std::path::Path;

        use crate::policy::{PolicySpec, SystemResolver};

        let spec = PolicySpec::parse(
            Path::new("p.toml"),
            "[endpoints]\naddresses = [\"169.254.169.254\", \"169.254.170.2:80/tcp\", \
             \"fd00:ec2::23:80\", \"[fd00:ec2::23]:80\", \"168.63.129.16:53/udp\", \
             \"168.63.129.16:32526\"]\n[deny]\nuids = [33]\n",
        );
        // "fd00:ec2::23:80" is an IPv6 address, not a port.
        let spec = spec.expect("valid");
        let policy = spec.resolve(&SystemResolver).expect("resolves");
        let by_transport = [
            (common::transport::TCP, Some(Protocol::Tcp)),
            (common::transport::UDP, Some(Protocol::Udp)),
        ];
        let mut checked = 0;
        for addr in policy.spec.protected_addresses() {
            let ports = kernel_ports(policy.spec.ports_of(addr).as_deref());
            for port in [0u16, 1, 53, 80, 81, 123, 32526, 65535] {
                for (transport, protocol) in by_transport {
                    let protocol = protocol.expect("tcp or udp");
                    assert_eq!(
                        ports.covers(transport, port),
                        policy.protects_port(addr, protocol, Some(port)),
                        "{addr} {protocol:?} {port}"
                    );
                    checked += 1;
                }
                // An unreadable port is protected; ICMP, UDP-Lite and
                // SCTP are only where the address is protected whole.
                assert!(ports.covers(common::transport::UNKNOWN, port));
                assert!(policy.protects_port(addr, Protocol::Tcp, None));
                assert_eq!(
                    ports.covers(common::transport::OTHER, port),
                    policy.spec.ports_of(addr).is_none(),
                    "{addr}"
                );
            }
        }
        assert_eq!(checked, 5 * 8 * 2);
        let azure = kernel_ports(
            policy
                .spec
                .ports_of("168.63.129.16".parse().expect("ip"))
                .as_deref(),
        );
        assert!(azure.covers(common::transport::UDP, 53));
        assert!(!azure.covers(common::transport::TCP, 53));
        assert!(azure.covers(common::transport::TCP, 32526));
        assert!(!azure.covers(common::transport::TCP, 80));
    }
}
