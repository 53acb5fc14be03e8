//! `bpf(2)` and `membarrier(2)` commands that aya 0.14 does not expose for
//! cgroup links: replacing a link's program in place, detaching a link that
//! other descriptors still hold, reading a link's cgroup, listing what is
//! attached to a cgroup, and waiting for an RCU grace period.
//!
//! Layouts follow `union bpf_attr` and `struct bpf_link_info` in
//! include/uapi/linux/bpf.h; each is a prefix of the kernel's, zero-padded,
//! which the kernel accepts (it checks that bytes it does not know are 0).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::bpf_attach_type;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`,
    // valid for reads and writes of its size for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the object (link, map, program) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = Attr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of a link with `new_prog`, atomically: every
/// connect runs either the old program or the new one, never neither.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches a link now, whoever else holds it (a running agent, a pin).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// What the kernel says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For a cgroup link: the cgroup's id (its inode number in cgroup v2),
    /// 0 once the link is detached.
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `T`, the leading fields of the kernel's
/// info struct for the object `fd` refers to (a link, a program): the
/// kernel fills as much as `T` holds.
fn obj_info<T: Default>(fd: BorrowedFd<'_>) -> io::Result<T> {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = T::default();
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    #[repr(C)]
    #[derive(Default)]
    struct Info {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _rest: [u32; 23],
    }
    let info: Info = obj_info(link)?;
    Ok(LinkInfo {
        link_type: info.link_type,
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

/// The ids of the programs attached to `cgroup` itself (not inherited) for
/// `attach_type`.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: bpf_attach_type) -> io::Result<Vec<u32>> {
    #[repr(C)]
    struct Attr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut ids = vec![0u32; 64];
    let mut attr = Attr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: attach_type as u32,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: 0,
        prog_attach_flags: 0,
        link_ids: 0,
        link_attach_flags: 0,
        revision: 0,
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// The name of the program with id `id` (up to 15 bytes, as loaded).
pub fn prog_name(id: u32) -> io::Result<String> {
    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut by_id = ById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id)?;
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    /// `struct bpf_prog_info` up to its name.
    #[repr(C)]
    #[derive(Default)]
    struct Info {
        prog_type: u32,
        id: u32,
        tag: [u8; 8],
        jited_prog_len: u32,
        xlated_prog_len: u32,
        jited_prog_insns: u64,
        xlated_prog_insns: u64,
        load_time: u64,
        created_by_uid: u32,
        nr_map_ids: u32,
        map_ids: u64,
        name: [u8; 16],
    }
    let info: Info = obj_info(fd.as_fd())?;
    let end = info.name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&info.name[..end]).into_owned())
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

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

fn map_create(map_type: u32, inner: Option<BorrowedFd<'_>>, name: &[u8]) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    map_name[..name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
    let mut attr = MapCreate {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: inner.map_or(0, |fd| fd.as_raw_fd() as u32),
        numa_node: 0,
        map_name,
        map_ifindex: 0,
        btf_fd: 0,
        btf_key_type_id: 0,
        btf_value_type_id: 0,
        btf_vmlinux_value_type_id: 0,
        map_extra: 0,
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
        let inner =
            map_create(BPF_MAP_TYPE_ARRAY, None, b"imdsg_rcu_in").map_err(GraceError::Create)?;
        let outer = map_create(
            BPF_MAP_TYPE_ARRAY_OF_MAPS,
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

/// `union bpf_attr` for the single-element map commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_MAP_UPDATE_ELEM` (`BPF_ANY`): writes one element.
pub(super) fn map_update<K, V>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `BPF_MAP_DELETE_ELEM`: removes one element.
pub(super) fn map_delete<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: 0,
        flags: 0,
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM`: reads one element.
pub(super) fn map_lookup<K, V: Default>(map: BorrowedFd<'_>, key: &K) -> io::Result<V> {
    let mut value = V::default();
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}
