//! An attacker's tricks against request-level judgement (issue 23): each
//! [`Trick`] is one connection that starts as an SDK does (the token
//! `PUT`, the instance id `GET`, which the tests' request set allows),
//! then does something to the socket that the judgement might not follow,
//! then sends the role's credentials `GET` (which it does not allow).
//! `e2e/tests/requests/attack.rs` runs them and reads what reached the
//! fake IMDS.
//!
//! Each trick stops at the first system call that fails and reports its
//! errno; the body is every response read, status line and body.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use nix::sys::socket::{SockaddrLike as _, SockaddrStorage};

use crate::{
    imdsv2::{TIMEOUT, TOKEN_PATH, TTL_HEADER, connect},
    outcome::{Failure, Outcome, Step, os_failure},
    requests::{INSTANCE_ID_PATH, TOKEN_HEADER, credentials_path, head, set_int, transcribed},
    stall,
};

/// `TCP_NOTSENT_LOWAT` (include/uapi/linux/tcp.h).
const TCP_NOTSENT_LOWAT: libc::c_int = 25;
/// The judged caller the hand-off's child becomes (the tests' `JUDGED`).
const HANDOFF_UID: u32 = 1001;

/// One trick (`trick ADDR PORT NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trick {
    /// `connect(AF_UNSPEC)` (a TCP disconnect), `connect()` again on the
    /// same descriptor, a new token, then the credentials.
    Reconnect,
    /// `connect()` again on the connected socket: the kernel runs the
    /// connect hook before it answers `EISCONN`. Then the credentials.
    ConnectAgain,
    /// The instance id with `MSG_MORE`, then the credentials.
    MsgMore,
    /// `TCP_CORK` on, the instance id, the credentials, `TCP_CORK` off.
    Cork,
    /// The credentials with `MSG_OOB` (urgent data); no response is read
    /// (the server does not read the urgent byte in line).
    Urgent,
    /// `TCP_NOTSENT_LOWAT` of one byte before the first request: a send
    /// that may then sleep mid-message for the unsent bytes to drain.
    NotsentLowat,
    /// `TCP_NOTSENT_LOWAT` of 64 KiB: room for any request head.
    NotsentLowatRoomy,
    /// Run as root: a child that becomes [`HANDOFF_UID`] connects and
    /// sends the allowed requests, then hands the socket over
    /// `SCM_RIGHTS` to its root parent, which sends the credentials.
    HandOff,
    /// Not an SDK's start: an allowed request (the placement `GET`, padded
    /// to 500 bytes) that fills part of the window of a listener that
    /// reads nothing until the test releases it ([`crate::stall`]); once
    /// it is acknowledged, a second one (2000 bytes) in one blocking
    /// `send(MSG_OOB)` from a socket with the smallest send buffer and
    /// segment size: the judged push waits for memory mid-message. Then
    /// both responses, a next request on the same connection and its
    /// response.
    WaitForMemory,
}

impl Trick {
    pub const ALL: [Self; 9] = [
        Self::Reconnect,
        Self::ConnectAgain,
        Self::MsgMore,
        Self::Cork,
        Self::Urgent,
        Self::NotsentLowat,
        Self::NotsentLowatRoomy,
        Self::HandOff,
        Self::WaitForMemory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Reconnect => "reconnect",
            Self::ConnectAgain => "connect-again",
            Self::MsgMore => "msg-more",
            Self::Cork => "cork",
            Self::Urgent => "urgent",
            Self::NotsentLowat => "notsent-lowat",
            Self::NotsentLowatRoomy => "notsent-lowat-roomy",
            Self::HandOff => "hand-off",
            Self::WaitForMemory => "wait-for-memory",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Performs `trick` against `addr`.
pub(crate) fn run(addr: SocketAddr, trick: Trick) -> Step<Outcome> {
    let mut transcript = String::new();
    let result = if trick == Trick::HandOff {
        hand_off(addr, &mut transcript)
    } else if trick == Trick::WaitForMemory {
        stall::connect(addr).and_then(|stream| {
            let mut conn = Conn::new(stream, &mut transcript);
            wait_for_memory(addr, &mut conn)
        })
    } else {
        connect(addr).and_then(|stream| {
            let mut conn = Conn::new(stream, &mut transcript);
            steps(addr, trick, &mut conn)
        })
    };
    transcribed(transcript, result)
}

fn steps(addr: SocketAddr, trick: Trick, conn: &mut Conn<'_>) -> Step<()> {
    match trick {
        Trick::NotsentLowat => set_int(conn.fd(), libc::IPPROTO_TCP, TCP_NOTSENT_LOWAT, 1)?,
        Trick::NotsentLowatRoomy => {
            set_int(conn.fd(), libc::IPPROTO_TCP, TCP_NOTSENT_LOWAT, 65_536)?;
        }
        _ => {}
    }
    let token = conn.token(addr)?;
    let with_token = |path: &str| head(addr, "GET", path, (TOKEN_HEADER, &token));
    let (instance_id, credentials) = (
        with_token(INSTANCE_ID_PATH),
        with_token(&credentials_path()),
    );
    match trick {
        Trick::MsgMore => {
            conn.send(&instance_id, libc::MSG_MORE)?;
            conn.send(&credentials, 0)?;
            conn.response()?;
            return conn.response().map(drop);
        }
        Trick::Cork => {
            set_int(conn.fd(), libc::IPPROTO_TCP, libc::TCP_CORK, 1)?;
            conn.send(&instance_id, 0)?;
            conn.send(&credentials, 0)?;
            set_int(conn.fd(), libc::IPPROTO_TCP, libc::TCP_CORK, 0)?;
            conn.response()?;
            return conn.response().map(drop);
        }
        _ => {}
    }
    conn.send(&instance_id, 0)?;
    conn.response()?;
    match trick {
        Trick::Reconnect => {
            // SAFETY: a zeroed `sockaddr` whose family is AF_UNSPEC, its
            // size passed.
            let rc = unsafe {
                let mut unspec: libc::sockaddr = std::mem::zeroed();
                unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
                libc::connect(
                    conn.fd(),
                    &raw const unspec,
                    size_of::<libc::sockaddr>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(os_failure(
                    "connect(AF_UNSPEC)",
                    std::io::Error::last_os_error(),
                ));
            }
            connect_fd(conn.fd(), addr)?;
            let token = conn.token(addr)?;
            conn.send(
                &head(addr, "GET", &credentials_path(), (TOKEN_HEADER, &token)),
                0,
            )?;
        }
        Trick::ConnectAgain => {
            // The first may succeed (the connect that made the socket was
            // non-blocking: this one completes it), the next says EISCONN;
            // both run the connect hook.
            for _ in 0..2 {
                match connect_fd(conn.fd(), addr) {
                    Ok(()) => {}
                    Err(f) if f.errno == Some(libc::EISCONN) => {}
                    Err(f) => return Err(f),
                }
            }
            conn.send(&credentials, 0)?;
        }
        Trick::Urgent => return conn.send(&credentials, libc::MSG_OOB),
        _ => conn.send(&credentials, 0)?,
    }
    conn.response().map(drop)
}

/// [`Trick::WaitForMemory`]: the transcript says how much of the stalled
/// request's write the kernel took, then each response or why there was
/// none; the next request is sent whatever became of the stalled one. The
/// result is the first failure.
fn wait_for_memory(addr: SocketAddr, conn: &mut Conn<'_>) -> Step<()> {
    let window = stall::peer_window(conn.fd())?;
    conn.transcript.push_str(&format!("window {window}\n"));
    if !stall::window_fits(window) {
        return Err(Failure {
            errno: None,
            error: format!("a window of {window} bytes does not fit the filler"),
            body: String::new(),
        });
    }
    let filler = stall::filler_request(addr);
    conn.send(&filler, 0)?;
    stall::until_acknowledged(conn.fd())?;
    let request = stall::stalled_request(addr);
    // SAFETY: a buffer and its length.
    let n = unsafe {
        libc::send(
            conn.fd(),
            request.as_ptr().cast(),
            request.len(),
            libc::MSG_OOB,
        )
    };
    let error = std::io::Error::last_os_error();
    conn.transcript
        .push_str(&format!("sent {} of {}\n", n.max(0), request.len()));
    let first = if n < 0 {
        Err(os_failure("send", error))
    } else if n as usize != request.len() {
        Err(Failure {
            errno: None,
            error: format!("send took {n} of {} bytes", request.len()),
            body: String::new(),
        })
    } else {
        Ok(())
    };
    // The filler's answer comes first, once the listener reads, whatever
    // became of the stalled request.
    let first = conn
        .response()
        .and(first)
        .and_then(|()| conn.response().map(drop));
    if let Err(f) = &first {
        conn.transcript
            .push_str(&format!("no answer: {}\n", f.error));
    }
    let next = conn
        .stream
        .set_write_timeout(Some(stall::next_wait()))
        .map_err(|e| os_failure("setting the write timeout", e))
        .and_then(|()| conn.send(&stall::next_request(addr), 0))
        .and_then(|()| conn.response().map(drop));
    if let Err(f) = &next {
        conn.transcript
            .push_str(&format!("next: no answer: {}\n", f.error));
    }
    first.and(next)
}

/// [`Trick::HandOff`]: the child connects as [`HANDOFF_UID`], the parent
/// (root, this process) sends the credentials on the socket it receives.
fn hand_off(addr: SocketAddr, transcript: &mut String) -> Step<()> {
    let (parent_end, child_end) =
        std::os::unix::net::UnixDatagram::pair().map_err(|e| os_failure("socketpair", e))?;
    // SAFETY: the probe is one thread; the child only makes system calls
    // and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_failure("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(parent_end);
        let code = match child_connects(addr, child_end.as_raw_fd()) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // SAFETY: leaves the child at once, running nothing of the parent's.
        unsafe { libc::_exit(code) };
    }
    drop(child_end);
    let received = receive_fd(parent_end.as_raw_fd());
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    let fd = received?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(Failure {
            errno: None,
            error: format!("the child's allowed requests failed (status {status})"),
            body: String::new(),
        });
    }
    let stream = TcpStream::from(fd);
    let mut conn = Conn::new(stream, transcript);
    let token = conn.token(addr)?;
    conn.send(
        &head(addr, "GET", &credentials_path(), (TOKEN_HEADER, &token)),
        0,
    )?;
    conn.response().map(drop)
}

/// The hand-off's child: becomes [`HANDOFF_UID`], connects, sends the
/// token `PUT` and the instance id `GET`, and passes the socket on `via`.
fn child_connects(addr: SocketAddr, via: RawFd) -> Step<()> {
    let id = HANDOFF_UID;
    // SAFETY: plain credential system calls on this (child) process.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setresgid(id, id, id) == 0
            && libc::setresuid(id, id, id) == 0
    };
    if !dropped {
        return Err(os_failure(
            "dropping to the judged uid",
            std::io::Error::last_os_error(),
        ));
    }
    let stream = connect(addr)?;
    let mut transcript = String::new();
    let mut conn = Conn::new(stream, &mut transcript);
    let token = conn.token(addr)?;
    conn.send(
        &head(addr, "GET", INSTANCE_ID_PATH, (TOKEN_HEADER, &token)),
        0,
    )?;
    conn.response()?;
    send_fd(via, conn.fd())
}

fn send_fd(via: RawFd, fd: RawFd) -> Step<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(b"fd")];
    let fds = [fd];
    sendmsg::<()>(
        via,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(|e| os_failure("sending the socket", std::io::Error::from(e)))
}

fn receive_fd(via: RawFd) -> Step<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 2];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(via, &mut iov, Some(&mut space), MsgFlags::empty())
        .map_err(|e| os_failure("receiving the socket", std::io::Error::from(e)))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| os_failure("reading the control message", e.into()))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: a descriptor the kernel just installed for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(Failure {
        errno: None,
        error: "the child sent no socket".to_owned(),
        body: String::new(),
    })
}

/// `connect()` of the socket `fd` to `addr`.
fn connect_fd(fd: RawFd, addr: SocketAddr) -> Step<()> {
    let dest = SockaddrStorage::from(addr);
    // SAFETY: `dest` outlives the call; its length is its own.
    if unsafe { libc::connect(fd, dest.as_ptr(), dest.len()) } != 0 {
        return Err(os_failure(
            format!("connect {addr} again"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A connection, what is read on it past the last response, and the
/// transcript of the responses.
struct Conn<'a> {
    stream: TcpStream,
    pending: Vec<u8>,
    transcript: &'a mut String,
}

impl<'a> Conn<'a> {
    fn new(stream: TcpStream, transcript: &'a mut String) -> Self {
        Self {
            stream,
            pending: Vec::new(),
            transcript,
        }
    }

    fn fd(&self) -> RawFd {
        self.stream.as_fd().as_raw_fd()
    }

    /// All of `bytes` in one `send(2)` with `flags`.
    fn send(&mut self, bytes: &[u8], flags: libc::c_int) -> Step<()> {
        // SAFETY: a buffer and its length.
        let n = unsafe { libc::send(self.fd(), bytes.as_ptr().cast(), bytes.len(), flags) };
        if n < 0 {
            return Err(os_failure("send", std::io::Error::last_os_error()));
        }
        if n as usize != bytes.len() {
            return Err(Failure {
                errno: None,
                error: format!("send took {n} of {} bytes", bytes.len()),
                body: String::new(),
            });
        }
        Ok(())
    }

    /// A token, from a `PUT` on this connection.
    fn token(&mut self, addr: SocketAddr) -> Step<String> {
        self.send(&head(addr, "PUT", TOKEN_PATH, (TTL_HEADER, "60")), 0)?;
        self.response()
    }

    /// The next response's body (by its `Content-Length`), added to the
    /// transcript with its status line.
    fn response(&mut self) -> Step<String> {
        self.stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| os_failure("setting the read timeout", e))?;
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if self.pending.len() >= end + 4 + len {
                    let rest = self.pending.split_off(end + 4 + len);
                    let body = String::from_utf8_lossy(&self.pending[end + 4..]).into_owned();
                    self.transcript.push_str(head.lines().next().unwrap_or(""));
                    self.transcript.push('\n');
                    self.transcript.push_str(&body);
                    self.transcript.push('\n');
                    self.pending = rest;
                    return Ok(body);
                }
            }
            let n = self
                .stream
                .read(&mut buf)
                .map_err(|e| os_failure("reading the response", e))?;
            if n == 0 {
                return Err(Failure {
                    errno: None,
                    error: "closed before a response".to_owned(),
                    body: String::new(),
                });
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}
