//! Retiring an earlier agent's request judgement at an upgrade
//! (docs/design/request-level.md §2.4): a new agent makes new maps, and
//! adopts the pinned links, but the sockets the old agent put into its
//! sockhash (`REQ_SOCKS`) keep the old `req_msg` on their send path, which
//! reads the old maps. Until now their next request passed the old
//! verdict and was dropped by the new `egress` (which has no judged range
//! of theirs): the client waited for its timeout.
//!
//! So, before its own maps replace the old pins, the new agent opens the
//! old `CONFIG` and `REQ_SOCKS`; once its programs are attached it writes
//! an epoch no old socket holds into the old `CONFIG` (the old `req_msg`
//! then refuses every later request of those sockets with `EACCES`, as a
//! reload does), and keeps the old sockhash open for as long as it runs.
//! Kept, the refusal is at once; let go (the pin replaced, the old agent
//! gone), the kernel would free it, take the sockets out, and their
//! requests would be dropped by `egress` again, unanswered. Either way
//! nothing of theirs leaves unjudged; a new connection goes through the
//! new agent's programs.

use std::{
    mem::size_of,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use imds_guard_common::{self as common, Config};

use super::{
    maps::{self, MapError},
    pins::{PinError, Pins},
    sys,
};

/// The two generations a `CONFIG` holds (`ACTIVE & 1`).
const GENERATIONS: u32 = 2;

/// An earlier agent's `CONFIG` and `REQ_SOCKS`, opened from their pins
/// before ours replace them.
#[derive(Debug, Default)]
pub(super) struct Earlier {
    config: Option<OwnedFd>,
    req_socks: Option<OwnedFd>,
}

impl Earlier {
    /// Opens the pinned `CONFIG` and `REQ_SOCKS` in `pins` that are not
    /// `ebpf`'s own (a handle attaching again finds its own pins).
    /// Nothing pinned, or a map of another layout (an agent of another
    /// version, whose config this one cannot write): nothing to retire.
    pub(super) fn open(pins: &Pins, ebpf: &Ebpf) -> Result<Self, PinError> {
        let config = other_map(
            pins,
            ebpf,
            common::MAP_CONFIG,
            (size_of::<u32>(), size_of::<Config>()),
        )?;
        let req_socks = other_map(
            pins,
            ebpf,
            common::MAP_REQ_SOCKS,
            (size_of::<u64>(), size_of::<u32>()),
        )?;
        Ok(Self { config, req_socks })
    }

    /// Retires the earlier agent's judged sockets: an epoch none of them
    /// holds into every generation of its `CONFIG` that has one. Returns
    /// the earlier `REQ_SOCKS`, to keep open (see the module).
    pub(super) fn retire(self) -> Result<Option<OwnedFd>, MapError> {
        let Some(config) = self.config else {
            return Ok(self.req_socks);
        };
        let name = common::MAP_CONFIG;
        let mut configs = Vec::new();
        for generation in 0..GENERATIONS {
            let c: Config =
                sys::map_lookup(config.as_fd(), &generation).map_err(maps::write(name))?;
            configs.push((generation, c));
        }
        // Epochs only grow: one past the greatest is one no socket of
        // either generation was let through under (never 0, which the
        // programs read as "not written").
        let retired = configs
            .iter()
            .map(|(_, c)| c.epoch)
            .max()
            .unwrap_or(0)
            .wrapping_add(1)
            .max(1);
        for (generation, mut c) in configs {
            if c.epoch == 0 {
                continue;
            }
            c.epoch = retired;
            sys::map_update(config.as_fd(), &generation, &c).map_err(maps::write(name))?;
        }
        Ok(self.req_socks)
    }
}

/// The map pinned as `name` in `pins`, if there is one, it is not
/// `ebpf`'s own, and its key and value sizes are `sizes`.
fn other_map(
    pins: &Pins,
    ebpf: &Ebpf,
    name: &'static str,
    sizes: (usize, usize),
) -> Result<Option<OwnedFd>, PinError> {
    let path = pins.map_path(name);
    if !path.exists() {
        return Ok(None);
    }
    let open_err = |e: aya::maps::MapError| {
        PinError::new(
            "open the earlier agent's map",
            &path,
            std::io::Error::other(e),
        )
    };
    // Opened by its pin (BPF_OBJ_GET, the bpffs file's permissions), not
    // by id: `bpf_map_get_fd_by_id` needs CAP_SYS_ADMIN, which the
    // packaged unit does not give the agent.
    let data = MapData::from_pin(&path).map_err(open_err)?;
    let info = data.info().map_err(open_err)?;
    let own = match ebpf.map(name) {
        Some(map) => map_data(map).and_then(|d| d.info().ok()).map(|i| i.id()),
        None => None,
    };
    if own == Some(info.id()) || (info.key_size() as usize, info.value_size() as usize) != sizes {
        return Ok(None);
    }
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| PinError::new("open the earlier agent's map", &path, e))?;
    Ok(Some(fd))
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d) | Map::SockHash(d) => Some(d),
        _ => None,
    }
}
