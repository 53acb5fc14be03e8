//! Packets built and parsed by hand: IPv4 and IPv6 headers, TCP segments,
//! ARP and the two neighbour discovery messages the packet-socket attack
//! needs. Only what the attacks send and what a Linux peer answers: no IP
//! options, no IPv6 extension headers on receive, no fragments.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// The MSS the hand-made SYNs announce: below every link MTU in a test.
const MSS: u16 = 1200;

/// TCP flags (RFC 9293).
pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const PSH: u8 = 0x08;
pub(crate) const ACK: u8 = 0x10;

/// A MAC address.
pub(crate) type Mac = [u8; 6];
pub(crate) const BROADCAST: Mac = [0xff; 6];

/// One TCP segment, as sent or as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// The Internet checksum (RFC 1071) of `parts` taken as one byte string.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for byte in parts.iter().flat_map(|p| p.iter().copied()) {
        match odd.take() {
            Some(hi) => sum += u32::from(u16::from_be_bytes([hi, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header an upper-layer checksum covers (RFC 791, RFC 8200 8.1).
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        }
        (s, d) => {
            let mut p = Vec::with_capacity(40);
            p.extend_from_slice(&v6(s).octets());
            p.extend_from_slice(&v6(d).octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            p
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An IP packet around `payload`: IPv4 (DF, TTL 64) or IPv6 (hop limit
/// `hops`), by the family of `src`.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, hops: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + payload.len()) as u16;
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x40, 0, hops, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let sum = checksum(&[&h]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h.extend_from_slice(payload);
            h
        }
        (s, d) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            h.extend_from_slice(&[proto, hops]);
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
            h.extend_from_slice(payload);
            h
        }
    }
}

impl Segment {
    /// The whole IP packet carrying this segment (a SYN carries an MSS
    /// option, as every real stack's does).
    pub fn to_packet(&self) -> Vec<u8> {
        let options: &[u8] = if self.flags & SYN != 0 {
            &[2, 4, (MSS >> 8) as u8, MSS as u8]
        } else {
            &[]
        };
        let header_len = 20 + options.len();
        let mut tcp = Vec::with_capacity(header_len + self.payload.len());
        tcp.extend_from_slice(&self.src.port().to_be_bytes());
        tcp.extend_from_slice(&self.dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(((header_len / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&u16::MAX.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(options);
        tcp.extend_from_slice(&self.payload);
        let pseudo = pseudo_header(self.src.ip(), self.dst.ip(), IPPROTO_TCP, tcp.len());
        let sum = checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        ip_packet(self.src.ip(), self.dst.ip(), IPPROTO_TCP, 64, &tcp)
    }

    /// Parses an IP packet; `None` unless it is a TCP segment without IPv6
    /// extension headers.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let (src, dst, tcp) = match packet.first()? >> 4 {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
                if *packet.get(9)? != IPPROTO_TCP || total > packet.len() || ihl < 20 {
                    return None;
                }
                let src = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?);
                (IpAddr::V4(src), IpAddr::V4(dst), packet.get(ihl..total)?)
            }
            6 => {
                let len = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
                if *packet.get(6)? != IPPROTO_TCP {
                    return None;
                }
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(packet.get(8..24)?).ok()?);
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(packet.get(24..40)?).ok()?);
                (IpAddr::V6(src), IpAddr::V6(dst), packet.get(40..40 + len)?)
            }
            _ => return None,
        };
        Self::parse_tcp(src, dst, tcp)
    }

    /// Parses a bare TCP segment between `src` and `dst` (what an IPv6 raw
    /// socket hands over: the IP header is not part of the data).
    pub fn parse_tcp(src: IpAddr, dst: IpAddr, tcp: &[u8]) -> Option<Self> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?))
        };
        let port = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?))
        };
        let offset = usize::from(tcp.get(12)? >> 4) * 4;
        Some(Segment {
            src: SocketAddr::new(src, port(0)?),
            dst: SocketAddr::new(dst, port(2)?),
            seq: word(4)?,
            ack: word(8)?,
            flags: *tcp.get(13)?,
            payload: tcp.get(offset..)?.to_vec(),
        })
    }
}

/// An Ethernet frame.
pub(crate) fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `(dst, src, ethertype, payload)` of an Ethernet frame.
pub(crate) fn parse_ethernet(frame: &[u8]) -> Option<(Mac, Mac, u16, &[u8])> {
    let dst = frame.get(0..6)?.try_into().ok()?;
    let src = frame.get(6..12)?.try_into().ok()?;
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    Some((dst, src, ethertype, frame.get(14..)?))
}

/// An ARP request (`op` 1) or reply (`op` 2) for IPv4 over Ethernet
/// (RFC 826).
pub(crate) fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// `(op, sender mac, sender ip, target ip)` of an ARP packet.
pub(crate) fn parse_arp(a: &[u8]) -> Option<(u16, Mac, Ipv4Addr, Ipv4Addr)> {
    if a.get(0..6)? != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let op = u16::from_be_bytes(a.get(6..8)?.try_into().ok()?);
    let sha = a.get(8..14)?.try_into().ok()?;
    let spa = <[u8; 4]>::try_from(a.get(14..18)?).ok()?.into();
    let tpa = <[u8; 4]>::try_from(a.get(24..28)?).ok()?.into();
    Some((op, sha, spa, tpa))
}

/// The solicited-node multicast address of `ip` (RFC 4291 2.7.1) and the
/// MAC it maps to (RFC 2464 7).
pub(crate) fn solicited_node(ip: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let o = ip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    (group, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// A neighbour solicitation (`solicit`) or a solicited, override
/// advertisement for `target`, from `src` with `mac` as its link-layer
/// address option (RFC 4861 4.3, 4.4): an IPv6 packet, hop limit 255.
pub(crate) fn neighbour(
    solicit: bool,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    mac: Mac,
) -> Vec<u8> {
    let (kind, flags, option) = if solicit {
        (ICMPV6_NEIGHBOUR_SOLICITATION, 0u8, 1u8)
    } else {
        // Solicited and Override.
        (ICMPV6_NEIGHBOUR_ADVERTISEMENT, 0x60, 2)
    };
    let mut m = vec![kind, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[option, 1]);
    m.extend_from_slice(&mac);
    let pseudo = pseudo_header(src.into(), dst.into(), IPPROTO_ICMPV6, m.len());
    let sum = checksum(&[&pseudo, &m]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    ip_packet(src.into(), dst.into(), IPPROTO_ICMPV6, 255, &m)
}

/// `(solicitation?, target, link-layer address option)` of an IPv6 packet
/// carrying a neighbour solicitation or advertisement.
pub(crate) fn parse_neighbour(packet: &[u8]) -> Option<(bool, Ipv6Addr, Option<Mac>)> {
    if packet.first()? >> 4 != 6 || *packet.get(6)? != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp = packet.get(40..)?;
    let solicit = match *icmp.first()? {
        ICMPV6_NEIGHBOUR_SOLICITATION => true,
        ICMPV6_NEIGHBOUR_ADVERTISEMENT => false,
        _ => return None,
    };
    let target = <[u8; 16]>::try_from(icmp.get(8..24)?).ok()?.into();
    let mac = match icmp.get(24..26) {
        Some([1 | 2, 1]) => icmp.get(26..32).and_then(|m| m.try_into().ok()),
        _ => None,
    };
    Some((solicit, target, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_in_both_families() {
        for (src, dst) in [
            ("10.0.0.1:40000", "169.254.169.254:80"),
            ("[fd42::2]:40000", "[fd00:ec2::254]:80"),
        ] {
            let seg = Segment {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                seq: 7,
                ack: 9,
                flags: PSH | ACK,
                payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            };
            assert_eq!(Segment::parse(&seg.to_packet()), Some(seg));
        }
    }

    #[test]
    fn checksums_verify_to_zero() {
        let seg = Segment {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "169.254.169.254:80".parse().unwrap(),
            seq: 1,
            ack: 0,
            flags: SYN,
            payload: Vec::new(),
        };
        let packet = seg.to_packet();
        // The IPv4 header, then TCP with its pseudo-header: a correct
        // checksum makes the sum of everything it covers 0xffff.
        assert_eq!(checksum(&[&packet[..20]]), 0);
        let pseudo = pseudo_header(seg.src.ip(), seg.dst.ip(), 6, packet.len() - 20);
        assert_eq!(checksum(&[&pseudo, &packet[20..]]), 0);
    }

    #[test]
    fn the_solicited_node_group_of_an_address() {
        let (group, mac) = solicited_node("fd42:88:1::77".parse().unwrap());
        assert_eq!(group, "ff02::1:ff00:77".parse::<Ipv6Addr>().unwrap());
        assert_eq!(mac, [0x33, 0x33, 0xff, 0, 0, 0x77]);
    }

    #[test]
    fn neighbour_messages_parse_back() {
        let mac = [2, 0, 0, 0, 0, 1];
        let target: Ipv6Addr = "fd42::1".parse().unwrap();
        let ns = neighbour(true, "fd42::77".parse().unwrap(), target, target, mac);
        assert_eq!(parse_neighbour(&ns), Some((true, target, Some(mac))));
        let arp_req = arp(1, mac, [10, 0, 0, 77].into(), [0; 6], [10, 0, 0, 1].into());
        assert_eq!(
            parse_arp(&arp_req),
            Some((1, mac, [10, 0, 0, 77].into(), [10, 0, 0, 1].into()))
        );
    }
}
