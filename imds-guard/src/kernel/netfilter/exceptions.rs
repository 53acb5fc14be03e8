//! `[forward]`'s exceptions as the `forward` program reads them: the
//! interfaces and source prefixes of each policy generation, in LPM tries
//! keyed by generation (`imds_guard_common::InterfaceKey`,
//! `Source4Key`, `Source6Key`). A reload writes the generation not in
//! force beside the one that is, as it writes the protected addresses;
//! the flip of `ACTIVE` puts both in force at once.
//!
//! They are written whatever holds the forward path (a few entries): the
//! nftables mechanism ignores them.

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::Ebpf;
use imds_guard_common::{
    self as common, GENERATION_BITS, IFNAME_LEN, InterfaceKey, Source4Key, Source6Key,
};

use crate::{
    kernel::{
        maps::{self, MapError, descriptor},
        sys,
    },
    policy::Policy,
};

/// An LPM trie's key as `bpf(2)` takes it: the prefix length in bits,
/// then the data (every `K` here is 4-aligned and a multiple of 4 long:
/// no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lpm<K> {
    prefix_len: u32,
    data: K,
}

/// One generation's entries, to clear it by.
#[derive(Debug, Default)]
struct Written {
    interfaces: Vec<Lpm<InterfaceKey>>,
    v4: Vec<Lpm<Source4Key>>,
    v6: Vec<Lpm<Source6Key>>,
}

/// The exception tries, by descriptors of their own.
pub(crate) struct Exceptions {
    interfaces: OwnedFd,
    v4: OwnedFd,
    v6: OwnedFd,
    written: [Written; 2],
}

impl Exceptions {
    pub(crate) fn new(ebpf: &Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            interfaces: descriptor(ebpf, common::MAP_FORWARD_INTERFACES)?,
            v4: descriptor(ebpf, common::MAP_FORWARD_SOURCES_V4)?,
            v6: descriptor(ebpf, common::MAP_FORWARD_SOURCES_V6)?,
            written: Default::default(),
        })
    }

    /// Writes `policy`'s exceptions into `generation` (cleared first).
    pub(crate) fn write(&mut self, generation: u32, policy: &Policy) -> Result<(), MapError> {
        self.clear(generation)?;
        let entries = entries(generation, policy);
        for key in &entries.interfaces {
            sys::map_update(self.interfaces.as_fd(), key, &1u32)
                .map_err(maps::write(common::MAP_FORWARD_INTERFACES))?;
        }
        for key in &entries.v4 {
            sys::map_update(self.v4.as_fd(), key, &1u32)
                .map_err(maps::write(common::MAP_FORWARD_SOURCES_V4))?;
        }
        for key in &entries.v6 {
            sys::map_update(self.v6.as_fd(), key, &1u32)
                .map_err(maps::write(common::MAP_FORWARD_SOURCES_V6))?;
        }
        self.written[(generation % common::GENERATIONS) as usize] = entries;
        Ok(())
    }

    /// Removes what [`Exceptions::write`] put in `generation`.
    pub(crate) fn clear(&mut self, generation: u32) -> Result<(), MapError> {
        let old = std::mem::take(&mut self.written[(generation % common::GENERATIONS) as usize]);
        let gone = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOENT);
        for key in &old.interfaces {
            sys::map_delete(self.interfaces.as_fd(), key)
                .or_else(|e| if gone(&e) { Ok(()) } else { Err(e) })
                .map_err(maps::write(common::MAP_FORWARD_INTERFACES))?;
        }
        for key in &old.v4 {
            sys::map_delete(self.v4.as_fd(), key)
                .or_else(|e| if gone(&e) { Ok(()) } else { Err(e) })
                .map_err(maps::write(common::MAP_FORWARD_SOURCES_V4))?;
        }
        for key in &old.v6 {
            sys::map_delete(self.v6.as_fd(), key)
                .or_else(|e| if gone(&e) { Ok(()) } else { Err(e) })
                .map_err(maps::write(common::MAP_FORWARD_SOURCES_V6))?;
        }
        Ok(())
    }
}

/// The keys of `policy`'s exceptions in `generation`. An exact interface
/// name counts its NUL in the prefix (it matches only itself); a name
/// ending in `*` does not (it matches every name it starts).
fn entries(generation: u32, policy: &Policy) -> Written {
    let mut w = Written::default();
    for i in &policy.spec.forward.interfaces {
        let (stem, wildcard) = match i.name.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (i.name.as_str(), false),
        };
        let mut name = [0u8; IFNAME_LEN];
        let n = stem.len().min(IFNAME_LEN - 1);
        name[..n].copy_from_slice(&stem.as_bytes()[..n]);
        let bytes = if wildcard { n } else { n + 1 };
        w.interfaces.push(Lpm {
            prefix_len: GENERATION_BITS + 8 * bytes as u32,
            data: InterfaceKey { generation, name },
        });
    }
    for s in &policy.spec.forward.sources {
        let prefix_len = GENERATION_BITS + u32::from(s.prefix.len);
        match s.prefix.addr {
            IpAddr::V4(a) => w.v4.push(Lpm {
                prefix_len,
                data: Source4Key {
                    generation,
                    addr: a.octets(),
                },
            }),
            IpAddr::V6(a) => w.v6.push(Lpm {
                prefix_len,
                data: Source6Key {
                    generation,
                    addr: a.octets(),
                },
            }),
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{PolicySpec, SystemResolver};

    #[test]
    fn an_exact_name_counts_its_nul_and_a_wildcard_does_not() {
        let policy = PolicySpec::parse(
            Path::new("p.toml"),
            "[allow]\nuids = [0]\n[forward]\nallow_interfaces = [\"tun0\", \"br-vm*\"]\n\
             allow_sources = [\"10.8.0.0/16\", \"fd00:1::/64\"]\n",
        )
        .and_then(|s| s.resolve(&SystemResolver))
        .expect("valid");
        let w = entries(1, &policy);
        assert_eq!(w.interfaces[0].prefix_len, 32 + 8 * 5);
        assert_eq!(&w.interfaces[0].data.name[..5], b"tun0\0");
        assert_eq!(w.interfaces[1].prefix_len, 32 + 8 * 5);
        assert_eq!(&w.interfaces[1].data.name[..6], b"br-vm\0");
        assert_eq!(w.v4[0].prefix_len, 32 + 16);
        assert_eq!(w.v4[0].data.addr, [10, 8, 0, 0]);
        assert_eq!((w.v6[0].prefix_len, w.v6[0].data.generation), (32 + 64, 1));
    }
}
