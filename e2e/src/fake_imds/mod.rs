//! A fake instance metadata service, served inside a test [`Netns`].
//!
//! One std thread polls every socket: TCP listeners on the metadata addresses
//! (port 80) and on loopback (port 8080, the "not protected" destination),
//! and UDP sockets on port 5353 that only count datagrams. Connections are
//! polled with the rest and answered as their requests arrive, so a client
//! that connects and waits (a kept-alive connection between two requests,
//! a bare connect) holds up nobody, and the thread never grows. A request
//! asking for `Connection: keep-alive` keeps its connection for the next;
//! any other is answered and the connection closed.

mod http;

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::net::UnixDatagram,
    },
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, poll},
    sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    },
};

pub use self::http::{INSTANCE_ID, ROLE};
use self::http::{Imds, Response, take_request};
use crate::{
    IMDS_V4, IMDS_V6, Netns,
    util::{cleanup_failed, lock},
};

/// The metadata service's HTTP port.
pub const IMDS_PORT: u16 = 80;
/// The HTTP port on loopback, a destination no policy protects.
pub const PLAIN_PORT: u16 = 8080;
/// The UDP port on every address; datagrams are only counted.
pub const UDP_PORT: u16 = 5353;

/// Per-connection read and write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a counter query waits for the server thread to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections held at once; past this the listeners keep the rest in
/// their backlog until one closes.
const MAX_CONNS: usize = 256;

/// The TCP listeners' addresses, each serving the same IMDS application.
pub fn tcp_addrs() -> [SocketAddr; 4] {
    [
        SocketAddr::new(IMDS_V4.into(), IMDS_PORT),
        SocketAddr::new(IMDS_V6.into(), IMDS_PORT),
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PLAIN_PORT),
        SocketAddr::new(Ipv6Addr::LOCALHOST.into(), PLAIN_PORT),
    ]
}

/// The UDP sockets' addresses.
pub fn udp_addrs() -> [SocketAddr; 4] {
    [
        IMDS_V4.into(),
        IMDS_V6.into(),
        IpAddr::from(Ipv4Addr::LOCALHOST),
        Ipv6Addr::LOCALHOST.into(),
    ]
    .map(|ip: IpAddr| SocketAddr::new(ip, UDP_PORT))
}

/// What the server has seen, read by tests after [`FakeImds::settle`].
#[derive(Debug, Default)]
struct Stats {
    /// Completed poll passes: the clock [`FakeImds::settle`] waits on.
    passes: u64,
    requests: usize,
    accepted: HashMap<SocketAddr, usize>,
    datagrams: HashMap<SocketAddr, usize>,
    /// Every byte each TCP connection sent, by connection, in the order
    /// they were accepted: the oracle of the request-level tests (a
    /// refused request passes only if its bytes never arrived).
    received: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    stats: Mutex<Stats>,
    pass_done: Condvar,
}

struct Sockets {
    tcp: Vec<(SocketAddr, TcpListener)>,
    udp: Vec<(SocketAddr, UdpSocket)>,
    wake: UnixDatagram,
}

/// The running fake IMDS; stops (and closes its sockets) on drop.
#[derive(Debug)]
pub struct FakeImds {
    shared: Arc<Shared>,
    /// Interrupts the server's `poll` for a stop or a [`FakeImds::settle`].
    wake: UnixDatagram,
    thread: Option<JoinHandle<()>>,
    credentials: String,
    marker: String,
}

impl FakeImds {
    /// Binds every socket inside `netns` and starts serving. Panics if a
    /// socket cannot be bound (for example, a second `FakeImds` in the same
    /// namespace).
    pub fn start(netns: &Netns) -> Self {
        let (tcp, udp) = netns.in_netns(|| {
            let tcp = tcp_addrs().map(|a| (a, TcpListener::from(bound(a, SockType::Stream))));
            let udp = udp_addrs().map(|a| (a, UdpSocket::from(bound(a, SockType::Datagram))));
            (tcp.into(), udp.into())
        });
        let (wake, wake_rx) =
            UnixDatagram::pair().unwrap_or_else(|e| panic!("creating the wake-up pair: {e}"));
        for end in [&wake, &wake_rx] {
            end.set_nonblocking(true)
                .unwrap_or_else(|e| panic!("making the wake-up pair nonblocking: {e}"));
        }
        let sockets = Sockets {
            tcp,
            udp,
            wake: wake_rx,
        };
        let imds = Imds::new();
        let (credentials, marker) = (imds.credentials().to_owned(), imds.marker().to_owned());
        let shared = Arc::new(Shared::default());
        let thread = thread::Builder::new()
            .name(format!("fake-imds-{}", netns.name()))
            .spawn({
                let shared = Arc::clone(&shared);
                move || serve(&sockets, &shared, imds)
            })
            .unwrap_or_else(|e| panic!("spawning the fake IMDS thread: {e}"));
        FakeImds {
            shared,
            wake,
            thread: Some(thread),
            credentials,
            marker,
        }
    }

    /// The exact body `GET .../security-credentials/imds-guard-test-role`
    /// returns.
    pub fn credentials_body(&self) -> &str {
        &self.credentials
    }

    /// The random marker in this server's credentials (in `AccessKeyId` and
    /// `Token`), for checking a log or output does not leak it.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// HTTP requests answered so far, on every listener.
    pub fn requests_served(&self) -> usize {
        self.settle().requests
    }

    /// TCP connections accepted on the listener at `addr` (one of
    /// [`tcp_addrs`]).
    pub fn tcp_accepted(&self, addr: SocketAddr) -> usize {
        assert!(
            tcp_addrs().contains(&addr),
            "no fake IMDS listener on {addr}"
        );
        self.settle().accepted.get(&addr).copied().unwrap_or(0)
    }

    /// Every byte each TCP connection sent so far, by connection, in the
    /// order the connections were accepted.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.settle().received.clone()
    }

    /// Whether any TCP connection sent `needle` (within what one read
    /// returned, or across reads: the log is per connection).
    pub fn received_contains(&self, needle: &[u8]) -> bool {
        self.received()
            .iter()
            .any(|log| log.windows(needle.len()).any(|w| w == needle))
    }

    /// Datagrams received on the UDP socket at `addr` (one of [`udp_addrs`]).
    pub fn udp_received(&self, addr: SocketAddr) -> usize {
        assert!(
            udp_addrs().contains(&addr),
            "no fake IMDS UDP socket on {addr}"
        );
        self.settle().datagrams.get(&addr).copied().unwrap_or(0)
    }

    /// Waits until the server has completed a whole pass that started after
    /// this call, so everything a finished probe sent has been counted: a
    /// handshake or datagram on loopback is queued on our socket before the
    /// sender's system call returns, and every pass drains every socket.
    fn settle(&self) -> MutexGuard<'_, Stats> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut stats = lock(&self.shared.stats);
        // +2: the pass in progress now may have polled before our caller's
        // traffic arrived.
        let target = stats.passes + 2;
        while stats.passes < target {
            assert!(
                Instant::now() < deadline,
                "fake IMDS server stopped making progress"
            );
            // A full buffer only means a wake-up is already pending.
            let _ = self.wake.send(&[1]);
            stats = self
                .shared
                .pass_done
                .wait_timeout(stats, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        stats
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.wake.send(&[1]);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                cleanup_failed("the fake IMDS server thread panicked");
            }
        }
    }
}

/// A nonblocking socket bound to `addr` (listening, for TCP). IPv6 sockets
/// are `IPV6_V6ONLY`, so v4-mapped traffic is served by the IPv4 socket of
/// the same port, as it would be on a real host.
fn bound(addr: SocketAddr, ty: SockType) -> OwnedFd {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket(family, ty, flags, None).unwrap_or_else(|e| panic!("socket for {addr}: {e}"));
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .unwrap_or_else(|e| panic!("IPV6_V6ONLY on {addr}: {e}"));
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .unwrap_or_else(|e| panic!("binding {addr} in the test namespace: {e}"));
    if ty == SockType::Stream {
        let backlog = Backlog::new(64).unwrap_or_else(|e| panic!("backlog: {e}"));
        listen(&fd, backlog).unwrap_or_else(|e| panic!("listening on {addr}: {e}"));
    }
    fd
}

/// An accepted connection: nonblocking, with what it sent so far of a
/// request not yet whole.
struct Conn {
    /// Its slot in `Stats::received`.
    id: usize,
    stream: TcpStream,
    pending: Vec<u8>,
    /// When it was answered for the last time and shut for writing; it is
    /// then dropped at the client's close, or [`IO_TIMEOUT`] later.
    closing: Option<Instant>,
}

fn serve(sockets: &Sockets, shared: &Shared, mut imds: Imds) {
    let mut buf = [0u8; 2048];
    let mut conns: Vec<Conn> = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        let mut fds: Vec<PollFd<'_>> = sockets
            .tcp
            .iter()
            .map(|(_, l)| l.as_fd())
            .chain(sockets.udp.iter().map(|(_, u)| u.as_fd()))
            .chain(conns.iter().map(|c| c.stream.as_fd()))
            .chain([sockets.wake.as_fd()])
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        // The timeout is only a backstop; wake-ups come through `wake`. An
        // error (EINTR) just means another pass.
        let _ = poll(&mut fds, 200u16);
        drop(fds);

        // Every socket is drained on every pass, ready or not: the sockets
        // are nonblocking and this keeps "one pass drains everything" true.
        for (addr, listener) in &sockets.tcp {
            while conns.len() < MAX_CONNS {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                let id = {
                    let mut stats = lock(&shared.stats);
                    *stats.accepted.entry(*addr).or_default() += 1;
                    stats.received.push(Vec::new());
                    stats.received.len() - 1
                };
                let setup = stream
                    .set_nonblocking(true)
                    .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
                if setup.is_ok() {
                    conns.push(Conn {
                        id,
                        stream,
                        pending: Vec::new(),
                        closing: None,
                    });
                }
            }
        }
        conns.retain_mut(|c| serve_conn(c, shared, &mut imds, &mut buf));
        for (addr, socket) in &sockets.udp {
            while socket.recv_from(&mut buf).is_ok() {
                *lock(&shared.stats).datagrams.entry(*addr).or_default() += 1;
            }
        }
        while sockets.wake.recv(&mut buf).is_ok() {}

        lock(&shared.stats).passes += 1;
        shared.pass_done.notify_all();
    }
}

/// Reads what a connection sent and answers each whole request; `false`
/// once it is done: closed by the client (a bare connect, a client that
/// gave up, or the close awaited after the last response), or broken.
fn serve_conn(conn: &mut Conn, shared: &Shared, imds: &mut Imds, buf: &mut [u8]) -> bool {
    loop {
        let read = conn.stream.read(buf);
        if let Ok(n @ 1..) = read {
            if let Some(log) = lock(&shared.stats).received.get_mut(conn.id) {
                log.extend_from_slice(&buf[..n]);
            }
        }
        match read {
            Ok(0) => return false,
            // Past the last response, input is only read to see the close.
            Ok(_) if conn.closing.is_some() => {}
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if let Some(since) = conn.closing {
        return since.elapsed() < IO_TIMEOUT;
    }
    while let Some(request) = take_request(&mut conn.pending) {
        let response = match request {
            Ok(request) => imds.handle(&request),
            Err(why) => Response::bad_request(&why),
        };
        if !respond(&mut conn.stream, shared, &response) {
            return false;
        }
        if !response.keep_alive {
            // Wait for the client's close: closing with unread input would
            // send a RST, which can destroy the response before the client
            // reads it.
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.closing = Some(Instant::now());
            return true;
        }
    }
    true
}

/// Writes `response` whole (blocking, within the write timeout); `false`
/// when it could not be.
fn respond(stream: &mut TcpStream, shared: &Shared, response: &Response) -> bool {
    // Counted before the write, so a client that has read its response
    // always finds itself counted.
    lock(&shared.stats).requests += 1;
    stream.set_nonblocking(false).is_ok()
        && stream.write_all(&response.to_bytes()).is_ok()
        && stream.set_nonblocking(true).is_ok()
}
