//! The loaded eBPF programs and their maps: one handle that loads the
//! object, attaches (or adopts a pinned attachment) and reads the
//! counters. Writing policies into the maps is `policy_maps.rs`.
//!
//! Attaching is planned, then executed: every pinned link is checked before
//! any is touched, so a problem leaves the guard as it was rather than half
//! old, half new (bpfman's manager works the same way).

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, ProgramFd,
        links::FdLink,
    },
    util::KernelVersion,
};
use imds_guard_common::{self as common, HostNamespaces, counter};

use super::{
    btf::{Btf, BtfError},
    cgroup::{self, CgroupError},
    classify::{self, Classifier, offsets::CgroupOffsetError},
    features, identity,
    offsets::{self, OffsetError},
    pins::{PinError, Pins},
    policy_maps::PolicyMaps,
    programs::{self, Hook, Kind, Row},
    sys,
};
use crate::policy::Policy;

/// The programs' global holding [`imds_guard_common::Offsets`].
const OFFSETS_GLOBAL: &str = "OFFSETS";
/// The programs' global holding [`imds_guard_common::CgroupOffsets`].
const CGROUP_OFFSETS_GLOBAL: &str = "CGROUP_OFFSETS";
/// The programs' global holding [`imds_guard_common::HostNamespaces`].
const HOST_GLOBAL: &str = "HOST";

/// The object `build.rs` compiled from `imds-guard-ebpf`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-guard"));

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP was set)")]
    NoObject,
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the guard reads the kernel's structures through its BTF, and cannot read it")]
    Btf(#[source] BtfError),
    #[error(transparent)]
    Offsets(Box<OffsetError>),
    #[error(transparent)]
    CgroupOffsets(Box<CgroupOffsetError>),
    #[error("cannot attach program {name} to the tracepoint of the same name")]
    Tracepoint {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot list the cgroups below {path}")]
    CgroupScan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the namespace {path}, which tells the host from a container")]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has a program {0} that is no hook's")]
    UnknownProgram(String),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error(transparent)]
    MissingFeature(#[from] features::MissingFeature),
    #[error("cannot check the kernel's features")]
    Features(#[source] BtfError),
    #[error(
        "this kernel ({release}) does not let program {program} call {helper}, which it needs; \
         the verifier refused it"
    )]
    MissingHelper {
        release: String,
        program: &'static str,
        helper: String,
    },
    #[error("cannot load program {name} into the kernel")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach program {name} to {cgroup}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin the link of program {name}: it is not a bpf_link")]
    NotALink {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(
        "the guard pinned at {pin} is attached to another cgroup (id {pinned}) than {cgroup} \
         (id {wanted}); run `{detach}` first to move it"
    )]
    OtherCgroup {
        pin: PathBuf,
        cgroup: PathBuf,
        pinned: u64,
        wanted: u64,
        /// The command that detaches it.
        detach: String,
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
    #[error("cannot write or clear map {name}")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the map used to wait for RCU grace periods")]
    GraceMap(#[source] std::io::Error),
    #[error("cannot wait for an RCU grace period")]
    Grace(#[source] std::io::Error),
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
    /// `[hook][counter kind]`, by hook number ([`Hook::ALL`]).
    pub by_hook: [[u64; counter::KINDS as usize]; Hook::ALL.len()],
}

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

/// How [`Guard::attach`] found each hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Hooks whose pinned link now runs our programs (an earlier agent's).
    pub adopted: usize,
    /// Hooks attached anew.
    pub attached: usize,
}

/// What [`Guard::attach`] does for one hook.
enum Step {
    /// Swap our program into this pinned link (`BPF_LINK_UPDATE`).
    Adopt { path: PathBuf, link: OwnedFd },
    /// Attach anew (and pin, when pinning).
    Attach,
}

/// The loaded (and, after [`Guard::attach`], attached) programs.
///
/// Without pins, dropping it detaches the programs. With pins, the links
/// outlive it: enforcement stays until `imds-guard detach`.
pub struct Guard {
    pub(super) ebpf: Ebpf,
    /// The maps a policy is written into, and what they hold.
    pub(super) maps: PolicyMaps,
    /// Cgroups classified as they are created (`classify/`).
    pub(super) classifier: Classifier,
}

impl Guard {
    /// Loads the programs into the kernel, unattached, with fresh maps.
    /// `ebpf_log_level` is the aya-log level of the programs' diagnostics
    /// (0: off).
    pub fn load(ebpf_log_level: u8) -> Result<Self, GuardError> {
        Self::load_in(ebpf_log_level, identity::own_namespaces()?)
    }

    /// [`Guard::load`], with `host` as the namespaces a caller must share
    /// to be on the host (a test's, rather than this process's).
    pub fn load_in(ebpf_log_level: u8, host: HostNamespaces) -> Result<Self, GuardError> {
        let mut guard = Self::open_in(ebpf_log_level, host)?;
        load_programs(&mut guard.ebpf)?;
        Ok(guard)
    }

    /// Creates the maps, without loading the programs: then
    /// [`Guard::load_and_apply`]. The host is where this process runs.
    pub fn open(ebpf_log_level: u8) -> Result<Self, GuardError> {
        Self::open_in(ebpf_log_level, identity::own_namespaces()?)
    }

    /// [`Guard::open`] with `host` as the host's namespaces.
    pub fn open_in(ebpf_log_level: u8, host: HostNamespaces) -> Result<Self, GuardError> {
        if OBJECT.is_empty() {
            return Err(GuardError::NoObject);
        }
        // aya's loader parses the kernel's BTF as it is made, as we parse
        // it for the offsets: tens of milliseconds each, side by side.
        let (mut loader, resolved) = std::thread::scope(|scope| {
            let aya = scope.spawn(EbpfLoader::new);
            let ours = resolve_layout();
            let loader = aya
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (loader, ours)
        });
        let (offsets, cgroup_offsets) = resolved?;
        let mut ebpf = loader
            .override_global(aya_log::LEVEL, &ebpf_log_level, false)
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .override_global(CGROUP_OFFSETS_GLOBAL, &cgroup_offsets, true)
            .override_global(HOST_GLOBAL, &host, true)
            .load(OBJECT)
            .map_err(GuardError::Load)?;
        let resolved = ebpf
            .map_mut(common::MAP_RESOLVED)
            .ok_or(GuardError::MissingMap(common::MAP_RESOLVED))?;
        identity::record(resolved, &offsets, &host)?;
        let maps = PolicyMaps::new(&ebpf)?;
        let classifier = Classifier::new(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            classifier,
        })
    }

    /// How many instructions the verifier walked for each loaded program
    /// (`verified_insns`, Linux 5.16; `None` before): how near each is to
    /// the verifier's budget of a million.
    pub fn verified_insns(&self) -> Vec<(String, Option<u32>)> {
        verified_insns(&self.ebpf)
    }

    /// Loads the programs of a guard from [`Guard::open`] one at a time,
    /// going on past a refusal: for each, how many instructions the
    /// verifier walked (`None` before Linux 5.16), or why it was refused.
    /// A kernel test's survey of every program, where [`Guard::load`]
    /// stops at the first refusal.
    pub fn load_each(&mut self) -> Vec<(String, Result<Option<u32>, String>)> {
        let mut report = Vec::new();
        for (name, program) in self.ebpf.programs_mut() {
            let outcome = match load_one(program) {
                None => Err("not a program of ours".to_owned()),
                Some(Ok(())) => Ok(verified(program)),
                Some(Err(e)) => Err(refusal(&e)),
            };
            report.push((name.to_owned(), outcome));
        }
        report
    }

    /// Loads the programs of a guard from [`Guard::open`] and writes its
    /// first policy, at once: the verifier and a large policy's writes take
    /// about as long as each other.
    /// The cgroups are classified once the programs are loaded, before
    /// anything is attached.
    pub fn load_and_apply(&mut self, policy: &Policy, stamp: &Stamp) -> Result<u32, GuardError> {
        let Self { ebpf, maps, .. } = self;
        let stamp = with_cgroup_flags(policy, stamp);
        let generation = std::thread::scope(|scope| {
            let loading = scope.spawn(|| load_programs(ebpf));
            let applied = maps.apply(policy, &stamp);
            let loaded = loading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            loaded.and(applied)
        })?;
        self.classifier
            .prepare(&mut self.ebpf, generation, policy)?;
        Ok(generation)
    }

    /// The generation in force, if a policy was applied.
    pub fn active_generation(&self) -> Option<u32> {
        self.maps.active_generation()
    }

    /// Puts `policy` in force; returns its generation (see
    /// `policy_maps.rs`). Its cgroup patterns, and every cgroup's rule
    /// under them, are written first (`classify/`), once no program reads
    /// the generation being written any more.
    pub fn apply(&mut self, policy: &Policy, stamp: &Stamp) -> Result<u32, GuardError> {
        self.maps.settle()?;
        let next = self.maps.next_generation();
        self.classifier.prepare(&mut self.ebpf, next, policy)?;
        self.maps.apply(policy, &with_cgroup_flags(policy, stamp))
    }

    /// The pods present, for `pods` rules: the next [`Guard::apply`]
    /// writes their patterns.
    pub fn set_pods(&mut self, pods: crate::policy::cgroups::Pods) {
        self.classifier.set_pods(pods);
    }

    /// Pods whose patterns did not fit beside the others at the last
    /// apply (they are not allowed).
    pub fn dropped_pods(&self) -> &[(crate::policy::cgroups::PodName, String)] {
        &self.classifier.dropped().pods
    }

    /// Reads what the classification programs reported (new cgroups'
    /// paths), so that [`Guard::cgroup_path`] knows them.
    pub fn drain_cgroup_events(&mut self) -> Result<(), GuardError> {
        self.classifier.drain(false)
    }

    /// The path of cgroup `id`, and the pod it is of among the pods the
    /// last apply knew, for records.
    pub fn cgroup_place(
        &self,
        id: u64,
    ) -> Option<(String, Option<crate::policy::cgroups::PodName>)> {
        let path = self.classifier.path_of(id)?;
        let pod = self.classifier.pod_of(path).cloned();
        Some((String::from_utf8_lossy(path).into_owned(), pod))
    }

    /// Waits out the program runs that may still read the generation the
    /// last [`Guard::apply`] replaced: after it, every decision made under
    /// that generation is in the ring buffer.
    pub fn settle(&mut self) -> Result<(), GuardError> {
        self.maps.settle()
    }

    /// Records in the pinned config whether the last reload was refused
    /// (`config_flags::RELOAD_REFUSED`), for `status`.
    pub fn mark_reload_refused(&mut self, refused: bool) -> Result<(), GuardError> {
        let flag = common::config_flags::RELOAD_REFUSED;
        if refused {
            self.maps.mark_active(flag, 0)
        } else {
            self.maps.mark_active(0, flag)
        }
    }

    /// The generation the next [`Guard::apply`] writes.
    pub fn next_generation(&self) -> u32 {
        self.maps.next_generation()
    }

    /// Writes only the protected addresses of `policy` into `generation`,
    /// nothing else: for tests of the states in between.
    pub fn write_endpoints(&mut self, generation: u32, policy: &Policy) -> Result<(), GuardError> {
        self.maps.write_endpoints(generation, policy)
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
        let plan = match pins {
            Some(pins) => plan(pins, cgroup, cgroup_id)?,
            None => programs::guarding().map(|_| Step::Attach).collect(),
        };
        let mut report = AttachReport::default();
        for ((row, _), step) in programs::guarding().zip(plan) {
            match step {
                Step::Adopt { path, link } => {
                    self.adopt(row, path, &link)?;
                    report.adopted += 1;
                }
                Step::Attach => {
                    self.attach_new(row, &file, cgroup, pins)?;
                    report.attached += 1;
                }
            }
        }
        if let Some(pins) = pins {
            for name in programs::pinned_maps() {
                let map = self.ebpf.map(name).ok_or(GuardError::MissingMap(name))?;
                pins.pin_map(name, map)?;
            }
            self.classifier.pin(pins)?;
        }
        Ok(report)
    }

    /// Swaps our program of `row` into the pinned `link`.
    fn adopt(&mut self, row: &Row, path: PathBuf, link: &OwnedFd) -> Result<(), GuardError> {
        let name = row.name;
        let program = self.program(row)?;
        let prog_fd = program
            .fd()
            .map_err(|source| GuardError::LoadProgram { name, source })?;
        sys::link_update(link.as_fd(), prog_fd.as_fd())
            .map_err(|source| GuardError::Update { path, source })
    }

    /// Attaches our program of `row` to `file` (the cgroup at `path`),
    /// and pins its link when pinning.
    fn attach_new(
        &mut self,
        row: &Row,
        file: &std::fs::File,
        path: &Path,
        pins: Option<&Pins>,
    ) -> Result<(), GuardError> {
        let name = row.name;
        let attach_err = |source| GuardError::Attach {
            name,
            cgroup: path.to_owned(),
            source,
        };
        let not_a_link = |source| GuardError::NotALink { name, source };
        // Without pins, the link stays with the program (and goes with it).
        let link: Option<FdLink> = match self.program(row)? {
            Program::SockAddr(p) => {
                let id = p.attach(file, attach_mode()).map_err(attach_err)?;
                match pins {
                    Some(_) => Some(
                        p.take_link(id)
                            .map_err(attach_err)?
                            .try_into()
                            .map_err(not_a_link)?,
                    ),
                    None => None,
                }
            }
            Program::Skb(p) => {
                let id = p
                    .attach(file, CgroupSkbAttachType::Egress, attach_mode())
                    .map_err(attach_err)?;
                match pins {
                    Some(_) => Some(
                        p.take_link(id)
                            .map_err(attach_err)?
                            .try_into()
                            .map_err(not_a_link)?,
                    ),
                    None => None,
                }
            }
        };
        if let (Some(pins), Some(link)) = (pins, link) {
            pins.pin_link(name, link)?;
        }
        Ok(())
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, GuardError> {
        let map = self
            .ebpf
            .map(common::MAP_COUNTERS)
            .ok_or(GuardError::MissingMap(common::MAP_COUNTERS))?;
        read_counters(map)
    }

    /// The cgroup program of `row`, as the type its kind says.
    fn program(&mut self, row: &Row) -> Result<Program<'_>, GuardError> {
        let program = self.ebpf.program_mut(row.name);
        let typed = match row.kind {
            Kind::SockAddr(_) => program
                .and_then(|p| p.try_into().ok())
                .map(Program::SockAddr),
            Kind::SkbEgress => program.and_then(|p| p.try_into().ok()).map(Program::Skb),
            Kind::RawTracepoint(_) | Kind::Map => None,
        };
        typed.ok_or(GuardError::MissingProgram(row.name))
    }
}

/// A cgroup program, as its type.
enum Program<'a> {
    SockAddr(&'a mut CgroupSockAddr),
    Skb(&'a mut CgroupSkb),
}

impl Program<'_> {
    fn fd(&self) -> Result<&ProgramFd, ProgramError> {
        match self {
            Self::SockAddr(p) => p.fd(),
            Self::Skb(p) => p.fd(),
        }
    }
}

/// From 5.7 aya attaches through a bpf_link, which the kernel always
/// attaches with BPF_F_ALLOW_MULTI and which takes no attach flags
/// (`cgroup_bpf_link_attach` in kernel/bpf/cgroup.c): `Single` means "no
/// flags" there. Measured on 6.18: BPF_F_ALLOW_MULTI fails with EINVAL.
/// Before 5.7 it is BPF_PROG_ATTACH, and the flag is needed.
fn attach_mode() -> CgroupAttachMode {
    let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
    if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

/// What to do for each program on the cgroup, in the order of
/// [`programs::guarding`], given what is pinned: every pinned link is
/// checked before anything changes.
fn plan(pins: &Pins, cgroup: &Path, cgroup_id: u64) -> Result<Vec<Step>, GuardError> {
    let mut plan = Vec::with_capacity(programs::GUARDING);
    for (row, _) in programs::guarding() {
        let Some((path, link)) = pins.open_link(row.name)? else {
            plan.push(Step::Attach);
            continue;
        };
        let info = sys::link_info(link.as_fd())
            .map_err(|e| PinError::new("read the pinned link", &path, e))?;
        if info.cgroup_id == 0 {
            // Detached (its cgroup was removed, or `BPF_LINK_DETACH`): it
            // guards nothing; attach anew in its place.
            std::fs::remove_file(&path)
                .map_err(|e| PinError::new("remove the stale pinned link", &path, e))?;
            plan.push(Step::Attach);
            continue;
        }
        if info.cgroup_id != cgroup_id {
            return Err(GuardError::OtherCgroup {
                pin: path,
                cgroup: cgroup.to_owned(),
                pinned: info.cgroup_id,
                wanted: cgroup_id,
                detach: pins.command("detach"),
            });
        }
        plan.push(Step::Adopt { path, link });
    }
    Ok(plan)
}

/// The counters of a `COUNTERS` map (ours, or one opened from its pin).
/// The hooks it has are read from the map's own length, so that the map
/// of an older agent with fewer hooks reads as zeros for the others.
pub fn read_counters(map: &Map) -> Result<Counters, GuardError> {
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(map_err(common::MAP_COUNTERS))?;
    let hooks = (array.len() / counter::KINDS) as usize;
    let mut c = Counters::default();
    for hook in Hook::ALL.iter().take(hooks) {
        for kind in 0..counter::KINDS {
            let values = array
                .get(&common::counter_index(hook.wire(), kind), 0)
                .map_err(map_err(common::MAP_COUNTERS))?;
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

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> GuardError {
    move |source| GuardError::Map { name, source }
}

/// The kernel's BTF asked for every feature the guard needs, and the
/// offsets of the fields the programs read.
fn resolve_layout() -> Result<(common::Offsets, common::CgroupOffsets), GuardError> {
    let btf = Btf::from_sys_fs().map_err(GuardError::Btf)?;
    let release = offsets::kernel_release();
    features::require(&btf, &release).map_err(|e| match e {
        features::RequireError::Missing(m) => GuardError::MissingFeature(m),
        features::RequireError::Btf(e) => GuardError::Features(e),
    })?;
    let offsets = offsets::resolve(&btf, &release).map_err(|e| GuardError::Offsets(Box::new(e)))?;
    let cgroup_offsets = classify::offsets::resolve(&btf, &release)
        .map_err(|e| GuardError::CgroupOffsets(Box::new(e)))?;
    Ok((offsets, cgroup_offsets))
}

/// A program the kernel refused: named for the helper it lacks when the
/// verifier says so, otherwise with the verifier's whole log.
fn load_error(name: &'static str, source: ProgramError) -> GuardError {
    if let ProgramError::LoadError { verifier_log, .. } = &source {
        if let Some(helper) = features::missing_helper(&verifier_log.to_string()) {
            return GuardError::MissingHelper {
                release: offsets::kernel_release(),
                program: name,
                helper: helper.to_owned(),
            };
        }
    }
    GuardError::LoadProgram { name, source }
}

/// The error of a program the kernel refused, with the verifier log's last
/// lines (where it says why).
fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            format!("{io_error}: {tail}")
        }
        other => other.to_string(),
    }
}

fn verified_insns(ebpf: &Ebpf) -> Vec<(String, Option<u32>)> {
    ebpf.programs()
        .map(|(name, p)| (name.to_owned(), verified(p)))
        .collect()
}

/// How many instructions the verifier walked for a loaded program (`None`
/// before Linux 5.16).
fn verified(program: &aya::programs::Program) -> Option<u32> {
    program
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
}

/// Loads one program of the kinds the guard has; `None` for any other.
fn load_one(program: &mut aya::programs::Program) -> Option<Result<(), ProgramError>> {
    match program {
        aya::programs::Program::CgroupSockAddr(p) => Some(p.load()),
        aya::programs::Program::CgroupSkb(p) => Some(p.load()),
        aya::programs::Program::RawTracePoint(p) => Some(p.load()),
        _ => None,
    }
}

/// The config flags that tell the programs whether `policy` names
/// cgroups, added to `stamp`'s.
fn with_cgroup_flags(policy: &Policy, stamp: &Stamp) -> Stamp {
    let mut flags = stamp.flags;
    if !policy.cgroups.is_empty() {
        flags |= common::config_flags::CGROUP_RULES;
    }
    if policy.cgroups.denies() {
        flags |= common::config_flags::CGROUP_DENY;
    }
    Stamp { flags, ..*stamp }
}

/// Loads every program of [`programs::TABLE`] into the kernel. The
/// verifier is most of a start's time: half the programs on another CPU.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), GuardError> {
    let expected = || programs::programs().map(|row| row.name);
    let mut found = Vec::with_capacity(expected().count());
    for (name, program) in ebpf.programs_mut() {
        let name = expected()
            .find(|p| *p == name)
            .ok_or(GuardError::UnknownProgram(name.to_owned()))?;
        found.push((name, program));
    }
    for name in expected() {
        if !found.iter().any(|(loaded, _)| *loaded == name) {
            return Err(GuardError::MissingProgram(name));
        }
    }
    let load =
        |programs: &mut [(&'static str, &mut aya::programs::Program)]| -> Result<(), GuardError> {
            for (name, program) in programs {
                load_one(program)
                    .ok_or(GuardError::MissingProgram(name))?
                    .map_err(|source| load_error(name, source))?;
            }
            Ok(())
        };
    let half = found.len() / 2;
    let (first, second) = found.split_at_mut(half);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| load(first));
        let here = load(second);
        let there = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        here.and(there)
    })?;
    for (program, insns) in verified_insns(ebpf) {
        tracing::debug!(program, insns, "verified");
    }
    Ok(())
}
