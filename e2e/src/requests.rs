//! Request scripts for the request-level tests (issue 23): exact bytes,
//! sent in exact ways (one write, a byte per write, `writev`), on one
//! connection, so that a test can show what reached the fake IMDS
//! ([`crate::FakeImds::received`]) and what the sender was told.
//!
//! Each script stops at the first send that fails and reports its errno;
//! the body is the last response read.

use std::{
    io::{IoSlice, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use nix::sys::socket::{SockaddrLike as _, SockaddrStorage};

use crate::{
    fake_imds::ROLE,
    imdsv2::{TIMEOUT, TOKEN_PATH, TTL_HEADER, connect},
    outcome::{Failure, Outcome, Step, os_failure},
};

/// A fixed sequence of requests on one connection, kept alive. Most
/// start as an SDK does: the token `PUT`, then a `GET` of the instance id
/// with that token (both of which the tests' request set allows), then
/// the `GET` of the role's credentials (which it does not), sent as the
/// script says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// The credentials `GET` in one write.
    Credentials,
    /// The same head, one byte per write.
    CredentialsBytewise,
    /// The same head, 7 bytes per write.
    CredentialsSevens,
    /// The same head, one line (CRLF included) per write.
    CredentialsLines,
    /// The same head in three iovecs of one `writev`.
    CredentialsWritev,
    /// [`Script::Credentials`] over MPTCP (`IPPROTO_MPTCP`).
    CredentialsMptcp,
    /// [`Script::Credentials`] on a socket with `TCP_FASTOPEN_CONNECT`
    /// (the connect is deferred to the first write, whose data rides the
    /// SYN).
    CredentialsFastOpenConnect,
    /// A `connect()` in `TCP_REPAIR` mode (needs `CAP_NET_ADMIN`): no
    /// handshake, the socket is established at once; nothing is sent.
    RepairConnect,
    /// The token `PUT`, then the instance id `GET` one byte per write: an
    /// allowed head split as finely as can be.
    InstanceIdBytewise,
    /// The token `PUT`, then two instance id `GET`s in one write
    /// (pipelined, both allowed).
    PipelinedAllowed,
    /// The token `PUT`, then the instance id `GET` and the credentials
    /// `GET` in one write (pipelined).
    PipelinedCredentials,
    /// The instance id `GET` without a token (IMDSv1), then the token `PUT`
    /// and the instance id `GET` with it (IMDSv2).
    V1ThenV2,
}

impl Script {
    pub const ALL: [Self; 12] = [
        Self::CredentialsFastOpenConnect,
        Self::RepairConnect,
        Self::Credentials,
        Self::CredentialsBytewise,
        Self::CredentialsSevens,
        Self::CredentialsLines,
        Self::CredentialsWritev,
        Self::CredentialsMptcp,
        Self::InstanceIdBytewise,
        Self::PipelinedAllowed,
        Self::PipelinedCredentials,
        Self::V1ThenV2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::CredentialsBytewise => "credentials-bytewise",
            Self::CredentialsSevens => "credentials-sevens",
            Self::CredentialsLines => "credentials-lines",
            Self::CredentialsWritev => "credentials-writev",
            Self::CredentialsMptcp => "credentials-mptcp",
            Self::CredentialsFastOpenConnect => "credentials-fastopen-connect",
            Self::RepairConnect => "repair-connect",
            Self::InstanceIdBytewise => "instance-id-bytewise",
            Self::PipelinedAllowed => "pipelined-allowed",
            Self::PipelinedCredentials => "pipelined-credentials",
            Self::V1ThenV2 => "v1-then-v2",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The scripts that send the credentials `GET` (after an allowed
    /// token `PUT` and instance id `GET`) over plain TCP.
    pub const CREDENTIALS: [Self; 5] = [
        Self::Credentials,
        Self::CredentialsBytewise,
        Self::CredentialsSevens,
        Self::CredentialsLines,
        Self::CredentialsWritev,
    ];
}

/// The instance id's path.
pub const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";
pub(crate) const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

/// `IPPROTO_MPTCP` (include/uapi/linux/in.h).
const IPPROTO_MPTCP: libc::c_int = 262;
/// `TCP_REPAIR` and `TCP_FASTOPEN_CONNECT` (include/uapi/linux/tcp.h).
const TCP_REPAIR: libc::c_int = 19;
const TCP_FASTOPEN_CONNECT: libc::c_int = 30;

/// The path of the role's credentials, which the fake IMDS serves.
pub fn credentials_path() -> String {
    format!("/latest/meta-data/iam/security-credentials/{ROLE}")
}

/// A request head of `method` for `path` to `addr`, kept alive, with
/// `header` (name and value).
pub fn head(addr: SocketAddr, method: &str, path: &str, header: (&str, &str)) -> Vec<u8> {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let (name, value) = header;
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\
         {name}: {value}\r\n\r\n"
    )
    .into_bytes()
}

/// Runs `script` against `addr`. The body is every response read, in
/// order (status line, then body), also when a later step fails.
pub(crate) fn run(addr: SocketAddr, script: Script) -> Step<Outcome> {
    let mut transcript = String::new();
    let done = steps(addr, script, &mut transcript);
    transcribed(transcript, done)
}

/// What a run of steps reports: its transcript as the body, whether it
/// finished or failed.
pub(crate) fn transcribed(transcript: String, done: Step<()>) -> Step<Outcome> {
    match done {
        Ok(()) => Ok(Outcome {
            body: transcript,
            ..Outcome::default()
        }),
        Err(f) => Err(Failure {
            body: transcript,
            ..f
        }),
    }
}

fn steps(addr: SocketAddr, script: Script, transcript: &mut String) -> Step<()> {
    let mut stream = match script {
        Script::CredentialsMptcp => connect_raw(addr, IPPROTO_MPTCP, None)?,
        Script::CredentialsFastOpenConnect => connect_raw(
            addr,
            libc::IPPROTO_TCP,
            Some((libc::IPPROTO_TCP, TCP_FASTOPEN_CONNECT)),
        )?,
        Script::RepairConnect => {
            connect_raw(
                addr,
                libc::IPPROTO_TCP,
                Some((libc::IPPROTO_TCP, TCP_REPAIR)),
            )?;
            return Ok(());
        }
        _ => connect(addr)?,
    };
    let mut conn = Conn {
        stream: &mut stream,
        transcript,
    };
    if script == Script::V1ThenV2 {
        conn.send(&head(addr, "GET", INSTANCE_ID_PATH, ("Accept", "*/*")))?;
        conn.response()?;
    }
    conn.send(&head(addr, "PUT", TOKEN_PATH, (TTL_HEADER, "60")))?;
    let token = conn.response()?;
    let with_token = |path: &str| head(addr, "GET", path, (TOKEN_HEADER, &token));
    let instance_id = with_token(INSTANCE_ID_PATH);
    let credentials = with_token(&credentials_path());
    match script {
        Script::V1ThenV2 => {
            conn.send(&instance_id)?;
            conn.response()?;
            return Ok(());
        }
        Script::InstanceIdBytewise => {
            for b in &instance_id {
                conn.send(std::slice::from_ref(b))?;
            }
            conn.response()?;
            return Ok(());
        }
        Script::PipelinedAllowed => {
            conn.send(&[instance_id.clone(), instance_id].concat())?;
            conn.response()?;
            conn.response()?;
            return Ok(());
        }
        Script::PipelinedCredentials => {
            conn.send(&[instance_id, credentials].concat())?;
            conn.response()?;
            conn.response()?;
            return Ok(());
        }
        _ => {}
    }
    conn.send(&instance_id)?;
    conn.response()?;
    match script {
        Script::CredentialsBytewise => {
            for b in &credentials {
                conn.send(std::slice::from_ref(b))?;
            }
        }
        Script::CredentialsSevens => {
            for chunk in credentials.chunks(7) {
                conn.send(chunk)?;
            }
        }
        Script::CredentialsLines => {
            for line in credentials.split_inclusive(|&b| b == b'\n') {
                conn.send(line)?;
            }
        }
        Script::CredentialsWritev => {
            let (a, rest) = credentials.split_at(7);
            let (b, c) = rest.split_at(20);
            let slices = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
            let n = conn
                .stream
                .write_vectored(&slices)
                .map_err(|e| os_failure("writev", e))?;
            if n != credentials.len() {
                return Err(Failure {
                    errno: None,
                    error: format!("writev wrote {n} of {} bytes", credentials.len()),
                    body: String::new(),
                });
            }
        }
        _ => conn.send(&credentials)?,
    }
    conn.response()?;
    Ok(())
}

/// A connection and what was read on it.
struct Conn<'a> {
    stream: &'a mut TcpStream,
    transcript: &'a mut String,
}

impl Conn<'_> {
    fn send(&mut self, bytes: &[u8]) -> Step<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| os_failure("send", e))
    }

    /// The next response's body, added to the transcript with its status
    /// line.
    fn response(&mut self) -> Step<String> {
        let (status, body) = response(self.stream)?;
        self.transcript.push_str(&status);
        self.transcript.push('\n');
        self.transcript.push_str(&body);
        self.transcript.push('\n');
        Ok(body)
    }
}

/// A stream connection of `protocol` (`IPPROTO_MPTCP`: its first subflow
/// is what the connect hooks and `sock_ops` see) to `addr`, with the
/// integer option `option` (level, name) set to 1 first, and the probe's
/// timeouts.
fn connect_raw(
    addr: SocketAddr,
    protocol: libc::c_int,
    option: Option<(libc::c_int, libc::c_int)>,
) -> Step<TcpStream> {
    let options: Vec<_> = option
        .map(|(level, name)| (level, name, 1))
        .into_iter()
        .collect();
    stream_to(addr, protocol, &options, Some(TIMEOUT), Some(TIMEOUT))
}

/// A stream connection of `protocol` to `addr` by a blocking `connect`,
/// with each integer option of `options` (level, name, value) set before
/// it, and `read` and `write` as the timeouts (none where `None`).
pub(crate) fn stream_to(
    addr: SocketAddr,
    protocol: libc::c_int,
    options: &[(libc::c_int, libc::c_int, libc::c_int)],
    read: Option<Duration>,
    write: Option<Duration>,
) -> Step<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(os_failure(
            format!("socket(protocol {protocol})"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a descriptor we just opened and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for &(level, name, value) in options {
        set_int(fd.as_raw_fd(), level, name, value)?;
    }
    let dest = SockaddrStorage::from(addr);
    // SAFETY: `dest` outlives the call; its length is its own.
    if unsafe { libc::connect(fd.as_raw_fd(), dest.as_ptr(), dest.len()) } != 0 {
        return Err(os_failure(
            format!("connect {addr} (protocol {protocol})"),
            std::io::Error::last_os_error(),
        ));
    }
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(read)
        .and_then(|()| stream.set_write_timeout(write))
        .map_err(|e| os_failure("setting socket timeouts", e))?;
    Ok(stream)
}

/// The next response on `stream` ([`response`]), its status line and body
/// added to `transcript`: the body.
pub(crate) fn exchange(stream: &mut TcpStream, transcript: &mut String) -> Step<String> {
    let (status, body) = response(stream)?;
    transcript.push_str(&status);
    transcript.push('\n');
    transcript.push_str(&body);
    transcript.push('\n');
    Ok(body)
}

/// The next response on `stream`: its status line and body, as text
/// (read until the `Content-Length` the fake IMDS always sends). Reads
/// one byte at a time, so that a pipelined second response stays for the
/// next call.
pub(crate) fn response(stream: &mut TcpStream) -> Step<(String, String)> {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| os_failure("setting the read timeout", e))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                let status = head.lines().next().unwrap_or("").to_owned();
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned();
                return Ok((status, body));
            }
        }
        // A read with a timeout is not restarted after a signal, nor
        // after io_uring's task work of a ring just dropped (6.1).
        let n = match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.map_err(|e| os_failure("reading the response", e))?,
        };
        if n == 0 {
            return Err(Failure {
                errno: None,
                error: "closed before a response".to_owned(),
                body: String::new(),
            });
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// `setsockopt` of an int option on `fd`.
pub(crate) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Step<()> {
    // SAFETY: an int option, its size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_failure(
            format!("setsockopt {level}/{name} = {value}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
