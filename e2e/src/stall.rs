//! A judged request whose send waits for memory mid-message (issue 23, the
//! design's risk R1, docs/design/request-level.md §3 and §8): a listener on
//! a judged address that takes one connection and reads nothing until the
//! test releases it, its receive buffer as small as the kernel allows
//! ([`StalledListener`]); and the sender's side
//! ([`Trick::WaitForMemory`](crate::Trick::WaitForMemory)): an allowed
//! request of 500 bytes that fills part of the listener's receive buffer,
//! then, once it is acknowledged, a second allowed request of 2000 bytes
//! in one blocking
//! `send(MSG_OOB)` from a socket whose send buffer the judged push fills,
//! so that the push waits in `sk_stream_wait_memory` with the socket's lock
//! released, after the verdict, for as long as the listener does not read.
//!
//! Why it waits, and goes on waiting (measured with `ss -tm` on 6.18 and
//! in Debian's 6.1): `MSG_OOB` makes the push's size goal one segment
//! (`tcp_xmit_size_goal` without GSO) and `TCP_MAXSEG` makes a segment 76
//! bytes, so the 2000 bytes become some 27 skbs, each with some 300 (6.18)
//! to 1300 (6.1) bytes of truesize overhead, and the queue passes the send
//! buffer (4608 bytes, the kernel's floor) after a few hundred bytes:
//! `req_msg`'s room check (the queue and the message under half the
//! buffer) passed, as it sees only the message. The listener's receive
//! buffer (2304 bytes, the floor) takes the filler, then as much of the
//! stalled request as its kernel can collapse the small segments into
//! (some 1100 bytes on 6.18), then stays shut: nothing after is
//! acknowledged, so nothing frees the sender's queue until the listener
//! reads. Without the filler the listener's kernel takes all but some 400
//! bytes, which no longer fill the send buffer on 6.18, and the wait ends
//! within 100 ms; a filler of more than one skb (half the window, some
//! 530 bytes) waits itself on 6.1. Without `MSG_OOB` the push cuts the
//! head into skbs of half the peer's window and never waits at all. The
//! listener reads the urgent bytes inline (`SO_OOBINLINE`): every push of
//! the message marks its last byte urgent.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

use crate::{
    Netns,
    outcome::{Failure, Step, os_failure},
    requests::{head, stream_to},
    slowdown::scaled,
    util::lock,
};

/// The port the stalled listener takes on a metadata address: a bare
/// protected address is judged on every port, and the fake IMDS has 80.
pub const STALL_PORT: u16 = 81;
/// The path of the stalled request, which the tests' request table allows.
pub const STALLED_PATH: &str = "/latest/meta-data/placement/";
/// The length of the stalled request's head, padded: under the judge's
/// 2048 bytes (`HEAD_MAX`).
pub const STALLED_LEN: usize = 2000;
/// The length of the request sent before it: one skb of the sender's
/// (under half the listener's window of 1152 bytes), which the listener's
/// kernel takes whole on 6.1 and 6.18.
pub const FILLER_LEN: usize = 500;
/// What the released listener answers to every request.
pub const STALLED_BODY: &str = "us-east-1a";
/// `SO_RCVBUF` of the listener, before `listen` so that its connections
/// take it and their window (and window scale) follow: the kernel doubles
/// it and raises it to `SOCK_MIN_RCVBUF` (about 2.3 KiB; a window of some
/// 1150 bytes).
const LISTENER_RCVBUF: libc::c_int = 1024;
/// `SO_SNDBUF` of the sender, before `connect`: the kernel doubles it and
/// raises it to `SOCK_MIN_SNDBUF` (4608 bytes), which leaves `req_msg`'s
/// room check (the queue and the message under half the buffer) room for
/// a 2000-byte message on an empty queue.
const SENDER_SNDBUF: libc::c_int = 2304;
/// `TCP_MAXSEG` of the sender, before `connect`: the smallest the kernel
/// takes (`TCP_MIN_MSS`; 76 bytes of payload with timestamps), so that
/// the stalled request is cut into some 27 skbs, each with its truesize
/// overhead.
const SENDER_MAXSEG: libc::c_int = 88;
/// How long the sender's write may wait (times the slowdown): longer than
/// the test takes to see the wait and release the listener.
const WRITE_WAIT: Duration = Duration::from_secs(6);
/// How long the sender waits for each response, and lets its next request
/// wait for room (times the slowdown).
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The stalled request to `addr`: the placement `GET`, kept alive,
/// padded to [`STALLED_LEN`] bytes.
pub fn stalled_request(addr: SocketAddr) -> Vec<u8> {
    padded(addr, STALLED_LEN)
}

/// The request the sender sends first, to fill most of the listener's
/// window: [`FILLER_LEN`] bytes.
pub fn filler_request(addr: SocketAddr) -> Vec<u8> {
    padded(addr, FILLER_LEN)
}

/// Whether a window of `window` bytes sends the filler as one skb (the
/// size goal is half the peer's largest window) and leaves part of the
/// stalled request out.
pub(crate) fn window_fits(window: usize) -> bool {
    window / 2 >= FILLER_LEN && window < FILLER_LEN + STALLED_LEN
}

/// The window the listener advertised to `fd` (`tcpi_snd_wnd`, since
/// Linux 5.4).
pub(crate) fn peer_window(fd: RawFd) -> Step<usize> {
    // SAFETY: a plain-old-data struct, zeroed, filled by the kernel.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the struct and its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(os_failure("TCP_INFO", std::io::Error::last_os_error()));
    }
    let end = std::mem::offset_of!(libc::tcp_info, tcpi_snd_wnd) + size_of::<u32>();
    if (len as usize) < end {
        return Err(Failure {
            errno: None,
            error: format!("TCP_INFO of {len} bytes has no tcpi_snd_wnd (Linux 5.4)"),
            body: String::new(),
        });
    }
    Ok(info.tcpi_snd_wnd as usize)
}

/// The placement `GET` to `addr`, kept alive, padded with `X-Pad-N`
/// headers (each under the judge's longest header line, 1024 bytes) to
/// `len` bytes.
fn padded(addr: SocketAddr, len: usize) -> Vec<u8> {
    let mut request = head(addr, "GET", STALLED_PATH, ("X-Pad-0", "a"));
    let end = request.len() - 2;
    request.truncate(end);
    let mut n = 1;
    while request.len() + 2 < len {
        // `X-Pad-N: ` and CRLF around at most 500 bytes of padding.
        let room = len - 2 - request.len();
        let name = format!("X-Pad-{n}: ");
        let take = room.saturating_sub(name.len() + 2).min(500);
        if take == 0 {
            // Too little room for another line: lengthen the first.
            request.splice(end - 2..end - 2, std::iter::repeat_n(b'a', room));
            break;
        }
        request.extend_from_slice(name.as_bytes());
        request.extend(std::iter::repeat_n(b'a', take));
        request.extend_from_slice(b"\r\n");
        n += 1;
    }
    request.extend_from_slice(b"\r\n");
    assert_eq!(request.len(), len, "the padded request's length");
    request
}

/// The request the sender sends next on the same connection.
pub fn next_request(addr: SocketAddr) -> Vec<u8> {
    head(addr, "GET", STALLED_PATH, ("Accept", "*/*"))
}

/// The sender's connection: a stream socket with [`SENDER_SNDBUF`] set
/// before `connect`, the write waiting up to [`WRITE_WAIT`].
pub(crate) fn connect(addr: SocketAddr) -> Step<TcpStream> {
    let options = [
        (libc::SOL_SOCKET, libc::SO_SNDBUF, SENDER_SNDBUF),
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG, SENDER_MAXSEG),
    ];
    stream_to(addr, 0, &options, None, Some(scaled(WRITE_WAIT)))
}

/// Waits until the listener's kernel has acknowledged every byte sent on
/// `fd` (`SIOCOUTQ` is 0), so that the stalled request starts on an
/// empty queue (`req_msg`'s room check counts what is queued).
pub(crate) fn until_acknowledged(fd: RawFd) -> Step<()> {
    let deadline = Instant::now() + scaled(ANSWER_WAIT);
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
        if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut n) } != 0 {
            return Err(os_failure("SIOCOUTQ", std::io::Error::last_os_error()));
        }
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure {
                errno: None,
                error: format!("{n} bytes of the filler still unacknowledged"),
                body: String::new(),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// How long the sender's next request may wait for room.
pub(crate) fn next_wait() -> Duration {
    scaled(ANSWER_WAIT)
}

/// A listener on a judged address whose one connection is read only once
/// the test says so. Closed on drop.
#[derive(Debug)]
pub struct StalledListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl StalledListener {
    /// Listens on `addr` inside `netns`, with [`LISTENER_RCVBUF`].
    pub fn start(netns: &Netns, addr: SocketAddr) -> Self {
        let fd = netns.in_netns(|| {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
            let fd = socket(family, SockType::Stream, flags, None)
                .unwrap_or_else(|e| panic!("socket for {addr}: {e}"));
            if addr.is_ipv6() {
                setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                    .unwrap_or_else(|e| panic!("IPV6_V6ONLY on {addr}: {e}"));
            }
            setsockopt(&fd, sockopt::RcvBuf, &(LISTENER_RCVBUF as usize))
                .unwrap_or_else(|e| panic!("SO_RCVBUF on {addr}: {e}"));
            setsockopt(&fd, sockopt::OobInline, &true)
                .unwrap_or_else(|e| panic!("SO_OOBINLINE on {addr}: {e}"));
            bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
                .unwrap_or_else(|e| panic!("binding {addr} in the test namespace: {e}"));
            let backlog = Backlog::new(4).unwrap_or_else(|e| panic!("backlog: {e}"));
            listen(&fd, backlog).unwrap_or_else(|e| panic!("listening on {addr}: {e}"));
            fd
        });
        Self {
            listener: TcpListener::from(fd),
            addr,
        }
    }

    /// The connection the sender made, once the handshake is done; panics
    /// after `timeout`.
    pub fn accept(&self, timeout: Duration) -> Stalled {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return Stalled { stream },
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("no connection to {} within {timeout:?}: {e}", self.addr),
            }
        }
    }
}

/// The accepted connection, not read.
#[derive(Debug)]
pub struct Stalled {
    stream: TcpStream,
}

impl Stalled {
    /// How many bytes arrived (`tcpi_bytes_received`, since Linux 4.6;
    /// `FIONREAD` and `MSG_PEEK` stop at the urgent mark on some kernels).
    pub fn arrived(&self) -> u64 {
        // SAFETY: a plain-old-data struct, zeroed, filled by the kernel.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the struct and its size.
        let rc = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_bytes_received
    }

    /// Starts reading: every byte is logged, and every whole request head
    /// answered with [`STALLED_BODY`], kept alive, until dropped.
    pub fn release(self) -> Serving {
        let shared = Arc::new(Served::default());
        let thread = thread::spawn({
            let shared = Arc::clone(&shared);
            move || serve(self.stream, &shared)
        });
        Serving {
            shared,
            thread: Some(thread),
        }
    }
}

#[derive(Debug, Default)]
struct Served {
    stop: AtomicBool,
    /// Every byte read, and how many requests were answered.
    log: Mutex<(Vec<u8>, usize)>,
}

/// The released connection, read and answered by a thread of its own,
/// stopped on drop.
#[derive(Debug)]
pub struct Serving {
    shared: Arc<Served>,
    thread: Option<JoinHandle<()>>,
}

impl Serving {
    /// Every byte the sender's connection delivered so far.
    pub fn received(&self) -> Vec<u8> {
        lock(&self.shared.log).0.clone()
    }

    /// How many requests were answered.
    pub fn answered(&self) -> usize {
        lock(&self.shared.log).1
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Served) {
    if stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .is_err()
    {
        return;
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::Acquire) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        lock(&shared.log).0.extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: keep-alive\r\n\r\n{STALLED_BODY}",
                STALLED_BODY.len()
            );
            lock(&shared.log).1 += 1;
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn the_stalled_request_is_one_head_the_judge_reads_whole() {
        for ip in [
            std::net::IpAddr::from(Ipv4Addr::new(169, 254, 169, 254)),
            Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254).into(),
        ] {
            let request = stalled_request(SocketAddr::new(ip, STALL_PORT));
            assert_eq!(request.len(), STALLED_LEN);
            let text = String::from_utf8(request).expect("ASCII");
            let (head, rest) = text.split_once("\r\n\r\n").expect("a whole head");
            assert_eq!(rest, "", "{ip}: one head, nothing after it");
            let lines: Vec<&str> = head.split("\r\n").collect();
            assert_eq!(
                lines[0],
                format!("GET {STALLED_PATH} HTTP/1.1"),
                "{ip}: the request line"
            );
            // The judge's limits: 32 header lines of at most 1024 bytes.
            assert!(
                lines.len() - 1 <= 32,
                "{ip}: {} header lines",
                lines.len() - 1
            );
            assert!(
                lines.iter().all(|l| l.len() + 2 <= 1024),
                "{ip}: a long line"
            );
        }
    }
}
