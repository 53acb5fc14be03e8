//! The loaded eBPF programs and their maps: one handle, [`Guard`], that
//! opens the object with what the programs are told of the kernel and the
//! host, loads the programs (`load.rs`), attaches them or adopts a pinned
//! attachment (`attach.rs`), and puts policies in force (`policy_maps.rs`,
//! `classify/`). [`GuardError`] wraps each part's own error.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Map, MapData, RingBuf},
};
use imds_guard_common::{
    self as common, CgroupLimits, EntryFlags, ForwardOffsets, HostNamespaces, RequestOffsets,
};

use super::{
    attach::{self, AttachError, AttachReport},
    btf::{Btf, BtfError},
    classify::{
        self, CgroupFill, Classifier, ClassifyError, Drained, RescanJob, RescanReport, Rescanned,
        offsets::CgroupOffsetError,
    },
    counters::{self, Counters},
    features,
    identity::{self, NamespaceError},
    load::{self, LoadError},
    maps::{self, MapError},
    netfilter::{self, NetfilterError, link::Linked},
    offsets::{self, OffsetError},
    pins::{PinError, Pins},
    policy_maps::{PolicyMapError, PolicyMaps, Stamp},
    programs,
    requests::{self, RequestError},
    retire, usage,
};
use crate::{chain::Chain, policy::Policy};

/// The programs' global holding [`imds_guard_common::Offsets`].
const OFFSETS_GLOBAL: &str = "OFFSETS";
/// The programs' global holding [`imds_guard_common::CgroupOffsets`].
const CGROUP_OFFSETS_GLOBAL: &str = "CGROUP_OFFSETS";
/// The programs' global holding [`imds_guard_common::HostNamespaces`].
const HOST_GLOBAL: &str = "HOST";
/// The programs' global holding [`imds_guard_common::CgroupLimits`].
const CGROUP_LIMITS_GLOBAL: &str = "CGROUP_LIMITS";
/// The forward program's global holding [`ForwardOffsets`].
const FORWARD_OFFSETS_GLOBAL: &str = "FORWARD_OFFSETS";
/// The request programs' global holding [`RequestOffsets`].
const REQUEST_OFFSETS_GLOBAL: &str = "REQUEST_OFFSETS";

/// The object `build.rs` compiled from `imds-guard-ebpf`, with `bpf_loop`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-guard"));
/// The same programs built for kernels without `bpf_loop`.
static UNROLLED_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-guard-unrolled"));

impl features::Build {
    fn object(self) -> &'static [u8] {
        match self {
            features::Build::Loop => OBJECT,
            features::Build::Unrolled => UNROLLED_OBJECT,
        }
    }
}

/// Lets the kernel take back the pages the programs' objects were read
/// into: aya keeps its own copy of what it loaded, so the object's pages,
/// a megabyte and more of the agent's resident memory, are not read again
/// until the forward program is loaded anew (from [`OBJECT`]). They are
/// the executable's own read-only pages, never written: whatever touches
/// them again has them read back from the file. Only the pages wholly
/// inside each object are given back; a failure keeps them, as before.
pub fn release_objects() {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return,
    };
    for object in [OBJECT, UNROLLED_OBJECT] {
        let start = (object.as_ptr() as usize).next_multiple_of(page);
        let end = (object.as_ptr() as usize + object.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) lies within a `static` byte array of the
            // executable's read-only data, which no Rust reference writes;
            // MADV_DONTNEED on a private file mapping's unwritten pages only
            // drops them, and a later read maps the file's bytes again.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The guard could not be set up, or a policy put in force: the part that
/// failed says what and why.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP was set)")]
    NoObject,
    #[error("cannot load the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("the guard reads the kernel's structures through its BTF, and cannot read it")]
    Btf(#[source] BtfError),
    #[error(transparent)]
    MissingFeature(#[from] features::MissingFeature),
    #[error("cannot check the kernel's features")]
    Features(#[source] BtfError),
    /// `IMDS_GUARD_PROGRAMS` names no build.
    #[error(transparent)]
    Asked(features::RequireError),
    #[error(transparent)]
    Offsets(Box<OffsetError>),
    #[error(transparent)]
    CgroupOffsets(Box<CgroupOffsetError>),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Policy(#[from] PolicyMapError),
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    #[error("the forward program cannot be loaded: {0}")]
    ForwardLayout(String),
    #[error(transparent)]
    Requests(#[from] RequestError),
}

/// How long the steps of [`Guard::load_and_apply`] took, for the agent's
/// `ready` record: the verifier and the policy's writes run side by side,
/// the classification of the cgroups after both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadTimes {
    /// Loading the programs: the verifier, most of it.
    pub verifier: Duration,
    /// Writing the policy into the maps.
    pub maps: Duration,
    /// Classifying the cgroups under the policy's cgroup rules.
    pub classify: Duration,
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
    /// A descriptor of every map aya created, by name, taken before any
    /// map is taken out of `ebpf`: what the forward program, which aya
    /// does not load, is relocated against (`kernel/netfilter/`).
    object_maps: Vec<(String, OwnedFd)>,
    /// Why the forward program could not read packets on this kernel (a
    /// field its BTF does not describe), if so.
    forward_layout: Option<String>,
    /// Which build of the programs is loaded.
    build: features::Build,
    /// Links made without pins that aya does not hold (`req_sockops`'s):
    /// they detach as this handle drops.
    held_links: Vec<OwnedFd>,
    /// The sockhashes of judged sockets of earlier agents this one
    /// retired at attach (`retire.rs`): kept open so that their sockets'
    /// requests are refused at once rather than dropped unanswered.
    retired: Vec<OwnedFd>,
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
        load::load_all(&mut guard.ebpf, guard.build)?;
        Ok(guard)
    }

    /// Creates the maps, without loading the programs: then
    /// [`Guard::load_and_apply`]. The host is where this process runs.
    pub fn open(ebpf_log_level: u8) -> Result<Self, GuardError> {
        Self::open_in(ebpf_log_level, identity::own_namespaces()?)
    }

    /// [`Guard::open`] with `host` as the host's namespaces.
    pub fn open_in(ebpf_log_level: u8, host: HostNamespaces) -> Result<Self, GuardError> {
        if OBJECT.is_empty() || UNROLLED_OBJECT.is_empty() {
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
        let Layout {
            build,
            offsets,
            cgroup_offsets,
            forward,
            request,
        } = resolved?;
        let forward_offsets = forward.as_ref().copied().unwrap_or(ForwardOffsets::UNSET);
        let capacity = classify::capacity();
        let limits = CgroupLimits::for_capacity(capacity);
        let mut ebpf = loader
            .override_global(aya_log::LEVEL, &ebpf_log_level, false)
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .override_global(CGROUP_OFFSETS_GLOBAL, &cgroup_offsets, true)
            .override_global(CGROUP_LIMITS_GLOBAL, &limits, true)
            .override_global(HOST_GLOBAL, &host, true)
            .override_global(FORWARD_OFFSETS_GLOBAL, &forward_offsets, true)
            .override_global(REQUEST_OFFSETS_GLOBAL, &request, true)
            .map_max_entries(common::MAP_CGROUP_CLASS, capacity)
            .map_max_entries(common::MAP_REQ_SOCKS, requests::req_socks())
            .load(build.object())
            .map_err(GuardError::Object)?;
        let object_maps = object_maps(&ebpf)?;
        let resolved = ebpf
            .map_mut(common::MAP_RESOLVED)
            .ok_or(MapError::Missing(common::MAP_RESOLVED))?;
        identity::record(resolved, &offsets, &host, build.bounds())?;
        let maps = PolicyMaps::new(&ebpf)?;
        let classifier = Classifier::new(&mut ebpf, capacity)?;
        Ok(Self {
            ebpf,
            maps,
            classifier,
            object_maps,
            forward_layout: forward.err(),
            build,
            held_links: Vec::new(),
            retired: Vec::new(),
        })
    }

    /// Which build of the programs is loaded: the one with `bpf_loop`, or
    /// the unrolled one with smaller bounds.
    pub fn build(&self) -> features::Build {
        self.build
    }

    /// How many instructions the verifier walked for each loaded program
    /// (`verified_insns`, Linux 5.16; `None` before): how near each is to
    /// the verifier's budget of a million.
    pub fn verified_insns(&self) -> Vec<(String, Option<u32>)> {
        load::verified_insns(&self.ebpf)
    }

    /// Loads the programs of a guard from [`Guard::open`] one at a time,
    /// going on past a refusal: for each, how many instructions the
    /// verifier walked (`None` before Linux 5.16), or why it was refused.
    /// A kernel test's survey of every program, where [`Guard::load`]
    /// stops at the first refusal.
    pub fn load_each(&mut self) -> Vec<(String, Result<Option<u32>, String>)> {
        load::load_each(&mut self.ebpf)
    }

    /// Loads the programs of a guard from [`Guard::open`] and writes its
    /// first policy, at once: the verifier and a large policy's writes take
    /// about as long as each other.
    /// The cgroups are classified once the programs are loaded, before
    /// anything is attached. Returns the generation written, and how long
    /// each step took.
    pub fn load_and_apply(
        &mut self,
        policy: &Policy,
        stamp: &Stamp,
    ) -> Result<(u32, LoadTimes), GuardError> {
        requests::supported(self.build, policy)?;
        let Self {
            ebpf, maps, build, ..
        } = self;
        let build = *build;
        let stamp = with_cgroup_flags(policy, stamp);
        let mut times = LoadTimes::default();
        let generation = std::thread::scope(|scope| {
            let loading = scope.spawn(|| {
                let started = Instant::now();
                (load::load_all(ebpf, build), started.elapsed())
            });
            let started = Instant::now();
            let applied = maps.apply(policy, &stamp);
            times.maps = started.elapsed();
            let (loaded, verifier) = loading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            times.verifier = verifier;
            loaded
                .map_err(GuardError::from)
                .and(applied.map_err(GuardError::from))
        })?;
        let started = Instant::now();
        self.classifier
            .prepare(&mut self.ebpf, generation, policy)?;
        times.classify = started.elapsed();
        Ok((generation, times))
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
        requests::supported(self.build, policy)?;
        self.maps.settle()?;
        let next = self.maps.next_generation();
        self.classifier.prepare(&mut self.ebpf, next, policy)?;
        Ok(self.maps.apply(policy, &with_cgroup_flags(policy, stamp))?)
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

    /// Reads up to [`classify::EVENTS_PER_DRAIN`] of what the
    /// classification programs reported (new cgroups' names, so that
    /// [`Guard::cgroup_place`] knows them; removals, after which the
    /// cgroups waiting for room are tried), and says what is left.
    pub fn drain_cgroup_events(&mut self) -> Result<Drained, GuardError> {
        Ok(self.classifier.drain(classify::EVENTS_PER_DRAIN)?)
    }

    /// A listing of the cgroups to run off the run loop, after lost
    /// events; [`Guard::cgroup_rescanned`] takes its result.
    pub fn cgroup_rescan(&mut self) -> Result<RescanJob, GuardError> {
        Ok(self.classifier.rescan()?)
    }

    /// Puts what a [`RescanJob`] found in place.
    pub fn cgroup_rescanned(&mut self, done: Rescanned) -> Result<RescanReport, GuardError> {
        Ok(self.classifier.rescanned(done)?)
    }

    /// How full the cgroup classification map is, and what was refused.
    pub fn cgroup_fill(&self) -> Result<CgroupFill, GuardError> {
        Ok(self.classifier.fill()?)
    }

    /// The path of cgroup `id`, and the pod it is of among the pods the
    /// last apply knew, for records.
    pub fn cgroup_place(
        &self,
        id: u64,
    ) -> Option<(String, Option<crate::policy::cgroups::PodName>)> {
        let path = self.classifier.path_of(id)?;
        let pod = self.classifier.pod_of(&path).cloned();
        Some((String::from_utf8_lossy(&path).into_owned(), pod))
    }

    /// Waits out the program runs that may still read the generation the
    /// last [`Guard::apply`] replaced: after it, every decision made under
    /// that generation is in the ring buffer.
    pub fn settle(&mut self) -> Result<(), GuardError> {
        Ok(self.maps.settle()?)
    }

    /// Records in the pinned config that a reload started
    /// (`config_flags::RELOADING`), before the policy file is read.
    pub fn mark_reloading(&mut self) -> Result<(), GuardError> {
        Ok(self.maps.mark_active(common::config_flags::RELOADING, 0)?)
    }

    /// Records in the pinned config that the last reload was refused
    /// (`config_flags::RELOAD_REFUSED`, for `status`), and answers it
    /// (`Config::answered`, for `imds-guard reload`). A reload taken
    /// answers with its new config ([`Guard::apply`]).
    pub fn mark_reload_refused(&mut self) -> Result<(), GuardError> {
        Ok(self.maps.answer_refused()?)
    }

    /// The generation the next [`Guard::apply`] writes.
    pub fn next_generation(&self) -> u32 {
        self.maps.next_generation()
    }

    /// Writes only the protected addresses of `policy` into `generation`,
    /// nothing else: for tests of the states in between.
    pub fn write_endpoints(&mut self, generation: u32, policy: &Policy) -> Result<(), GuardError> {
        Ok(self.maps.write_endpoints(generation, policy)?)
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
            .ok_or(MapError::Missing(common::MAP_EVENTS))?;
        Ok(RingBuf::try_from(map).map_err(maps::access(common::MAP_EVENTS))?)
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
        // The verdict program first: a socket `req_sockops` puts into the
        // sockhash before it is attached would send unjudged (and
        // `egress` would drop all it sends).
        requests::attach_sk_msgs(&mut self.ebpf, self.build)?;
        // An earlier agent's maps, before ours replace their pins.
        let earlier = match pins {
            Some(pins) => Some(retire::Earlier::open(pins, &self.ebpf)?),
            None => None,
        };
        let mut report = attach::attach(&mut self.ebpf, cgroup, pins, &mut self.held_links)?;
        // Our programs decide every new connection now: the earlier
        // agent's judged sockets are refused their next request.
        if let Some(earlier) = earlier {
            report.retired = earlier.retire()?.is_some_and(|socks| {
                self.retired.push(socks);
                true
            });
        }
        if let Some(pins) = pins {
            for name in programs::pinned_maps() {
                let map = self.ebpf.map(name).ok_or(MapError::Missing(name))?;
                pins.pin_map(name, map)?;
            }
            self.classifier.pin(pins)?;
        }
        Ok(report)
    }

    /// Writes the scope of policy entry `entry` of `generation` directly
    /// (`requests.rs`): for tests.
    pub fn write_entry_flags(
        &mut self,
        generation: u32,
        entry: u32,
        flags: EntryFlags,
    ) -> Result<(), GuardError> {
        Ok(requests::write_entry_flags(
            &mut self.ebpf,
            generation,
            entry,
            flags,
        )?)
    }

    /// Writes one request rule directly (`requests.rs`): for tests.
    pub fn write_request_rule(
        &mut self,
        generation: u32,
        ruleset: u16,
        method: u8,
        path: &str,
        rule: u32,
    ) -> Result<(), GuardError> {
        Ok(requests::write_request_rule(
            &mut self.ebpf,
            generation,
            ruleset,
            method,
            path,
            rule,
        )?)
    }

    /// How many sockets are in the sockhash of judged sockets now.
    pub fn judged_sockets(&self) -> Result<usize, GuardError> {
        Ok(requests::judged_sockets(&self.ebpf)?)
    }

    /// Loads the forward program and links it at the forward hook of this
    /// thread's network namespace for both families, pinned in `pins`,
    /// each link replacing an earlier agent's only once it is hooked
    /// (`kernel/netfilter/link.rs`).
    pub fn attach_forward(&mut self, pins: &Pins) -> Result<Vec<Linked>, GuardError> {
        if let Some(why) = &self.forward_layout {
            return Err(GuardError::ForwardLayout(why.clone()));
        }
        let prog = netfilter::load(OBJECT, &self.object_maps)?;
        Ok(netfilter::link::attach(prog.as_fd(), pins)?)
    }

    /// The forward program's records.
    pub fn take_forward_events(&mut self) -> Result<RingBuf<MapData>, GuardError> {
        let name = common::MAP_FORWARD_EVENTS;
        let map = self.ebpf.take_map(name).ok_or(MapError::Missing(name))?;
        Ok(RingBuf::try_from(map).map_err(maps::access(name))?)
    }

    /// A descriptor of map `name` of the object (the forward program's
    /// state and counters, which the forward path keeps while a reload
    /// has the guard).
    pub fn map_descriptor(&self, name: &'static str) -> Result<OwnedFd, GuardError> {
        let (_, fd) = self
            .object_maps
            .iter()
            .find(|(n, _)| n == name)
            .ok_or(MapError::Missing(name))?;
        Ok(fd.try_clone().map_err(maps::write(name))?)
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, GuardError> {
        let map = self
            .ebpf
            .map(common::MAP_COUNTERS)
            .ok_or(MapError::Missing(common::MAP_COUNTERS))?;
        Ok(counters::read(map)?)
    }

    /// What `req_msg` counted of the requests it judged.
    pub fn request_counters(&self) -> Result<usage::RequestCounters, GuardError> {
        let map = self
            .ebpf
            .map(common::MAP_REQ_COUNTERS)
            .ok_or(MapError::Missing(common::MAP_REQ_COUNTERS))?;
        Ok(usage::read_counters(map)?)
    }

    /// The census of who sent which kind of request.
    pub fn census(&self) -> Result<usage::Census, GuardError> {
        let map = self
            .ebpf
            .map(common::MAP_REQ_USAGE)
            .ok_or(MapError::Missing(common::MAP_REQ_USAGE))?;
        Ok(usage::read_census(map)?)
    }
}

/// What the programs are told of the kernel's layout.
struct Layout {
    build: features::Build,
    offsets: common::Offsets,
    cgroup_offsets: common::CgroupOffsets,
    /// The forward program's, or why this kernel cannot give them (only
    /// that program then cannot be used).
    forward: Result<ForwardOffsets, String>,
    /// The request programs'.
    request: RequestOffsets,
}

/// A descriptor of every map of `ebpf`, by name.
fn object_maps(ebpf: &Ebpf) -> Result<Vec<(String, OwnedFd)>, GuardError> {
    let mut out = Vec::new();
    for (name, map) in ebpf.maps() {
        let data = map_data(map);
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| MapError::Write {
                name: "(a descriptor of every map)",
                source: e,
            })?;
        out.push((name.to_owned(), fd));
    }
    Ok(out)
}

/// The map behind aya's enum, whatever its type.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

/// The kernel's BTF asked for every feature the guard needs, the build of
/// the programs it can load (or `IMDS_GUARD_PROGRAMS` names), and the
/// offsets of the fields the programs read.
fn resolve_layout() -> Result<Layout, GuardError> {
    let btf = Btf::from_sys_fs().map_err(GuardError::Btf)?;
    let release = offsets::kernel_release();
    let build = features::require(&btf, &release)
        .and_then(|_| features::Build::for_kernel(&btf, &release))
        .map_err(|e| match e {
            features::RequireError::Missing(m) => GuardError::MissingFeature(m),
            features::RequireError::Btf(e) => GuardError::Features(e),
            asked @ features::RequireError::Asked(_) => GuardError::Asked(asked),
        })?;
    let offsets = offsets::resolve(&btf, &release).map_err(|e| GuardError::Offsets(Box::new(e)))?;
    let cgroup_offsets = classify::offsets::resolve(&btf, &release)
        .map_err(|e| GuardError::CgroupOffsets(Box::new(e)))?;
    let forward = offsets::resolve_forward(&btf, &release).map_err(|e| Chain(&e).to_string());
    let request =
        offsets::resolve_request(&btf, &release).map_err(|e| GuardError::Offsets(Box::new(e)))?;
    Ok(Layout {
        build,
        offsets,
        cgroup_offsets,
        forward,
        request,
    })
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

#[cfg(test)]
mod tests {
    use std::{fs::File, os::unix::fs::FileExt as _};

    use super::*;

    /// Whether the page holding `at` is mapped in this process now
    /// (`/proc/self/pagemap`: bit 63 of the page's entry).
    fn resident(at: usize) -> bool {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut entry = [0u8; 8];
        File::open("/proc/self/pagemap")
            .and_then(|f| f.read_exact_at(&mut entry, (at / page * 8) as u64))
            .unwrap_or_else(|e| panic!("reading /proc/self/pagemap: {e}"));
        u64::from_ne_bytes(entry) >> 63 == 1
    }

    #[test]
    fn the_objects_pages_go_and_read_back_the_same() {
        if OBJECT.is_empty() {
            eprintln!("skipping: built without the eBPF object (AYA_BUILD_SKIP)");
            return;
        }
        let copy = OBJECT.to_vec();
        let middle = OBJECT.as_ptr() as usize + OBJECT.len() / 2;
        // Read whole, as aya's loader reads it.
        assert!(resident(middle), "a page just read is mapped");
        release_objects();
        assert!(!resident(middle), "the object's pages were given back");
        assert_eq!(OBJECT, &copy[..], "read back from the executable");
    }
}
