//! Writing and deleting hash map entries in batches
//! (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, Linux 5.6): one system
//! call for thousands of entries, where aya 0.14 makes one per entry. A
//! policy of 100,000 uids is written or cleared in a few milliseconds.
//!
//! The kernel applies a batch element by element and reports how many it
//! did (`count`): on an error part way, the caller knows where it stopped.

use std::{io, os::fd::BorrowedFd};

use aya::Pod;

use super::sys::bpf;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per system call: bounds the kernel's own copy of the keys and
/// values (it allocates for one batch at a time).
const CHUNK: usize = 8192;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes every `(key, value)` into the hash map `map`.
pub fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    if keys.len() != values.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "as many keys as values",
        ));
    }
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        batch(
            BPF_MAP_UPDATE_BATCH,
            map,
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            keys.len(),
        )
        .map_err(|(_, e)| e)?;
    }
    Ok(())
}

/// Deletes every key of `keys` from the hash map `map`; a key that is not
/// there is skipped, not an error.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    for chunk in keys.chunks(CHUNK) {
        let mut rest = chunk;
        while !rest.is_empty() {
            match batch(
                BPF_MAP_DELETE_BATCH,
                map,
                rest.as_ptr().cast(),
                std::ptr::null(),
                rest.len(),
            ) {
                Ok(_) => break,
                // The kernel stops at the first key it does not find:
                // skip that one and go on with the rest.
                Err((done, e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                    rest = &rest[(done + 1).min(rest.len())..];
                }
                Err((_, e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// One batch command over `count` entries; on error, how many the kernel
/// did before it.
fn batch(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<usize, (usize, io::Error)> {
    use std::os::fd::AsRawFd as _;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys as u64,
        values: values as u64,
        count: count as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    match bpf(cmd, &mut attr) {
        Ok(_) => Ok(attr.count as usize),
        Err(e) => Err((attr.count as usize, e)),
    }
}
