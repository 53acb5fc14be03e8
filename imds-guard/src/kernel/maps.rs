//! What every part that reads or writes the programs' maps shares: an
//! error that names the map, and a map held by a descriptor of its own
//! (so that writing it needs nothing of the programs, which may be loading
//! meanwhile).

use std::os::fd::{AsFd as _, OwnedFd};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};

/// Something that could not be done with one of the programs' maps.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("the eBPF object has no map {0}")]
    Missing(&'static str),
    #[error("cannot access map {name}")]
    Access {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot write or clear map {name}")]
    Write {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An aya error on map `name`, named.
pub fn access(name: &'static str) -> impl Fn(aya::maps::MapError) -> MapError {
    move |source| MapError::Access { name, source }
}

/// A failed write (or delete, or lookup by descriptor) on map `name`,
/// named.
pub fn write(name: &'static str) -> impl Fn(std::io::Error) -> MapError {
    move |source| MapError::Write { name, source }
}

/// A descriptor of map `name` of `ebpf` (a hash map, an array, a per-CPU
/// array or an LPM trie) of its own.
pub fn descriptor(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, MapError> {
    let data: &MapData = match ebpf.map(name) {
        Some(Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::LpmTrie(d)) => d,
        _ => return Err(MapError::Missing(name)),
    };
    data.fd().as_fd().try_clone_to_owned().map_err(write(name))
}
