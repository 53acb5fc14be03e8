//! The probe's side of each [`Action`]: plain blocking sockets, one attempt,
//! every failure reported with the `errno` of the system call that failed.
//!
//! Used by the `imds-probe` binary after it has joined the test namespace
//! and cgroup and dropped its privileges; nothing here joins or drops
//! anything itself.

use std::{
    fs,
    io::{self, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket,
    },
    os::fd::{AsRawFd, OwnedFd},
};

use nix::sys::{
    socket::{
        AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, setsockopt, socket,
        sockopt,
    },
    time::{TimeVal, TimeValLike},
};

use crate::{
    Action, ProbeResult, attack,
    imdsv2::{
        KeptAlive, TIMEOUT, TOKEN_PATH, TTL_HEADER, connect, expect_200, http_flow, read_response,
        request,
    },
    outcome::{Failure, Outcome, Step, os_failure},
    requests, tricks,
};

/// `tcp_info.tcpi_options` bit for "SYN data was acknowledged"
/// (include/uapi/linux/tcp.h; missing from the libc crate for Linux).
const TCPI_OPT_SYN_DATA: u8 = 32;
const DATAGRAM: &[u8] = b"imds-probe";

/// Performs `action` `times` times (at least once) from this one process:
/// reports the last attempt, with how many attempts there were and how many
/// failed with `EPERM`.
pub fn perform_repeatedly(action: &Action, times: u32) -> ProbeResult {
    let mut eperm = 0;
    let mut last = perform(action);
    for i in 1..=times {
        if last.errno == Some(libc::EPERM) {
            eperm += 1;
        }
        if i < times {
            last = perform(action);
        }
    }
    last.attempts = times.max(1);
    last.eperm = eperm;
    last
}

/// One connection kept alive for the IMDSv2 flow, run on it as many times
/// as asked ([`Action::HttpKeepAlive`]). A connect that failed fails every
/// fetch the same way.
pub struct Held {
    conn: Step<KeptAlive>,
}

impl Held {
    /// Connects to `addr` (the connect hooks decide it now).
    pub fn connect(addr: SocketAddr) -> Self {
        Self {
            conn: KeptAlive::connect(addr),
        }
    }

    /// Runs the IMDSv2 flow on the held connection and describes what
    /// happened, as this process.
    pub fn fetch(&mut self) -> ProbeResult {
        let outcome = match &mut self.conn {
            Ok(conn) => conn.flow(),
            Err(f) => Err(Failure {
                errno: f.errno,
                error: f.error.clone(),
                body: String::new(),
            }),
        };
        report(outcome)
    }
}

/// Performs `action` once and describes what happened, as this process.
pub fn perform(action: &Action) -> ProbeResult {
    let outcome = match *action {
        Action::Http(addr) => http_flow(addr),
        Action::HttpKeepAlive(addr) => return Held::connect(addr).fetch(),
        Action::Connect(addr) => connect(addr).map(|_| Outcome::default()),
        Action::ConnectMapped(addr) => connect(mapped(addr)).map(|_| Outcome::default()),
        Action::UdpSend(addr) => udp_send(addr),
        Action::UdpSendMapped(addr) => udp_send(mapped(addr)),
        Action::UdpConnect(addr) => udp_connect(addr),
        Action::Tfo(addr) => tfo(addr),
        Action::Attack(attack) => attack::perform(attack),
        Action::Send(addr, script) => requests::run(addr, script),
        Action::Trick(addr, trick) => tricks::run(addr, trick),
        Action::Evade(addr, evasion) => crate::evasion::run(addr, evasion),
        Action::Listen(addr) => return listen(addr).0,
    };
    report(outcome)
}

/// What an IMDS emulator does: a listening socket on `addr` (reported
/// as the action's outcome), answering every connection with an HTTP 200
/// on a thread of its own, for as long as this process lives.
pub fn listen(addr: SocketAddr) -> (ProbeResult, bool) {
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => return (report(Err(os_failure(format!("bind {addr}"), e))), false),
    };
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nemulated",
            );
        }
    });
    (report(Ok(Outcome::default())), true)
}

/// What an action's outcome says, and who this process is.
fn report(outcome: Step<Outcome>) -> ProbeResult {
    let (ok, errno, error, outcome) = match outcome {
        Ok(o) => (true, None, String::new(), o),
        Err(f) => (
            false,
            f.errno,
            f.error,
            Outcome {
                body: f.body,
                ..Outcome::default()
            },
        ),
    };
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    ProbeResult {
        ok,
        errno,
        error,
        body: outcome.body,
        pid: std::process::id(),
        comm: fs::read_to_string("/proc/self/comm")
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default(),
        uid: ids("Uid:").first().copied().unwrap_or(u32::MAX),
        gid: ids("Gid:").first().copied().unwrap_or(u32::MAX),
        groups: ids("Groups:"),
        cgroup: fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default()
            .to_owned(),
        syn_data: outcome.syn_data,
        syn_ack: outcome.syn_ack,
        subflows: outcome.subflows,
        note: outcome.note,
        attempts: 1,
        eperm: u32::from(errno == Some(libc::EPERM)),
    }
}

/// `::ffff:a.b.c.d`: an IPv4 destination reached through an `AF_INET6`
/// socket.
fn mapped(addr: SocketAddrV4) -> SocketAddr {
    SocketAddrV6::new(addr.ip().to_ipv6_mapped(), addr.port(), 0, 0).into()
}

/// A UDP socket of `addr`'s family, bound to an ephemeral port. The IPv6 one
/// is dual-stack (the namespace keeps `net.ipv6.bindv6only=0`), which the
/// mapped actions need.
fn udp_socket(addr: SocketAddr) -> Step<UdpSocket> {
    let any: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    UdpSocket::bind((any, 0)).map_err(|e| os_failure("binding a UDP socket", e))
}

fn udp_send(addr: SocketAddr) -> Step<Outcome> {
    udp_socket(addr)?
        .send_to(DATAGRAM, addr)
        .map_err(|e| os_failure(format!("sendto {addr}"), e))?;
    Ok(Outcome::default())
}

fn udp_connect(addr: SocketAddr) -> Step<Outcome> {
    let socket = udp_socket(addr)?;
    socket
        .connect(addr)
        .map_err(|e| os_failure(format!("connect (UDP) {addr}"), e))?;
    socket
        .send(DATAGRAM)
        .map_err(|e| os_failure(format!("send on UDP socket connected to {addr}"), e))?;
    Ok(Outcome::default())
}

/// A token request sent with `sendto(MSG_FASTOPEN)`: the kernel connects
/// from inside sendmsg (`tcp_sendmsg_fastopen` → `__inet_stream_connect`,
/// where the cgroup connect hooks run) and, with the test namespace's
/// `tcp_fastopen` setting, puts the request in the SYN itself.
fn tfo(addr: SocketAddr) -> Step<Outcome> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| os_failure("socket", e.into()))?;
    let timeout = TimeVal::milliseconds(TIMEOUT.as_millis() as i64);
    for opt in [
        setsockopt(&fd, sockopt::SendTimeout, &timeout),
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout),
    ] {
        opt.map_err(|e| os_failure("setting socket timeouts", e.into()))?;
    }
    let what = format!("PUT {TOKEN_PATH} (TFO)");
    let req = request(addr, "PUT", TOKEN_PATH, (TTL_HEADER, "21600"));
    let dest = SockaddrStorage::from(addr);
    // SAFETY: `req` and `dest` outlive the call and the lengths passed are
    // theirs; `fd` is an open socket we own.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL,
            dest.as_ptr(),
            dest.len(),
        )
    };
    let sent = usize::try_from(sent).map_err(|_| {
        os_failure(
            format!("sendto(MSG_FASTOPEN) {addr}"),
            io::Error::last_os_error(),
        )
    })?;
    let mut stream = TcpStream::from(fd);
    stream
        .write_all(&req[sent..])
        .map_err(|e| os_failure(format!("{what}: sending the rest"), e))?;
    let response = read_response(&mut stream, &what)?;
    let syn_data = tcpi_options(&stream).map(|o| o & TCPI_OPT_SYN_DATA != 0);
    let body = expect_200(&what, response)?;
    Ok(Outcome {
        body,
        syn_data,
        ..Outcome::default()
    })
}

/// `tcp_info.tcpi_options`, the sixth byte of the structure (its layout's
/// start has been fixed since Linux 2.6).
fn tcpi_options(stream: &TcpStream) -> Option<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is
    // that long, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize >= 6).then_some(info[5])
}
