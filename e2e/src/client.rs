//! The probe's side of each [`Action`]: plain blocking sockets, one attempt,
//! every failure reported with the `errno` of the system call that failed.
//!
//! Used by the `imds-probe` binary after it has joined the test namespace
//! and cgroup and dropped its privileges; nothing here joins or drops
//! anything itself.

use std::{
    fmt::Display,
    fs,
    io::{self, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket,
    },
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use nix::sys::{
    socket::{
        AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, setsockopt, socket,
        sockopt,
    },
    time::{TimeVal, TimeValLike},
};

use crate::{Action, ProbeResult, fake_imds::ROLE};

/// Connect, send and receive timeout: a rejected connect fails at once, so
/// anything slower is a harness problem, not a verdict.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds a response a probe reads.
const MAX_RESPONSE: u64 = 1024 * 1024;
/// `tcp_info.tcpi_options` bit for "SYN data was acknowledged"
/// (include/uapi/linux/tcp.h; missing from the libc crate for Linux).
const TCPI_OPT_SYN_DATA: u8 = 32;
const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const DATAGRAM: &[u8] = b"imds-probe";

/// What a successful action produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub body: String,
    pub syn_data: Option<bool>,
    /// `raw-tcp`: whether the destination answered the SYN.
    pub syn_ack: Option<bool>,
    /// `mptcp-add-addr`: the remote address of every subflow.
    pub subflows: Vec<SocketAddr>,
    /// A fact worth reporting about how the action went.
    pub note: String,
}

/// Why an action failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub errno: Option<i32>,
    pub error: String,
    pub body: String,
}

pub(crate) type Step<T> = Result<T, Failure>;

/// A failed system call, with its errno (a timeout from std's
/// `connect_timeout` carries none, so it gets `ETIMEDOUT`).
pub(crate) fn os_failure(what: impl Display, e: io::Error) -> Failure {
    let errno = e
        .raw_os_error()
        .or((e.kind() == io::ErrorKind::TimedOut).then_some(libc::ETIMEDOUT));
    Failure {
        errno,
        error: format!("{what}: {e}"),
        body: String::new(),
    }
}

/// Performs `action` once and describes what happened, as this process.
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

pub fn perform(action: &Action) -> ProbeResult {
    let outcome = match *action {
        Action::Http(addr) => http_flow(addr),
        Action::Connect(addr) => connect(addr).map(|_| Outcome::default()),
        Action::ConnectMapped(addr) => connect(mapped(addr)).map(|_| Outcome::default()),
        Action::UdpSend(addr) => udp_send(addr),
        Action::UdpSendMapped(addr) => udp_send(mapped(addr)),
        Action::UdpConnect(addr) => udp_connect(addr),
        Action::Tfo(addr) => tfo(addr),
        Action::Attack(attack) => crate::attack::perform(attack),
    };
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

fn connect(addr: SocketAddr) -> Step<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| os_failure(format!("connect {addr}"), e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| os_failure("setting socket timeouts", e))?;
    Ok(stream)
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

/// An HTTP/1.1 request with no body.
pub(crate) fn request(addr: SocketAddr, method: &str, path: &str, header: (&str, &str)) -> Vec<u8> {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let port = if addr.port() == 80 {
        String::new()
    } else {
        format!(":{}", addr.port())
    };
    let (name, value) = header;
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}{port}\r\nUser-Agent: imds-probe\r\n\
         Accept: */*\r\nConnection: close\r\n{name}: {value}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads a whole `Connection: close` response; returns its status and body
/// as text.
fn read_response(stream: &mut TcpStream, what: &str) -> Step<(u16, String)> {
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| os_failure(format!("{what}: reading the response"), e))?;
    parse_response(&raw, what)
}

/// The status and body of a whole response, as text.
pub(crate) fn parse_response(raw: &[u8], what: &str) -> Step<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let malformed = || Failure {
        errno: None,
        error: format!("{what}: malformed response {text:?}"),
        body: String::new(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}

/// The body of a 200 response, or a failure naming the status.
pub(crate) fn expect_200(what: &str, (status, body): (u16, String)) -> Step<String> {
    if status == 200 {
        Ok(body)
    } else {
        Err(Failure {
            errno: None,
            error: format!("{what}: HTTP {status}"),
            body,
        })
    }
}

/// One request on a new connection, as IMDS clients do: its status and
/// body.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    header: (&str, &str),
) -> Step<(u16, String)> {
    let what = format!("{method} {path}");
    let mut stream = connect(addr)?;
    stream
        .write_all(&request(addr, method, path, header))
        .map_err(|e| os_failure(format!("{what}: sending"), e))?;
    read_response(&mut stream, &what)
}

/// The IMDSv2 sequence an SDK follows to find and fetch role credentials.
pub(crate) fn http_flow(addr: SocketAddr) -> Step<Outcome> {
    imdsv2_flow(|method, path, header| exchange(addr, method, path, header))
}

/// [`http_flow`] over any transport: `exchange(method, path, header)`
/// makes one request on a new connection and returns the status and body.
pub(crate) fn imdsv2_flow(
    mut exchange: impl FnMut(&str, &str, (&str, &str)) -> Step<(u16, String)>,
) -> Step<Outcome> {
    let mut ok = |method: &str, path: &str, header: (&str, &str)| {
        let what = format!("{method} {path}");
        expect_200(&what, exchange(method, path, header)?)
    };
    let token = ok("PUT", TOKEN_PATH, (TTL_HEADER, "21600"))?;
    let auth = ("X-aws-ec2-metadata-token", token.as_str());
    ok("GET", "/latest/meta-data/", auth)?;
    let roles = ok("GET", "/latest/meta-data/iam/security-credentials/", auth)?;
    let role = roles.lines().next().unwrap_or(ROLE).trim();
    let path = format!("/latest/meta-data/iam/security-credentials/{role}");
    let body = ok("GET", &path, auth)?;
    Ok(Outcome {
        body,
        ..Outcome::default()
    })
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
