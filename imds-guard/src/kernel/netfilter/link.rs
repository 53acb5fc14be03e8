//! The forward program's links: one per protocol family at netfilter's
//! forward hook of the network namespace the agent runs in (a link binds
//! the namespace of the thread that creates it), pinned as the rows of
//! [`programs::netfilter_links`] say, so that they outlive the agent.
//!
//! A netfilter link's program cannot be replaced (`BPF_LINK_UPDATE` is
//! `EOPNOTSUPP`, `bpf_nf_link_update`), so a new agent makes before it
//! breaks: it links its program at the first priority of
//! [`FORWARD_PRIORITIES`] no hook holds (a BPF link refuses a taken one
//! with `EBUSY`: the old link's among them), pins it in the old pin's
//! place, and only then detaches the old link. Both drop while both are
//! hooked; never neither.

use std::{
    fs, io,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use aya_obj::generated::nf_inet_hooks;
use imds_guard_common::FORWARD_PRIORITIES;

use super::NetfilterError;
use crate::kernel::{
    pins::{PinError, Pins},
    programs, sys,
};

/// One family's link as [`attach`] left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linked {
    pub pf: u32,
    pub priority: i32,
    /// The priority of the link it replaced (an earlier agent's).
    pub replaced: Option<i32>,
}

/// Links `prog` for both families, pinned in `pins`, each replacing the
/// link pinned there before only once it is hooked itself.
pub fn attach(prog: BorrowedFd<'_>, pins: &Pins) -> Result<Vec<Linked>, NetfilterError> {
    let mut linked = Vec::new();
    for (row, pf) in programs::netfilter_links() {
        let old = pins.open_link(row.name)?;
        let (link, priority) = link_at_free_priority(prog, pf)?;
        let path = pins.link_path(row.name);
        // bpffs refuses names with a dot in them.
        let fresh = pins.dir().join(format!("new_link_{}", row.name));
        let _ = fs::remove_file(&fresh);
        sys::obj_pin(link.as_fd(), &fresh)
            .map_err(|e| PinError::new("pin the link at", &fresh, e))?;
        fs::rename(&fresh, &path)
            .map_err(|e| PinError::new("rename the pinned link to", &path, e))?;
        let replaced = match old {
            Some((old_path, old)) => {
                let was = sys::netfilter_link_info(old.as_fd())
                    .ok()
                    .map(|i| i.priority);
                sys::link_detach(old.as_fd())
                    .map_err(|e| PinError::new("detach the replaced link", &old_path, e))?;
                was
            }
            None => None,
        };
        linked.push(Linked {
            pf,
            priority,
            replaced,
        });
    }
    Ok(linked)
}

/// Detaches the pinned links (the nftables mechanism took over, or
/// `detach`) and removes their pins; how many there were.
pub fn detach(pins: &Pins) -> Result<usize, PinError> {
    let mut detached = 0;
    for (row, _) in programs::netfilter_links() {
        if let Some((path, link)) = pins.open_link(row.name)? {
            sys::link_detach(link.as_fd())
                .map_err(|e| PinError::new("detach the pinned link", &path, e))?;
            fs::remove_file(&path).map_err(|e| PinError::new("remove", &path, e))?;
            detached += 1;
        }
    }
    Ok(detached)
}

/// Links `prog` for family `pf` at the first of [`FORWARD_PRIORITIES`] no
/// hook holds.
fn link_at_free_priority(prog: BorrowedFd<'_>, pf: u32) -> Result<(OwnedFd, i32), NetfilterError> {
    let forward = nf_inet_hooks::NF_INET_FORWARD as u32;
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for priority in FORWARD_PRIORITIES {
        match sys::link_create_netfilter(prog, pf, forward, priority) {
            Ok(link) => return Ok((link, priority)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(source) => return Err(NetfilterError::Link { pf, source }),
        }
    }
    Err(NetfilterError::Link { pf, source: last })
}
