//! The `bpf(2)` commands aya 0.14 has no public call for. Each is here for
//! a reason (CONTRIBUTING.md, "What we write by hand, and why"):
//! - [`obj_get`]: aya opens a pinned link only as an `FdLink`, which does
//!   not lend its descriptor to the commands below;
//! - [`link_update`] (`BPF_LINK_UPDATE`) and [`link_detach`]
//!   (`BPF_LINK_DETACH`): aya has neither, and adopting a running guard
//!   without a gap needs the first, `imds-guard detach` the second;
//! - [`link_info`]: aya's `LinkInfo` does not say which cgroup a link is
//!   on;
//! - [`prog_query`]: aya queries what is attached only for lirc and
//!   device programs;
//! - [`prog_name`]: aya finds a program by id only by walking every
//!   program of the host (`loaded_programs`);
//! - [`GracePeriod`]: aya creates a map of maps only from an object's
//!   definition;
//! - [`prog_load_netfilter`], [`link_create_netfilter`], [`obj_pin`],
//!   [`netfilter_link_info`]: aya 0.14 has no netfilter program type
//!   (`kernel/netfilter/`), so the forward program is loaded, linked and
//!   pinned by hand;
//! - [`map_update`], [`map_delete`], [`map_lookup`]: one element by the
//!   descriptors the batch commands (`batch.rs`, which aya lacks) already
//!   hold, with the kernel's errno for the callers to tell a missing key
//!   or a full map apart.
//!
//! The numbers and layouts (`enum bpf_cmd`, `union bpf_attr`, `struct
//! bpf_link_info`, ...) are `aya_obj::generated`'s, bindgen's of
//! include/uapi/linux/bpf.h. The kernel takes an attr longer than it knows
//! as long as the bytes it does not know are 0.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{
    BPF_ANY, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_link_info, bpf_map_type,
    bpf_prog_info, bpf_prog_type,
};

/// `bpf(cmd, attr)`: what the kernel returns (a descriptor, or 0).
pub(super) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `union bpf_attr`, valid for reads and writes of
    // its size for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An attr of zeros: what the kernel takes for the fields a command does
/// not use.
pub(super) fn attr() -> bpf_attr {
    // SAFETY: `union bpf_attr` is made of integers, arrays and unions of
    // them: all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// A descriptor the kernel just returned.
fn new_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the command returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens the object (link, map, program) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).map(new_fd)
}

/// Replaces the program of a link with `new_prog`, atomically: every
/// connect runs either the old program or the new one, never neither.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = attr();
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = new_prog.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches a link now, whoever else holds it (a running agent, a pin).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = attr();
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// What the kernel says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// For a cgroup link: the cgroup's id (its inode number in cgroup v2),
    /// 0 once the link is detached.
    pub cgroup_id: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`, the kernel's info struct for the
/// object `fd` refers to (a link, a program): the kernel fills as much as
/// it has.
fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut attr = attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // SAFETY: `struct bpf_link_info` is made of integers and unions of
    // them: all zeros is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(link, &mut info)?;
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        // SAFETY: every variant of the union is plain integers; for a link
        // that is not a cgroup's this reads whatever the kernel wrote, and
        // callers ask only of cgroup links.
        cgroup_id: unsafe { info.__bindgen_anon_1.cgroup.cgroup_id },
    })
}

/// Where a netfilter link hooks, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetfilterLinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
    pub pf: u32,
    pub hooknum: u32,
    pub priority: i32,
}

/// What the kernel says of a netfilter link. A link detached with
/// `BPF_LINK_DETACH` reads as it did before (`bpf_nf_link_fill_link_info`
/// keeps its hook): this cannot tell a detached link from a live one.
pub fn netfilter_link_info(link: BorrowedFd<'_>) -> io::Result<NetfilterLinkInfo> {
    // SAFETY: as in `link_info`.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(link, &mut info)?;
    // SAFETY: every variant of the union is plain integers; callers ask
    // only of netfilter links.
    let nf = unsafe { info.__bindgen_anon_1.netfilter };
    Ok(NetfilterLinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        pf: nf.pf,
        hooknum: nf.hooknum,
        priority: nf.priority,
    })
}

/// Why a program load failed: the errno, and the verifier's log when one
/// was asked for.
#[derive(Debug)]
pub struct LoadFailure {
    pub error: io::Error,
    pub log: String,
}

/// Loads `insns` as a netfilter program (`BPF_PROG_TYPE_NETFILTER`, with
/// the expected attach type `BPF_NETFILTER` that `BPF_LINK_CREATE` wants of
/// it), named `name`. With `log`, the verifier's log is kept for the error.
///
/// A kernel without netfilter programs (before 6.4, or built without
/// `CONFIG_NETFILTER_BPF_LINK`) refuses with `EINVAL` before any
/// verification (`find_prog_type`, kernel/bpf/syscall.c), and writes no
/// log: that is how the probe (`kernel/netfilter/`) tells it apart.
pub fn prog_load_netfilter(
    insns: &[bpf_insn],
    license: &std::ffi::CStr,
    name: &str,
    log: bool,
) -> Result<OwnedFd, LoadFailure> {
    let mut prog_name = [0 as libc::c_char; 16];
    for (to, &from) in prog_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *to = from as libc::c_char;
    }
    let mut buf = if log { vec![0u8; 1 << 20] } else { Vec::new() };
    let mut attr = attr();
    // SAFETY: writing plain integers into the command's member.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32;
    load.expected_attach_type = bpf_attach_type::BPF_NETFILTER as u32;
    load.insn_cnt = insns.len() as u32;
    load.insns = insns.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    load.prog_name = prog_name;
    if log {
        load.log_level = 1;
        load.log_size = buf.len() as u32;
        load.log_buf = buf.as_mut_ptr() as u64;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        .map(new_fd)
        .map_err(|error| {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            LoadFailure {
                error,
                log: String::from_utf8_lossy(&buf[..end]).into_owned(),
            }
        })
}

/// Links `prog` at the netfilter hook `hooknum` of family `pf` with
/// `priority`, in the network namespace of the calling thread
/// (`bpf_nf_link_attach` takes `current->nsproxy->net_ns`). `EBUSY` when
/// another hook holds that priority, `ERANGE` for `NF_IP_PRI_FIRST` and
/// `NF_IP_PRI_LAST`, `EAFNOSUPPORT` for `NFPROTO_INET`.
pub fn link_create_netfilter(
    prog: BorrowedFd<'_>,
    pf: u32,
    hooknum: u32,
    priority: i32,
) -> io::Result<OwnedFd> {
    let mut attr = attr();
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.attach_type = bpf_attach_type::BPF_NETFILTER as u32;
    // SAFETY: writing plain integers into the netfilter member.
    let nf = unsafe { &mut attr.link_create.__bindgen_anon_3.netfilter };
    nf.pf = pf;
    nf.hooknum = hooknum;
    nf.priority = priority;
    // No `BPF_F_NETFILTER_IP_DEFRAG` (6.6): every fragment is judged on
    // its own, by the addresses it carries.
    nf.flags = 0;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(new_fd)
}

/// Links `prog` to the cgroup `cgroup` at `attach_type` (a bpf_link, which
/// the kernel attaches as multi-attach): aya 0.14 makes one for a
/// `sock_ops` program but cannot turn it into an `FdLink` to pin.
pub fn link_create_cgroup(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: bpf_attach_type,
) -> io::Result<OwnedFd> {
    let mut attr = attr();
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
    attr.link_create.attach_type = attach_type as u32;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(new_fd)
}

/// Pins `fd` (a link) at `path` in a bpf filesystem.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The ids of the programs attached to `cgroup` itself (not inherited) for
/// `attach_type`.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: bpf_attach_type) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = attr();
    attr.query.__bindgen_anon_1.target_fd = cgroup.as_raw_fd() as u32;
    attr.query.attach_type = attach_type as u32;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: the kernel wrote the count back into the field it read it
    // from, a plain integer.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt };
    ids.truncate(count as usize);
    Ok(ids)
}

/// The name of the program with id `id` (up to 15 bytes, as loaded).
pub fn prog_name(id: u32) -> io::Result<String> {
    let mut attr = attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    let fd = bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr).map(new_fd)?;
    // SAFETY: `struct bpf_prog_info` is made of integers and arrays of
    // them: all zeros is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(fd.as_fd(), &mut info)?;
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// Waits until every program run that started before the call has ended:
/// an RCU grace period, since cgroup programs run inside an RCU read-side
/// critical section.
///
/// Updating a map-in-map element makes the kernel call `synchronize_rcu()`
/// before the syscall returns (`maybe_wait_bpf_programs()` in
/// kernel/bpf/syscall.c), whatever the number of CPUs or `nohz_full`; so
/// this holds one `BPF_MAP_TYPE_ARRAY_OF_MAPS` of one slot and rewrites it.
/// (`membarrier(MEMBARRIER_CMD_GLOBAL)` is no substitute: it skips the
/// grace period on a single online CPU and fails under `nohz_full`.)
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

/// A map of one `u32` slot, of `map_type`, named `name` (up to 15 bytes).
fn map_create(
    map_type: bpf_map_type,
    inner: Option<BorrowedFd<'_>>,
    name: &[u8],
) -> io::Result<OwnedFd> {
    let mut map_name = [0 as libc::c_char; 16];
    for (to, &from) in map_name.iter_mut().zip(name.iter().take(15)) {
        *to = from as libc::c_char;
    }
    let mut attr = attr();
    attr.__bindgen_anon_1.map_type = map_type as u32;
    attr.__bindgen_anon_1.key_size = 4;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 1;
    attr.__bindgen_anon_1.inner_map_fd = inner.map_or(0, |fd| fd.as_raw_fd() as u32);
    attr.__bindgen_anon_1.map_name = map_name;
    bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(new_fd)
}

/// A [`GracePeriod`] that could not be made or waited for.
#[derive(Debug, thiserror::Error)]
pub enum GraceError {
    #[error("cannot create the map used to wait for RCU grace periods")]
    Create(#[source] io::Error),
    #[error("cannot wait for an RCU grace period")]
    Wait(#[source] io::Error),
}

impl GracePeriod {
    pub fn new() -> Result<Self, GraceError> {
        let inner = map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY, None, b"imdsg_rcu_in")
            .map_err(GraceError::Create)?;
        let outer = map_create(
            bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            Some(inner.as_fd()),
            b"imdsg_rcu",
        )
        .map_err(GraceError::Create)?;
        Ok(Self { outer, inner })
    }

    /// Returns once an RCU grace period has elapsed.
    pub fn wait(&self) -> Result<(), GraceError> {
        let value: u32 = self.inner.as_raw_fd() as u32;
        map_update(self.outer.as_fd(), &0u32, &value).map_err(GraceError::Wait)
    }
}

/// An attr for the single-element command on `map` with `key` and `value`
/// (a pointer to it, or 0).
fn elem_attr<K>(map: BorrowedFd<'_>, key: &K, value: u64) -> bpf_attr {
    let mut attr = attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = std::ptr::from_ref(key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value;
    attr
}

/// `BPF_MAP_UPDATE_ELEM` (`BPF_ANY`): writes one element.
pub(super) fn map_update<K, V>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    map_update_flags(map, key, value, BPF_ANY)
}

/// `BPF_MAP_UPDATE_ELEM` with `flags`: `BPF_NOEXIST` adds an element
/// (`EEXIST` if there is one), `BPF_EXIST` replaces one (`ENOENT` if there
/// is none).
pub(super) fn map_update_flags<K, V>(
    map: BorrowedFd<'_>,
    key: &K,
    value: &V,
    flags: u32,
) -> io::Result<()> {
    let mut attr = elem_attr(map, key, std::ptr::from_ref(value) as u64);
    attr.__bindgen_anon_2.flags = u64::from(flags);
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `BPF_MAP_DELETE_ELEM`: removes one element.
pub(super) fn map_delete<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = elem_attr(map, key, 0);
    bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM`: reads one element.
pub(super) fn map_lookup<K, V: Default>(map: BorrowedFd<'_>, key: &K) -> io::Result<V> {
    let mut value = V::default();
    let mut attr = elem_attr(map, key, std::ptr::from_mut(&mut value) as u64);
    bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}
