//! Three ways to put a hand-made IP packet on the wire without any socket
//! call that names its destination, which is all the cgroup `sock_addr`
//! hooks ever look at:
//!
//! - [`RawLink`]: `SOCK_RAW` sockets (`CAP_NET_RAW` in the namespace's
//!   owner). `IPPROTO_RAW` implies `IP_HDRINCL`/`IPV6_HDRINCL`, so the
//!   packet leaves as written; `raw_sendmsg` runs no cgroup hook. Incoming
//!   TCP is read on an `IPPROTO_TCP` raw socket, which gets a copy of every
//!   segment before TCP itself answers it (with a reset: no socket of ours
//!   owns the connection).
//! - [`PacketLink`]: an `AF_PACKET` socket on the container's interface
//!   (`CAP_NET_RAW` only, which Docker grants by default): Ethernet frames
//!   from an unused address of the container's subnet go straight to the
//!   driver (`packet_sendmsg` → `dev_queue_xmit`), past the whole IP stack.
//!   The link answers ARP and neighbour solicitations for that address
//!   itself, so the host routes the replies back to it; the container's
//!   kernel drops them silently (it does not forward, and sends no ICMP
//!   when it does not), so they are read here without a reset racing them.
//! - [`TunLink`]: a TUN device whose owner is the probe's uid (`ip tuntap
//!   add ... user U`): `TUNSETIFF` needs no capability for the owner
//!   (`tun_not_capable`), and every write is a packet *received* by the
//!   host on that device, which it forwards like any other.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    mem,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    ifaddrs::getifaddrs,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

use super::wire::{
    self, BROADCAST, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Mac, arp, ethernet, neighbour, parse_arp,
    parse_ethernet, parse_neighbour, solicited_node,
};

/// `IPV6_HDRINCL` (include/uapi/linux/in6.h), missing from the libc crate.
const IPV6_HDRINCL: libc::c_int = 36;
/// How long [`PacketLink::open`] waits for the gateway's link-layer address.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends and receives whole IP packets.
pub(crate) trait Link {
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
    /// The next IP packet addressed to the link's own address, or `None`
    /// after `timeout`.
    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>>;
}

fn cvt(rc: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

fn new_socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `fd` is readable; false on timeout.
fn readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A `sockaddr_in`/`sockaddr_in6` for `ip` with port 0, as raw sockets take
/// their destination.
fn raw_dest(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than, and aligned for,
            // sockaddr_in.
            let sin = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Raw IP sockets in the probe's namespace, for one address family.
pub(crate) struct RawLink {
    out: OwnedFd,
    tcp_in: OwnedFd,
    local: IpAddr,
}

impl RawLink {
    /// Sockets for packets from `local` (the family of the link).
    pub fn open(local: IpAddr) -> io::Result<Self> {
        let domain = if local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let out = new_socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        if local.is_ipv6() {
            // Implied by IPPROTO_RAW since Linux 4.5; said for clarity.
            set_int_opt(&out, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1)?;
        }
        let tcp_in = new_socket(domain, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
        Ok(RawLink { out, tcp_in, local })
    }
}

impl Link for RawLink {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let dst = match wire::Segment::parse(packet) {
            Some(seg) => seg.dst.ip(),
            None => return Err(io::Error::other("raw link: not a TCP packet")),
        };
        let (ss, len) = raw_dest(dst);
        // SAFETY: `packet` and `ss` outlive the call; the lengths are theirs.
        cvt(unsafe {
            libc::sendto(
                self.out.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const ss).cast(),
                len,
            )
        })
        .map(drop)
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(&self.tcp_in, left)? {
                return Ok(None);
            }
            // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
            let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `buf` and `ss` are writable for the lengths passed.
            let n = cvt(unsafe {
                libc::recvfrom(
                    self.tcp_in.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut ss).cast(),
                    &mut len,
                )
            })?;
            let packet = match self.local {
                // IPv4 raw sockets deliver the IP header too.
                IpAddr::V4(_) => buf[..n].to_vec(),
                // IPv6 raw sockets deliver the payload only: rebuild the
                // packet from the sender's address.
                IpAddr::V6(local) => {
                    // SAFETY: the kernel filled an AF_INET6 address.
                    let sin6 = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in6>() };
                    let src = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    match wire::Segment::parse_tcp(src.into(), local.into(), &buf[..n]) {
                        Some(seg) => seg.to_packet(),
                        None => continue,
                    }
                }
            };
            if wire::Segment::parse(&packet).is_some_and(|s| s.dst.ip() == self.local) {
                return Ok(Some(packet));
            }
        }
    }
}

/// The interface whose subnet contains `ip`, with its index and MAC.
fn interface_for(ip: IpAddr) -> io::Result<(String, libc::c_int, Mac)> {
    let addrs: Vec<_> = getifaddrs().map_err(io::Error::from)?.collect();
    let contains = |addr: &nix::sys::socket::SockaddrStorage,
                    mask: &nix::sys::socket::SockaddrStorage| {
        match (
            ip,
            addr.as_sockaddr_in(),
            mask.as_sockaddr_in(),
            addr.as_sockaddr_in6(),
            mask.as_sockaddr_in6(),
        ) {
            (IpAddr::V4(ip), Some(a), Some(m), _, _) => {
                let (a, m, ip) = (a.ip().to_bits(), m.ip().to_bits(), ip.to_bits());
                a & m == ip & m
            }
            (IpAddr::V6(ip), _, _, Some(a), Some(m)) => {
                let (a, m, ip) = (a.ip().to_bits(), m.ip().to_bits(), ip.to_bits());
                a & m == ip & m
            }
            _ => false,
        }
    };
    let name = addrs
        .iter()
        .find(|i| match (&i.address, &i.netmask) {
            (Some(a), Some(m)) => contains(a, m) && i.interface_name != "lo",
            _ => false,
        })
        .map(|i| i.interface_name.clone())
        .ok_or_else(|| io::Error::other(format!("no interface has {ip} in its subnet")))?;
    let mac = addrs
        .iter()
        .filter(|i| i.interface_name == name)
        .find_map(|i| i.address.as_ref()?.as_link_addr()?.addr())
        .ok_or_else(|| io::Error::other(format!("{name} has no link-layer address")))?;
    let cname = CString::new(name.clone()).map_err(io::Error::other)?;
    // SAFETY: `cname` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((name, index as libc::c_int, mac))
}

/// An `AF_PACKET` socket on the interface of the subnet `local` belongs
/// to, speaking for `local` (an address no interface has).
pub(crate) struct PacketLink {
    fd: OwnedFd,
    ifindex: libc::c_int,
    mac: Mac,
    local: IpAddr,
    gateway_mac: Mac,
}

impl PacketLink {
    /// Opens the socket and resolves `gateway`'s link-layer address (ARP or
    /// a neighbour solicitation, from `local`).
    pub fn open(local: IpAddr, gateway: IpAddr) -> io::Result<Self> {
        let (_, ifindex, mac) = interface_for(local)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = new_socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto))?;
        // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` outlives the call and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut link = PacketLink {
            fd,
            ifindex,
            mac,
            local,
            gateway_mac: BROADCAST,
        };
        link.gateway_mac = link.resolve(gateway)?;
        Ok(link)
    }

    fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `sll` outlive the call; the lengths are theirs.
        cvt(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Asks who has `ip` and waits for the answer.
    fn resolve(&mut self, ip: IpAddr) -> io::Result<Mac> {
        let deadline = Instant::now() + RESOLVE_TIMEOUT;
        while Instant::now() < deadline {
            let frame = match (self.local, ip) {
                (IpAddr::V4(local), IpAddr::V4(ip)) => ethernet(
                    BROADCAST,
                    self.mac,
                    ETH_P_ARP,
                    &arp(1, self.mac, local, [0; 6], ip),
                ),
                (IpAddr::V6(local), IpAddr::V6(ip)) => {
                    let (group, group_mac) = solicited_node(ip);
                    let ns = neighbour(true, local, group, ip, self.mac);
                    ethernet(group_mac, self.mac, ETH_P_IPV6, &ns)
                }
                _ => return Err(io::Error::other("gateway and source families differ")),
            };
            self.send_frame(&frame)?;
            let wait_until = Instant::now() + Duration::from_millis(300);
            while let Some(frame) = self.recv_frame(wait_until)? {
                if let Some(mac) = self.answer(&frame)?.filter(|(from, _)| *from == ip) {
                    return Ok(mac.1);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no link-layer address for {ip}"),
        ))
    }

    /// The next incoming frame before `deadline`.
    fn recv_frame(&self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(&self.fd, left)? {
                return Ok(None);
            }
            // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `sll` are writable for the lengths passed.
            let n = cvt(unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut sll).cast(),
                    &mut len,
                )
            })?;
            // Our own frames come back as PACKET_OUTGOING.
            if sll.sll_pkttype != libc::PACKET_OUTGOING {
                return Ok(Some(buf[..n].to_vec()));
            }
        }
    }

    /// Answers ARP requests and neighbour solicitations for our address;
    /// returns the sender of an ARP reply or the target of an
    /// advertisement, with its link-layer address.
    fn answer(&self, frame: &[u8]) -> io::Result<Option<(IpAddr, Mac)>> {
        let Some((_, src_mac, ethertype, payload)) = parse_ethernet(frame) else {
            return Ok(None);
        };
        match (ethertype, self.local) {
            (ETH_P_ARP, IpAddr::V4(local)) => match parse_arp(payload) {
                Some((1, sha, spa, tpa)) if tpa == local => {
                    let reply = arp(2, self.mac, local, sha, spa);
                    self.send_frame(&ethernet(sha, self.mac, ETH_P_ARP, &reply))?;
                    Ok(None)
                }
                Some((2, sha, spa, _)) => Ok(Some((spa.into(), sha))),
                _ => Ok(None),
            },
            (ETH_P_IPV6, IpAddr::V6(local)) => match parse_neighbour(payload) {
                Some((true, target, _)) if target == local => {
                    let from = ipv6_src(payload).unwrap_or(Ipv6Addr::UNSPECIFIED);
                    let na = neighbour(false, local, from, local, self.mac);
                    self.send_frame(&ethernet(src_mac, self.mac, ETH_P_IPV6, &na))?;
                    Ok(None)
                }
                Some((false, target, Some(mac))) => Ok(Some((target.into(), mac))),
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

fn ipv6_src(packet: &[u8]) -> Option<Ipv6Addr> {
    Some(<[u8; 16]>::try_from(packet.get(8..24)?).ok()?.into())
}

impl Link for PacketLink {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let ethertype = if self.local.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        self.send_frame(&ethernet(self.gateway_mac, self.mac, ethertype, packet))
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        while let Some(frame) = self.recv_frame(deadline)? {
            self.answer(&frame)?;
            let Some((_, _, ethertype, payload)) = parse_ethernet(&frame) else {
                continue;
            };
            if (ethertype == ETH_P_IP || ethertype == ETH_P_IPV6)
                && wire::Segment::parse(payload).is_some_and(|s| s.dst.ip() == self.local)
            {
                return Ok(Some(payload.to_vec()));
            }
        }
        Ok(None)
    }
}

/// The TUN driver's character device node that [`TunLink`] opens for
/// `dev`. Distributions make `/dev/net/tun` mode 0666 (systemd's udev
/// rules); a test machine may not, and its `/dev` is not the test's to
/// change, so the test makes its own node of the same device (10:200),
/// mode 0666, here.
pub fn tun_node(dev: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{dev}.tun"))
}

/// `TUNSETIFF` (include/uapi/linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// A queue of a persistent TUN device the probe's uid owns.
pub(crate) struct TunLink {
    file: File,
}

impl TunLink {
    pub fn open(node: &Path, dev: &str) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(node)?;
        // SAFETY: ifreq is plain data for which all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, src) in ifr
            .ifr_name
            .iter_mut()
            .zip(dev.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &raw mut ifr) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TunLink { file })
    }
}

impl Link for TunLink {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        self.file.write_all(packet)
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        if !readable(&self.file, timeout)? {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        let n = self.file.read(&mut buf)?;
        buf.truncate(n);
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn raw_destinations_carry_the_address() {
        let (ss, len) = raw_dest(Ipv4Addr::new(169, 254, 169, 254).into());
        assert_eq!(len as usize, size_of::<libc::sockaddr_in>());
        assert_eq!(ss.ss_family, libc::AF_INET as libc::sa_family_t);
    }
}
