//! Reading the forward table's log (`kernel/forward.rs`): the packets it
//! drops are sent, at a bounded rate, to NFLOG group
//! [`LOG_GROUP`](crate::kernel::forward::LOG_GROUP), which this reads over
//! an `NETLINK_NETFILTER` socket (nfnetlink_log,
//! `include/uapi/linux/netfilter/nfnetlink_log.h`) with `netlink-sys` and
//! `netlink-packet-netfilter`, without libnetfilter_log.
//!
//! Only the first bytes of each packet are copied (the IP and transport
//! headers), enough to say where it came from and where it went.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use netlink_packet_core::{
    Emitable, ErrorBuffer, ErrorMessage, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Parseable,
    ParseableParametrized,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterProtoFamily, NetfilterSubsystem,
    nflog::{ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, ULogMessageType},
};
use netlink_sys::{Socket, SocketAddr, constants::NETLINK_NETFILTER};

use crate::text::printable;

/// `struct nfgenmsg`: family, version, resource id (the group).
const NFGENMSG_LEN: usize = 4;
/// `NFNETLINK_V0`, the version `nfgenmsg` carries.
const NFNETLINK_V0: u8 = 0;
/// Bytes of each packet copied: an IPv6 header and a transport header.
const COPY_RANGE: u32 = 64;
/// What the socket may hold before the kernel drops log messages (best
/// effort: a smaller buffer only loses log lines sooner).
const RECEIVE_BUFFER: usize = 1 << 20;

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
    socket: Socket,
}

impl AsRawFd for NflogSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl NflogSocket {
    /// Binds to `group` in this network namespace, copying packet headers.
    /// Fails (`EBUSY`) when another process reads that group already.
    pub fn bind(group: u16) -> io::Result<Self> {
        let socket = Socket::new(NETLINK_NETFILTER)?;
        socket.set_non_blocking(true)?;
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
        let socket = Self { socket };
        socket.configure(group, ConfigCmd::Bind.into())?;
        socket.configure(group, ConfigMode::new_packet(COPY_RANGE).into())?;
        Ok(socket)
    }

    /// Sends one config message and waits for its acknowledgement.
    fn configure(&self, group: u16, attr: ConfigNla) -> io::Result<()> {
        let msg = config_message(group, attr);
        // To the kernel (port 0, no group).
        self.socket.send_to(&msg, &SocketAddr::new(0, 0), 0)?;
        // The acknowledgement, waited for briefly (the socket does not block).
        let mut buf = vec![0u8; 4096];
        for _ in 0..200 {
            match self.recv(&mut buf) {
                Ok(n) => return ack(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
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
        // A datagram longer than `buf` is cut to it, as recv(2) does.
        self.socket
            .recv(&mut &mut buf[..], 0)
            .map(|n| n.min(buf.len()))
    }
}

/// A config message for `group`, asking for an acknowledgement.
fn config_message(group: u16, attr: ConfigNla) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let config = Config {
        header: NetfilterHeader::new(NetfilterProtoFamily::Unspec, NFNETLINK_V0, group),
        attrs: vec![attr],
    };
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(config));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// An `NFULNL_MSG_CONFIG` message's body. Not `NetfilterMessage`, whose
/// serializer would link in every netfilter subsystem's (nftables,
/// conntrack) for one message type.
struct Config {
    header: NetfilterHeader,
    attrs: Vec<ConfigNla>,
}

impl NetlinkSerializable for Config {
    fn message_type(&self) -> u16 {
        u16::from(u8::from(NetfilterSubsystem::ULog)) << 8
            | u16::from(u8::from(ULogMessageType::Config))
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        self.header.emit(&mut buffer[..NFGENMSG_LEN]);
        self.attrs.as_slice().emit(&mut buffer[NFGENMSG_LEN..]);
    }
}

/// The error of an acknowledgement (`NLMSG_ERROR` with 0 is success).
fn ack(datagram: &[u8]) -> io::Result<()> {
    for (ty, payload) in messages(datagram) {
        if ty != NLMSG_ERROR {
            continue;
        }
        let code = ErrorBuffer::new_checked(&payload)
            .and_then(|buf| ErrorMessage::parse(&buf))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            .code;
        return match code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        };
    }
    Ok(())
}

/// The `(type, payload)` of each netlink message in a datagram.
fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let message = NetlinkBuffer::new_checked(rest).ok()?;
        let len = message.length() as usize;
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((message.message_type(), message.payload()))
    })
}

/// The packets logged in one datagram. Only `NFULNL_MSG_PACKET` messages
/// are parsed (not every netfilter subsystem's, which `NetfilterMessage`
/// would link in); one that does not parse is skipped.
pub fn parse(datagram: &[u8]) -> Vec<Logged> {
    let packet_type = u16::from(u8::from(NetfilterSubsystem::ULog)) << 8
        | u16::from(u8::from(ULogMessageType::Packet));
    messages(datagram)
        .filter(|&(ty, _)| ty == packet_type)
        .filter_map(|(ty, payload)| {
            // After the `nfgenmsg` header.
            let attrs = payload.get(NFGENMSG_LEN..)?;
            match ULogMessage::parse_with_param(attrs, ty as u8) {
                Ok(ULogMessage::Packet(attrs)) => packet(&attrs),
                _ => None,
            }
        })
        .collect()
}

/// One `NFULNL_MSG_PACKET`, from its attributes.
fn packet(attrs: &[PacketNla]) -> Option<Logged> {
    let (mut indev, mut payload, mut prefix) = (None, None, String::new());
    for attr in attrs {
        match attr {
            PacketNla::IfIndexInDev(index) => indev = Some(*index),
            PacketNla::Payload(bytes) => payload = Some(bytes.as_slice()),
            PacketNla::Prefix(text) => prefix = text.to_string_lossy().into_owned(),
            _ => {}
        }
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
    match nix::net::if_::if_indextoname(index) {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => format!("if{index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET` and `.. | NFULNL_MSG_CONFIG`.
    const MSG_PACKET: u16 = 4 << 8;
    const MSG_CONFIG: u16 = (4 << 8) | 1;
    /// Packet attributes (`NFULA_*`).
    const ATTR_INDEV: u16 = 4;
    const ATTR_PAYLOAD: u16 = 9;
    const ATTR_PREFIX: u16 = 10;
    /// `NFULNL_CFG_CMD_BIND`, `NFULNL_COPY_PACKET`.
    const CMD_BIND: u8 = 1;
    const COPY_PACKET: u8 = 2;

    /// A `NFULNL_MSG_PACKET` as the kernel sends it, for `payload`, laid
    /// out by hand from the kernel's headers.
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
    fn a_message_that_does_not_parse_leaves_the_next_one_read() {
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        v4.extend_from_slice(&[10, 0, 0, 9, 169, 254, 169, 254]);
        v4.extend_from_slice(&[0x9c, 0x40, 0, 80]);
        let mut broken = packet_message(1, &v4);
        // A prefix without its terminating NUL does not parse.
        let at = broken
            .windows(4)
            .position(|w| w == b"ard\0")
            .expect("the prefix's end");
        broken[at + 3] = b'!';
        let mut datagram = broken;
        datagram.extend_from_slice(&packet_message(1, &v4));
        let logged = parse(&datagram);
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0].port, 80);
    }

    #[test]
    fn the_config_messages_are_laid_out_as_nfnetlink_wants() {
        let m = config_message(4269, ConfigCmd::Bind.into());
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), MSG_CONFIG);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 1 | 4, "request, ack");
        assert_eq!(&m[18..20], &4269u16.to_be_bytes());
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 5, "attribute length");
        assert_eq!(m[24], CMD_BIND);
        let m = config_message(4269, ConfigMode::new_packet(COPY_RANGE).into());
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 10, "attribute length");
        assert_eq!(&m[24..28], &COPY_RANGE.to_be_bytes());
        assert_eq!(m[28], COPY_PACKET);
    }

    #[test]
    fn an_acknowledgement_carries_the_kernels_error() {
        let error = |code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&(16u32 + 4 + 16).to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0; 16]); // the request's header
            m
        };
        ack(&error(0)).expect("0 is success");
        let e = ack(&error(-libc::EBUSY)).expect_err("EBUSY");
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    }
}
