//! The loaded eBPF programs and their maps: one handle that loads the
//! object, writes a policy into the maps, attaches to a cgroup and reads the
//! counters.

use std::{net::IpAddr, path::Path};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
    util::KernelVersion,
};
use imds_guard_common::{self as common, Ipv6Key, action, counter, mode};

use crate::{
    cgroup::{self, CgroupError},
    policy::{Action, Mode, Policy},
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
    #[error("cannot write map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
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

/// The loaded (and, after [`Guard::attach`], attached) programs.
///
/// Dropping it detaches the programs: enforcement lasts as long as the
/// handle does.
pub struct Guard {
    ebpf: Ebpf,
}

impl Guard {
    /// Loads the programs into the kernel, unattached. `ebpf_log_level` is
    /// the aya-log level compiled into the programs' diagnostics (0: off).
    pub fn load(ebpf_log_level: u8) -> Result<Self, GuardError> {
        if OBJECT.is_empty() {
            return Err(GuardError::NoObject);
        }
        let ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &ebpf_log_level, false)
            .load(OBJECT)
            .map_err(GuardError::Load)?;
        let mut guard = Self { ebpf };
        for name in PROGRAMS {
            guard
                .program(name)?
                .load()
                .map_err(|source| GuardError::LoadProgram { name, source })?;
        }
        Ok(guard)
    }

    /// The aya-log ring buffer, for bridging program diagnostics into
    /// tracing. Must be kept alive as long as the programs are.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// The ring buffer of decision events.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, GuardError> {
        let map = self
            .ebpf
            .take_map(common::MAP_EVENTS)
            .ok_or(GuardError::MissingMap(common::MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(|source| GuardError::Map {
            name: common::MAP_EVENTS,
            source,
        })
    }

    /// Writes `policy` into the maps: endpoints and identities first, the
    /// config (mode, default) last. Until the config is written the
    /// programs deny every protected destination, so a guard attached
    /// before `apply` fails closed.
    pub fn apply(&mut self, policy: &Policy) -> Result<(), GuardError> {
        self.write_endpoints(policy)?;
        self.write_rules(policy)?;
        self.write_config(policy)
    }

    /// Step one of [`Guard::apply`]: the protected addresses.
    pub fn write_endpoints(&mut self, policy: &Policy) -> Result<(), GuardError> {
        for (i, endpoint) in policy.spec.endpoints.iter().enumerate() {
            let value = common::Endpoint { index: i as u32 };
            match endpoint.addr {
                IpAddr::V4(v4) => {
                    let mut map: HashMap<_, u32, common::Endpoint> =
                        self.map_mut(common::MAP_PROTECTED_V4)?;
                    map.insert(u32::from_ne_bytes(v4.octets()), value, 0)
                        .map_err(map_err(common::MAP_PROTECTED_V4))?;
                }
                IpAddr::V6(v6) => {
                    let mut map: HashMap<_, Ipv6Key, common::Endpoint> =
                        self.map_mut(common::MAP_PROTECTED_V6)?;
                    map.insert(ipv6_key(&v6.octets()), value, 0)
                        .map_err(map_err(common::MAP_PROTECTED_V6))?;
                }
            }
        }
        Ok(())
    }

    /// Step two of [`Guard::apply`]: the uid and gid rules.
    pub fn write_rules(&mut self, policy: &Policy) -> Result<(), GuardError> {
        for (name, rules) in [
            (common::MAP_UID_RULES, &policy.uids),
            (common::MAP_GID_RULES, &policy.gids),
        ] {
            let mut map: HashMap<_, u32, common::IdRule> = self.map_mut(name)?;
            for (id, rule) in rules {
                let value = common::IdRule {
                    action: kernel_action(rule.action),
                    rule: rule.entry as u32 + 1,
                };
                map.insert(id, value, 0).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// Step three of [`Guard::apply`]: mode and default, which make the
    /// programs decide by the policy rather than fail closed.
    pub fn write_config(&mut self, policy: &Policy) -> Result<(), GuardError> {
        let config = common::Config {
            mode: match policy.spec.mode {
                Mode::Enforce => mode::ENFORCE,
                Mode::Audit => mode::AUDIT,
            },
            default_action: kernel_action(policy.default_action),
        };
        let mut map: Array<_, common::Config> = self.map_mut(common::MAP_CONFIG)?;
        map.set(0, config, 0).map_err(map_err(common::MAP_CONFIG))
    }

    /// Attaches every program to the cgroup v2 directory `cgroup`, with
    /// multi-attach semantics: other programs attached later, here or in a
    /// child cgroup, run in addition to ours and cannot replace them (a deny
    /// from any of them wins).
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), GuardError> {
        let file = cgroup::open(cgroup)?;
        // From 5.7 aya attaches through a bpf_link, which the kernel always
        // attaches with BPF_F_ALLOW_MULTI and which takes no attach flags
        // (`cgroup_bpf_link_attach` in kernel/bpf/cgroup.c): `Single` means
        // "no flags" there. Before 5.7 it is BPF_PROG_ATTACH, and the flag
        // must be asked for.
        // Measured on 6.18: bpf_link_create with BPF_F_ALLOW_MULTI fails
        // with EINVAL, and with no flags the link runs alongside others.
        let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
        let mode = if links {
            CgroupAttachMode::Single
        } else {
            CgroupAttachMode::AllowMultiple
        };
        for name in PROGRAMS {
            self.program(name)?
                .attach(&file, mode)
                .map_err(|source| GuardError::Attach {
                    name,
                    cgroup: cgroup.display().to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, GuardError> {
        let map = self
            .ebpf
            .map(common::MAP_COUNTERS)
            .ok_or(GuardError::MissingMap(common::MAP_COUNTERS))?;
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

    fn program(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, GuardError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(GuardError::MissingProgram(name))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, GuardError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(GuardError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
    }
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
