//! nf_tables' own notifications (`NFNLGRP_NFTABLES`), which say when
//! anyone (`nft flush ruleset`, `nft -f` of a file that flushes, `nft
//! flush table`, a firewall manager) changes a table: the agent puts its
//! unowned copy back as soon as it reads one that touches its tables, with
//! no polling window. Every nf_tables message but `NFT_MSG_NEWGEN` carries
//! the table's name as its first attribute (`NFTA_TABLE_NAME`,
//! `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, ...: all 1,
//! include/uapi/linux/netfilter/nf_tables.h), which is all that is read.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_sys::{Socket, constants::NETLINK_NETFILTER};

use super::{TABLE, owned::OWNED_TABLE};

/// `NFNLGRP_NFTABLES` (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`, the high byte of an nf_tables message's type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWGEN`: the end of a transaction, with no table name.
const NFT_MSG_NEWGEN: u16 = 15;
/// The table-name attribute of every other message.
const TABLE_NAME: u16 = 1;
/// `NLA_TYPE_MASK`: an attribute's type without its flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A socket subscribed to nf_tables' notifications in this network
/// namespace.
pub struct TableWatch {
    socket: Socket,
}

impl AsRawFd for TableWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl TableWatch {
    pub fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.add_membership(NFNLGRP_NFTABLES)?;
        socket.set_non_blocking(true)?;
        // A burst (a large `nft -f`) must not overflow it before it is
        // read; an overflow is read as "touched" anyway.
        let _ = socket.set_rx_buf_sz(1 << 20);
        Ok(Self { socket })
    }

    /// Reads every notification waiting; whether any touched the agent's
    /// tables. Notifications lost to a full buffer (`ENOBUFS`) count as
    /// touching them: what they said is unknown.
    pub fn drain(&self) -> io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut touched = false;
        loop {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => touched |= touches_ours(&buf[..n.min(buf.len())]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(touched),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => touched = true,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a datagram of notifications names one of the agent's tables.
pub fn touches_ours(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            return false;
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        // After the netlink header (16) and `nfgenmsg` (4).
        let named = (ty >> 8 == NFNL_SUBSYS_NFTABLES && ty & 0xff != NFT_MSG_NEWGEN)
            .then(|| rest.get(20..len).and_then(table_name))
            .flatten();
        if named.is_some_and(|n| n == TABLE.as_bytes() || n == OWNED_TABLE.as_bytes()) {
            return true;
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    false
}

/// The first attribute's value when it is the table's name, without its
/// NUL.
fn table_name(attrs: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_ne_bytes([*attrs.first()?, *attrs.get(1)?]));
    let ty = u16::from_ne_bytes([*attrs.get(2)?, *attrs.get(3)?]) & NLA_TYPE_MASK;
    if ty != TABLE_NAME || len < 4 {
        return None;
    }
    let value = attrs.get(4..len)?;
    Some(value.split(|&b| b == 0).next().unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An nf_tables notification of `msg` naming `table`.
    fn notification(msg: u16, table: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name = [table.as_bytes(), b"\0"].concat();
        attr.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&TABLE_NAME.to_ne_bytes());
        attr.extend_from_slice(&name);
        attr.resize(attr.len().next_multiple_of(4), 0);
        let mut m = Vec::new();
        m.extend_from_slice(&((20 + attr.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | msg).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[1, 0, 0, 0]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn a_change_to_our_table_is_noticed_and_others_are_not() {
        // NFT_MSG_DELRULE (8) of ours, after a foreign table's deletion.
        let mut d = notification(2, "filter");
        d.extend_from_slice(&notification(8, TABLE));
        assert!(touches_ours(&d));
        assert!(touches_ours(&notification(5, OWNED_TABLE)));
        assert!(!touches_ours(&notification(2, "imds_guard_forward_x")));
        assert!(!touches_ours(&notification(2, "filter")));
        // NEWGEN's first attribute is the generation, not a name.
        assert!(!touches_ours(&notification(NFT_MSG_NEWGEN, TABLE)));
        assert!(!touches_ours(&[1, 2, 3]));
    }
}
