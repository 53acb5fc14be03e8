//! A TUN device in the host namespace of a [`Topology`](super::Topology),
//! owned by an unprivileged user, like a VPN client's.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::ip;
use crate::{
    attack::tun_node,
    util::{cleanup_failed, unique_name},
};

/// A persistent TUN device and the device node its owner opens; both are
/// removed on drop.
#[derive(Debug)]
pub struct TunDevice {
    name: String,
    owner: u32,
    host: PathBuf,
    node: PathBuf,
}

impl TunDevice {
    /// `ip tuntap add dev NAME mode tun user OWNER` in the namespace at
    /// `host`, 10.99.0.1/24 and fd42:99::1/64 on it, and a 0666 node of
    /// the TUN driver (10:200) at [`tun_node`]`(NAME)`.
    pub(super) fn create(host: &Path, owner: u32) -> Self {
        let name = unique_name("it");
        ip(
            host,
            &format!("tuntap add dev {name} mode tun user {owner}"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The guard exists from here on, so a failure below still removes
        // the device (and the node, once made).
        let tun = TunDevice {
            node: tun_node(&name),
            name,
            owner,
            host: host.to_path_buf(),
        };
        mknod(
            &tun.node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(10, 200),
        )
        .unwrap_or_else(|e| panic!("mknod {}: {e}", tun.node.display()));
        // mknod applies the umask.
        fs::set_permissions(&tun.node, fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tun.node.display()));
        let dev = &tun.name;
        for cmd in [
            format!("addr add 10.99.0.1/24 dev {dev}"),
            format!("-6 addr add fd42:99::1/64 dev {dev} nodad"),
            format!("link set {dev} up"),
        ] {
            ip(host, &cmd).unwrap_or_else(|e| panic!("{e}"));
        }
        tun
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The address the owner's packets come from (routed to the device).
    pub fn peer_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, 2)
    }
    pub fn peer_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd42, 0x99, 0, 0, 0, 0, 0, 2)
    }
}

impl Drop for TunDevice {
    fn drop(&mut self) {
        let mut failures = Vec::new();
        if let Err(e) = ip(
            &self.host,
            &format!("tuntap del dev {} mode tun", self.name),
        ) {
            failures.push(e);
        }
        if let Err(e) = fs::remove_file(&self.node) {
            failures.push(format!("removing {}: {e}", self.node.display()));
        }
        if !failures.is_empty() {
            cleanup_failed(&format!(
                "TUN device {}: {}",
                self.name,
                failures.join("; ")
            ));
        }
    }
}
