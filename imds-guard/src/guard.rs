//! The loaded eBPF programs and their maps: one handle that loads the
//! object, writes policies into the maps, attaches (or adopts a pinned
//! attachment) and reads the counters.
//!
//! Policies live in two generations. [`Guard::apply`] writes the one not in
//! force, flips `ACTIVE`, waits for every program run that may still use the
//! old one, and clears it: each decision reads `ACTIVE` once, so it sees
//! the old policy or the new one, never a mix.

use std::{
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
    util::KernelVersion,
};
use imds_guard_common::{
    self as common, GENERATIONS, IdKey, Ipv6Key, V4Key, V6Key, action, counter, mode,
};

use crate::{
    cgroup::{self, CgroupError},
    pins::Pins,
    policy::{Action, Mode, Policy},
    sys,
};

/// The object `build.rs` compiled from `imds-guard-ebpf`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-guard"));

/// The programs, one per hook, in the order they are attached.
pub const PROGRAMS: [&str; 4] = [
    common::PROGRAM_CONNECT4,
    common::PROGRAM_CONNECT6,
    common::PROGRAM_SENDMSG4,
    common::PROGRAM_SENDMSG6,
];

/// The kernel's attach type of each of [`PROGRAMS`].
pub const ATTACH_TYPES: [u32; 4] = [
    sys::attach_type::CGROUP_INET4_CONNECT,
    sys::attach_type::CGROUP_INET6_CONNECT,
    sys::attach_type::CGROUP_UDP4_SENDMSG,
    sys::attach_type::CGROUP_UDP6_SENDMSG,
];

/// The maps `status` reads back from their pins.
pub const PINNED_MAPS: [&str; 3] = [common::MAP_ACTIVE, common::MAP_CONFIG, common::MAP_COUNTERS];

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP was set)")]
    NoObject,
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("cannot load program {name} into the kernel")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach program {name} to {cgroup}")]
    Attach {
        name: &'static str,
        cgroup: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot {what} {path}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the guard pinned at {pin} is attached to another cgroup (id {pinned}) than {cgroup} \
         (id {wanted}); run `imds-guard detach` first to move it"
    )]
    OtherCgroup {
        pin: PathBuf,
        cgroup: String,
        pinned: u64,
        wanted: u64,
    },
    #[error("cannot replace the program of the pinned link {path}")]
    Update {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot access map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "the kernel has policy generation {live} in force, which this agent meant to write: \
         refusing to change the policy in force entry by entry"
    )]
    GenerationMismatch { live: u32 },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// Totals over all CPUs and hooks (`by_hook` keeps the per-hook split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
    pub events_lost: u64,
    pub errors: u64,
    /// `[hook][counter kind]`.
    pub by_hook: [[u64; counter::KINDS as usize]; common::hook::COUNT as usize],
}

/// What a policy's config records besides mode and default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub digest: [u8; 32],
    pub applied_unix: u64,
    pub attached_unix: u64,
    pub agent_pid: u32,
}

/// How [`Guard::attach`] found each hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Hooks whose pinned link now runs our programs (an earlier agent's).
    pub adopted: usize,
    /// Hooks attached anew.
    pub attached: usize,
}

/// The loaded (and, after [`Guard::attach`], attached) programs.
///
/// Without pins, dropping it detaches the programs. With pins, the links
/// outlive it: enforcement stays until `imds-guard detach`.
pub struct Guard {
    ebpf: Ebpf,
    /// The generation in force, once one was written.
    active: Option<u32>,
    /// Waits out program runs that may still read a generation.
    grace: sys::GracePeriod,
}

impl Guard {
    /// Loads the programs into the kernel, unattached, with fresh maps.
    /// `ebpf_log_level` is the aya-log level of the programs' diagnostics
    /// (0: off).
    pub fn load(ebpf_log_level: u8) -> Result<Self, GuardError> {
        if OBJECT.is_empty() {
            return Err(GuardError::NoObject);
        }
        let ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &ebpf_log_level, false)
            .load(OBJECT)
            .map_err(GuardError::Load)?;
        let grace = sys::GracePeriod::new().map_err(|source| GuardError::Pin {
            what: "create the grace-period map",
            path: PathBuf::from("(BPF_MAP_TYPE_ARRAY_OF_MAPS)"),
            source,
        })?;
        let mut guard = Self {
            ebpf,
            active: None,
            grace,
        };
        for name in PROGRAMS {
            guard
                .program(name)?
                .load()
                .map_err(|source| GuardError::LoadProgram { name, source })?;
        }
        Ok(guard)
    }

    /// The aya-log ring buffer, for bridging program diagnostics into
    /// tracing.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// The ring buffer of decision events.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, GuardError> {
        let map = self
            .ebpf
            .take_map(common::MAP_EVENTS)
            .ok_or(GuardError::MissingMap(common::MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(common::MAP_EVENTS))
    }

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
        self.write_rules(next, policy)?;
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
                "could not clear policy generation {old} after a reload: {:#}",
                anyhow::Error::from(e)
            );
        }
        Ok(next)
    }

    fn wait_grace(&self) -> Result<(), GuardError> {
        self.grace.wait().map_err(|source| GuardError::Pin {
            what: "wait for an RCU grace period with",
            path: PathBuf::from("(BPF_MAP_TYPE_ARRAY_OF_MAPS)"),
            source,
        })
    }

    /// `ACTIVE` as the kernel has it.
    fn read_active(&mut self) -> Result<u32, GuardError> {
        let active: Array<_, u32> = self.map_mut(common::MAP_ACTIVE)?;
        active.get(&0, 0).map_err(map_err(common::MAP_ACTIVE))
    }

    /// The generation the next [`Guard::apply`] writes.
    pub fn next_generation(&self) -> u32 {
        self.active.map_or(0, |g| (g + 1) % GENERATIONS)
    }

    /// Writes only the protected addresses of `policy` into `generation`,
    /// nothing else: for tests of the states in between.
    pub fn write_endpoints(&mut self, generation: u32, policy: &Policy) -> Result<(), GuardError> {
        for (i, endpoint) in policy.spec.endpoints.iter().enumerate() {
            let value = common::Endpoint { index: i as u32 };
            match endpoint.addr {
                IpAddr::V4(v4) => {
                    let mut map: HashMap<_, V4Key, common::Endpoint> =
                        self.map_mut(common::MAP_PROTECTED_V4)?;
                    let key = V4Key {
                        generation,
                        addr: u32::from_ne_bytes(v4.octets()),
                    };
                    map.insert(key, value, 0)
                        .map_err(map_err(common::MAP_PROTECTED_V4))?;
                }
                IpAddr::V6(v6) => {
                    let mut map: HashMap<_, V6Key, common::Endpoint> =
                        self.map_mut(common::MAP_PROTECTED_V6)?;
                    let key = V6Key {
                        generation,
                        addr: ipv6_key(&v6.octets()),
                    };
                    map.insert(key, value, 0)
                        .map_err(map_err(common::MAP_PROTECTED_V6))?;
                }
            }
        }
        Ok(())
    }

    fn write_rules(&mut self, generation: u32, policy: &Policy) -> Result<(), GuardError> {
        for (name, rules) in [
            (common::MAP_UID_RULES, &policy.uids),
            (common::MAP_GID_RULES, &policy.gids),
        ] {
            let mut map: HashMap<_, IdKey, common::IdRule> = self.map_mut(name)?;
            for (&id, rule) in rules {
                let value = common::IdRule {
                    action: kernel_action(rule.action),
                    rule: rule.entry as u32 + 1,
                };
                map.insert(IdKey { generation, id }, value, 0)
                    .map_err(map_err(name))?;
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
            _pad: 0,
        };
        let mut map: Array<_, common::Config> = self.map_mut(common::MAP_CONFIG)?;
        map.set(generation, config, 0)
            .map_err(map_err(common::MAP_CONFIG))
    }

    /// Removes every entry of `generation`, its config first: should a
    /// reader still meet this generation, an unconfigured one denies.
    fn clear_generation(&mut self, generation: u32) -> Result<(), GuardError> {
        fn clear<K: aya::Pod + Copy, V: aya::Pod>(
            map: &mut HashMap<&mut MapData, K, V>,
            name: &'static str,
            of: impl Fn(&K) -> bool,
        ) -> Result<(), GuardError> {
            let mut keys = Vec::new();
            for key in map.keys() {
                let key = key.map_err(|source| GuardError::Map { name, source })?;
                if of(&key) {
                    keys.push(key);
                }
            }
            for k in keys {
                match map.remove(&k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(source) => return Err(GuardError::Map { name, source }),
                }
            }
            Ok(())
        }
        let mut m: HashMap<_, V4Key, common::Endpoint> = self.map_mut(common::MAP_PROTECTED_V4)?;
        clear(&mut m, common::MAP_PROTECTED_V4, |k| {
            k.generation == generation
        })?;
        let mut m: HashMap<_, V6Key, common::Endpoint> = self.map_mut(common::MAP_PROTECTED_V6)?;
        clear(&mut m, common::MAP_PROTECTED_V6, |k| {
            k.generation == generation
        })?;
        for name in [common::MAP_UID_RULES, common::MAP_GID_RULES] {
            let mut m: HashMap<_, IdKey, common::IdRule> = self.map_mut(name)?;
            clear(&mut m, name, |k| k.generation == generation)?;
        }
        Ok(())
    }

    /// Attaches every program to the cgroup v2 directory `cgroup`.
    ///
    /// Without `pins`, the links belong to this handle. With `pins`, a hook
    /// whose link is pinned already (an earlier agent's, or one that died)
    /// gets our program swapped into that link atomically
    /// (`BPF_LINK_UPDATE`): no moment without a guard, and never two
    /// attachments. A hook without a pinned link is attached and pinned.
    ///
    /// Attachments are multi-attach: other programs attached later, here or
    /// in a child cgroup, run in addition to ours and cannot replace them
    /// (a deny from any of them wins).
    pub fn attach(
        &mut self,
        cgroup: &Path,
        pins: Option<&Pins>,
    ) -> Result<AttachReport, GuardError> {
        let file = cgroup::open(cgroup)?;
        let cgroup_id = cgroup::id(&file, cgroup)?;
        // From 5.7 aya attaches through a bpf_link, which the kernel always
        // attaches with BPF_F_ALLOW_MULTI and which takes no attach flags
        // (`cgroup_bpf_link_attach` in kernel/bpf/cgroup.c): `Single` means
        // "no flags" there. Measured on 6.18: BPF_F_ALLOW_MULTI fails with
        // EINVAL. Before 5.7 it is BPF_PROG_ATTACH, and the flag is needed.
        let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
        let mode = if links {
            CgroupAttachMode::Single
        } else {
            CgroupAttachMode::AllowMultiple
        };
        // Check every pinned link before swapping any, so that a problem
        // leaves the guard as it was rather than half old, half new.
        let mut pinned = Vec::new();
        for name in PROGRAMS {
            let Some(pins) = pins else {
                pinned.push(None);
                continue;
            };
            let Some((path, link)) = pins.open_link(name)? else {
                pinned.push(None);
                continue;
            };
            let info = sys::link_info(link.as_fd()).map_err(|source| GuardError::Pin {
                what: "read the pinned link",
                path: path.clone(),
                source,
            })?;
            if info.cgroup_id == 0 {
                // Detached (its cgroup was removed, or `BPF_LINK_DETACH`):
                // it guards nothing; attach anew in its place.
                std::fs::remove_file(&path).map_err(|source| GuardError::Pin {
                    what: "remove the stale pinned link",
                    path: path.clone(),
                    source,
                })?;
                pinned.push(None);
                continue;
            }
            if info.cgroup_id != cgroup_id {
                return Err(GuardError::OtherCgroup {
                    pin: path,
                    cgroup: cgroup.display().to_string(),
                    pinned: info.cgroup_id,
                    wanted: cgroup_id,
                });
            }
            pinned.push(Some((path, link)));
        }
        let mut report = AttachReport::default();
        for (name, pinned) in PROGRAMS.into_iter().zip(pinned) {
            if let Some((path, link)) = pinned {
                let program = self.program(name)?;
                let prog_fd = program
                    .fd()
                    .map_err(|source| GuardError::LoadProgram { name, source })?;
                sys::link_update(link.as_fd(), prog_fd.as_fd())
                    .map_err(|source| GuardError::Update { path, source })?;
                report.adopted += 1;
                continue;
            }
            let program = self.program(name)?;
            let id = program
                .attach(&file, mode)
                .map_err(|source| GuardError::Attach {
                    name,
                    cgroup: cgroup.display().to_string(),
                    source,
                })?;
            if let Some(pins) = pins {
                let link = program.take_link(id).map_err(|source| GuardError::Attach {
                    name,
                    cgroup: cgroup.display().to_string(),
                    source,
                })?;
                let link: FdLink = link.try_into().map_err(|e| GuardError::Pin {
                    what: "pin the link of",
                    path: pins.link_path(name),
                    source: std::io::Error::other(format!("{e}")),
                })?;
                pins.pin_link(name, link)?;
            }
            report.attached += 1;
        }
        if let Some(pins) = pins {
            for name in PINNED_MAPS {
                let map = self.ebpf.map(name).ok_or(GuardError::MissingMap(name))?;
                pins.pin_map(name, map)?;
            }
        }
        Ok(report)
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, GuardError> {
        let map = self
            .ebpf
            .map(common::MAP_COUNTERS)
            .ok_or(GuardError::MissingMap(common::MAP_COUNTERS))?;
        read_counters(map)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, GuardError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(GuardError::MissingProgram(name))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, GuardError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(GuardError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
    }
}

/// The counters of a `COUNTERS` map (ours, or one opened from its pin).
pub fn read_counters(map: &Map) -> Result<Counters, GuardError> {
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(map_err(common::MAP_COUNTERS))?;
    let mut c = Counters::default();
    for hook in 0..common::hook::COUNT {
        for kind in 0..counter::KINDS {
            let values = array
                .get(&common::counter_index(hook as u8, kind), 0)
                .map_err(map_err(common::MAP_COUNTERS))?;
            let total: u64 = values.iter().sum();
            c.by_hook[hook as usize][kind as usize] = total;
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

/// The config in force according to an `ACTIVE` and a `CONFIG` map.
pub fn read_config(active: &Map, config: &Map) -> Result<(u32, common::Config), GuardError> {
    let active: Array<_, u32> = Array::try_from(active).map_err(map_err(common::MAP_ACTIVE))?;
    let generation = active.get(&0, 0).map_err(map_err(common::MAP_ACTIVE))? & 1;
    let config: Array<_, common::Config> =
        Array::try_from(config).map_err(map_err(common::MAP_CONFIG))?;
    let c = config
        .get(&generation, 0)
        .map_err(map_err(common::MAP_CONFIG))?;
    Ok((generation, c))
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> GuardError {
    move |source| GuardError::Map { name, source }
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
