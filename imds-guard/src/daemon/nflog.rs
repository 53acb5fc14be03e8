//! Reading the forward table's log (`kernel/forward.rs`): the packets it
//! drops are sent, at a bounded rate, to NFLOG group
//! [`LOG_GROUP`](crate::kernel::forward::LOG_GROUP), which this reads over
//! an `NETLINK_NETFILTER` socket (nfnetlink_log,
//! `include/uapi/linux/netfilter/nfnetlink_log.h`) without libnetfilter_log.
//!
//! Only the first bytes of each packet are copied (the IP and transport
//! headers), enough to say where it came from and where it went.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

use crate::text::printable;

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: libc::c_int = 12;
/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET` and `.. | NFULNL_MSG_CONFIG`.
const MSG_PACKET: u16 = 4 << 8;
const MSG_CONFIG: u16 = (4 << 8) | 1;
/// `NFULA_CFG_CMD`, `NFULA_CFG_MODE`.
const CFG_CMD: u16 = 1;
const CFG_MODE: u16 = 2;
/// `NFULNL_CFG_CMD_BIND`.
const CMD_BIND: u8 = 1;
/// `NFULNL_COPY_PACKET`.
const COPY_PACKET: u8 = 2;
/// Bytes of each packet copied: an IPv6 header and a transport header.
const COPY_RANGE: u32 = 64;
/// Packet attributes (`NFULA_*`).
const ATTR_INDEV: u16 = 4;
const ATTR_PAYLOAD: u16 = 9;
const ATTR_PREFIX: u16 = 10;
/// `nlmsghdr` flags.
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;

/// One packet the forward table logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The interface it arrived on, by name when it still exists.
    pub interface: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The IP protocol (6 tcp, 17 udp, ...).
    pub proto: u8,
    /// The destination port, 0 for protocols without one.
    pub port: u16,
    /// The log prefix the rule gave.
    pub prefix: String,
}

/// A netlink socket bound to one NFLOG group.
pub struct NflogSocket {
    fd: OwnedFd,
}

impl AsRawFd for NflogSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NflogSocket {
    /// Binds to `group` in this network namespace, copying packet headers.
    /// Fails (`EBUSY`) when another process reads that group already.
    pub fn bind(group: u16) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = Self { fd };
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a c_int option value of its size. Best
        // effort: a smaller buffer only loses log lines sooner.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.configure(group, &[(CFG_CMD, vec![CMD_BIND])])?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend_from_slice(&[COPY_PACKET, 0]);
        socket.configure(group, &[(CFG_MODE, mode)])?;
        Ok(socket)
    }

    /// Sends one config message and waits for its acknowledgement.
    fn configure(&self, group: u16, attrs: &[(u16, Vec<u8>)]) -> io::Result<()> {
        let msg = config_message(group, attrs);
        // SAFETY: sends `msg`, which lives across the call, to the kernel
        // (the zeroed address is pid 0).
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        // The acknowledgement, waited for briefly (the socket does not block).
        let mut buf = vec![0u8; 4096];
        for _ in 0..200 {
            match self.recv(&mut buf) {
                Ok(n) => return ack(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not acknowledge the NFLOG configuration",
        ))
    }

    /// One datagram (possibly several messages) into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receives into `buf`, of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// `nlmsghdr` + `nfgenmsg` + attributes of a config message for `group`.
fn config_message(group: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0u8, 0]; // AF_UNSPEC, NFNETLINK_V0
    body.extend_from_slice(&group.to_be_bytes());
    for (ty, value) in attrs {
        let len = 4 + value.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&ty.to_ne_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&MSG_CONFIG.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
    msg.extend_from_slice(&body);
    msg
}

/// The error of an acknowledgement (`NLMSG_ERROR` with 0 is success).
fn ack(datagram: &[u8]) -> io::Result<()> {
    for (ty, payload) in messages(datagram) {
        if ty == NLMSG_ERROR {
            let code = payload
                .get(..4)
                .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            return if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-code))
            };
        }
    }
    Ok(())
}

/// The `(type, payload)` of each netlink message in a datagram.
fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(rest.get(4..6)?.try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        let payload = &rest[16..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

/// The packets logged in one datagram.
pub fn parse(datagram: &[u8]) -> Vec<Logged> {
    messages(datagram)
        .filter(|&(ty, _)| ty == MSG_PACKET)
        .filter_map(|(_, payload)| packet(payload.get(4..)?))
        .collect()
}

/// One `NFULNL_MSG_PACKET`'s attributes (after its `nfgenmsg`).
fn packet(mut attrs: &[u8]) -> Option<Logged> {
    let (mut indev, mut payload, mut prefix) = (None, None, String::new());
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        match ty {
            ATTR_INDEV if value.len() >= 4 => {
                indev = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
            }
            ATTR_PAYLOAD => payload = Some(value),
            ATTR_PREFIX => {
                let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                prefix = String::from_utf8_lossy(&value[..end]).into_owned();
            }
            _ => {}
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    let (src, dst, proto, port) = ip_header(payload?)?;
    Some(Logged {
        // A container's root names its interfaces.
        interface: printable(&indev.map_or_else(|| "?".to_owned(), interface_name)),
        src,
        dst,
        proto,
        port,
        prefix,
    })
}

/// Source, destination, protocol and destination port of an IP packet.
fn ip_header(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, u16)> {
    let port_at = |proto: u8, at: usize| {
        matches!(proto, 6 | 17 | 132 | 136)
            .then(|| p.get(at + 2..at + 4))
            .flatten()
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            let proto = *p.get(9)?;
            let first_fragment = p
                .get(6..8)
                .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x1fff == 0);
            let port = if first_fragment {
                port_at(proto, ihl)
            } else {
                0
            };
            Some((
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                proto,
                port,
            ))
        }
        6 => {
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            let proto = *p.get(6)?;
            Some((
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                proto,
                port_at(proto, 40),
            ))
        }
        _ => None,
    }
}

/// The name of interface `index`, or its number when it is gone.
fn interface_name(index: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `buf`.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return format!("if{index}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `NFULNL_MSG_PACKET` as the kernel sends it, for `payload`.
    fn packet_message(indev: u32, payload: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut attr = |ty: u16, value: &[u8]| {
            attrs.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            attrs.extend_from_slice(&ty.to_ne_bytes());
            attrs.extend_from_slice(value);
            attrs.resize(attrs.len().next_multiple_of(4), 0);
        };
        attr(ATTR_PREFIX, b"imds-guard forward\0");
        attr(ATTR_INDEV, &indev.to_be_bytes());
        attr(ATTR_PAYLOAD, payload);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&MSG_PACKET.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[2, 0, 0x10, 0xad]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn reads_a_tcp_syn_over_ipv4_and_a_udp_datagram_over_ipv6() {
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        v4.extend_from_slice(&[10, 0, 0, 9, 169, 254, 169, 254]);
        v4.extend_from_slice(&[0x9c, 0x40, 0, 80]);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&"fd00:1::9".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&"fd00:ec2::254".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        let mut datagram = packet_message(1, &v4);
        datagram.extend_from_slice(&packet_message(1, &v6));
        let logged = parse(&datagram);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert_eq!(
            (
                logged[0].src,
                logged[0].dst,
                logged[0].proto,
                logged[0].port
            ),
            (
                "10.0.0.9".parse().expect("ip"),
                "169.254.169.254".parse().expect("ip"),
                6,
                80
            )
        );
        assert_eq!(logged[0].prefix, "imds-guard forward");
        assert_eq!(logged[0].interface, "lo", "ifindex 1 is loopback");
        assert_eq!(
            (logged[1].dst, logged[1].proto, logged[1].port),
            ("fd00:ec2::254".parse().expect("ip"), 17, 53)
        );
    }

    #[test]
    fn truncated_and_foreign_messages_are_skipped() {
        assert!(parse(&[1, 2, 3]).is_empty());
        let mut m = packet_message(1, &[0x45]);
        assert!(parse(&m).is_empty(), "a payload too short for a header");
        m.truncate(20);
        assert!(parse(&m).is_empty());
    }

    #[test]
    fn the_config_message_is_laid_out_as_nfnetlink_wants() {
        let m = config_message(4269, &[(CFG_CMD, vec![CMD_BIND])]);
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), MSG_CONFIG);
        assert_eq!(&m[18..20], &4269u16.to_be_bytes());
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 5, "attribute length");
        assert_eq!(m[24], CMD_BIND);
    }
}
